"""In-process latency of `Ranker.rank` (no gRPC), in total and per stage.

Replays a request file (`xsell loadtest requests`, e.g. Ta-Feng test-period baskets
with --cart-size 3) through `Ranker.rank` on one thread, `--runs` times, and reports
the median over runs of p50 / p99 of the total (wall clock, and the thread's CPU
time: on a shared host the latter leaves out time other jobs held the core) and of
each stage (retrieval, features, model, rules from `RankResult.timings`, wall clock),
plus the candidates scored.

--compiled DIR  also runs with the LightGBM models compiled by lleaves
                (`xsell.ranking.compiled`; compiled into DIR once, compile time
                reported) and checks the scores equal LightGBM's. The benchmark swaps
                the ranker's boosters for a shim; serving does not use it yet.
--profile N     cProfile N calls and print the top functions (own time, cumulative).

Usage:
    python benchmarks/bench_rank.py --bundle DIR --requests FILE [--n 2000] [--runs 3]
        [--compiled DIR] [--profile 500] [--json OUT]
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


def time_requests(ranker, requests, runs: int) -> dict:
    for r in requests[: min(300, len(requests))]:  # warm caches and the Annoy pages
        ranker.rank(r)
    per_run = []
    for _ in range(runs):
        total, cpu, stages = [], [], {s: [] for s in STAGES}
        for r in requests:
            c0, t0 = time.thread_time(), time.perf_counter()
            result = ranker.rank(r)
            total.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
            for s in STAGES:
                stages[s].append(result.timings.get(s, 0.0))
        row = {"total": (pct(total, 50.0), pct(total, 99.0), float(np.mean(total)) * 1e3)}
        # CPU time of the calling thread: leaves out the time other jobs on the host held
        # the core, which wall-clock percentiles on a shared machine cannot
        row["total_cpu"] = (pct(cpu, 50.0), pct(cpu, 99.0), float(np.mean(cpu)) * 1e3)
        row.update(
            {s: (pct(v, 50.0), pct(v, 99.0), float(np.mean(v)) * 1e3) for s, v in stages.items()}
        )
        row["loadavg"] = list(os.getloadavg())
        per_run.append(row)
    med = {key: [statistics.median(run[key][k] for run in per_run) for k in range(3)]
           for key in ("total", "total_cpu", *STAGES)}  # fmt: skip
    return {"ms_p50_p99_mean": med, "runs": per_run}


class _CompiledShim:
    """Stands in for a Booster in `ranking.model.predict(booster, x)` (benchmark only)."""

    def __init__(self, predictor, booster):
        self._predict, self._booster = predictor, booster

    def predict(self, x, num_threads=1, **kw):
        if kw:  # contributions (explain) stay with LightGBM
            return self._booster.predict(x, num_threads=num_threads, **kw)
        return self._predict(x)


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


def compiled_figures(ranker, requests, out_dir: Path, runs: int) -> dict:
    """Compile both models, check scores, time predict alone and rank end to end."""
    import lightgbm as lgb
    from xsell.ranking.bundle import MODEL_FILES
    from xsell.ranking.compiled import compile_booster, load_predictor
    from xsell.ranking.types import Strategy

    res: dict = {"models": {}}
    rng = np.random.default_rng(0)
    predictors = {}
    for strategy in (Strategy.CROSS_SELL, Strategy.UP_SELL):
        model_txt = ranker.bundle_dir / MODEL_FILES[strategy.value]
        out = out_dir / f"{model_txt.stem}.so"
        t0 = time.perf_counter()
        compile_booster(model_txt, out)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pred = load_predictor(model_txt, out)
        load_s = time.perf_counter() - t0
        assert pred.kind == "lleaves", pred.kind
        booster = lgb.Booster(model_file=str(model_txt))
        # feature rows of real requests: the matrices the ranker builds
        xs = _feature_matrices(ranker, requests[:200], strategy)
        x_all = np.concatenate(xs)
        diff = float(np.max(np.abs(pred(x_all) - booster.predict(x_all, num_threads=1))))
        rows = int(np.median([len(x) for x in xs]))
        x = x_all[rng.choice(len(x_all), size=rows, replace=False)]
        t_lgb = _best_of(lambda b=booster, x=x: b.predict(x, num_threads=1))
        t_ll = _best_of(lambda f=pred, x=x: f(x))
        res["models"][strategy.value] = {
            "trees": booster.num_trees(), "compile_s": compile_s, "load_s": load_s,
            "max_abs_diff": diff, "rows": rows,
            "predict_ms_lightgbm": t_lgb * 1e3, "predict_ms_lleaves": t_ll * 1e3, "speedup": t_lgb / t_ll,
        }  # fmt: skip
        predictors[strategy] = (pred, booster)
    saved = dict(ranker.boosters)
    try:
        for strategy, (pred, booster) in predictors.items():
            ranker.boosters[strategy] = _CompiledShim(pred, booster)
        res["rank"] = time_requests(ranker, requests, runs)
    finally:
        ranker.boosters.clear()
        ranker.boosters.update(saved)
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


def _feature_matrices(ranker, requests, strategy) -> list[np.ndarray]:
    """The feature matrices `rank` scores for `strategy`, captured through a shim."""
    captured: list[np.ndarray] = []
    real = ranker.boosters[strategy]

    class Capture:
        def predict(self, x, num_threads=1, **kw):
            captured.append(np.array(x))
            return real.predict(x, num_threads=num_threads, **kw)

    ranker.boosters[strategy] = Capture()
    try:
        for r in requests:
            ranker.rank(r)
    finally:
        ranker.boosters[strategy] = real
    return [x for x in captured if len(x)]


def table(res: dict) -> str:
    head = (
        f"bundle {res['version']}, {res['requests']} requests from {res['requests_file']}, "
        f"candidates scored: cross-sell {res['candidates']['cross_sell']:.0f}, "
        f"up-sell {res['candidates']['up_sell']:.0f}"
    )
    lines = [head, ""]
    heads = [("lightgbm", res["lightgbm"])]
    if "compiled" in res:
        heads.append(("lleaves", res["compiled"]["rank"]))
    lines.append(
        "| in-process, 1 thread | "
        + " | ".join(f"{n} p50 ms | {n} p99 ms | {n} mean ms" for n, _ in heads)
        + " |"
    )
    lines.append("|---|" + "---:|" * (3 * len(heads)))
    for key in ("total", "total_cpu", *STAGES):
        cells = []
        for _, h in heads:
            p50, p99, mean = h["ms_p50_p99_mean"][key]
            cells += [f"{p50:.2f}", f"{p99:.2f}", f"{mean:.2f}"]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "load average per run: "
        + ", ".join(str([round(x, 1) for x in r["loadavg"]]) for r in res["lightgbm"]["runs"])
    )
    if "compiled" in res:
        lines.append("")
        for name, m in res["compiled"]["models"].items():
            lines.append(f"{name}: {m['trees']} trees, compile {m['compile_s']:.1f} s, load {m['load_s'] * 1e3:.0f} ms, "
                         f"{m['rows']} rows: LightGBM {m['predict_ms_lightgbm']:.3f} ms, lleaves "
                         f"{m['predict_ms_lleaves']:.3f} ms ({m['speedup']:.1f}x), max |diff| {m['max_abs_diff']:.1e}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bundle", required=True)
    p.add_argument("--requests", required=True, help="request file (xsell loadtest requests)")
    p.add_argument("--n", type=int, default=2000, help="requests per run")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument(
        "--compiled",
        type=Path,
        default=None,
        help="compile the models with lleaves into this directory",
    )
    p.add_argument("--profile", type=int, default=0, help="cProfile this many calls")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    from xsell.ranking.ranker import Ranker

    ranker = Ranker.load(args.bundle)
    requests = load_requests(args.requests, args.n)
    res = {
        "version": ranker.version,
        "requests": len(requests),
        "requests_file": args.requests,
        "candidates": candidate_counts(ranker, requests),
        "lightgbm": time_requests(ranker, requests, args.runs),
    }
    if args.compiled is not None:
        res["compiled"] = compiled_figures(ranker, requests, args.compiled, args.runs)
    print(table(res))
    if args.profile:
        res["profile"] = profile(ranker, requests, args.profile)
        print(res["profile"])
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
