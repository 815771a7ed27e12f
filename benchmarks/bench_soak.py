"""Soak test of `xsell serve` (issue 7): `--minutes` (10) of open-loop load at `--load`
(70%) of the measured capacity. Reports errors (must be none), latency per minute, and
server RSS growth after the warm-up (must stay under 5%).

Same server set-up and load generator as bench_overload.py (one `xsell serve`
subprocess on 127.0.0.1, pinned to CPU 0 with the generator on CPU 1, and with fewer
than 2 CPUs it stops unless `--no-pin`; Poisson arrivals, 2 s deadline per call).
Balanced: the kernel spreads connections, not calls, over the workers (SO_REUSEPORT),
so with calls sent over 4 or 16 connections in turn one worker of 2 often got 60-100%
of the load and "70%" of the capacity was an overload for it. So each minute the soak
opens 16 connections (`--channels`), finds the worker behind each (20 calls over it,
whose CPU time rose), and sends every worker the same share (`--no-balance`:
connections in turn). Capacity is the closed-loop OK throughput of 16 callers that back
off 10 ms when refused. RSS = supervisor + workers, sampled every 5 s; growth = (RSS at
the end - RSS after `--warmup` s) / RSS after warm-up.

Usage:
    python benchmarks/bench_soak.py --bundle DIR [--requests FILE] [--workers 1]
        [--minutes 10] [--load 0.7] [--rate R] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overload import (
    NO_PIN_HINT,
    Sampler,
    _stub,
    closed_loop,
    loadavg,
    make_requests,
    open_loop,
    pct,
    split_cpus,
    start_server,
)
from xsell.clients.loadtest.runner import balanced_pick  # the harness's own, session 9


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (10 ms ticks)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def worker_connections(port: int, payload: bytes, pids: list[int], n: int):
    """`n` connections (more if needed, so that every worker has one) and the worker each
    one landed on: the kernel picks the worker per connection (SO_REUSEPORT), so 20
    calls are sent over each in turn and the worker whose CPU time rose is its owner."""
    import grpc

    chans, owners = [], []
    while len(chans) < n or len(set(owners)) < len(pids):
        if len(chans) >= 8 * n:
            raise SystemExit(f"{len(chans)} connections and still not one to every worker")
        ch = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        stub = _stub(ch)
        await stub(payload, timeout=10)  # connected, and warm
        before = {p: _cpu_seconds(p) for p in pids}
        for _ in range(20):
            await stub(payload, timeout=10)
        gain = {p: _cpu_seconds(p) - before[p] for p in pids}
        chans.append(ch)
        owners.append(max(gain, key=gain.get))
    return chans, owners


def run(args) -> dict:
    server_cpus = None if args.no_pin else split_cpus(args.workers, hint=NO_PIN_HINT)[0]
    server = start_server(args.bundle, workers=args.workers, threads=args.threads, max_in_flight=None,
                          cpus=server_cpus, log_path=Path(args.log))  # fmt: skip
    payloads = make_requests(args.bundle, n=5000, path=args.requests)
    out: dict = {
        "requests": args.requests,
        "workers": args.workers,
        "threads": args.threads,
        "minutes": args.minutes,
        "channels": args.channels,
        "pinned": not args.no_pin,
    }
    try:
        asyncio.run(open_loop(server.port, payloads, 20, 3.0))  # warm-up
        if args.rate:
            capacity = args.rate / args.load
        else:
            la = loadavg()
            cap = asyncio.run(closed_loop(server.port, payloads, args.callers, 10.0))
            capacity = cap.codes().get("OK", 0) / 10.0
            out["capacity"] = {"ok_per_s": capacity, "callers": args.callers, "load_avg": la}
        rate = args.load * capacity
        print(
            f"capacity {capacity:.0f} OK/s -> soak at {rate:.0f}/s for {args.minutes} min",
            flush=True,
        )
        sampler = Sampler(server, 5.0, health=False)
        sampler.start()
        loads = []
        splits: list[list[int]] = []  # connections per worker, each minute

        async def soak():
            # one open loop per minute, back to back, so progress and load average show per minute
            results = []
            for minute in range(int(args.minutes)):
                loads.append(loadavg())
                if args.no_balance:
                    calls = await open_loop(server.port, payloads, rate, 60.0, seed=100 + minute,
                                            channels=args.channels)  # fmt: skip
                else:
                    # mapped again every minute: the server recycles connections (max age
                    # 5 min) and a reconnection may land on the other worker
                    worker_pids = [p for p in server.pids if p != server.process.pid] or server.pids
                    chans, owners = await worker_connections(server.port, payloads[0], worker_pids,
                                                             args.channels)  # fmt: skip
                    splits.append([owners.count(p) for p in sorted(set(owners))])
                    calls = await open_loop(server.port, payloads, rate, 60.0, seed=100 + minute,
                                            stubs=[_stub(c) for c in chans], pick=balanced_pick(owners))  # fmt: skip
                    for c in chans:
                        await c.close()
                ok = calls.ok_latencies()
                results.append(calls)
                print(f"minute {minute + 1:2d}: {len(calls.code)} calls {calls.codes()} p50 {pct(ok, 50):.1f} "
                      f"p99 {pct(ok, 99):.1f} ms, RSS {server.rss_mib():.1f} MiB, load avg {loads[-1]:.1f}",
                      flush=True)  # fmt: skip
            return results

        minutes = asyncio.run(soak())
        sampler.stop()
        codes: dict[str, int] = {}
        for calls in minutes:
            for c, n in calls.codes().items():
                codes[c] = codes.get(c, 0) + n
        t = np.array([s for s, _ in sampler.rss])
        rss = np.array([r for _, r in sampler.rss])
        after = rss[t >= args.warmup]
        slope = (
            float(np.polyfit(t[t >= args.warmup] / 60, after, 1)[0])
            if len(after) > 2
            else float("nan")
        )
        all_ok = np.concatenate([c.ok_latencies() for c in minutes])
        out.update({
            "rate": rate, "load": args.load, "calls": sum(codes.values()), "codes": codes,
            "errors": sum(n for c, n in codes.items() if c != "OK"),
            "p50_ms": pct(all_ok, 50), "p99_ms": pct(all_ok, 99),
            "per_minute": [{"p50_ms": pct(c.ok_latencies(), 50), "p99_ms": pct(c.ok_latencies(), 99),
                            "codes": c.codes(), "load_avg": la} for c, la in zip(minutes, loads)],
            "rss_start_mib": float(rss[0]), "rss_after_warmup_mib": float(after[0]),
            "rss_end_mib": float(rss[-1]), "rss_max_after_warmup_mib": float(after.max()),
            "rss_growth_after_warmup": float((rss[-1] - after[0]) / after[0]),
            "rss_slope_mib_per_min": slope, "warmup_s": args.warmup,
            "balanced": not args.no_balance, "connections_per_worker": splits,
        })  # fmt: skip
        print(f"soak: {out['calls']} calls, errors {out['errors']} {codes}, p50 {out['p50_ms']:.1f} p99 "
              f"{out['p99_ms']:.1f} ms; RSS {out['rss_start_mib']:.1f} -> {out['rss_after_warmup_mib']:.1f} "
              f"(after {args.warmup:.0f}s warm-up) -> {out['rss_end_mib']:.1f} MiB: growth "
              f"{out['rss_growth_after_warmup']:+.2%}, slope {slope:+.2f} MiB/min", flush=True)  # fmt: skip
    finally:
        out["server_exit"] = server.stop()
        out["admission"] = admission_events(Path(args.log))
        print(f"admission: {out['admission']}", flush=True)
    return out


def admission_events(server_log: Path) -> dict:
    """The overloads the server's admission logged, by what started them: the in-flight
    bound reached, or a slow standing queue."""
    text = server_log.read_text(errors="replace") if server_log.exists() else ""
    return {
        "overload_by_bound": len(re.findall(r"overloaded: \d+ calls held", text)),
        "overload_by_slow_queue": len(re.findall(r"overloaded: calls waited over", text)),
    }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bundle", required=True)
    p.add_argument("--requests", default=None, help="request file (`xsell loadtest requests`)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="default: the server's")
    p.add_argument("--callers", type=int, default=16, help="closed-loop callers measuring capacity")
    p.add_argument("--channels", type=int, default=16, help="connections of the open loop")
    p.add_argument("--no-balance", action="store_true",
                   help="send calls over the connections in turn, wherever the kernel put them")  # fmt: skip
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--load", type=float, default=0.7, help="share of the measured capacity")
    p.add_argument("--rate", type=float, default=None, help="calls/s instead of measuring capacity")
    p.add_argument(
        "--warmup", type=float, default=60.0, help="seconds before RSS growth is counted"
    )
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--log", default="/tmp/xsell-bench-soak.log")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    out = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0 if out.get("errors", 1) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
