"""Open- and closed-loop driving: send times follow the schedule, latency counts queueing.

The gRPC cases run the real client processes against a real in-process gRPC server
whose health Check takes a known time on a single thread, so the queueing is known.
"""

from __future__ import annotations

import asyncio
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from xsell.clients.loadtest.report import build_report, window_samples
from xsell.clients.loadtest.runner import LoadConfig, closed_loop, health_body, open_loop, run_load
from xsell.clients.loadtest.stats import arrival_offsets

SERVICE_S = 0.010  # the slow server's time per call


class _SlowHealth(health.HealthServicer):
    def Check(self, request, context):
        time.sleep(SERVICE_S)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture(scope="module")
def slow_server():
    """One handler thread: calls queue up and are served one after another."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    health_pb2_grpc.add_HealthServicer_to_server(_SlowHealth(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def test_open_loop_driver_keeps_the_schedule_through_a_client_stall():
    """A stalled event loop delays the sends, and the delay is in the latency."""
    stall, period, service = 0.15, 0.01, 0.002
    log: list[tuple[int, float, float, float]] = []  # (j, due, started, done)

    async def fire(j: int, due: float) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        if j == 5:
            time.sleep(stall)  # noqa: ASYNC251 - the client process is busy: nothing runs meanwhile
        await asyncio.sleep(service)
        log.append((j, due, started, loop.time()))

    async def main() -> np.ndarray:
        loop = asyncio.get_running_loop()
        due = loop.time() + 0.02 + np.arange(40) * period
        await open_loop(due, fire, 1000, lambda d: pytest.fail("nothing may be dropped"))
        return due

    due = asyncio.run(main())
    log.sort()
    assert [row[1] for row in log] == due.tolist()  # every call gets its own due time
    lag = np.array([started - d for _, d, started, _ in log])
    latency = np.array([done - d for _, d, _, done in log])
    # before the stall the sends follow the schedule
    assert np.all(lag[:6] < 0.04), lag[:6]  # loose: the host may be busy
    # calls due during the stall start late, and that lateness counts in their latency
    in_stall = [j for j in range(6, 40) if due[j] < due[5] + stall - 0.005]
    assert len(in_stall) >= 10
    for j in in_stall:
        assert lag[j] >= due[5] + stall - due[j] - 0.002
        assert latency[j] >= lag[j] + service - 0.001
    # after it the schedule is caught up with, not shifted
    assert np.all(lag[-5:] < 0.04), lag[-5:]


def test_open_loop_driver_drops_beyond_the_outstanding_limit():
    dropped: list[float] = []

    async def fire(j, due):
        await asyncio.sleep(0.2)

    async def main():
        loop = asyncio.get_running_loop()
        await open_loop(loop.time() + np.arange(10) * 0.001, fire, 3, dropped.append)

    asyncio.run(main())
    assert len(dropped) == 7


def test_closed_loop_driver_keeps_callers_busy():
    in_flight, peak = 0, 0
    calls: dict[int, list[int]] = {}

    async def fire(k, j, due):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        calls.setdefault(k, []).append(j)
        await asyncio.sleep(0.005)
        in_flight -= 1

    async def main():
        loop = asyncio.get_running_loop()
        await closed_loop(4, loop.time() + 0.1, fire)

    asyncio.run(main())
    assert peak == 4  # never more than the callers, and all of them busy
    assert sorted(calls) == [0, 1, 2, 3]
    for js in calls.values():  # each caller walks the mix from its own start
        assert js == list(range(js[0], js[0] + len(js))) and len(js) >= 5
    assert len({js[0] for js in calls.values()}) == 4


def test_open_loop_over_grpc_counts_server_queueing(slow_server):
    """Offered 150/s to a server that does 100/s: the backlog grows ~0.5 s over 1 s."""
    rate, duration = 150.0, 1.0
    cfg = LoadConfig(address=slow_server, target="health", concurrency=None, rate=rate, duration=duration,
                     warmup=0.0, arrival="uniform", timeout=10.0, procs=1)  # fmt: skip
    raw = run_load(cfg, [health_body()])
    s = window_samples(raw)
    assert np.all(s["code"] == "OK")
    # the calls were due exactly on the uniform schedule, and were sent on time
    assert np.allclose(s["t"], arrival_offsets(rate, duration, seed=0, arrival="uniform"))
    assert np.percentile(s["lag"], 99) < 0.1
    # one server thread: the k-th completion is at least (k+1) service times after the start
    done = np.sort(s["t"] + s["latency"])
    assert np.all(done >= (np.arange(len(done)) + 1) * SERVICE_S - 0.002)
    lat = s["latency"]
    assert lat.max() >= 0.35  # D/D/1 backlog: 150 * (1/100 - 1/150) * 1 s ~ 0.5 s
    third = len(lat) // 3
    assert lat[-third:].mean() > lat[:third].mean() + 0.2  # and it grows over the run
    rep = build_report(raw)
    assert rep["latency_ms"]["max"] == pytest.approx(lat.max() * 1e3)
    assert rep["calls"] == len(lat) == 150 and rep["errors"] == {}


def test_timeline_counts_only_the_calls_sent(slow_server):
    """Offered 150/s to a 100/s server with at most 3 calls outstanding: the calls past the
    limit are CLIENT_BACKLOG, never sent, and the timeline's calls/s leaves them out."""
    cfg = LoadConfig(address=slow_server, target="health", concurrency=None, rate=150.0, duration=1.0,
                     warmup=0.0, arrival="uniform", timeout=10.0, procs=1, max_outstanding=3)  # fmt: skip
    rep = build_report(run_load(cfg, [health_body()]))
    dropped = rep["not_sent_backlog"]
    assert dropped >= 20 and rep["codes"]["CLIENT_BACKLOG"] == dropped  # ~50 expected
    sent = sum(r["rate"] for r in rep["timeline"]) * 1.0  # one 1 s step
    assert sent == pytest.approx(rep["calls"] - dropped)
    # the dropped calls are still errors of their step
    assert sum(r["errors"] for r in rep["timeline"]) == dropped


def test_uniform_open_loop_over_processes_interleaves(slow_server):
    """60/s over 2 processes is one call every 1/60 s, not 2 calls at once every 1/30 s."""
    rate, duration = 60.0, 1.0
    cfg = LoadConfig(address=slow_server, target="health", concurrency=None, rate=rate, duration=duration,
                     warmup=0.0, arrival="uniform", timeout=10.0, procs=2)  # fmt: skip
    s = window_samples(run_load(cfg, [health_body()]))
    assert np.all(s["code"] == "OK")
    assert np.allclose(s["t"], arrival_offsets(rate, duration, seed=0, arrival="uniform"))


def test_closed_loop_over_grpc_matches_the_server_capacity(slow_server):
    cfg = LoadConfig(
        address=slow_server, target="health", concurrency=2, duration=1.5, warmup=0.3, procs=2
    )
    rep = build_report(run_load(cfg, [health_body()]))
    assert rep["errors"] == {}
    capacity = 1 / SERVICE_S
    assert 0.5 * capacity <= rep["ok_rps"] <= 1.02 * capacity
    # two callers share one server thread: a call waits for the other one
    assert 1.5 * SERVICE_S * 1e3 <= rep["latency_ms"]["p50"] <= 6 * SERVICE_S * 1e3
    assert rep["client"]["cpu_cores"] > 0 and rep["client"]["procs"] == 2
    assert rep["client"]["checked_responses"]["not_serving"] == 0


def test_config_validation():
    with pytest.raises(ValueError, match="exactly one"):
        LoadConfig(concurrency=4, rate=10.0).validated()
    with pytest.raises(ValueError, match="target"):
        LoadConfig(target="everything").validated()
    with pytest.raises(ValueError, match="idle"):
        LoadConfig(concurrency=2, procs=3).validated()
    with pytest.raises(ValueError, match="connections must be >= 0"):
        LoadConfig(connections=-1).validated()


def test_balanced_pick_gives_every_worker_the_same_share():
    from xsell.clients.loadtest.runner import balanced_pick

    owners = ["a", "a", "a", "b", "a", "a", "b", "a"]  # a 6:2 split of 8 connections
    pick = balanced_pick(owners)
    picked = [owners[pick(i)] for i in range(1000)]
    assert picked.count("a") == picked.count("b") == 500
    # and each worker's connections take turns
    conns = [pick(i) for i in range(0, 1000, 2)]
    assert {k: conns.count(k) for k in set(conns)} == {0: 84, 1: 84, 2: 83, 4: 83, 5: 83, 7: 83}


def test_calls_are_balanced_over_the_workers_of_a_real_server(serve_cli, bundle_dir, ranker):
    """`xsell serve --workers 2`: the kernel spreads connections, not calls; the harness
    learns each connection's worker and gives both the same number of calls, whatever the
    connection split (7 connections: never even). Counted by the workers' own access
    lines; with --no-balance the calls follow the connections (checked when they split
    unevenly, which is the case unless the kernel gave a worker none)."""
    import re
    from collections import Counter

    from xsell.v1 import xsell_pb2 as pb

    proc = serve_cli(bundle_dir, "--workers", "2")
    bodies = [pb.RecommendRequest(cart=[pb.CartLine(item_id=str(i))], limit=10).SerializeToString()
              for i in ranker.arts.items.ids[:50]]  # fmt: skip

    def calls_per_worker() -> Counter:
        return Counter(int(p) for p in re.findall(r'"method": "Recommend", .*?"pid": (\d+)', proc.log()))

    for balance in (True, False):
        for _attempt in range(5):  # the kernel may give one worker all 7 (1 in 64 if at random)
            before = calls_per_worker()
            cfg = LoadConfig(address=f"127.0.0.1:{proc.port}", concurrency=None, rate=150.0, duration=1.0,
                             warmup=0.0, connections=7, timeout=10.0, balance=balance)  # fmt: skip
            rep = build_report(run_load(cfg, bodies))
            assert rep["errors"] == {}
            split = rep["workers"]["connections_per_worker"]
            assert sum(split.values()) == 7 and {int(p) for p in split} <= set(proc.pids)
            if len(split) == 2:
                break
        assert len(split) == 2, "every attempt put all 7 connections on one worker"
        assert rep["workers"]["balanced"] is balance
        time.sleep(0.5)  # the last access lines reach the log
        counts = calls_per_worker() - before
        # less the one checking call each connection makes before the run
        got = [counts[p] - split.get(str(p), 0) for p in proc.pids]
        assert sum(got) >= 100, got
        if balance:
            assert abs(got[0] - got[1]) <= 1, (got, split)
        else:  # in turn over 7 connections: the shares follow the connection split
            want = [split[str(p)] / 7 for p in proc.pids]
            assert all(abs(g / sum(got) - w) < 0.05 for g, w in zip(got, want)), (got, split)


class _FailsAfter(health.HealthServicer):
    """OK for the first `ok` calls, then UNAVAILABLE; notes when it first refused."""

    def __init__(self, ok: int) -> None:
        self.ok, self.calls, self.first_refusal = ok, 0, None

    def Check(self, request, context):
        self.calls += 1
        if self.calls > self.ok:
            if self.first_refusal is None:
                self.first_refusal = time.monotonic()
            context.abort(grpc.StatusCode.UNAVAILABLE, "refused on purpose")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def test_a_failed_client_process_stops_the_others_at_once():
    """Three client processes each make one first call; the server refuses the third.
    The run must raise naming it, and not first wait for the two healthy processes (they
    wait for a start time that never comes): that wait was 5 s per process."""
    servicer = _FailsAfter(ok=2)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        cfg = LoadConfig(address=f"127.0.0.1:{port}", target="health", concurrency=3, duration=30.0,
                         warmup=0.0, timeout=10.0, procs=3)  # fmt: skip
        with pytest.raises(RuntimeError, match="UNAVAILABLE: refused on purpose"):
            run_load(cfg, [health_body()])
        after = time.monotonic() - servicer.first_refusal
    finally:
        server.stop(None)
    assert servicer.calls == 3
    assert after < 3.0, f"the error came {after:.1f} s after the failed call"
