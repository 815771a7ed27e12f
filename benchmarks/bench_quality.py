"""Ranking quality on Ta-Feng: the full `evaluate` protocol, compared with the issue's
reference baseline numbers (issue 3, "What we measured").

    xsell data tafeng --out DATA_DIR
    python benchmarks/bench_quality.py --data DATA_DIR --out REPORT_DIR [--no-model] [--no-ablations]
        [--label-days N] [--label-windows N] [--anchors-per-basket N] [--upsell-uplift-grades T ...]
        [--before-test] [--compare DIR]

Writes REPORT_DIR/report.{md,json,png} and prints a table: each reference figure, ours with
its 95% interval, and whether the reference falls inside the interval.

Trainer settings to compare (`--label-days`, `--label-windows`, `--anchors-per-basket`,
`--upsell-uplift-grades`)
are best chosen without the test period: `--before-test` drops the last `--test-days`
days of events first, so the evaluation's test period is the full data's validation
window and the real test period is never read. `--compare DIR` prints the paired
per-query NDCG@10 difference of the model to an earlier report on the same queries.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from xsell.ranking.train import TrainConfig

from xsell.data.contract import Dataset
from xsell.data.loaders import load_dataset
from xsell.evaluation.metrics import paired_difference
from xsell.evaluation.runner import RESTRICTED, evaluate
from xsell.evaluation.split import time_split

# (view, method label in the report, metric) -> the reference value
REFERENCE = {
    ("cross_sell", "popularity", "ndcg"): 0.046,
    ("cross_sell", "co-purchase", "ndcg"): 0.051,
    ("cross_sell", "ALS user-item", "ndcg"): 0.057,
    ("cross_sell", "buy again", "ndcg"): 0.099,
    ("cross_sell", "tuned blend", "ndcg"): 0.100,
    ("cross_sell", "tuned blend", "revenue"): 43.1,
    ("cross_sell_new", "popularity", "ndcg"): 0.038,
    ("cross_sell_new", "co-purchase", "ndcg"): 0.040,
    ("cross_sell_new", "tuned blend", "ndcg"): 0.037,
    ("up_sell", "random", "ndcg"): 0.246,
    ("up_sell", "popularity", "ndcg"): 0.426,
    ("up_sell", "buy again", "ndcg"): 0.464,
    ("up_sell", "tuned blend", "ndcg"): 0.474,
    ("up_sell", "tuned blend" + RESTRICTED, "ndcg"): 0.514,
}
REFERENCE_QUERIES = {"cross_sell": 20_000, "up_sell": 9_333}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data", type=Path, help="directory with events/catalog/users (.parquet or .csv)"
    )
    ap.add_argument("--events", type=Path)
    ap.add_argument("--catalog", type=Path)
    ap.add_argument("--users", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-queries", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-seed", type=int, default=None,
                    help="seed of the trainer's sampling, ALS and LightGBM (default: --seed for the sampling, "
                         "0 for ALS and LightGBM): another model on the same queries, i.e. the training noise")
    ap.add_argument("--no-model", action="store_true", help="baselines only")
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes querying the model"
    )
    ap.add_argument("--test-days", type=int, default=28)
    ap.add_argument("--label-days", type=int, default=None, help="TrainConfig.label_days (default: --test-days)")
    ap.add_argument("--label-windows", type=int, default=TrainConfig.label_windows)
    ap.add_argument("--anchors-per-basket", type=int, default=TrainConfig.anchors_per_basket)
    ap.add_argument("--upsell-uplift-grades", type=float, nargs="*", default=list(TrainConfig.upsell_uplift_grades),
                    help="TrainConfig.upsell_uplift_grades: an accepted up-sell earns a grade more per uplift reached")  # fmt: skip
    ap.add_argument("--disable-groups", nargs="*", default=list(TrainConfig.disabled_feature_groups),
                    help=f"feature groups left out of the model (default {list(TrainConfig.disabled_feature_groups)})")
    ap.add_argument("--candidates", nargs="*", default=[], metavar="FIELD=N",
                    help="CandidateConfig fields to change, e.g. popular_k=200 max_candidates=300")
    ap.add_argument("--model", nargs="*", default=[], metavar="FIELD=V",
                    help="ModelConfig (LambdaRank) fields to change, e.g. num_leaves=63 min_data_in_leaf=20")
    ap.add_argument("--before-test", action="store_true",
                    help="evaluate on the events before the last --test-days days (the test period is never read)")
    ap.add_argument("--compare", type=Path, help="an earlier report directory on the same queries")
    args = ap.parse_args(argv)
    paths = {name: getattr(args, name) for name in ("events", "catalog", "users")}
    if args.data:
        for name, given in paths.items():
            if given is None:
                found = [args.data / f"{name}.{ext}" for ext in ("parquet", "csv")]
                paths[name] = next((f for f in found if f.exists()), None)
    if paths["events"] is None or paths["catalog"] is None:
        ap.error("give --data DIR (holding events/catalog[/users]) or --events and --catalog")

    print(f"# bench_quality: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}", flush=True)  # fmt: skip
    dataset = load_dataset(paths["events"], paths["catalog"], paths["users"])
    if args.before_test:
        # the evaluator's own split, so "before the test period" means what it means there
        split = time_split(dataset.events, test_days=args.test_days, valid_days=args.test_days)
        dataset = Dataset(split.train, dataset.catalog, dataset.users, dataset.report)
        print(f"--before-test: {len(split.train):,} events up to {split.summary()['test_start']} "
              "(the test period is not read)")  # fmt: skip
    config = TrainConfig(
        seed=args.seed,
        label_days=args.label_days or args.test_days, label_windows=args.label_windows,
        anchors_per_basket=args.anchors_per_basket, upsell_uplift_grades=tuple(args.upsell_uplift_grades),
        disabled_feature_groups=tuple(args.disable_groups),
    )  # fmt: skip
    if args.candidates:
        try:
            changes = {k: int(v) for k, v in (c.split("=", 1) for c in args.candidates)}
            config = replace(config, candidates=replace(config.candidates, **changes))
        except (ValueError, TypeError) as exc:
            ap.error(f"--candidates: {exc} (give FIELD=N with FIELD of CandidateConfig)")
    if args.model:
        try:
            fields = {f.name: f.type for f in dataclasses.fields(config.model)}
            changes = {}
            for c in args.model:
                k, v = c.split("=", 1)
                changes[k] = int(v) if fields[k] in ("int", int) else float(v)
            config = replace(config, model=replace(config.model, **changes))
        except (ValueError, KeyError) as exc:
            ap.error(f"--model: {exc} (give FIELD=V with FIELD of ModelConfig)")
    if args.model_seed is not None:
        s = args.model_seed
        config = replace(config, seed=s, model=replace(config.model, seed=s), retrieval=replace(config.retrieval, seed=s))
    report = evaluate(
        dataset, args.out, test_days=args.test_days, valid_days=args.test_days, max_queries=args.max_queries,
        seed=args.seed, config=config, model=not args.no_model, ablations=not args.no_ablations,
        workers=args.workers,
    )  # fmt: skip

    print()
    print("| view | method | metric | reference | ours [95% CI] | reference inside CI |")
    print("|---|---|---|---|---|---|")
    for (view, method, metric), ref in REFERENCE.items():
        est = report["views"][view].get("methods", {}).get(method, {}).get(metric)
        if est is None:
            print(f"| {view} | {method} | {metric} | {ref} | missing | - |")
            continue
        inside = est["lo"] <= ref <= est["hi"]
        d = 1 if metric == "revenue" else 4
        print(f"| {view} | {method} | {metric} | {ref} | {est['mean']:.{d}f} [{est['lo']:.{d}f}, {est['hi']:.{d}f}] "
              f"| {'yes' if inside else 'NO'} |")  # fmt: skip
    for view, n in REFERENCE_QUERIES.items():
        print(f"queries {view}: reference {n:,}, ours {report['views'][view]['queries']:,}")
    for view in ("cross_sell", "cross_sell_new", "up_sell"):
        r = report["views"][view]
        if "model" in r.get("methods", {}):
            m, b = r["methods"]["model"]["ndcg"], r["methods"][r["best_baseline"]]["ndcg"]
            print(f"model {view}: NDCG@10 {m['mean']:.4f} vs best baseline {r['best_baseline']} {b['mean']:.4f} "
                  f"({m['mean'] / b['mean']:.2f}x)")  # fmt: skip
    for name, t in report.get("targets", {}).items():
        print(f"target {'met' if t['met'] else 'NOT met'}: {name}")
    print(f"timings: {report['timings']}")
    if args.compare:
        _compare(args.compare, args.out)
    return 0


def _compare(before: Path, after: Path) -> None:
    """Paired NDCG@10 difference of the model, per view, between two reports' queries."""
    a, b = np.load(before / "per_query_ndcg.npz"), np.load(after / "per_query_ndcg.npz")
    print(f"\nmodel NDCG@10, {after} minus {before} (paired, same queries):")
    for view in ("cross_sell", "cross_sell_new", "up_sell"):
        key = f"{view}/model/ndcg"
        if key not in a.files or key not in b.files or len(a[key]) != len(b[key]):
            print(f"  {view}: not comparable (no model or different queries)")
            continue
        d = paired_difference(b[key], a[key])
        print(f"  {view}: {a[key].mean():.4f} -> {b[key].mean():.4f}, {d.mean:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]")


if __name__ == "__main__":
    sys.exit(main())
