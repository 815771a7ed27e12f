"""Serving latency and throughput of xsell (issue 4 figures).

(a) In-process: `Ranker.rank` on 3-item carts (real baskets of the events file),
    strategy BOTH, default limits; latency p50 / p99 in total and per stage
    (retrieval, features, model, rules), and the candidates scored per strategy.
(b) Over gRPC: `xsell serve --workers 2`; 16 concurrent callers (2 client processes
    x 8 threads, one connection each, so SO_REUSEPORT spreads them over the
    workers) send the same requests for `--seconds`; p50 / p99 of the client-side
    latency and the QPS. Then the same callers send gRPC health checks (a trivial
    call) to the same server: recommend QPS / health QPS is the share of the
    capacity the ranking itself costs.

Every figure is the median over `--runs` runs (default 3). The load generator runs
on the same machine as the server: on a 2-core host it takes CPU from the workers,
so (b) is a lower bound of what the server alone can do.

Usage:
    python benchmarks/bench_server.py --bundle DIR --events EVENTS [--requests 3000]
        [--seconds 10] [--runs 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

STAGES = ("retrieval", "features", "model", "rules")
READY = re.compile(r"listening on [^ ]+:(\d+) ")


# ---------------------------------------------------------------- requests


def basket_carts(events_path: str, n: int, seed: int = 0) -> list[tuple[str, tuple[str, str, str]]]:
    """(user_id, 3 item ids) from real baskets with at least 3 distinct items; seeded sample."""
    from xsell.data.loaders import load_events

    events = load_events(events_path)
    events = events[events["event_type"] == "purchase"]
    firsts = events.drop_duplicates(["basket_id", "item_id"])
    sizes = firsts.groupby("basket_id")["item_id"].transform("size")
    big = firsts[sizes.to_numpy() >= 3]
    groups = big.groupby("basket_id", sort=True)
    baskets = [
        (str(g["user_id"].iloc[0]), tuple(map(str, g["item_id"].iloc[:3]))) for _, g in groups
    ]
    if not baskets:
        raise SystemExit(f"{events_path}: no basket with 3 or more distinct purchased items")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(baskets), size=n, replace=len(baskets) < n)
    return [baskets[i] for i in picks]


def percentiles(values_s: list[float] | np.ndarray) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    a = np.asarray(values_s, dtype=np.float64) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


# ---------------------------------------------------------------- (a) in-process


def bench_in_process(bundle: str, carts, runs: int) -> dict:
    from xsell.ranking.ranker import Ranker
    from xsell.ranking.types import CartLine, RankRequest, Strategy

    ranker = Ranker.load(bundle)
    requests = [RankRequest(user_id=u, cart=tuple(CartLine(i) for i in items), strategy=Strategy.BOTH)
                for u, items in carts]  # fmt: skip
    for r in requests[:200]:  # warm caches, page in the Annoy file
        ranker.rank(r)
    per_run = []
    for _ in range(runs):
        total, stages = [], {s: [] for s in STAGES}
        for r in requests:
            t0 = time.perf_counter()
            result = ranker.rank(r)
            total.append(time.perf_counter() - t0)
            for s in STAGES:
                stages[s].append(result.timings.get(s, 0.0))
        row = {"total": percentiles(total)}
        row.update({s: percentiles(v) for s, v in stages.items()})
        per_run.append(row)
    cross, up = [], []
    for r in requests[:300]:
        c, u = ranker.candidate_ids(r)
        cross.append(len(c))
        up.append(len(u))
    return {
        "requests": len(requests),
        "version": ranker.version,
        "candidates_mean": {"cross_sell": float(np.mean(cross)), "up_sell": float(np.mean(up))},
        "ms": {
            key: [statistics.median(run[key][k] for run in per_run) for k in (0, 1)]
            for key in per_run[0]
        },
        "runs": per_run,
    }


# ---------------------------------------------------------------- (b) over gRPC


def _caller_process(
    port: int, kind: str, carts, threads: int, seconds: float, start_at: float, out
) -> None:
    """One load-generator process: `threads` closed-loop callers, one connection each."""
    import threading

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from xsell.v1 import xsell_pb2 as pb
    from xsell.v1 import xsell_pb2_grpc as pb_grpc

    def caller(k: int, latencies: list, errors: list) -> None:
        # a local subchannel pool: every caller gets its own TCP connection
        channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        if kind == "health":
            stub = health_pb2_grpc.HealthStub(channel)
            reqs = [health_pb2.HealthCheckRequest()]
            call = stub.Check
        else:
            stub = pb_grpc.RecommendServiceStub(channel)
            reqs = [pb.RecommendRequest(user_id=u, cart=[pb.CartLine(item_id=i, quantity=1) for i in items])
                    for u, items in carts[k::threads]]  # fmt: skip
            call = stub.Recommend
        call(reqs[0], timeout=30)  # connect before the clock starts
        while time.time() < start_at:
            time.sleep(0.001)
        end = start_at + seconds
        j = 0
        while True:
            t0 = time.perf_counter()
            if time.time() >= end:
                break
            try:
                call(reqs[j % len(reqs)], timeout=10)
                latencies.append(time.perf_counter() - t0)
            except grpc.RpcError as exc:
                errors.append(exc.code().name)
            j += 1
        channel.close()

    latencies: list[float] = []
    errors: list[str] = []
    workers = [threading.Thread(target=caller, args=(k, latencies, errors)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put({"latencies": latencies, "errors": errors})


def load_run(port: int, kind: str, carts, *, callers: int, processes: int, seconds: float) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 3.0  # time for every process to import and connect
    per = callers // processes
    procs = [
        ctx.Process(
            target=_caller_process,
            args=(port, kind, carts[p::processes], per, seconds, start_at, out),
        )
        for p in range(processes)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    latencies = [x for r in results for x in r["latencies"]]
    errors = [e for r in results for e in r["errors"]]
    p50, p99 = percentiles(latencies) if latencies else (float("nan"), float("nan"))
    return {
        "qps": len(latencies) / seconds,
        "p50_ms": p50,
        "p99_ms": p99,
        "calls": len(latencies),
        "errors": len(errors),
    }


def bench_grpc(
    bundle: str, carts, *, runs: int, seconds: float, callers: int = 16, processes: int = 2
) -> dict:
    cmd = [sys.executable, "-m", "xsell.cli", "serve", "--bundle", bundle, "--port", "0", "--workers", "2",
           "--no-access-log", "--threads", "8", "--max-in-flight", "64"]  # fmt: skip
    server = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline().decode()
        match = READY.search(line)
        if not match:
            raise SystemExit(f"xsell serve did not start: {line!r}")
        port = int(match[1])
        rec, hc = [], []
        for _ in range(runs):
            rec.append(
                load_run(
                    port, "recommend", carts, callers=callers, processes=processes, seconds=seconds
                )
            )
            hc.append(
                load_run(
                    port, "health", carts, callers=callers, processes=processes, seconds=seconds
                )
            )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    summary = {
        "recommend": {k: med(rec, k) for k in ("qps", "p50_ms", "p99_ms")},
        "health": {k: med(hc, k) for k in ("qps", "p50_ms", "p99_ms")},
        "errors": sum(r["errors"] for r in rec + hc),
        "callers": callers,
        "seconds": seconds,
    }
    summary["qps_ratio_recommend_to_health"] = (
        summary["recommend"]["qps"] / summary["health"]["qps"]
    )
    summary["runs"] = {"recommend": rec, "health": hc}
    return summary


# ---------------------------------------------------------------- report


def host() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}"


def report(a: dict, b: dict | None) -> str:
    lines = [
        f"host: {host()}",
        f"bundle version {a['version']}, {a['requests']} requests (3-item carts, BOTH)",
        "",
    ]
    c = a["candidates_mean"]
    lines += [
        f"candidates scored per request: cross-sell {c['cross_sell']:.0f}, up-sell {c['up_sell']:.0f}",
        "",
    ]
    lines += ["| in-process (1 thread) | p50 ms | p99 ms |", "|---|---:|---:|"]
    for key in ("total", *STAGES):
        p50, p99 = a["ms"][key]
        lines.append(f"| {key} | {p50:.2f} | {p99:.2f} |")
    if b is not None:
        r, h = b["recommend"], b["health"]
        lines += ["", f"| gRPC, 2 workers, {b['callers']} callers, {b['seconds']:.0f} s | QPS | p50 ms | p99 ms |",
                  "|---|---:|---:|---:|",
                  f"| Recommend | {r['qps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |",
                  f"| Health.Check | {h['qps']:.0f} | {h['p50_ms']:.2f} | {h['p99_ms']:.2f} |",
                  "", f"Recommend / health QPS: {b['qps_ratio_recommend_to_health']:.3f}; errors: {b['errors']}"]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bundle", required=True)
    p.add_argument(
        "--events", required=True, help="events file the carts are drawn from (CSV or Parquet)"
    )
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--seconds", type=float, default=10.0, help="length of each gRPC load run")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-grpc", action="store_true")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)

    carts = basket_carts(args.events, args.requests, args.seed)
    a = bench_in_process(args.bundle, carts, args.runs)
    b = (
        None
        if args.skip_grpc
        else bench_grpc(args.bundle, carts, runs=args.runs, seconds=args.seconds)
    )
    print(report(a, b))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"host": host(), "in_process": a, "grpc": b}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
