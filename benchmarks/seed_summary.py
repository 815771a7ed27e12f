"""Mean and spread of the model over several evaluation reports of the same queries.

One trained model is one draw: on Ta-Feng's test period, retraining with another seed
moved cross-sell NDCG@10 by -0.0036 (paired, significant), so a comparison of one seed
against one seed cannot tell a change from training noise. Run the evaluation once per
trainer seed on the same queries, then summarise:

    for s in 0 1 2; do
        python benchmarks/bench_quality.py --data DIR --no-ablations --max-queries 5000 \\
            --model-seed $s --out runs/seed$s
    done
    python benchmarks/seed_summary.py runs/seed0 runs/seed1 runs/seed2 [--vs other/seed0 other/seed1 ...]

Prints per view the model's NDCG@10 / revenue@10 per report, their mean and range, and
the mean as a ratio to the best baseline (the baselines do not depend on the trainer's
seed, which the script checks). With `--vs`, a second set of reports on the same
queries: the paired difference per seed, and over the seeds' mean per query.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from xsell.evaluation.metrics import paired_difference
from xsell.evaluation.runner import MODEL, VIEWS


def load(dirs: list[Path]) -> tuple[list[dict], list[np.lib.npyio.NpzFile]]:
    for d in dirs:  # a run still going (or a typo) is named, not a traceback
        missing = [f for f in ("report.json", "per_query_ndcg.npz") if not (d / f).is_file()]
        if missing:
            raise SystemExit(f"seed_summary: {d}: no {' or '.join(missing)} (not a finished report directory)")
    reports = [json.loads((d / "report.json").read_text()) for d in dirs]
    per_query = [np.load(d / "per_query_ndcg.npz") for d in dirs]
    return reports, per_query


def model_mean(per_query: list, view: str) -> np.ndarray:
    """Per query, the model's NDCG@10 averaged over the reports."""
    return np.mean([pq[f"{view}/{MODEL}/ndcg"] for pq in per_query], axis=0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "reports", nargs="+", type=Path, help="report directories (bench_quality --out)"
    )
    ap.add_argument(
        "--vs", nargs="*", type=Path, default=[], help="reports of another setting, same queries"
    )
    args = ap.parse_args(argv)
    if args.vs and len(args.vs) != len(args.reports):
        ap.error(
            f"--vs needs one report per seed: {len(args.reports)} reports, {len(args.vs)} given"
        )
    reports, per_query = load(args.reports)
    others, other = load(args.vs) if args.vs else ([], [])
    for view in VIEWS:
        views = [r["views"][view] for r in reports]
        if not all(v.get("queries") for v in views):
            continue
        best = views[0]["best_baseline"]
        # same queries <=> same count and the same best-baseline figure (seed-independent)
        same = {
            (v["queries"], round(v["methods"].get(best, {}).get("ndcg", {}).get("mean", -1.0), 12))
            for v in views + [r["views"][view] for r in others]
        }
        if len(same) != 1:
            print(
                f"{view}: the reports are not on the same queries ((queries, {best}): {sorted(same)})",
                file=sys.stderr,
            )
            return 2
        ndcg = [v["methods"][MODEL]["ndcg"]["mean"] for v in views]
        revenue = [v["methods"][MODEL]["revenue"]["mean"] for v in views]
        b = views[0]["methods"][best]["ndcg"]["mean"]
        print(f"{view} ({views[0]['queries']:,} queries): model NDCG@10 "
              f"{' / '.join(f'{x:.4f}' for x in ndcg)}, mean {np.mean(ndcg):.4f} (range {min(ndcg):.4f}-{max(ndcg):.4f})"
              f" = {np.mean(ndcg) / b:.3f}x {best} {b:.4f}; revenue@10 mean {np.mean(revenue):.1f}")  # fmt: skip
        if other:
            seeds = [paired_difference(a[f"{view}/{MODEL}/ndcg"], o[f"{view}/{MODEL}/ndcg"])
                     for a, o in zip(per_query, other)]  # fmt: skip
            mean = paired_difference(model_mean(per_query, view), model_mean(other, view))
            print(f"  minus --vs: per seed {', '.join(f'{d.mean:+.4f}' for d in seeds)}; "
                  f"seeds' mean per query {mean.mean:+.4f} [{mean.lo:+.4f}, {mean.hi:+.4f}]")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
