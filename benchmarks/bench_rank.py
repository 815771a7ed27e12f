"""In-process latency of `Ranker.rank` (no gRPC), in total and per stage.

Replays a request file (`xsell loadtest requests`, e.g. Ta-Feng test-period baskets
with --cart-size 3) through `Ranker.rank` on one thread, `--runs` times, and reports
the median over runs of p50 / p99 / mean of the total (wall clock, and the thread's
CPU time: on a shared host the latter leaves out time other jobs held the core) and
of each stage (retrieval, features, model, rules from `RankResult.timings`), plus the
candidates scored.

Baselines in the same process, each run back to back with the served ranker: the
same bundle without its neighbour table (Annoy searched per anchor) and with
LightGBM's `Booster.predict` instead of the lleaves-compiled model; the table ends
with each one's CPU p50 as a ratio to the served ranker. For each model it prints
the predictor used, the predict time on a median-sized request, and the largest
difference between the served scores and LightGBM's over real requests' rows.

--profile N     cProfile N calls and print the top functions (own time, cumulative).

Usage:
    python benchmarks/bench_rank.py --bundle DIR --requests FILE [--n 2000] [--runs 3]
        [--profile 500] [--json OUT]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

import numpy as np

STAGES = ("retrieval", "features", "model", "rules")


def load_requests(path: str, n: int):
    from xsell.clients.loadtest.mix import read_requests
    from xsell.server.convert import request_from_pb

    msgs = read_requests(path)[:n]
    return [request_from_pb(m) for m in msgs]


def pct(values, q) -> float:
    from xsell.clients.loadtest.stats import percentiles

    return percentiles(np.asarray(values) * 1e3, (q,))[q]


def time_one(ranker, requests) -> dict:
    """p50 / p99 / mean (ms) of total wall, total thread CPU and each stage, over one pass."""
    total, cpu, stages = [], [], {s: [] for s in STAGES}
    for r in requests:
        c0, t0 = time.thread_time(), time.perf_counter()
        result = ranker.rank(r)
        total.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
        for s in STAGES:
            stages[s].append(result.timings.get(s, 0.0))
    row = {"total": total, "total_cpu": cpu, **stages}
    return {k: (pct(v, 50.0), pct(v, 99.0), float(np.mean(v)) * 1e3) for k, v in row.items()}


def time_requests(rankers: dict, requests, runs: int) -> tuple[dict, list]:
    """Each variant once per run, back to back, so they share the host's load; medians over runs."""
    for ranker in rankers.values():
        for r in requests[: min(300, len(requests))]:  # warm caches and the Annoy pages
            ranker.rank(r)
    per_run: dict[str, list] = {name: [] for name in rankers}
    loadavg = []
    for _ in range(runs):
        for name, ranker in rankers.items():
            per_run[name].append(time_one(ranker, requests))
        loadavg.append(list(os.getloadavg()))
    out = {}
    for name, rows in per_run.items():
        # CPU time of the calling thread leaves out the time other jobs on the host held
        # the core, which wall-clock percentiles on a shared machine cannot
        med = {key: [statistics.median(run[key][k] for run in rows) for k in range(3)] for key in rows[0]}
        out[name] = {"ms_p50_p99_mean": med, "runs": rows}
    return out, loadavg


def candidate_counts(ranker, requests) -> dict:
    cross, up = [], []
    for r in requests[:300]:
        c, u = ranker.candidate_ids(r)
        cross.append(len(c))
        up.append(len(u))
    return {"cross_sell": float(np.mean(cross)), "up_sell": float(np.mean(up))}


def profile(ranker, requests, n: int) -> str:
    prof = cProfile.Profile()
    reqs = [requests[i % len(requests)] for i in range(n)]
    prof.enable()
    for r in reqs:
        ranker.rank(r)
    prof.disable()
    out = io.StringIO()
    st = pstats.Stats(prof, stream=out)
    st.sort_stats("tottime").print_stats(25)
    st.sort_stats("cumulative").print_stats(35)
    return out.getvalue()


def variants(ranker) -> dict:
    """The ranker as served, and the same bundle with one part swapped back, in one process.

    "annoy per request": no neighbour table, Annoy searched per anchor (bundles before the
    table); "LightGBM predict": `Booster.predict` instead of the lleaves-compiled model.
    """
    import copy
    import dataclasses

    from xsell.ranking import model as lgbm

    out = {"served": ranker}
    if ranker.arts.item_neighbours is not None:
        v = copy.copy(ranker)
        v.arts = dataclasses.replace(ranker.arts, item_neighbours=None)
        out["annoy per request"] = v
    if any(getattr(p, "kind", "") == "lleaves" for p in ranker.predictors.values()):
        v = copy.copy(ranker)
        v.predictors = {s: (lambda x, b=b: lgbm.predict(b, x)) for s, b in ranker.boosters.items()}
        out["LightGBM predict"] = v
    return out


def score_parity(ranker, requests) -> dict:
    """Max |compiled - LightGBM| over the feature rows of real requests, and predict timings."""
    from xsell.ranking import model as lgbm
    from xsell.ranking.features import PairBatch, feature_matrix
    from xsell.ranking.types import Strategy

    res = {}
    for strategy in (Strategy.CROSS_SELL, Strategy.UP_SELL):
        pred, booster = ranker.predictors[strategy], ranker.boosters[strategy]
        xs = []
        for r in requests[:200]:
            ctx = ranker._context(r)
            c = ranker._candidates(r, strategy, ctx)
            if len(c):
                batch = PairBatch(ranker.arts, c.items, c.anchors, ctx["user"], c.sources, c.score, len(ctx["anchors"]))
                xs.append(feature_matrix(batch, ranker.features))
        x_all = np.concatenate(xs)
        rows = int(np.median([len(x) for x in xs]))
        x = x_all[:rows]
        res[strategy.value] = {
            "kind": getattr(pred, "kind", "lightgbm"), "trees": booster.num_trees(), "rows": rows,
            "max_abs_diff": float(np.max(np.abs(pred(x_all) - lgbm.predict(booster, x_all)))),
            "predict_ms_served": _best_of(lambda p=pred, x=x: p(x)) * 1e3,
            "predict_ms_lightgbm": _best_of(lambda b=booster, x=x: lgbm.predict(b, x)) * 1e3,
        }  # fmt: skip
    return res


def _best_of(fn, repeat: int = 200) -> float:
    """Median of `repeat` timed calls (after 20 warm-up calls)."""
    for _ in range(20):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def table(res: dict) -> str:
    head = (
        f"bundle {res['version']}, {res['requests']} requests from {res['requests_file']}, "
        f"candidates scored: cross-sell {res['candidates']['cross_sell']:.0f}, "
        f"up-sell {res['candidates']['up_sell']:.0f}"
    )
    lines = [head, ""]
    heads = list(res["variants"].items())
    lines.append("| in-process, 1 thread | " + " | ".join(f"{n} p50 / p99 / mean ms" for n, _ in heads) + " |")
    lines.append("|---|" + "---:|" * len(heads))
    for key in ("total", "total_cpu", *STAGES):
        cells = ["{:.2f} / {:.2f} / {:.2f}".format(*h["ms_p50_p99_mean"][key]) for _, h in heads]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    base = res["variants"]["served"]["ms_p50_p99_mean"]["total_cpu"][0]
    lines.append("| total CPU p50 / served | " + " | ".join(
        f"{h['ms_p50_p99_mean']['total_cpu'][0] / base:.2f}x" for _, h in heads) + " |")  # fmt: skip
    lines.append("")
    lines.append("load average per run: " + ", ".join(str([round(x, 1) for x in r]) for r in res["loadavg"]))
    for name, m in res.get("models", {}).items():
        lines.append(f"{name}: {m['kind']}, {m['trees']} trees, {m['rows']} rows: predict {m['predict_ms_served']:.3f} ms "
                     f"(LightGBM {m['predict_ms_lightgbm']:.3f} ms), max |score - LightGBM| {m['max_abs_diff']:.1e}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bundle", required=True)
    p.add_argument("--requests", required=True, help="request file (xsell loadtest requests)")
    p.add_argument("--n", type=int, default=2000, help="requests per run")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--profile", type=int, default=0, help="cProfile this many calls")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    from xsell.ranking.ranker import Ranker

    ranker = Ranker.load(args.bundle)
    requests = load_requests(args.requests, args.n)
    timed, loadavg = time_requests(variants(ranker), requests, args.runs)
    res = {
        "version": ranker.version,
        "requests": len(requests),
        "requests_file": args.requests,
        "candidates": candidate_counts(ranker, requests),
        "variants": timed,
        "loadavg": loadavg,
        "models": score_parity(ranker, requests),
    }
    print(table(res))
    if args.profile:
        res["profile"] = profile(ranker, requests, args.profile)
        print(res["profile"])
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
