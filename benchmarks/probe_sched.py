"""What a worker does while its latency spikes: CPU share, run-queue waits, context
switches and steal time under an open loop, for `xsell serve --cpu-policy` batch or normal.

    python benchmarks/probe_sched.py --bundle BUNDLE [--requests carts3.jsonl]
        [--rate 344] [--seconds 120] [--cpu-policy batch] [--json OUT]

Starts `xsell serve --workers 1` pinned to CPU 0 (this generator on CPU 1, as in
bench_soak.py) and, in a sampler process on CPU 1, reads every 5 ms the worker's threads'
`/proc/<pid>/task/*/schedstat` (ns on the CPU, ns runnable but waiting for it); context
switches per call come from the threads' `/proc/<pid>/task/*/status` and CPU 0's steal
time from `/proc/stat`, before and after. Prints: calls, errors, p50 / p99; context
switches per call (voluntary, involuntary); steal; the mean number of the worker's threads
waiting for the core; and for each episode of calls slower than `--slow-ms` (50) the
worker's CPU share and the calls it finished per second, against the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overload import make_requests, open_loop, pct, split_cpus, start_server

BIN = 0.05  # s: the time resolution of the episode figures


def thread_times(pid: int) -> tuple[int, int]:
    """(ns on the CPU, ns runnable but waiting for it), summed over the threads of `pid`
    alive now."""
    run = wait = 0
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            with open(f"{task}/schedstat") as fh:
                a, b, _ = fh.read().split()
        except (OSError, ValueError):  # the thread ended meanwhile
            continue
        run, wait = run + int(a), wait + int(b)
    return run, wait


def thread_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches, summed over the threads of `pid`."""
    vol = invol = 0
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            with open(f"{task}/status") as fh:
                for line in fh:
                    if line.startswith("voluntary_ctxt_switches"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        invol += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return vol, invol


def cpu_steal(cpu: int) -> int:
    with open("/proc/stat") as fh:
        for line in fh:
            if line.startswith(f"cpu{cpu} "):
                return int(line.split()[8])
    return 0


def sampler(pid: int, seconds: float, out) -> None:
    """Every 5 ms: (s since start, run ns, wait ns) of the worker's threads."""
    rows = []
    t0 = time.perf_counter()
    while (now := time.perf_counter()) - t0 < seconds:
        rows.append((now - t0, *thread_times(pid)))
        time.sleep(0.005)
    out.put(rows)


def episodes(
    sent: np.ndarray, lat: np.ndarray, slow: float, gap: float = 0.3
) -> list[tuple[float, float]]:
    """(start, end) of runs of calls slower than `slow`: one episode while they come less
    than `gap` s apart; end = when its last slow call finished."""
    out: list[list[float]] = []
    for s, x in zip(sent, lat):
        if x <= slow:
            continue
        if out and s - out[-1][1] < gap:
            out[-1][1] = max(out[-1][1], s + x)
        else:
            out.append([s, s + x])
    return [(a, b) for a, b in out]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bundle", required=True)
    p.add_argument("--requests", default=None)
    p.add_argument("--rate", type=float, default=344.0)
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--cpu-policy", choices=("batch", "normal"), default="batch")
    p.add_argument("--slow-ms", type=float, default=50.0)
    p.add_argument("--log", default="/tmp/xsell-probe-sched.log")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    (server_cpu,), _ = split_cpus()  # the sampler process inherits the generator's CPU
    server = start_server(args.bundle, workers=1, threads=None, max_in_flight=None, cpus={server_cpu},
                          log_path=Path(args.log), extra=("--cpu-policy", args.cpu_policy))  # fmt: skip
    pid = server.pids[0]
    try:
        payloads = make_requests(args.bundle, path=args.requests)
        asyncio.run(open_loop(server.port, payloads, 20, 3.0))  # warm-up
        queue: mp.Queue = mp.Queue()
        before = (*thread_times(pid), *thread_switches(pid))
        steal0 = cpu_steal(server_cpu)
        proc = mp.Process(target=sampler, args=(pid, args.seconds + 1.0, queue))
        proc.start()
        calls = asyncio.run(open_loop(server.port, payloads, args.rate, args.seconds, channels=16))
        rows = queue.get()
        proc.join()
        after = (*thread_times(pid), *thread_switches(pid))
        steal = cpu_steal(server_cpu) - steal0
    finally:
        server.stop()
    # the open loop's clock starts a few ms after the sampler's (its connections first):
    # close enough at BIN
    sent, lat = np.array(calls.sent), np.array(calls.latency)
    n = len(calls.code)
    t = np.array([r[0] for r in rows])
    run = np.array([r[1] for r in rows]) / 1e9
    wait = np.array([r[2] for r in rows]) / 1e9
    edges = np.arange(0.0, t[-1], BIN)
    share = np.diff(np.interp(edges, t, run)) / BIN  # the worker's CPU, cores
    waiting = np.diff(np.interp(edges, t, wait)) / BIN  # its threads waiting for the core
    done = np.histogram(sent + lat, edges)[0] / BIN  # calls finished per s
    res = {
        "cpu_policy": args.cpu_policy, "rate": args.rate, "seconds": args.seconds, "calls": n,
        "codes": calls.codes(), "p50_ms": pct(calls.ok_latencies(), 50), "p99_ms": pct(calls.ok_latencies(), 99),
        "voluntary_switches_per_call": (after[2] - before[2]) / n,
        "involuntary_switches_per_call": (after[3] - before[3]) / n,
        "worker_cpu_ms_per_call": (after[0] - before[0]) / 1e6 / n,
        "steal_ticks": steal, "mean_threads_waiting_for_core": float(waiting.mean()),
        "whole_run": {"cpu_share": float(share.mean()), "finished_per_s": float(done.mean())},
        "episodes": [],
    }  # fmt: skip
    for a, b in episodes(sent, lat, args.slow_ms / 1e3):
        k = (edges[:-1] >= a) & (edges[:-1] < b)
        if k.any():
            res["episodes"].append({"start_s": round(a, 2), "seconds": round(b - a, 2),
                                    "cpu_share": float(share[k].mean()), "finished_per_s": float(done[k].mean()),
                                    "threads_waiting_for_core": float(waiting[k].mean())})  # fmt: skip
    print(f"{args.cpu_policy}: {n} calls at {args.rate:.0f}/s, {res['codes']}, p50 {res['p50_ms']:.1f} p99 "
          f"{res['p99_ms']:.1f} ms; context switches per call {res['voluntary_switches_per_call']:.1f} voluntary "
          f"+ {res['involuntary_switches_per_call']:.1f} involuntary; worker CPU {res['worker_cpu_ms_per_call']:.2f} "
          f"ms per call; steal {steal} ticks; threads waiting for the core {res['mean_threads_waiting_for_core']:.2f}")  # fmt: skip
    w = res["whole_run"]
    print(f"whole run: CPU share {w['cpu_share']:.2f}, {w['finished_per_s']:.0f} calls finished/s")
    for e in res["episodes"]:
        print(f"episode at {e['start_s']:7.2f} s for {e['seconds']:.2f} s: CPU share {e['cpu_share']:.2f}, "
              f"{e['finished_per_s']:.0f} calls finished/s, threads waiting {e['threads_waiting_for_core']:.2f}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
