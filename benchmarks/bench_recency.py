"""Does recent demand forecast the test period's? Popularity over the last N days.

The evaluation's own queries (`build_views`, the given --max-queries and --seed) are
ranked, under each view's candidate rule, by the number of baskets holding each item in
the last N days before the test period, and by all-time popularity mixed with the last
week's (log counts). With `--before-test` the test period is the month before the real
one (as in `bench_quality.py --before-test`), so the real test period is never read.

    python benchmarks/bench_recency.py --data DATA [--before-test]

Prints NDCG@10 per view; the "all time" row is the evaluation's popularity baseline.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from bench_ceiling import popularity_rankings

from xsell.data.loaders import load_dataset
from xsell.evaluation.queries import build_history
from xsell.evaluation.runner import VIEWS, build_views, per_query_metrics
from xsell.evaluation.split import time_split

DAY = 86_400


def baskets_since(events: pd.DataFrame, history, since: int) -> np.ndarray:
    """Per warm item: purchase baskets holding it with a timestamp > `since`."""
    buys = events[(events["event_type"] == "purchase").to_numpy() & (events["timestamp"].to_numpy() > since)]
    item = history.items.get_indexer(buys["item_id"])
    lines = pd.DataFrame({"b": buys["basket_id"].to_numpy(), "i": item})[item >= 0].drop_duplicates()
    return np.bincount(lines["i"].to_numpy(), minlength=history.n_items).astype(np.float64)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--max-queries", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-days", type=int, default=28)
    ap.add_argument("--before-test", action="store_true", help="drop the test period first (see bench_quality.py)")
    ap.add_argument("--week-weight", type=float, default=0.25, help="weight of log(last 7 days) in the mix")
    args = ap.parse_args(argv)
    find = {n: next((args.data / f"{n}.{e}" for e in ("parquet", "csv") if (args.data / f"{n}.{e}").exists()), None)
            for n in ("events", "catalog")}  # fmt: skip
    ds = load_dataset(find["events"], find["catalog"])
    events = ds.events
    split = time_split(events, test_days=args.test_days, valid_days=args.test_days)
    if args.before_test:
        split = time_split(split.train, test_days=args.test_days, valid_days=args.test_days)
    train = split.train
    history = build_history(train, ds.catalog)
    views = build_views(split.test, train, history, max_queries=args.max_queries, seed=args.seed)
    end = split.test_start
    all_time = baskets_since(train, history, -1)
    tie = 1e-6 * all_time / max(all_time.max(), 1)  # ties broken by all-time popularity
    week = baskets_since(train, history, end - 7 * DAY)
    scores = {f"last {n} days": baskets_since(train, history, end - n * DAY) + tie for n in (3, 7, 14, 28)}
    scores["all time"] = all_time
    scores[f"all time + {args.week_weight:g} x last 7 days (log)"] = np.log1p(all_time) + args.week_weight * np.log1p(week)
    print(f"test period from {split.summary()['test_start']}; queries "
          + ", ".join(f"{v} {len(views[v]):,}" for v in VIEWS))  # fmt: skip
    print("\n| popularity over | " + " | ".join(VIEWS) + " |")
    print("|---|" + "---|" * len(VIEWS))
    for name, s in scores.items():
        both = np.stack([s, s])  # popularity_rankings takes one row per shopper half
        cells = []
        for view in VIEWS:
            qs = views[view]
            ranked = popularity_rankings(qs, history, both, np.zeros(len(qs), dtype=np.int64))
            cells.append(f"{per_query_metrics(ranked, qs, history)['ndcg'].mean():.4f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
