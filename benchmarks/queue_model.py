"""What latency an ideal server would have at a given load: a queueing simulation, no server.

Issue 6 asks for an open-loop p99 <= 20 ms at 70% of the closed-loop capacity. A worker
process serves one Recommend at a time, and SO_REUSEPORT ties each connection to one
worker, so each worker is a single-server FIFO queue with Poisson arrivals (M/G/1); a
queue shared by both workers (M/G/2) would be the alternative. This simulates both with
the service time measured by bench_load / bench_sched (~1.9 ms of CPU per call, spread
like bench_rank's: coefficient of variation ~0.15) and prints p50 / p99 of the time in
the system per load, so measured figures can be read against what the queue alone
explains (the rest is the host: other processes, the load generator, CPU efficiency).

Uneven split (`--shares`): SO_REUSEPORT places *connections*, so a client sending its calls
over its connections in turn loads the workers by how many of its connections each one
got: with 16 connections on 2 workers a 10:6 split (62.5%) or worse happens in 45% of
connection sets (binomial). For each share of the busier worker the table gives the
p50 / p99 over all calls of the two M/G/1 queues at those loads.

Usage:
    python benchmarks/queue_model.py [--service-ms 1.9] [--cv 0.15] [--loads 0.6 0.7 0.8 0.9]
        [--calls 400000] [--shares 0.5 0.5625 0.625 0.6875]
"""

from __future__ import annotations

import argparse
import heapq

import numpy as np


def sojourn_times(arrivals: np.ndarray, service: np.ndarray, servers: int) -> np.ndarray:
    """Time in the system of each call (FIFO, `servers` servers sharing one queue)."""
    free = [0.0] * servers  # when each server is next free (a heap)
    done = np.empty(len(arrivals))
    for i, (t, s) in enumerate(zip(arrivals.tolist(), service.tolist())):
        start = max(t, heapq.heappop(free))
        done[i] = start + s
        heapq.heappush(free, done[i])
    return done - arrivals


def simulate(
    load: float, service_ms: float, cv: float, servers: int, calls: int, seed: int = 0
) -> tuple[float, float]:
    """(p50, p99) ms at `load` = arrival rate x mean service / servers."""
    rng = np.random.default_rng(seed)
    sigma = np.sqrt(np.log1p(cv**2))  # lognormal with this coefficient of variation
    service = rng.lognormal(np.log(service_ms) - sigma**2 / 2, sigma, calls)
    arrivals = np.cumsum(rng.exponential(service_ms / (load * servers), calls))
    p50, p99 = np.percentile(sojourn_times(arrivals, service, servers), [50, 99])
    return float(p50), float(p99)


def simulate_split(
    load: float, share: float, service_ms: float, cv: float, calls: int, seed: int = 0
) -> tuple[float, float]:
    """(p50, p99) ms over all calls of two single-server queues that get `share` and
    1 - `share` of the calls, at `load` averaged over both (inf: the busier one is
    past saturation)."""
    if 2 * share * load >= 1:
        return float("inf"), float("inf")
    rng = np.random.default_rng(seed)
    sigma = np.sqrt(np.log1p(cv**2))
    times = []
    for part in (share, 1 - share):
        n = int(calls * part)
        service = rng.lognormal(np.log(service_ms) - sigma**2 / 2, sigma, n)
        arrivals = np.cumsum(rng.exponential(service_ms / (2 * part * load), n))
        times.append(sojourn_times(arrivals, service, 1))
    p50, p99 = np.percentile(np.concatenate(times), [50, 99])
    return float(p50), float(p99)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--service-ms", type=float, default=1.9)
    ap.add_argument(
        "--cv", type=float, default=0.15, help="coefficient of variation of the service time"
    )
    ap.add_argument("--loads", type=float, nargs="*", default=[0.6, 0.7, 0.8, 0.9])
    ap.add_argument("--calls", type=int, default=400_000)
    ap.add_argument("--shares", type=float, nargs="*", default=[],
                    help="share of the calls the busier of two workers gets (0.5 = even)")  # fmt: skip
    args = ap.parse_args(argv)
    print(f"service {args.service_ms} ms (cv {args.cv}), {args.calls:,} calls per case")
    print(
        "| load | one queue per worker (M/G/1) p50 / p99 ms | one queue for two workers (M/G/2) p50 / p99 ms |"
    )
    print("|---|---|---|")
    for load in args.loads:
        one = simulate(load, args.service_ms, args.cv, 1, args.calls)
        two = simulate(load, args.service_ms, args.cv, 2, args.calls)
        print(
            f"| {load:.2f} | {one[0]:.1f} / {one[1]:.1f} | {two[0]:.1f} / {two[1]:.1f} |",
            flush=True,
        )
    if args.shares:
        print()
        print("| load | " + " | ".join(f"busier worker {s:.1%} p50 / p99 ms" for s in args.shares) + " |")
        print("|---|" + "---|" * len(args.shares))
        for load in args.loads:
            cells = [simulate_split(load, s, args.service_ms, args.cv, args.calls) for s in args.shares]
            print(f"| {load:.2f} | " + " | ".join(f"{a:.1f} / {b:.1f}" for a, b in cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
