"""The offline pipeline: events + catalog -> one versioned model bundle.

1. Retrieval artifacts on the *history* (all but the last `label_days` days).
2. LambdaRank query groups from the *label window* (the last `label_days` days):
   cross-sell = (shopper, anchor) of a window basket, positives = the basket's other
   items of other categories; up-sell = (shopper, category), anchor = the shopper's
   last history purchase there, positives = pricier items of that category bought in
   the window. Candidates come from the same `retrieve` the server uses.
3. One LightGBM LambdaRank model per strategy, early-stopped on held-out shoppers.
4. Retrieval artifacts again on *all* the data (fresh statistics for serving), the
   Annoy index, the models and the manifest, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from xsell.retrieval.artifacts import DAY, Artifacts, RetrievalConfig, build_artifacts
from xsell.retrieval.candidates import CandidateConfig

from xsell.data.contract import EVENT_GRADES, Dataset
from xsell.errors import DataError

from .bundle import (
    COMPILED_FILES,
    MODEL_FILES,
    atomic_bundle_dir,
    check_out_dir,
    new_version,
    write_manifest,
)
from .features import (
    FEATURES_BY_NAME,
    PairBatch,
    check_feature_names,
    feature_matrix,
    feature_names,
)
from .model import ModelConfig, lambdarank_datasets, train_lambdarank
from .query import NO_FILTERS, retrieve, scope_for
from .types import Strategy


@dataclass(frozen=True)
class TrainConfig:
    """Everything `xsell train` can be told. Defaults suit shops of very different sizes."""

    label_days: int = 28  # the last N days of training data label the ranker's queries
    # Label windows of `label_days`, latest first, each with the history before it: more
    # query groups, and from more than one season, so the ranker does not learn one
    # window's mood (a holiday rush) as the rule. `label_windows` says which are kept.
    label_windows: int = 2
    max_queries: int = 12_000  # per strategy and label window; sampled with `seed`
    anchors_per_basket: int = 2  # cross-sell queries drawn from one basket
    upsell_min_uplift: float = 1.15  # a later purchase this much pricier counts as an accepted up-sell
    # graded up-sell labels: one grade more for each of these uplifts (ratios, so any price
    # scale) an accepted up-sell reaches. Off: without the test period (bench_quality
    # --before-test, 5,000 queries, paired against ungraded) (1.5, 2.5) gave +0.0063* and
    # +0.0007 up-sell NDCG@10 (2 seeds), (1.5,) +0.0037, (1.3, 2, 3) +0.0033; in the test
    # period (1.5, 2.5) gave -0.0030 (n.s.), uplift of hits 1.993 -> 2.007: no clear gain
    upsell_uplift_grades: tuple[float, ...] = ()
    valid_fraction: float = 0.15  # shoppers held out for early stopping
    # per query: the top half by retrieval score + a seeded random rest. Large: sampling
    # to 60 cost 0.02 NDCG@10 on Ta-Feng's cross-sell (the ranker must see the low-score tail).
    max_negatives: int = 400
    # ablations: e.g. ("price",) or ("complement",); "neighbours" is off with the KNN score;
    # "segment" (the users table's columns) is off: without the test period (bench_quality
    # --before-test, 5,000 queries, seeds 0 / 1, paired against no segment features) it gave
    # cross-sell -0.0014 / -0.0002, new to shopper +0.0013 / -0.0005, up-sell +0.0065* /
    # +0.0018 NDCG@10: no consistent gain (benchmarks/EXPERIMENTS.md); "trend" (the shopper's
    # recent price level against their overall one) is off: up-sell +0.0020 / +0.0050*,
    # cross-sell +0.0007 / +0.0012, new to shopper -0.0003 / -0.0013 there: the same
    # evidence as graded up-sell labels had, judged the same way
    disabled_feature_groups: tuple[str, ...] = ("neighbours", "segment", "trend")
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    compile_models: bool = True  # also write lleaves-compiled models when lleaves is installed
    seed: int = 0


MIN_QUERIES = 10  # query groups a strategy needs for its model (fewer: no model, retrieval order)


def data_fingerprint(data: Dataset) -> str:
    """Content hash of the rows that training reads (format-independent)."""
    h = hashlib.sha256()
    for frame, cols in (
        (data.events, ["user_id", "item_id", "timestamp", "event_type", "quantity", "unit_price", "basket_id"]),
        (data.catalog, ["item_id", "category", "price", "cost", "in_stock"]),
    ):
        h.update(pd.util.hash_pandas_object(frame[cols], index=False).to_numpy().tobytes())
    if data.users is not None:  # its segment columns are features
        h.update(pd.util.hash_pandas_object(data.users, index=False).to_numpy().tobytes())
    return h.hexdigest()


def _iso(ts: int) -> str:
    return pd.Timestamp(ts, unit="s", tz="UTC").isoformat()


class _Queries:
    """Accumulates query groups: feature rows, graded labels, group sizes, shopper ids."""

    def __init__(self, features, max_negatives: int, seed: int) -> None:
        self.features = features  # the feature table's entries, in the bundle's order
        self.max_negatives = max_negatives
        self.rng = np.random.default_rng(seed)
        self.x: list[np.ndarray] = []
        self.y: list[np.ndarray] = []
        self.groups: list[int] = []
        self.users: list[str] = []
        self.positives = 0  # relevant items of all queries
        self.reached = 0  # ... that retrieval put in front of the ranker
        self.n_features = len(features)

    def add(self, x: np.ndarray, y: np.ndarray, retrieval_score: np.ndarray, user_id: str, n_relevant: int) -> None:
        self.positives += n_relevant
        reached = int((y > 0).sum())
        self.reached += reached
        if reached == 0 or reached == len(y):  # no pairs to learn from
            return
        neg = np.flatnonzero(y == 0)
        if len(neg) > self.max_negatives:
            # candidates arrive in item order; the hard negatives are the ones retrieval liked
            hard = neg[np.argsort(-retrieval_score[neg], kind="stable")[: self.max_negatives // 2]]
            rest = np.setdiff1d(neg, hard)
            easy = self.rng.choice(rest, self.max_negatives - len(hard), replace=False)
            keep = np.sort(np.concatenate([np.flatnonzero(y > 0), hard, easy]))
            x, y = x[keep], y[keep]
        self.x.append(x.copy())
        self.y.append(y)
        self.groups.append(len(y))
        self.users.append(user_id)

    def split(self, valid_fraction: float, seed: int):
        """((x, y, groups) of training shoppers, the same of held-out shoppers). Consumes
        the rows: each query's block is released once copied, so the peak is one copy."""
        users = np.asarray(self.users, dtype=object)
        salt = str(seed).encode()
        is_valid = np.array([int(hashlib.md5(salt + u.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < valid_fraction
                             for u in users], dtype=bool)  # fmt: skip
        if is_valid.all() or not is_valid.any():
            is_valid = np.arange(len(users)) % 7 == 0
        parts = []
        for mask in (~is_valid, is_valid):
            idx = np.flatnonzero(mask)
            x = np.empty((sum(self.groups[i] for i in idx), self.n_features), dtype=np.float32)
            pos = 0
            for i in idx:
                x[pos : pos + self.groups[i]] = self.x[i]
                self.x[i] = None
                pos += self.groups[i]
            parts.append((
                x,
                np.concatenate([self.y[i] for i in idx]) if len(idx) else np.empty(0),
                np.asarray([self.groups[i] for i in idx], dtype=np.int64),
            ))  # fmt: skip
        self.x = []
        return parts


def _cross_sell_queries(arts: Artifacts, window: pd.DataFrame, cfg: TrainConfig, rng, q: _Queries) -> None:
    w = window.assign(item=arts.items.encode(window["item_id"].to_numpy()))
    w = w[w["item"] >= 0]
    w = w.assign(grade=w["event_type"].map(EVENT_GRADES), cat=arts.item_category[w["item"].to_numpy()])
    lines = w.groupby(["basket_id", "item"], sort=False).agg(
        grade=("grade", "max"), cat=("cat", "first"), user_id=("user_id", "first")
    ).reset_index()
    sizes = lines.groupby("basket_id")["item"].transform("size")
    lines = lines[sizes >= 2]
    # anchors: a seeded sample of up to `anchors_per_basket` lines per basket
    lines = lines.assign(r=rng.random(len(lines)))
    anchor_rows = lines[lines.groupby("basket_id")["r"].rank(method="first") <= cfg.anchors_per_basket]
    if len(anchor_rows) > cfg.max_queries:
        anchor_rows = anchor_rows.sample(cfg.max_queries, random_state=cfg.seed)
    # per basket: its line items, grades and categories as numpy slices
    lines = lines.sort_values("basket_id", kind="stable")
    starts = dict(zip(*np.unique(lines["basket_id"].to_numpy(), return_index=True)))
    l_item = lines["item"].to_numpy()
    l_grade = lines["grade"].to_numpy(dtype=np.float64)
    l_cat = lines["cat"].to_numpy()
    l_size = lines.groupby("basket_id", sort=False)["item"].transform("size").to_numpy()
    for row in anchor_rows.itertuples(index=False):
        lo = starts[row.basket_id]
        hi = lo + l_size[lo]
        rel = (l_cat[lo:hi] != row.cat) & (l_item[lo:hi] != row.item)
        n_rel = int(rel.sum())
        if n_rel == 0:
            continue
        a = np.asarray([row.item], dtype=np.int64)
        user = arts.users.get(row.user_id)
        c = retrieve(arts, Strategy.CROSS_SELL, a, user, scope_for(arts, a, user), NO_FILTERS, cfg.candidates)
        if len(c) == 0:
            q.positives += n_rel
            continue
        rel_items, rel_grades = l_item[lo:hi][rel], l_grade[lo:hi][rel]
        y = np.zeros(len(c), dtype=np.float64)
        pos = np.searchsorted(c.items, rel_items)  # candidates are sorted by item index
        pos_c = np.minimum(pos, len(c) - 1)
        hit = c.items[pos_c] == rel_items
        y[pos_c[hit]] = rel_grades[hit]
        x = feature_matrix(PairBatch(arts, c.items, c.anchors, user, c.sources, c.score, 1), q.features)
        q.add(x, y, c.score, row.user_id, n_rel)


def upsell_labels(accepted: np.ndarray, uplift: np.ndarray, grades: tuple[float, ...]) -> np.ndarray:
    """LambdaRank labels of up-sell candidates: 0 unless accepted (bought), else the
    purchase grade plus one for each of `grades` the candidate's price uplift reaches, so
    the ranker learns to prefer the bigger trade-up among items the shopper would take."""
    y = accepted.astype(np.float64) * EVENT_GRADES["purchase"]
    for threshold in grades:
        y += accepted & (uplift >= threshold)
    return y


def _up_sell_queries(arts: Artifacts, history: pd.DataFrame, window: pd.DataFrame, cfg: TrainConfig, q: _Queries) -> None:
    hist = history[history["event_type"] == "purchase"]
    hist = hist.assign(item=arts.items.encode(hist["item_id"].to_numpy()))
    hist = hist[hist["item"] >= 0]
    hist = hist.assign(cat=arts.item_category[hist["item"].to_numpy()])
    last = hist.sort_values("timestamp", kind="stable").groupby(["user_id", "cat"]).tail(1)[["user_id", "cat", "item"]]
    win = window[window["event_type"] == "purchase"]
    win = win.assign(item=arts.items.encode(win["item_id"].to_numpy()))
    win = win[win["item"] >= 0]
    win = win.assign(cat=arts.item_category[win["item"].to_numpy()])
    pairs = win[["user_id", "cat", "item"]].drop_duplicates().merge(last, on=["user_id", "cat"], suffixes=("", "_anchor"))
    uplift = arts.price[pairs["item"].to_numpy()] / np.maximum(arts.price[pairs["item_anchor"].to_numpy()], 1e-9)
    pairs = pairs[uplift >= cfg.upsell_min_uplift]
    groups = list(pairs.groupby(["user_id", "cat", "item_anchor"], sort=False))
    if len(groups) > cfg.max_queries:
        pick = np.random.default_rng(cfg.seed).choice(len(groups), cfg.max_queries, replace=False)
        groups = [groups[i] for i in np.sort(pick)]
    for (user_id, _, anchor), g in groups:
        a = np.asarray([anchor], dtype=np.int64)
        user = arts.users.get(user_id)
        c = retrieve(arts, Strategy.UP_SELL, a, user, scope_for(arts, a, user), NO_FILTERS, cfg.candidates)
        if len(c) == 0:
            q.positives += len(g)
            continue
        uplift = arts.price[c.items] / max(float(arts.price[anchor]), 1e-9)
        y = upsell_labels(np.isin(c.items, g["item"].to_numpy()), uplift, cfg.upsell_uplift_grades)
        x = feature_matrix(PairBatch(arts, c.items, c.anchors, user, c.sources, c.score, 1), q.features)
        q.add(x, y, c.score, user_id, len(g))


def label_windows(timestamps: np.ndarray, label_days: int, count: int) -> list[int]:
    """Start (epoch s, a day boundary) of up to `count` consecutive label windows of
    `label_days` calendar days ending with the last day of `timestamps`, latest first.
    The latest needs some history before it; an earlier one at least `label_days` days
    of it, so its statistics are on a scale like the latest window's."""
    end_day = (int(timestamps.max()) // DAY) + 1  # the day after the last one
    first = int(timestamps.min())
    starts = [(end_day - (k + 1) * label_days) * DAY for k in range(count)]
    return [s for k, s in enumerate(starts) if first < s and (k == 0 or first <= s - label_days * DAY)]


def train_bundle(
    data: Dataset,
    out_dir,
    config: TrainConfig | None = None,
    *,
    until: int | None = None,
    overwrite: bool = False,
    log=print,
) -> Path:
    """Train on events before `until` (epoch s; default: all) and write a bundle to out_dir."""
    return train_bundles(data, {"": (out_dir, config or TrainConfig())}, until=until, overwrite=overwrite,
                         log=log)[""]  # fmt: skip


def train_bundles(
    data: Dataset,
    targets: dict[str, tuple],
    *,
    until: int | None = None,
    overwrite: bool = False,
    log=print,
) -> dict[str, Path]:
    """Several bundles from one data set whose configs differ only in
    `disabled_feature_groups` (an evaluation's model and its ablations): `targets` maps a
    label to (out_dir, TrainConfig). The label windows' retrieval artifacts, their query
    groups (with every feature any of them uses) and the serving artifacts are built once;
    each bundle's boosters train on its own feature columns of the same rows. Each bundle
    is what `train_bundle` alone writes for its config (a test compares the models)."""
    if not targets:
        raise ValueError("no bundle to train")
    for out, _ in targets.values():  # before the training, not after it
        check_out_dir(Path(out), overwrite=overwrite)
    cfgs = {label: cfg for label, (_, cfg) in targets.items()}
    cfg = next(iter(cfgs.values()))
    for label, other in cfgs.items():
        if replace(other, disabled_feature_groups=cfg.disabled_feature_groups) != cfg:
            raise ValueError(f"bundle '{label}': configs trained together may differ only in disabled_feature_groups")
    variant_names = {label: feature_names(c.disabled_feature_groups) for label, c in cfgs.items()}
    used = set().union(*variant_names.values())
    names = [n for n in feature_names(()) if n in used]  # every feature any bundle uses, table order
    # the users table feeds the segment features only: without them no segment table is built
    uses_segments = any(FEATURES_BY_NAME[n].group == "segment" for n in names)
    segment_users = data.users if uses_segments else None
    if uses_segments and data.users is None:
        log("WARNING: the segment features are on but no users table was given (--users): "
            "they will be unknown (NaN) in every row, and the model cannot use them")
    t_start = time.perf_counter()
    stages: dict[str, float] = {}

    def stage(name: str, t0: float) -> float:
        now = time.perf_counter()
        stages[name] = round(now - t0, 2)
        log(f"[{now - t_start:6.1f}s] {name} done ({now - t0:.1f}s)")
        return now

    events = data.events
    if until is not None:
        events = events[events["timestamp"].to_numpy() < until]
    if events.empty:
        # the cleaning report goes into the bundle, which is not written: give its reasons here
        drops = data.report.drops("events")
        raise DataError("no events to train on" + (f" before --until {_iso(until)}" if until is not None else "")
                        + (f" (rows dropped on loading: {drops})" if drops else ""),
                        column="timestamp" if until is not None else None)  # fmt: skip
    data = Dataset(events, data.catalog, data.users, data.report)
    end = int(events["timestamp"].max()) + 1
    ts = events["timestamp"].to_numpy()
    starts = label_windows(ts, cfg.label_days, cfg.label_windows)
    if not starts:
        span = (int(ts.max()) - int(ts.min())) / DAY
        raise DataError(f"the events span {span:.1f} days: need events both before and within the last "
                        f"{cfg.label_days} days (--label-days) to train the ranker", column="timestamp")  # fmt: skip
    label_start = starts[0]
    features = check_feature_names(names)
    rng = np.random.default_rng(cfg.seed)
    log(f"training on {len(events):,} events: {len(starts)} label window(s) of {cfg.label_days} days, "
        f"{len(names)} features" + (f", {len(targets)} bundles" if len(targets) > 1 else ""))  # fmt: skip

    t = time.perf_counter()
    cross = _Queries(features, cfg.max_negatives, cfg.seed)
    up = _Queries(features, cfg.max_negatives, cfg.seed)
    per_window = []  # what each label window gave, for the manifest
    for k, start in enumerate(starts):
        history = events[ts < start]
        window = events[(ts >= start) & (ts < start + cfg.label_days * DAY)]
        log(f"label window {k + 1}: {len(window):,} events, history {len(history):,} events")
        with tempfile.TemporaryDirectory(prefix="xsell-hist-") as tmp:
            hist_arts = build_artifacts(
                Dataset(history, data.catalog, segment_users, data.report), until=start,
                config=cfg.retrieval, ann_path=Path(tmp) / "ann.idx", log=log,
            )  # fmt: skip
            t = stage(f"history artifacts {k + 1}", t)
            n_cross, n_up = len(cross.groups), len(up.groups)
            _cross_sell_queries(hist_arts, window, cfg, rng, cross)
            _up_sell_queries(hist_arts, history, window, cfg, up)
            hist_arts.ann.unload()
        t = stage(f"query groups {k + 1}", t)
        per_window.append({"start": start, "events": len(window), "history_events": len(history),
                           "cross_sell_queries": len(cross.groups) - n_cross, "up_sell_queries": len(up.groups) - n_up})
        log(f"  cross-sell: {per_window[-1]['cross_sell_queries']:,} queries, "
            f"up-sell: {per_window[-1]['up_sell_queries']:,} queries")
    log(f"  cross-sell: {len(cross.groups):,} queries, candidate recall {cross.reached / max(cross.positives, 1):.3f}")
    log(f"  up-sell:    {len(up.groups):,} queries, candidate recall {up.reached / max(up.positives, 1):.3f}")

    groups = {Strategy.CROSS_SELL: cross, Strategy.UP_SELL: up}
    needs = {  # what one query is made of (module docstring), for the error
        Strategy.CROSS_SELL: "a label-window basket with items of two categories",
        Strategy.UP_SELL: f"a shopper who bought in a category before a label window and an item "
                          f"{cfg.upsell_min_uplift:g}x pricier or more there within it",
    }  # fmt: skip
    short = {s: f"only {len(q.groups)} usable {s.value} queries in the label windows ({MIN_QUERIES} needed; "
                f"a query needs {needs[s]})" for s, q in groups.items() if len(q.groups) < MIN_QUERIES}  # fmt: skip
    if len(short) == len(groups):
        raise DataError("; ".join(short.values()) + ": too little data (or label windows too short) to train the ranker")
    for strategy, why in short.items():
        # a small or young shop still gets the other strategy's model; this one's answers
        # follow the retrieval order, and each answer says so (Ranker.rank)
        log(f"WARNING: no {strategy.value} model: {why}; its answers will follow the retrieval order")
        del groups[strategy]
    untrained = {s.value: why for s, why in short.items()}
    recall = {s: q.reached / max(q.positives, 1) for s, q in groups.items()}
    rows = {s: _SharedRows(q, len(targets), cfg.valid_fraction, cfg.seed) for s, q in groups.items()}
    del cross, up, groups, short

    fingerprint = data_fingerprint(data)
    # LightGBM releases the GIL while it trains (ctypes calls), so the boosters train on
    # worker threads while this one builds the serving artifacts: on 2 cores the stage
    # takes about as long as the cross-sell booster alone. One LightGBM thread each:
    # deterministic, and the same models as training them one after the other.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="lambdarank") as pool, ExitStack() as dirs:
        fits: dict[str, dict] = {label: {} for label in targets}
        for label in targets:
            cols = None if variant_names[label] == names else [names.index(n) for n in variant_names[label]]
            for strategy, shared in rows.items():
                fits[label][strategy] = pool.submit(_fit_ranker, strategy, shared, cols, cfgs[label],
                                                    variant_names[label], recall[strategy])  # fmt: skip
        del rows
        tmps = {label: dirs.enter_context(atomic_bundle_dir(Path(out), overwrite=overwrite))
                for label, (out, _) in targets.items()}  # fmt: skip
        first = next(iter(tmps.values()))
        arts = build_artifacts(Dataset(events, data.catalog, segment_users, data.report), until=end,
                               config=cfg.retrieval, ann_path=first / "ann.idx", log=log)  # fmt: skip
        arts.ann.unload()
        arts.save(first)
        data.report.write(first / "cleaning_report.json")
        for tmp in list(tmps.values())[1:]:
            for f in first.iterdir():
                shutil.copy2(f, tmp / f.name)
        stage("serving artifacts", t)
        for label, tmp in tmps.items():
            vcfg, vstages, metrics = cfgs[label], dict(stages), {}
            for strategy, fit in fits[label].items():
                booster, best, fit_metrics = fit.result()
                metrics.update(fit_metrics)
                booster.save_model(str(tmp / MODEL_FILES[strategy.value]), num_iteration=best)
            t1 = time.perf_counter()
            vstages["LambdaRank"] = round(t1 - t, 2)
            log(f"[{t1 - t_start:6.1f}s] LambdaRank done{f' ({label})' if len(targets) > 1 else ''}")
            for strategy in fits[label]:
                if vcfg.compile_models:
                    _compile(tmp / MODEL_FILES[strategy.value], tmp / COMPILED_FILES[strategy.value], log)
            vstages["compile"] = round(time.perf_counter() - t1, 2)
            vstages["total"] = round(time.perf_counter() - t_start, 2)
            manifest = write_manifest(tmp, {
                "version": new_version(fingerprint),
                "data_fingerprint": fingerprint,
                "feature_names": variant_names[label],
                "metrics": metrics,
                "untrained_models": untrained,
                "num_items": len(arts.items), "num_users": len(arts.users),
                "data": {"events": len(events), "first_timestamp": int(events["timestamp"].min()), "end_timestamp": end,
                         "label_start": label_start, "label_windows": per_window},
                "stage_seconds": vstages,
                "train_config": {k: v for k, v in asdict(vcfg).items() if k not in ("retrieval", "candidates", "model")},
                "retrieval_config": asdict(vcfg.retrieval),
                "candidate_config": asdict(vcfg.candidates),
                "model_config": asdict(vcfg.model),
            })  # fmt: skip
            _summary(manifest, log)
    return {label: Path(out) for label, (out, _) in targets.items()}


class _SharedRows:
    """A strategy's query rows for `users` boosters: split by shopper (training / held
    out) by the first to take them, on its worker thread; the last to take them drops
    this holder's reference, so the float rows go once that booster has binned them (the
    executor keeps a task's arguments until it ends: this holder, not the arrays)."""

    def __init__(self, queries: _Queries, users: int, valid_fraction: float, seed: int) -> None:
        self._queries, self._split = queries, (valid_fraction, seed)
        self._rows, self._left, self._lock = None, users, threading.Lock()

    def take(self):
        """((x, y, groups) of the training shoppers, the same of the held-out ones)."""
        with self._lock:
            if self._queries is not None:
                self._rows, self._queries = self._queries.split(*self._split), None  # consumes the groups
            rows, self._left = self._rows, self._left - 1
            if self._left == 0:
                self._rows = None
        return rows


def _fit_ranker(
    strategy: Strategy, shared: _SharedRows, cols, cfg: TrainConfig, names: list[str], recall: float
):
    """One LambdaRank booster on a strategy's query rows, using the feature columns `cols`
    (None: all): (booster, best iteration, manifest metrics)."""
    (xt, yt, gt), (xv, yv, gv) = shared.take()
    if cols is not None:
        xt, xv = xt[:, cols], xv[:, cols]
    train, valid = lambdarank_datasets(xt, yt, gt, xv, yv, gv, names, cfg.model)
    del xt, xv  # the datasets hold binned copies: the float rows go before the boosting
    booster, info = train_lambdarank(train, valid, cfg.model)
    key = strategy.value
    metrics = {
        f"{key}_valid_ndcg@10": info["valid_ndcg@10"], f"{key}_best_iteration": info["best_iteration"],
        f"{key}_train_queries": len(gt), f"{key}_valid_queries": len(gv), f"{key}_rows": int(len(yt) + len(yv)),
        f"{key}_candidate_recall": recall,
    }  # fmt: skip
    return booster, info["best_iteration"], metrics


def _compile(model_txt: Path, out: Path, log) -> None:
    """lleaves-compile a model for faster serving; skipped with a line without lleaves, and
    with a warning when lleaves fails on it (the bundle is still whole: see compiled.py)."""
    try:
        from .compiled import compile_booster

        compile_booster(model_txt, out)
        log(f"  compiled {model_txt.name} -> {out.name}")
    except ImportError:
        log(f"  {model_txt.name}: not compiled (pip install 'xsell[fast]' for lleaves)")
    except Exception as exc:  # noqa: BLE001 - an lleaves/LLVM failure: the bundle serves with LightGBM
        from .compiled import sidecar_path

        for leftover in (out, sidecar_path(out)):
            leftover.unlink(missing_ok=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log(f"  WARNING {model_txt.name}: not compiled ({first}); it is served with LightGBM's predict")


def _summary(manifest: dict, log) -> None:
    m = manifest["metrics"]
    log("")
    log(f"bundle {manifest['version']}: {manifest['num_items']:,} items, {manifest['num_users']:,} users")
    log(f"{'strategy':<11} {'queries':>8} {'rows':>10} {'cand.recall':>11} {'valid ndcg@10':>13} {'trees':>6}")
    for s in ("cross_sell", "up_sell"):
        if s in manifest.get("untrained_models", {}):
            log(f"{s:<11} no model: {manifest['untrained_models'][s]}")
            continue
        log(f"{s:<11} {m[f'{s}_train_queries'] + m[f'{s}_valid_queries']:>8,} {m[f'{s}_rows']:>10,} "
            f"{m[f'{s}_candidate_recall']:>11.3f} {m[f'{s}_valid_ndcg@10']:>13.4f} {m[f'{s}_best_iteration']:>6}")  # fmt: skip
    log("stage seconds: " + json.dumps(manifest["stage_seconds"]))
