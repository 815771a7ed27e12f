"""The evaluation protocol with weekly retraining: what a shop that retrains every week gets.

DESIGN.md's protocol trains once, before a 28-day test period, and scores the whole month
with that model and those baselines. A shop in production retrains on a schedule. This
script cuts the test period into weeks and runs the unchanged protocol (`evaluate`) once
per week: the events up to the end of week k, a 7-day test period (that week), the 28 days
before it as the validation window. So every method, the baselines and their tuned blend
as much as the model, is refitted on everything before the week it is scored on, and never
sees that week. The per-query NDCG@10 of all weeks are then pooled per view.

    python benchmarks/bench_rolling.py --data DATA --out DIR [--weeks 4] [--max-queries 2000]

Prints, per view, the pooled NDCG@10 of the model and of each baseline, and the model's
ratio to the best of them; each week's report stays in DIR/week_K.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from xsell.data.contract import Dataset
from xsell.data.loaders import load_dataset
from xsell.evaluation.metrics import mean_ci, paired_difference
from xsell.evaluation.runner import MODEL, VIEWS, evaluate
from xsell.evaluation.split import time_split

DAY = 86_400


def pooled(reports: list[Path], view: str) -> dict[str, np.ndarray]:
    """Per method: the per-query NDCG@10 of every week's report, concatenated (methods
    that some week lacks, e.g. an untuned blend, are left out)."""
    arrays = [np.load(r / "per_query_ndcg.npz") for r in reports]
    names = [{k.split("/")[1] for k in a.files if k.startswith(f"{view}/")} for a in arrays]
    common = set.intersection(*names) if names else set()
    return {m: np.concatenate([a[f"{view}/{m}/ndcg"] for a in arrays]) for m in sorted(common)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--weeks", type=int, default=4, help="weeks of the last 28 days to score, one retrain each")
    ap.add_argument("--max-queries", type=int, default=2000, help="per view and week")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    find = {n: next((args.data / f"{n}.{e}" for e in ("parquet", "csv") if (args.data / f"{n}.{e}").exists()), None)
            for n in ("events", "catalog", "users")}  # fmt: skip
    ds = load_dataset(find["events"], find["catalog"], find["users"])
    ts = ds.events["timestamp"].to_numpy()
    month = time_split(ds.events, test_days=28, valid_days=28)  # the protocol's test period
    reports = []
    for k in range(args.weeks):
        end = month.test_start + (k + 1) * 7 * DAY  # week k: (test_start + 7k days, end]
        out = args.out / f"week_{k + 1}"
        if not (out / "report.json").exists():
            print(f"week {k + 1}: events up to {end}, retraining", flush=True)
            events = ds.events[ts <= end]
            evaluate(Dataset(events, ds.catalog, ds.users, ds.report), out, test_days=7, valid_days=28,
                     max_queries=args.max_queries, seed=args.seed, ablations=False, progress=False,
                     workers=args.workers)  # fmt: skip
        reports.append(out)
        r = json.loads((out / "report.json").read_text())
        print(f"week {k + 1}: test from {r['data']['test_start']}; " + ", ".join(
            f"{v} {r['views'][v]['queries']:,} queries, model {r['views'][v]['methods'][MODEL]['ndcg']['mean']:.4f} "
            f"vs {r['views'][v]['best_baseline']} {r['views'][v]['methods'][r['views'][v]['best_baseline']]['ndcg']['mean']:.4f}"
            for v in VIEWS if r["views"][v]["queries"]), flush=True)  # fmt: skip

    print(f"\nall {args.weeks} weeks pooled, NDCG@10 (each week scored by methods fitted before it):")
    print("| view | queries | model | best baseline | ratio | model - best (paired) |")
    print("|---|---|---|---|---|---|")
    for view in VIEWS:
        methods = pooled(reports, view)
        if MODEL not in methods:
            continue
        baselines = {m: v for m, v in methods.items() if m != MODEL and not m.startswith(MODEL)}
        best = max(baselines, key=lambda m: baselines[m].mean())
        m, b = mean_ci(methods[MODEL]), mean_ci(baselines[best])
        d = paired_difference(methods[MODEL], baselines[best])
        print(f"| {view} | {len(methods[MODEL]):,} | {m.mean:.4f} | {best} {b.mean:.4f} | {m.mean / b.mean:.2f}x | "
              f"{d.mean:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}] |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
