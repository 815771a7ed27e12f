"""Does the same work cost the same CPU time from one moment to the next on this host?

    python benchmarks/probe_cpu_efficiency.py [--bundle BUNDLE --requests carts3.jsonl]
        [--seconds 60] [--window 0.25] [--cpu 0] [--json OUT]

Pinned to one core, repeats a fixed piece of work in windows of `--window` seconds of
this thread's CPU time and reports the CPU time per unit of work in each window: its
median, p95 and max, and how many windows cost over 1.15 x and 1.25 x the median. The
work is `Ranker.rank` over the request file when `--bundle` is given (the server's own
work, no gRPC), else a fixed synthetic unit (a 64 x 64 float matmul, a sort of 2,000
floats and a 200-step Python loop) that does not depend on xsell. Without other jobs
in this VM, a window that costs more CPU time for the same work is the host (caches,
memory bandwidth or frequency shared with other tenants; steal time is not counted as
this thread's CPU time). At 70% load a worker whose calls cost 1.25 x for half a
second is over 85% busy, and one at 1.5 x falls behind: that is what the soak's
refusal episodes need (server/README.md, session 6).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def synthetic_unit():
    rng = np.random.default_rng(0)
    a = rng.random((64, 64))
    v = rng.random(2000)

    def unit() -> None:
        a @ a
        np.sort(v)
        s = 0
        for k in range(200):
            s += k * k

    return unit


def ranker_unit(bundle: str, requests: str):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_rank import load_requests
    from xsell.ranking.ranker import Ranker

    ranker = Ranker.load(bundle)
    reqs = load_requests(requests, 3000)
    state = {"i": 0}

    def unit() -> None:
        ranker.rank(reqs[state["i"] % len(reqs)])
        state["i"] += 1

    return unit


def measure(unit, seconds: float, window: float) -> np.ndarray:
    """CPU ms per unit in each window of `window` s of thread CPU time."""
    for _ in range(300):  # warm
        unit()
    out = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        c0, n = time.thread_time(), 0
        while (used := time.thread_time() - c0) < window:
            unit()
            n += 1
        out.append(used / n * 1e3)
    return np.array(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bundle", default=None)
    p.add_argument("--requests", default=None)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--window", type=float, default=0.25)
    p.add_argument("--cpu", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if bool(args.bundle) != bool(args.requests):
        p.error("--bundle and --requests go together")
    os.sched_setaffinity(0, {args.cpu})
    work = "Ranker.rank" if args.bundle else "synthetic"
    unit = ranker_unit(args.bundle, args.requests) if args.bundle else synthetic_unit()
    load0 = os.getloadavg()[0]
    ms = measure(unit, args.seconds, args.window)
    med = float(np.median(ms))
    res = {
        "work": work, "cpu": args.cpu, "window_s": args.window, "windows": len(ms),
        "median_ms": med, "p95_ms": float(np.percentile(ms, 95)), "max_ms": float(ms.max()),
        "over_1.15x": int((ms > 1.15 * med).sum()), "over_1.25x": int((ms > 1.25 * med).sum()),
        "load_avg": [load0, os.getloadavg()[0]],
    }  # fmt: skip
    print(f"{work} on CPU {args.cpu}: {len(ms)} windows of {args.window} s CPU; CPU ms per unit median "
          f"{med:.3f}, p95 {res['p95_ms']:.3f} ({res['p95_ms'] / med:.2f}x), max {res['max_ms']:.3f} "
          f"({res['max_ms'] / med:.2f}x); windows over 1.15x: {res['over_1.15x']}, over 1.25x: "
          f"{res['over_1.25x']} (load avg {load0:.1f} -> {res['load_avg'][1]:.1f})")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
