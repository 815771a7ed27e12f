"""`evaluate`: the whole offline protocol of DESIGN.md section 3, end to end.

1. Split by time: fit | validation window | test period.
2. Validation: baselines fitted on the fit period answer queries built from the
   validation window; the blend weights are tuned there (one blend per view).
3. Test: baselines refitted on fit + validation; the model is trained on fit + validation
   only (`train_bundle` sees no test-period row); every method answers the same test
   queries under the same candidate rule.
4. Per-query metrics, 95% intervals, paired differences to the best baseline, the
   retrieval stage's candidate recall, ablations; report.md / report.json / report.png.

A run writes everything to a temporary directory inside the report directory and moves
it into place only when it succeeds: a failed run leaves an earlier report (and the
bundles it names) as they were, and nothing that looks like its own result.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from xsell.data.contract import Dataset
from xsell.data.loaders import cannot_write
from xsell.errors import DataError

from . import metrics as M
from .baselines import (
    COMPONENTS,
    Baselines,
    build_pool,
    random_top_k,
    rank_baselines,
    tune_blend,
)
from .queries import (
    History,
    QuerySet,
    build_history,
    cross_sell_queries,
    new_to_shopper,
    up_sell_queries,
)
from .report import REPORT_FILES
from .split import time_split

K = 10
UPSELL_MIN_UPLIFT = 1.15
VIEWS = ("cross_sell", "cross_sell_new", "up_sell")
VIEW_TITLES = {
    "cross_sell": "Cross-sell, all relevant items",
    "cross_sell_new": "Cross-sell, items new to the shopper",
    "up_sell": "Up-sell (same category, pricier than the anchor)",
}
RESTRICTED = f" (>={UPSELL_MIN_UPLIFT}x)"  # suffix of up-sell methods with the restricted band
MODEL = "model"
ABLATIONS = {
    "retrieval only": None,
    "no price features": ("price",),
    "no complement features": ("complement",),
}
BASELINE_LABELS = {
    "random": "random",
    "popularity": "popularity",
    "buy_again": "buy again",
    "co_purchase": "co-purchase",
    "als_user": "ALS user-item",
    "als_item": "ALS anchor-item",
    "blend": "tuned blend",
}


class Progress:
    """Stage lines with elapsed time on stderr; long loops report every few seconds."""

    def __init__(self, enabled: bool = True, stream=None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self._last = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[{self.elapsed():7.1f}s] {message}", file=self.stream, flush=True)

    def counter(self, label: str, total: int, every: float = 10.0):
        """A callback(done) that prints `label done/total` at most every `every` seconds."""
        start = self._last = time.perf_counter()  # first line after `every` s, not at 1/N

        def tick(done: int) -> None:
            now = time.perf_counter()
            if self.enabled and (now - self._last >= every or done == total):
                self._last = now
                rate = done / max(now - start, 1e-9)
                eta = (total - done) / rate if rate > 0 else float("nan")
                self(f"  {label}: {done:,}/{total:,} ({rate:,.0f}/s, eta {eta:,.0f}s)")

        return tick


def build_views(
    target, history_events, history: History, *, max_queries: int, seed: int
) -> dict[str, QuerySet]:
    cross = cross_sell_queries(
        target, history, max_queries=max_queries, seed=seed, name="cross_sell"
    )
    return {
        "cross_sell": cross,
        "cross_sell_new": new_to_shopper(cross, history, name="cross_sell_new"),
        "up_sell": up_sell_queries(
            target,
            history_events,
            history,
            min_uplift=UPSELL_MIN_UPLIFT,
            max_queries=max_queries,
            seed=seed,
        ),
    }


def per_query_metrics(
    ranked: np.ndarray, queries: QuerySet, history: History
) -> dict[str, np.ndarray]:
    """Every metric of one method on one view, one value per query."""
    hits = M.hits_matrix(ranked, queries.relevant_codes(history.n_items), history.n_items)
    prices = np.where(ranked >= 0, history.price[np.maximum(ranked, 0)], 0.0)
    n_rel = queries.n_relevant
    out = {
        "ndcg": M.ndcg_at_k(hits, n_rel),
        "recall": M.recall_at_k(hits, n_rel),
        "hit_rate": M.hit_rate_at_k(hits),
        "revenue": M.revenue_at_k(hits, prices),
    }
    if queries.task == "up_sell":
        out["uplift"] = M.price_uplift_of_hits(hits, prices, history.price[queries.anchor])
    return out


def summarise(per_query: dict[str, dict[str, np.ndarray]], baselines: list[str]) -> dict:
    """Mean and 95% interval of every metric per method, and the paired difference of
    every method to the best baseline (by NDCG@10)."""
    methods = {
        name: {m: M.mean_ci(v).to_dict() for m, v in metrics.items()}
        for name, metrics in per_query.items()
    }
    best = max(
        baselines, key=lambda b: methods[b]["ndcg"]["mean"] if methods[b]["ndcg"]["n"] else -1.0
    )
    diffs = {
        name: {m: M.paired_difference(v, per_query[best][m]).to_dict() for m, v in metrics.items()}
        for name, metrics in per_query.items()
        if name != best
    }
    return {
        "methods": methods,
        "best_baseline": best,
        "paired_vs_best": diffs,
        "baselines": baselines,
    }


def evaluate(
    dataset: Dataset,
    out_dir,
    *,
    test_days: int = 28,
    valid_days: int = 28,
    max_queries: int = 20_000,
    seed: int = 0,
    config=None,
    ablations: bool = True,
    progress: bool = True,
    model: bool = True,
    workers: int = 1,
) -> dict:
    """Run the protocol and write report.md, report.json, report.png (and the bundles) to
    `out_dir`. `config`: a `TrainConfig` for the model (default: TrainConfig with this
    seed and label_days = valid_days). `model=False` scores the baselines only; `workers`
    processes answer the model's requests (each loads the bundle; 1 = in this process).
    Returns the report as a dict (what report.json holds). Nothing reaches `out_dir`
    unless the whole run succeeds (see the module's docstring)."""
    out = Path(out_dir)
    log = Progress(progress)
    t = time.perf_counter()
    if dataset.events.empty and dataset.report.drops("events"):
        raise DataError(f"no events to evaluate on (rows dropped on loading: {dataset.report.drops('events')})")
    split = time_split(dataset.events, test_days=test_days, valid_days=valid_days)
    created = not out.exists()
    try:  # after the split: bad input leaves no empty directory behind
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cannot_write(exc, out, "the report directory (--out)") from exc
    try:
        work = Path(tempfile.mkdtemp(prefix=".evaluate-tmp-", dir=out))
    except OSError as exc:
        # the error names --out, not the temporary directory the user never asked for
        raise cannot_write(OSError(exc.errno, exc.strerror), out, "the report directory (--out)") from exc
    done = False
    try:
        # refused now, not after hours of work: only the final moves could still fail
        for name in REPORT_FILES:
            if (out / name).is_dir():
                raise DataError("cannot write the report (--out): a directory is in the way", file=str(out / name))
        report = _run(dataset, split, work, out, log, t, test_days=test_days, valid_days=valid_days,
                      max_queries=max_queries, seed=seed, config=config, ablations=ablations, model=model,
                      workers=workers)  # fmt: skip
        removed = _publish(work, out, [Path(p).name for p in report["bundles"].values()])
        if removed:
            log(f"removed the earlier run's bundles {', '.join(removed)} from {out / 'bundles'} "
                "(this report does not name them)")  # fmt: skip
        done = True
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not done and created:
            with contextlib.suppress(OSError):
                out.rmdir()  # the directory this failed run made, if empty
    log(f"report written to {out} ({report['timings']['total']:.0f}s)")
    return report


def bundle_dir_name(label: str) -> str:
    """The directory under bundles/ of the bundle a method label names."""
    return label.replace(" ", "_")


# every bundle directory an evaluation can write under bundles/
BUNDLE_DIRS = tuple(bundle_dir_name(label) for label in (MODEL, *(a for a, g in ABLATIONS.items() if g)))


def _publish(work: Path, out: Path, bundles: list[str]) -> list[str]:
    """Move a finished run's outputs from `work` into `out`, one rename each (atomic: same
    file system): the bundles first, then REPORT_FILES in their order. An earlier run's
    bundle that this report does not name (it had ablations, this one has none) goes
    too, so bundles/ holds what the report describes; returns their names."""
    for name in bundles:
        src, dst = work / "bundles" / name, out / "bundles" / name
        dst.parent.mkdir(exist_ok=True)
        if dst.exists():  # an earlier run's bundle (checked before training): goes with `work`
            os.rename(dst, work / f"replaced-{name}")
        os.rename(src, dst)
    for name in REPORT_FILES:
        os.replace(work / name, out / name)
    removed = [n for n in BUNDLE_DIRS if n not in bundles and (out / "bundles" / n).is_dir()]
    for name in removed:
        os.rename(out / "bundles" / name, work / f"replaced-{name}")
    with contextlib.suppress(OSError):
        (out / "bundles").rmdir()  # only if empty: a --no-model run after one with a model
    return removed


def _run(dataset: Dataset, split, work: Path, out: Path, log: Progress, t: float, *, test_days: int,
         valid_days: int, max_queries: int, seed: int, config, ablations: bool, model: bool, workers: int) -> dict:
    """`evaluate` after the split: writes the report files (and bundles) to `work`; the
    report names the bundles by where `_publish` moves them, under `out`."""
    timings: dict[str, float] = {}

    def timed(name: str, t0: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - t0, 2)
        return now

    s = split.summary()
    log(f"split: fit {s['fit_rows']:,} rows | valid {s['valid_rows']:,} (from {s['valid_start']}) | "
        f"test {s['test_rows']:,} (from {s['test_start']})")  # fmt: skip

    # --- validation: tune one blend per view ----------------------------------------------
    hist_fit = build_history(split.fit, dataset.catalog)
    base_fit = Baselines.fit(hist_fit, seed=seed)
    valid_views = build_views(split.valid, split.fit, hist_fit, max_queries=max_queries, seed=seed)
    valid_views["up_sell" + RESTRICTED] = valid_views["up_sell"].with_rule(
        "up_sell" + RESTRICTED, min_uplift=UPSELL_MIN_UPLIFT
    )
    log(f"validation: ALS {base_fit.als_seconds:.1f}s; queries "
        + ", ".join(f"{n} {len(q):,}" for n, q in valid_views.items()))  # fmt: skip
    tuning = {}
    for name, vq in valid_views.items():
        if len(vq) == 0:
            tuning[name] = None
            continue
        tuning[name] = tune_blend(build_pool(vq, base_fit), k=K)
        r = tuning[name]
        log(f"  blend[{name}]: validation NDCG@10 {r.validation_ndcg:.4f} "
            f"(best single {max(r.single_ndcg.values()):.4f}); weights "
            + " ".join(f"{c}={w:g}" for c, w in r.blend.weights.items() if w))  # fmt: skip
    t = timed("validation_and_tuning", t)

    # --- test: baselines on fit + valid -------------------------------------------------
    train_events = split.train
    history = build_history(train_events, dataset.catalog)
    base = Baselines.fit(history, seed=seed)
    views = build_views(split.test, train_events, history, max_queries=max_queries, seed=seed)
    restricted = views["up_sell"].with_rule("up_sell" + RESTRICTED, min_uplift=UPSELL_MIN_UPLIFT)
    log(f"test: {history.n_items:,} warm items, {len(history.users):,} warm users; ALS {base.als_seconds:.1f}s; "
        "queries " + ", ".join(f"{n} {len(q):,}" for n, q in views.items()))  # fmt: skip

    rankings: dict[str, dict[str, np.ndarray]] = {v: {} for v in VIEWS}
    baseline_names: dict[str, list[str]] = {v: [] for v in VIEWS}

    def add_baselines(
        view: str, queries: QuerySet, tuned, suffix: str = "", singles=COMPONENTS
    ) -> None:
        blends = {"blend": tuned.blend} if tuned is not None else {}
        tick = log.counter(f"baselines {queries.name}", len(queries))
        done = [0]

        def on_batch(n: int) -> None:
            done[0] += n
            tick(done[0])

        ranked = rank_baselines(
            queries, base, singles=singles, blends=blends, k=K, on_batch=on_batch
        )
        if not suffix:
            ranked = {"random": random_top_k(queries, history, K, seed=seed), **ranked}
        for name, r in ranked.items():
            label = BASELINE_LABELS[name] + suffix
            rankings[view][label] = r
            baseline_names[view].append(label)

    for view in VIEWS:
        if len(views[view]):
            add_baselines(view, views[view], tuning.get(view))
    if len(restricted):
        add_baselines(
            "up_sell",
            restricted,
            tuning.get("up_sell" + RESTRICTED),
            RESTRICTED,
            ("popularity", "buy_again"),
        )
    t = timed("baselines", t)

    # --- the model ------------------------------------------------------------------------
    candidate = {}
    bundles = {}
    bundle_dirs: dict[str, str] = {}  # label -> its directory's name under bundles/
    if model:
        from xsell.ranking.bundle import check_out_dir
        from xsell.ranking.train import TrainConfig, train_bundles

        from .model import ModelClient, RankerSpec, candidate_recall, model_rankings

        cfg = config or TrainConfig(seed=seed, label_days=valid_days)
        train_ds = Dataset(train_events, dataset.catalog, dataset.users, dataset.report)
        variants = {MODEL: cfg}
        if ablations:
            for label, groups in ABLATIONS.items():
                if groups is not None:
                    variants[label] = replace(
                        cfg, disabled_feature_groups=tuple(cfg.disabled_feature_groups) + groups
                    )

        def train_log(*parts: object) -> None:
            message = " ".join(str(p) for p in parts).strip()
            if message:
                log(f"    train: {message}")

        # trained into `work`, moved to `out` only if the run succeeds; a directory in the
        # way that is not a bundle is refused now, before the training
        bundle_dirs = {label: bundle_dir_name(label) for label in variants}
        for name in bundle_dirs.values():
            check_out_dir(out / "bundles" / name, overwrite=True)
        # one pass over the label windows for all of them: they differ only in features
        t0 = time.perf_counter()
        log(
            f"training bundles {', '.join(repr(v) for v in variants)} on {len(train_events):,} pre-test events"
        )
        try:
            bundles = train_bundles(
                train_ds,
                {label: (work / "bundles" / bundle_dirs[label], vcfg) for label, vcfg in variants.items()},
                log=train_log,
            )
        except DataError as exc:
            if exc.file is not None:
                raise
            # the model's label window is the validation window: name the flag that sets it
            raise DataError(
                f"training the model: {exc.reason} (its label window is the --valid-days period; "
                "--no-model scores the baselines only)",
                row=exc.row,
                column=exc.column,
            ) from exc
        timings["train"] = round(time.perf_counter() - t0, 2)
        log(f"  trained in {timings['train']:.1f}s (to {out / 'bundles'} when the run succeeds)")
        t = time.perf_counter()
        specs = {label: RankerSpec(str(p)) for label, p in bundles.items()}
        if ablations:
            specs["retrieval only"] = RankerSpec(str(bundles[MODEL]), retrieval_only=True)
        with ModelClient(workers) as client:
            for view in VIEWS:
                qs = views[view]
                if not len(qs):
                    continue
                for label, spec in specs.items():
                    tick = log.counter(f"{label} / {view}", len(qs))
                    rankings[view][label] = model_rankings(
                        client, spec, qs, history, k=K, on_query=tick
                    )
                if view == "up_sell":
                    tick = log.counter(f"{MODEL}{RESTRICTED} / {view}", len(qs))
                    rankings[view][MODEL + RESTRICTED] = model_rankings(
                        client,
                        specs[MODEL],
                        qs,
                        history,
                        k=K,
                        uplift_min=UPSELL_MIN_UPLIFT,
                        on_query=tick,
                    )
                tick = log.counter(f"candidates / {view}", len(qs))
                rec, n_cand = candidate_recall(client, specs[MODEL], qs, history, on_query=tick)
                candidate[view] = {
                    "recall": M.mean_ci(rec).to_dict(),
                    "mean_candidates": float(n_cand.mean()),
                }
                log(
                    f"  candidate recall {view}: {candidate[view]['recall']['mean']:.3f} "
                    f"({candidate[view]['mean_candidates']:.0f} candidates per query)"
                )
        t = timed("model_scoring", t)

    # --- metrics & report -------------------------------------------------------------------
    results = {}
    per_query_dump = {}
    for view in VIEWS:
        qs = views[view]
        if not len(qs):
            results[view] = {"queries": 0, "query_stats": qs.stats}
            continue
        pq = {name: per_query_metrics(r, qs, history) for name, r in rankings[view].items()}
        results[view] = {
            "queries": len(qs),
            "query_stats": qs.stats,
            **summarise(pq, baseline_names[view]),
        }
        if MODEL in pq:
            results[view]["ablations_vs_model"] = {
                name: {
                    m: M.paired_difference(pq[name][m], pq[MODEL][m]).to_dict() for m in pq[name]
                }
                for name in pq
                if name in ABLATIONS
            }
        if view in candidate:
            results[view]["candidate_recall"] = candidate[view]
        for name, metrics_ in pq.items():
            per_query_dump[f"{view}/{name}/ndcg"] = metrics_["ndcg"]
    timings["total"] = round(log.elapsed(), 2)

    report = {
        "protocol": {
            "k": K,
            "test_days": test_days,
            "valid_days": valid_days,
            "max_queries": max_queries,
            "seed": seed,
            "upsell_min_uplift": UPSELL_MIN_UPLIFT,
            "ci": "95%, normal approximation (mean +- 1.96 sd/sqrt(n))",
            "price": "median unit price of the item's training purchase lines",
        },
        "data": {
            "events": len(dataset.events),
            "catalog_items": len(dataset.catalog),
            **split.summary(),
            "warm_items": history.n_items,
            "warm_users": len(history.users),
        },
        "blend": {
            name: (
                {
                    "weights": r.blend.weights,
                    "validation_ndcg": r.validation_ndcg,
                    "validation_single_ndcg": r.single_ndcg,
                    "evaluations": r.evaluations,
                    "validation_queries": len(valid_views[name]),
                }
                if r is not None
                else None
            )
            for name, r in tuning.items()
        },
        "als_seconds": {
            "fit_period": round(base_fit.als_seconds, 2),
            "train_period": round(base.als_seconds, 2),
        },
        "views": results,
        "bundles": {label: str(out / "bundles" / bundle_dirs[label]) for label in bundles},
        "timings": timings,
    }
    from .report import targets, write_chart, write_markdown

    report["targets"] = targets(report) if model else {}
    (work / "report.json").write_text(json.dumps(_jsonable(report), indent=2))
    np.savez_compressed(work / "per_query_ndcg.npz", **per_query_dump)
    write_markdown(report, work / "report.md")
    write_chart(report, work / "report.png")
    return report


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return None if np.isnan(v) else v
    return x
