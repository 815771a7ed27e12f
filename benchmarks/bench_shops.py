"""Do the defaults hold on shops unlike Ta-Feng? The `xsell evaluate` protocol, default
`TrainConfig`, on seeded synthetic shops of other shapes (issue 3: "make the defaults
work for other shops (different category counts, basket sizes, price scales)").

Shops (`xsell.data.synthetic.generate_frames`, 150 days, seed 0):
  base    40 categories, 2,000 items, 3,000 shoppers, ~3.8 items bought per basket
  wide    400 categories, 20,000 items, 6,000 shoppers
  few     8 categories, 400 items, 3,000 shoppers
  big     base with baskets of ~8.3 items (anchors_mean 4)
  busy    base with 3x the events per shopper (longer histories)
  x1000   base with every price and cost x 1000 (a shop priced in yen, not euros)

For each shop and view it prints the model's NDCG@10, the best baseline's, their ratio
and the paired difference; for x1000 also the paired difference to base on the same
queries: the price features are ratios, logs and percentiles, so scaling every price
must not move the model beyond noise (float rounding of the scaled prices moves a few
tree splits; revenue scales by 1000).

Usage:
    python benchmarks/bench_shops.py --out DIR [--shops base wide ...] [--max-queries 3000]
        [--workers 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from xsell.data.contract import CleaningReport, Dataset
from xsell.data.synthetic import generate_frames
from xsell.evaluation.metrics import paired_difference
from xsell.evaluation.runner import MODEL, VIEWS, evaluate

BASE = {"n_users": 3000, "n_items": 2000, "n_categories": 40, "days": 150, "seed": 0}
SHOPS = {
    "base": (BASE, 1.0),
    "wide": ({**BASE, "n_users": 6000, "n_items": 20_000, "n_categories": 400}, 1.0),
    "few": ({**BASE, "n_items": 400, "n_categories": 8}, 1.0),
    "big": ({**BASE, "anchors_mean": 4.0}, 1.0),
    "busy": ({**BASE, "events_per_user": 120.0}, 1.0),
    "x1000": (BASE, 1000.0),
}


def shop(name: str) -> Dataset:
    params, price_scale = SHOPS[name]
    data = generate_frames(**params)
    events, catalog = data.events, data.catalog
    if price_scale != 1.0:
        events = events.assign(unit_price=events["unit_price"] * price_scale)
        catalog = catalog.assign(
            price=catalog["price"] * price_scale, cost=catalog["cost"] * price_scale
        )
    return Dataset(events, catalog, data.users, CleaningReport())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--out", type=Path, required=True, help="one report directory per shop under it"
    )
    ap.add_argument("--shops", nargs="*", choices=list(SHOPS), default=list(SHOPS))
    ap.add_argument("--max-queries", type=int, default=3000)
    ap.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes querying the model"
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    print(f"# bench_shops: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip

    summary: dict[str, dict] = {}
    for name in args.shops:
        t0 = time.perf_counter()
        data = shop(name)
        baskets = (
            data.events.loc[data.events["event_type"] == "purchase"]
            .groupby("basket_id")["item_id"]
            .nunique()
        )
        report = evaluate(data, args.out / name, max_queries=args.max_queries, seed=0, ablations=False,
                          progress=False, workers=args.workers)  # fmt: skip
        per_query = np.load(args.out / name / "per_query_ndcg.npz")
        row = {"events": len(data.events), "items_per_basket": float(baskets.mean()),
               "seconds": round(time.perf_counter() - t0, 1), "views": {}}  # fmt: skip
        for view in VIEWS:
            v = report["views"][view]
            if not v.get("queries"):
                continue
            best = v["best_baseline"]
            model, base = v["methods"][MODEL]["ndcg"]["mean"], v["methods"][best]["ndcg"]["mean"]
            d = paired_difference(
                per_query[f"{view}/{MODEL}/ndcg"], per_query[f"{view}/{best}/ndcg"]
            )
            row["views"][view] = {"queries": v["queries"], "model": model, "best_baseline": best,
                                  "baseline": base, "ratio": model / base if base else float("nan"),
                                  "paired": d.to_dict()}  # fmt: skip
        summary[name] = row
        print(f"\n## {name}: {row['events']:,} events, {row['items_per_basket']:.1f} items per basket, "
              f"{row['seconds']:.0f} s")  # fmt: skip
        print("| view | queries | model NDCG@10 | best baseline | ratio | paired difference |")
        print("|---|---|---|---|---|---|")
        for view, r in row["views"].items():
            p = r["paired"]
            print(f"| {view} | {r['queries']:,} | {r['model']:.4f} | {r['best_baseline']} {r['baseline']:.4f} "
                  f"| {r['ratio']:.2f}x | {p['mean']:+.4f} [{p['lo']:+.4f}, {p['hi']:+.4f}] |", flush=True)  # fmt: skip

    if "base" in summary and "x1000" in summary:
        print("\nx1000 minus base, model NDCG@10 on the same queries (expected: ~0):")
        a, b = (np.load(args.out / s / "per_query_ndcg.npz") for s in ("x1000", "base"))
        summary["x1000"]["vs_base"] = {}
        for view in VIEWS:
            key = f"{view}/{MODEL}/ndcg"
            if key in a and key in b and len(a[key]) == len(b[key]):
                d = paired_difference(a[key], b[key])
                summary["x1000"]["vs_base"][view] = d.to_dict()
                print(f"  {view}: {d.mean:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]")
            else:
                print(f"  {view}: not the same queries")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
