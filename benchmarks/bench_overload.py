"""Overload behaviour of `xsell serve` (issue 7): shed, stay fast for what it accepts,
stay bounded, recover.

Phases, against one `xsell serve` subprocess on 127.0.0.1:
  1. unloaded: open loop at `--probe-rate` (20/s) for 10 s -> unloaded p50 / p99;
  2. capacity: closed loop, `--callers` concurrent callers for 10 s -> sustainable rate
     (the OK throughput at saturation);
  3. overload: open loop at `--factor` (5) x that rate for `--seconds` (30 s); every call
     has a 2 s deadline. Shed rate (RESOURCE_EXHAUSTED), p99 of the accepted calls,
     other errors, server RSS and a gRPC health check every 100 ms
     from another connection (must not be refused);
  4. recovery: open loop at `--probe-rate` for 10 s right after the overload stops;
     recovery time = end of the last 0.5 s bin of probes with a failure or a median
     over 2 x the unloaded p50.

The load generator is this process: asyncio + grpc.aio, driven by the load harness's
open loop (`xsell.clients.loadtest.runner.open_loop`, Poisson arrivals from
`stats.arrival_offsets`): requests fired on schedule whether or not earlier ones have
answered. Latency here counts from when a call left; the lag behind the schedule is
reported apart. With `--workers 1` on a 2-core host the server is pinned to CPU 0 and
the generator to CPU 1; with `--workers 2` the workers share both cores and the
generator runs on CPU 1 (other jobs on the host take their share too: the load average
is recorded with every figure); with fewer than 2 CPUs it stops unless `--no-pin`.
Requests: a request file (`--requests`, from `xsell loadtest requests`) or 1-3 item
carts of the bundle's items.

`--refusal-cpu N` measures one thing instead: the server CPU per call refused at
admission (in-process server with its in-flight bound taken, N calls from a client
subprocess).

Usage:
    python benchmarks/bench_overload.py --bundle DIR [--requests FILE] [--workers 1]
        [--threads N] [--max-in-flight N] [--factor 5] [--seconds 30] [--json OUT]
    python benchmarks/bench_overload.py --bundle DIR --refusal-cpu 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

READY = re.compile(r"listening on [^ ]+:(\d+) workers=\d+ pids=([\d,]+)")
DEADLINE = 2.0
NO_PIN_HINT = "; --no-pin runs both unpinned"  # bench_soak.py's --no-pin too


# ---------------------------------------------------------------- server


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    pids: list[int]

    def rss_mib(self) -> float:
        """Resident memory of the supervisor (if any) and every worker, MiB."""
        total = 0
        for pid in {self.process.pid, *self.pids}:
            try:
                with open(f"/proc/{pid}/status") as fh:
                    for line in fh:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except FileNotFoundError:
                pass
        return total / 1024

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def die_with_parent() -> None:
    """In a server child, before exec (also bench_load.py's): SIGTERM (a graceful drain)
    when the benchmark that started it dies, so an interrupted or killed run leaves no server behind."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the server outlives a killed benchmark
        pass


def split_cpus(workers: int = 1, *, hint: str = "") -> tuple[set[int], int]:
    """(the server's CPUs, the generator's CPU) out of this process's, and pins this
    process, the load generator, to its CPU: the server on the lowest `workers` (the
    generator's among them when there are no more), the generator on the highest, so the
    generator's CPU time stays out of the server's figures. Fewer than 2 CPUs: nothing to
    split, so it exits with a message (`hint`: what to do instead) rather than measure
    both on one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit(f"needs 2 CPUs, found {len(cpus)}: the server on the lowest, "
                         f"this load generator on the highest{hint}")  # fmt: skip
    os.sched_setaffinity(0, {cpus[-1]})
    return set(cpus[: max(1, workers)]), cpus[-1]


def start_server(bundle: str, *, workers: int, threads: int | None, max_in_flight: int | None,
                 cpus: set[int] | None, log_path: Path, extra: tuple[str, ...] = ()) -> Server:  # fmt: skip
    """`xsell serve` on a free port (`extra`: more flags), pinned to `cpus`, once ready."""
    cmd = [sys.executable, "-m", "xsell.cli", "serve", "--bundle", bundle, "--port", "0",
           "--workers", str(workers), "--no-access-log", *extra]  # fmt: skip
    if threads is not None:
        cmd += ["--threads", str(threads)]
    if max_in_flight is not None:
        cmd += ["--max-in-flight", str(max_in_flight)]
    if workers > 1:
        cmd += ["--no-pin"] if cpus else []

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)
        die_with_parent()

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, preexec_fn=pin,  # noqa: PLW1509
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    line = proc.stdout.readline().decode()
    match = READY.search(line)
    if not match:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}\n{log_path.read_text()[-3000:]}")
    return Server(proc, int(match[1]), [int(p) for p in match[2].split(",")])


# ---------------------------------------------------------------- requests


def make_requests(
    bundle: str, n: int = 2000, seed: int = 0, *, path: str | None = None
) -> list[bytes]:
    """Serialized RecommendRequests: those of the request file `path` (`xsell loadtest
    requests`), else 1-3 item carts from the bundle's vocabulary (seeded)."""
    from xsell.v1 import xsell_pb2 as pb

    if path is not None:
        from xsell.clients.loadtest.mix import read_requests

        return [r.SerializeToString() for r in read_requests(path)]

    items = json.loads((Path(bundle) / "items.json").read_text())
    users = json.loads((Path(bundle) / "users.json").read_text())
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        cart = [pb.CartLine(item_id=rng.choice(items)) for _ in range(rng.randint(1, 3))]
        out.append(
            pb.RecommendRequest(user_id=rng.choice(users), cart=cart, limit=10).SerializeToString()
        )
    return out


@dataclass
class Calls:
    """Per-call records of one phase: send time (s since phase start), latency, code."""

    sent: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    code: list[str] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)  # how late each call left vs its schedule

    def ok_latencies(self) -> np.ndarray:
        return np.array([lat for lat, c in zip(self.latency, self.code) if c == "OK"])

    def codes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.code:
            out[c] = out.get(c, 0) + 1
        return out


def _stub(channel):
    return channel.unary_unary("/xsell.v1.RecommendService/Recommend")  # bytes in, bytes out


async def _one(call, payload: bytes, calls: Calls, t0: float, scheduled: float) -> None:
    import grpc

    start = time.perf_counter()
    calls.lag.append(start - t0 - scheduled)
    try:
        await call(payload, timeout=DEADLINE)
        code = "OK"
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
    calls.sent.append(start - t0)
    calls.latency.append(time.perf_counter() - start)
    calls.code.append(code)


async def open_loop(port: int, payloads: list[bytes], rate: float, seconds: float, *, channels: int = 4,
                    seed: int = 0, stubs: list | None = None,
                    pick: Callable[[int], int] | None = None) -> Calls:  # fmt: skip
    """Fire calls at `rate`/s (Poisson arrivals, seeded) for `seconds`, never waiting for answers.

    The schedule and the driver are the load harness's (`xsell.clients.loadtest`); the
    latency recorded here counts from when the call actually left, and how late it left
    is recorded apart (`Calls.lag`). Call i goes over `channels` new connections in
    turn, or over `stubs[pick(i)]` when the caller brings its own connections."""
    import grpc
    from xsell.clients.loadtest.runner import open_loop as drive
    from xsell.clients.loadtest.stats import arrival_offsets

    chans = []
    if stubs is None:
        chans = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
                 for _ in range(channels)]  # fmt: skip
        stubs = [_stub(c) for c in chans]
    if pick is None:
        n = len(stubs)

        def pick(i: int) -> int:
            return i % n

    calls = Calls()
    offsets = arrival_offsets(rate, seconds, seed=seed)
    t0 = time.perf_counter()
    loop_t0 = asyncio.get_running_loop().time()

    def fire(i: int, _due: float):
        return _one(stubs[pick(i)], payloads[i % len(payloads)], calls, t0, float(offsets[i]))

    def drop(_due: float) -> None:  # not reached: no cap on outstanding calls
        raise AssertionError("open loop dropped a call")

    await drive(loop_t0 + offsets, fire, max_outstanding=10**9, drop=drop)
    for c in chans:
        await c.close()
    return calls


async def closed_loop(port: int, payloads: list[bytes], callers: int, seconds: float,
                      backoff: float = 0.010) -> Calls:  # fmt: skip
    """`callers` callers (one connection each), each sending its next call when the last
    returned, for `seconds` (the load harness's closed-loop driver). A caller refused with
    RESOURCE_EXHAUSTED waits `backoff` s first, as the refusal asks: callers retrying at
    once would measure the server's refusal storm, not its capacity."""
    import grpc
    from xsell.clients.loadtest.runner import closed_loop as drive

    chans = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
             for _ in range(callers)]  # fmt: skip
    stubs = [_stub(c) for c in chans]
    calls = Calls()
    t0 = time.perf_counter()
    until = asyncio.get_running_loop().time() + seconds

    async def fire(k: int, j: int, _due: float) -> None:
        await _one(stubs[k], payloads[j % len(payloads)], calls, t0, time.perf_counter() - t0)
        if calls.code[-1] == "RESOURCE_EXHAUSTED":
            await asyncio.sleep(backoff)

    await drive(callers, until, fire)
    for c in chans:
        await c.close()
    return calls


def pct(values, q: float) -> float:
    return float(np.percentile(values, q)) * 1e3 if len(values) else float("nan")


def loadavg() -> float:
    return os.getloadavg()[0]


class Sampler(threading.Thread):
    """Samples server RSS every `interval` s, and (optionally) a health check per interval."""

    def __init__(self, server: Server, interval: float, health: bool) -> None:
        super().__init__(daemon=True)
        self.server, self.interval, self.health = server, interval, health
        self.rss: list[tuple[float, float]] = []
        self.health_codes: dict[str, int] = {}
        self.health_latency: list[float] = []
        self._halt = threading.Event()

    def run(self) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}",
                                        options=[("grpc.use_local_subchannel_pool", 1)])  # fmt: skip
        stub = health_pb2_grpc.HealthStub(channel)
        t0 = time.perf_counter()
        while not self._halt.wait(self.interval):
            self.rss.append((time.perf_counter() - t0, self.server.rss_mib()))
            if self.health:
                start = time.perf_counter()
                try:
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=DEADLINE)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                self.health_latency.append(time.perf_counter() - start)
                self.health_codes[code] = self.health_codes.get(code, 0) + 1
        channel.close()

    def stop(self) -> None:
        self._halt.set()
        self.join()


def recovery_seconds(probes: Calls, baseline_p50_s: float, bin_s: float = 0.5) -> float:
    """Seconds after the overload ended until latency is normal again: the end of the last
    `bin_s` bin of probes that had a failed call or a median over 2 x the unloaded p50
    (0.0 when the first bin was already normal). Medians per bin, so one slow probe on a
    shared host does not count as not recovered."""
    sent = np.asarray(probes.sent)
    lat = np.asarray(probes.latency)
    ok = np.asarray([c == "OK" for c in probes.code])
    last_bad = 0.0
    for start in np.arange(0.0, sent.max() if len(sent) else 0.0, bin_s):
        sel = (sent >= start) & (sent < start + bin_s)
        if sel.any() and (not ok[sel].all() or np.median(lat[sel]) > 2 * baseline_p50_s):
            last_bad = float(start + bin_s)
    return last_bad


def run(args) -> dict:
    server_cpus = None if args.no_pin else split_cpus(args.workers, hint=NO_PIN_HINT)[0]
    log_path = Path(args.log)
    server = start_server(args.bundle, workers=args.workers, threads=args.threads,
                          max_in_flight=args.max_in_flight, cpus=server_cpus, log_path=log_path,
                          extra=("--cpu-policy", args.cpu_policy))  # fmt: skip
    payloads = make_requests(args.bundle, path=args.requests)
    out: dict = {"requests": args.requests, "workers": args.workers, "threads": args.threads, "max_in_flight": args.max_in_flight, "cpu_policy": args.cpu_policy,
                 "factor": args.factor, "seconds": args.seconds, "deadline_s": DEADLINE,
                 "pinned": not args.no_pin}  # fmt: skip
    try:
        asyncio.run(open_loop(server.port, payloads, args.probe_rate, 3.0))  # warm-up
        la = loadavg()
        base = asyncio.run(open_loop(server.port, payloads, args.probe_rate, 10.0, seed=1))
        ok = base.ok_latencies()
        out["unloaded"] = {"p50_ms": pct(ok, 50), "p99_ms": pct(ok, 99), "n": len(base.code),
                           "codes": base.codes(), "load_avg": la}  # fmt: skip
        print(f"unloaded   p50 {out['unloaded']['p50_ms']:.1f} ms  p99 {out['unloaded']['p99_ms']:.1f} ms  "
              f"(load avg {la:.1f})", flush=True)  # fmt: skip

        la = loadavg()
        cap = asyncio.run(closed_loop(server.port, payloads, args.callers, 10.0))
        capacity = cap.codes().get("OK", 0) / 10.0
        out["capacity"] = {"ok_per_s": capacity, "callers": args.callers, "codes": cap.codes(),
                           "p99_ms": pct(cap.ok_latencies(), 99), "load_avg": la}  # fmt: skip
        print(
            f"capacity   {capacity:.0f} OK/s with {args.callers} closed-loop callers (load avg {la:.1f})",
            flush=True,
        )

        rate = args.factor * capacity
        rss_before = server.rss_mib()
        sampler = Sampler(server, 0.1, health=True)
        sampler.start()
        la = loadavg()
        over = asyncio.run(
            open_loop(server.port, payloads, rate, args.seconds, channels=args.channels, seed=2)
        )
        sampler.stop()
        la_after = loadavg()
        # starts right after the overload ended: probe times count from there
        probes = asyncio.run(open_loop(server.port, payloads, args.probe_rate, 10.0, seed=3))
        codes = over.codes()
        n = len(over.code)
        ok = over.ok_latencies()
        unloaded_p99 = out["unloaded"]["p99_ms"]
        rec = recovery_seconds(probes, out["unloaded"]["p50_ms"] / 1e3)
        rss = [r for _, r in sampler.rss]
        out["overload"] = {
            "target_rate": rate, "sent": n, "achieved_rate": n / args.seconds,
            "lag_p99_ms": pct(np.asarray(over.lag), 99),
            "codes": codes, "shed_rate": codes.get("RESOURCE_EXHAUSTED", 0) / max(n, 1),
            "ok_rate": codes.get("OK", 0) / args.seconds,
            "other_errors": n - codes.get("OK", 0) - codes.get("RESOURCE_EXHAUSTED", 0),
            "accepted_p50_ms": pct(ok, 50), "accepted_p99_ms": pct(ok, 99),
            "accepted_p99_over_unloaded_p99": pct(ok, 99) / unloaded_p99,
            "rss_before_mib": rss_before, "rss_max_mib": max(rss) if rss else None,
            "rss_end_mib": rss[-1] if rss else None,
            "health": {"codes": sampler.health_codes, "p99_ms": pct(np.asarray(sampler.health_latency), 99)},
            "load_avg_start": la, "load_avg_end": la_after,
        }  # fmt: skip
        first = np.asarray(probes.sent) < 1.0
        out["recovery"] = {"seconds": rec, "median_threshold_ms": 2 * out["unloaded"]["p50_ms"],
                           "probe_codes": probes.codes(),
                           "first_second_p50_ms": pct(np.asarray(probes.latency)[first], 50),
                           "probe_p99_ms": pct(probes.ok_latencies(), 99),
                           "load_avg": loadavg()}  # fmt: skip
        o = out["overload"]
        print(f"overload   {o['target_rate']:.0f}/s target, {o['achieved_rate']:.0f}/s sent (lag p99 "
              f"{o['lag_p99_ms']:.0f} ms): shed {o['shed_rate']:.1%}, OK {o['ok_rate']:.0f}/s, other errors "
              f"{o['other_errors']}, accepted p50 {o['accepted_p50_ms']:.1f} / p99 {o['accepted_p99_ms']:.1f} ms "
              f"({o['accepted_p99_over_unloaded_p99']:.2f}x unloaded p99), RSS {o['rss_before_mib']:.0f} -> max "
              f"{o['rss_max_mib']:.0f} MiB, health {o['health']['codes']} p99 {o['health']['p99_ms']:.1f} ms "
              f"(load avg {o['load_avg_start']:.1f} -> {o['load_avg_end']:.1f})", flush=True)  # fmt: skip
        r = out["recovery"]
        print(
            f"recovery   {r['seconds']:.1f} s until every 0.5 s bin of probes is OK with median < "
            f"{r['median_threshold_ms']:.1f} ms; probes {r['probe_codes']}, first-second p50 "
            f"{r['first_second_p50_ms']:.1f} ms, p99 {r['probe_p99_ms']:.1f} ms",
            flush=True,
        )
    finally:
        out["server_exit"] = server.stop()
    return out


_REFUSAL_CLIENT = r"""
import asyncio, sys, grpc
async def main(port, n, body):
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    call = ch.unary_unary("/xsell.v1.RecommendService/Recommend")
    codes, sem = {}, asyncio.Semaphore(16)
    async def one():
        async with sem:
            try:
                await call(body, timeout=10); c = "OK"
            except grpc.aio.AioRpcError as e:
                c = e.code().name
            codes[c] = codes.get(c, 0) + 1
    await asyncio.gather(*(one() for _ in range(200)))  # warm-up
    print("READY", flush=True); sys.stdin.readline()
    codes.clear()
    await asyncio.gather(*(one() for _ in range(n)))
    print(codes, flush=True)
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(sys.argv[3])))
"""


def refusal_cpu(bundle: str, payload: bytes, calls: int) -> dict:
    """Server CPU per refused call: an in-process server whose in-flight bound is taken
    (one admission ticket held), so every Recommend call is refused without ranking;
    a client subprocess sends `calls` calls, 16 at a time. CPU of this process only."""
    import resource

    from xsell.server.app import create_server

    srv, port = create_server(bundle, threads=1, max_in_flight=1, access_log=False)
    srv.start()
    ticket = srv.admission.try_acquire()  # the bound is now full
    client = subprocess.Popen([sys.executable, "-c", _REFUSAL_CLIENT, str(port), str(calls), payload.hex()],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert client.stdout.readline().strip() == "READY"
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        client.stdin.write("\n")
        client.stdin.flush()
        codes = client.stdout.readline().strip()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        client.wait(30)
        ticket.release()
        srv.stop(None)
    cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    return {"calls": calls, "codes": codes, "server_cpu_us_per_refusal": cpu / calls * 1e6,
            "load_avg": loadavg()}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bundle", required=True)
    p.add_argument("--requests", default=None,
                   help="request file (`xsell loadtest requests`); default: 1-3 item carts of the bundle's items")  # fmt: skip
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="default: the server's")
    p.add_argument("--max-in-flight", type=int, default=None)
    p.add_argument("--cpu-policy", choices=("batch", "normal"), default="batch",
                   help="the server's --cpu-policy")  # fmt: skip
    p.add_argument("--callers", type=int, default=16, help="closed-loop callers measuring capacity")
    p.add_argument(
        "--channels", type=int, default=16, help="connections of the overload's open loop"
    )
    p.add_argument("--factor", type=float, default=5.0, help="overload rate / capacity")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--probe-rate", type=float, default=20.0)
    p.add_argument(
        "--no-pin", action="store_true", help="do not split the CPUs between server and generator"
    )
    p.add_argument("--log", default="/tmp/xsell-bench-overload.log", help="server stderr")
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--refusal-cpu", type=int, default=0, metavar="N",
                   help="instead: server CPU per refused call, over N refusals (in-process server)")  # fmt: skip
    args = p.parse_args()
    if args.refusal_cpu:
        out = refusal_cpu(
            args.bundle, make_requests(args.bundle, path=args.requests)[0], args.refusal_cpu
        )
        print(f"refusal    {out['server_cpu_us_per_refusal']:.0f} us of server CPU per refused call "
              f"({out['codes']}, load avg {out['load_avg']:.1f})")  # fmt: skip
    else:
        out = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
