"""The serving processes' CPU policy (`xsell serve --cpu-policy`): SCHED_BATCH, the
default, against Linux's normal policy. Same bundle, same requests, same rate,
alternating, in one run.

Each round starts `xsell serve --workers 1 --cpu-policy P` for each policy in turn (the
worker on CPU 0, this generator on CPU 1, as in bench_overload.py and bench_soak.py)
and measures
 (a) capacity: a closed loop of `--callers` (16) for `--seconds` (10 s): OK calls/s and
     the server's CPU per call;
 (b) an open loop (Poisson) at `--rate` calls/s for `--open-seconds` (40 s): p50 / p99 /
     max of the OK calls, errors by status code, the server's CPU per call. Default
     rate: 70% of the normal policy's capacity in the first round, the same for both.
Prints per policy the median over `--rounds` (3) and batch / normal ratios.

Usage:
    python benchmarks/bench_sched.py --bundle DIR [--requests FILE] [--rounds 3]
        [--rate R] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overload import (
    closed_loop,
    loadavg,
    make_requests,
    open_loop,
    pct,
    split_cpus,
    start_server,
)
from bench_soak import _cpu_seconds

POLICIES = ("normal", "batch")


def measure(args, policy: str, payloads: list[bytes], rate: float | None) -> dict:
    server = start_server(args.bundle, workers=1, threads=None, max_in_flight=None, cpus=args.server_cpus,
                          log_path=Path(args.log), extra=("--cpu-policy", policy))  # fmt: skip
    pid = server.pids[0]
    out: dict = {"policy": policy, "load_avg": loadavg()}
    try:
        asyncio.run(open_loop(server.port, payloads, 20, 3.0))  # warm-up
        cpu = _cpu_seconds(pid)
        cap = asyncio.run(closed_loop(server.port, payloads, args.callers, args.seconds))
        ok = cap.codes().get("OK", 0)
        out["capacity_ok_per_s"] = ok / args.seconds
        out["capacity_cpu_ms_per_call"] = (_cpu_seconds(pid) - cpu) / max(ok, 1) * 1e3
        rate = rate or args.load * out["capacity_ok_per_s"]
        cpu = _cpu_seconds(pid)
        calls = asyncio.run(open_loop(server.port, payloads, rate, args.open_seconds, channels=16))
        lat = calls.ok_latencies()
        out.update({
            "rate": rate, "calls": len(calls.code), "codes": calls.codes(),
            "errors": sum(n for c, n in calls.codes().items() if c != "OK"),
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": pct(lat, 100),
            "cpu_ms_per_call": (_cpu_seconds(pid) - cpu) / max(len(calls.code), 1) * 1e3,
        })  # fmt: skip
    finally:
        out["server_exit"] = server.stop()
    return out


FIGURES = ("capacity_ok_per_s", "capacity_cpu_ms_per_call", "p50_ms", "p99_ms", "max_ms",
           "errors", "cpu_ms_per_call")  # fmt: skip


def summary(runs: list[dict]) -> dict:
    return {
        p: {f: statistics.median(r[f] for r in runs if r["policy"] == p) for f in FIGURES}
        for p in POLICIES
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bundle", required=True)
    p.add_argument("--requests", default=None, help="request file (`xsell loadtest requests`)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--callers", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0, help="closed-loop seconds")
    p.add_argument("--open-seconds", type=float, default=40.0)
    p.add_argument("--load", type=float, default=0.7, help="open-loop share of capacity")
    p.add_argument("--rate", type=float, default=None, help="open-loop calls/s (fixed)")
    p.add_argument("--log", default="/tmp/xsell-bench-sched.log", help="server stderr")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.server_cpus, _ = split_cpus()
    payloads = make_requests(args.bundle, n=5000, path=args.requests)
    runs: list[dict] = []
    rate = args.rate
    for k in range(args.rounds):
        for policy in POLICIES:
            r = measure(args, policy, payloads, rate)
            rate = rate or r["rate"]  # the first round's normal-policy rate, for all
            runs.append(r)
            print(f"round {k + 1} {policy:6s}: capacity {r['capacity_ok_per_s']:.0f} OK/s "
                  f"({r['capacity_cpu_ms_per_call']:.2f} ms CPU/call); open loop {r['rate']:.0f}/s: "
                  f"p50 {r['p50_ms']:.1f} p99 {r['p99_ms']:.1f} max {r['max_ms']:.0f} ms, "
                  f"errors {r['codes']}, {r['cpu_ms_per_call']:.2f} ms CPU/call, "
                  f"load avg {r['load_avg']:.1f}", flush=True)  # fmt: skip
    med = summary(runs)
    print(f"\nmedians of {args.rounds} rounds, open loop at {rate:.0f}/s")
    print(f"{'':24s}{'normal':>10s}{'batch':>10s}{'ratio':>8s}")
    for f in FIGURES:
        a, b = med["normal"][f], med["batch"][f]
        ratio = f"{b / a:8.2f}" if a else f"{'-':>8s}"
        print(f"{f:24s}{a:10.2f}{b:10.2f}{ratio}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rate": rate, "runs": runs, "median": med}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
