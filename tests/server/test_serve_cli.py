"""`xsell serve` as a real subprocess: worker processes sharing a port, reload reaching
every worker, multiprocess metrics, and the SIGTERM drain."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from xsell.v1 import xsell_pb2 as pb
from xsell.v1 import xsell_pb2_grpc as pb_grpc

from ..conftest import serve_command, unused_port


def metric_samples(port: int, name: str) -> list:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return [
        s
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if s.name == name
    ]


def model_info(port: int) -> tuple[int, pb.GetModelInfoResponse]:
    """(worker pid, info) over a fresh connection: SO_REUSEPORT picks a worker per connection."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        info, call = pb_grpc.RecommendServiceStub(channel).GetModelInfo.with_call(
            pb.GetModelInfoRequest(), timeout=10
        )
        return int(dict(call.trailing_metadata())["xsell-worker-pid"]), info


def thread_policies(pid: int) -> set[int]:
    """The scheduling policy of every thread of process `pid` (gRPC's, the pool's, ...)."""
    policies = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            policies.add(os.sched_getscheduler(int(tid)))
        except ProcessLookupError:  # a thread that ended meanwhile
            pass
    return policies


def test_two_workers_share_the_port_and_reload_together(
    serve_cli, bundle_dir, bundle_root, copy_bundle, ranker
):
    metrics_port = unused_port()
    proc = serve_cli(
        bundle_dir, "--workers", "2", "--metrics-port", str(metrics_port), "--no-access-log"
    )
    assert len(proc.pids) == 2 and proc.process.pid not in proc.pids

    calls = 0
    seen: dict[int, str] = {}
    while len(seen) < 2 and calls < 60:
        pid, info = model_info(proc.port)
        calls += 1
        seen[pid] = info.model_version
    assert set(seen) == set(proc.pids), f"only {sorted(seen)} answered in {calls} connections"
    assert set(seen.values()) == {ranker.version}
    if len(os.sched_getaffinity(0)) >= 2:
        pinned = [os.sched_getaffinity(pid) for pid in proc.pids]
        assert all(len(cpus) == 1 for cpus in pinned) and pinned[0] != pinned[1]
    if hasattr(os, "SCHED_BATCH"):  # the default policy, in every thread of both workers
        assert [thread_policies(pid) for pid in proc.pids] == [{os.SCHED_BATCH}] * 2

    # A reload taken by one worker reaches the other through the supervisor's state file.
    version = f"cli-{uuid.uuid4().hex[:8]}"
    new = copy_bundle(bundle_dir, bundle_root / version, version=version)
    with grpc.insecure_channel(f"127.0.0.1:{proc.port}") as channel:
        reply = pb_grpc.RecommendServiceStub(channel).ReloadModel(
            pb.ReloadModelRequest(bundle_path=str(new)), timeout=30
        )
    assert reply.model_version == version
    updated: set[int] = set()
    infos = 0
    deadline = time.monotonic() + 20
    while updated != set(proc.pids) and time.monotonic() < deadline:
        pid, info = model_info(proc.port)
        infos += 1
        if info.model_version == version:
            assert info.bundle_path == str(new.resolve())
            updated.add(pid)
        else:
            time.sleep(0.05)
    assert updated == set(proc.pids), proc.log()[-3000:]

    # Metrics summed over both workers: every GetModelInfo call above is counted once.
    got = sum(s.value for s in metric_samples(metrics_port, "xsell_requests_total")
              if s.labels == {"method": "GetModelInfo", "code": "OK"})  # fmt: skip
    assert got == calls + infos
    serving = {s.labels["pid"] for s in metric_samples(metrics_port, "xsell_model_info")
               if s.labels["version"] == version and s.value == 1}  # fmt: skip
    assert serving == {str(p) for p in proc.pids}

    # A worker killed outright is replaced, and the new one starts on the reloaded bundle.
    victim = proc.pids[0]
    os.kill(victim, signal.SIGKILL)
    replacement = None
    deadline = time.monotonic() + 30
    while replacement is None and time.monotonic() < deadline:
        try:
            pid, info = model_info(proc.port)
        except grpc.RpcError:  # a connection that hit the dying worker
            continue
        if pid not in proc.pids:
            replacement = pid
            assert info.model_version == version
    assert replacement is not None, proc.log()[-3000:]
    assert "died" in proc.log()
    if hasattr(os, "SCHED_BATCH"):
        assert thread_policies(replacement) == {os.SCHED_BATCH}

    assert proc.terminate() == 0, proc.log()[-3000:]


def test_unknown_cpu_policy_is_refused_naming_the_flag():
    from xsell.server.workers import ServeConfig, serve

    with pytest.raises(ValueError, match=r"--cpu-policy must be one of batch, normal, got 'fast'"):
        serve(ServeConfig(bundle="unused", cpu_policy="fast"))


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")
@pytest.mark.parametrize(
    ("args", "parent", "policy"),
    [
        ((), "SCHED_OTHER", "SCHED_BATCH"),
        # set, not inherited: a server started from a batch parent runs normal when asked
        (("--cpu-policy", "normal"), "SCHED_BATCH", "SCHED_OTHER"),
    ],
)
def test_cpu_policy_of_an_in_process_server(serve_cli, bundle_dir, args, parent, policy):
    before = os.sched_getscheduler(0)
    os.sched_setscheduler(0, getattr(os, parent), os.sched_param(0))  # the child inherits it
    try:
        proc = serve_cli(bundle_dir, "--workers", "1", "--no-access-log", *args)
    finally:
        os.sched_setscheduler(0, before, os.sched_param(0))
    model_info(proc.port)  # the call threads exist now
    assert thread_policies(proc.process.pid) == {getattr(os, policy)}
    assert proc.terminate() == 0


@pytest.mark.parametrize(
    ("workers", "group"),
    [(1, False), (2, False), (2, True)],
    ids=["in-process", "supervisor", "process-group"],
)
def test_sigterm_drains_calls_in_flight(serve_cli, bundle_dir, facts, workers, group):
    """SIGTERM to the server (or to its whole process group, as systemd sends it):
    the calls in flight complete, and the command exits 0."""
    metrics_port = unused_port()
    proc = serve_cli(
        bundle_dir, "--workers", str(workers), "--metrics-port", str(metrics_port), "--grace", "30"
    )
    items = facts.items_by_popularity
    batch = pb.RecommendBatchRequest(requests=[
        pb.RecommendRequest(cart=[pb.CartLine(item_id=items[(5 * k + j) % len(items)]) for j in range(3)],
                            explain=True, limit=100)
        for k in range(16)
    ])  # fmt: skip
    n_calls = 3
    channels = [
        grpc.insecure_channel(
            f"127.0.0.1:{proc.port}", options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        for _ in range(n_calls)
    ]
    try:
        with ThreadPoolExecutor(n_calls) as pool:
            futures = [
                pool.submit(pb_grpc.RecommendServiceStub(ch).RecommendBatch, batch, timeout=60)
                for ch in channels
            ]

            def in_flight() -> float:
                return sum(
                    s.value for s in metric_samples(metrics_port, "xsell_in_flight_requests")
                )

            deadline = time.monotonic() + 10
            while in_flight() < n_calls and time.monotonic() < deadline:
                time.sleep(0.01)
            assert in_flight() == n_calls, "the calls never were in flight together"
            code = proc.terminate(timeout=60, group=group)
            assert not any(f.exception() for f in futures), [f.exception() for f in futures]
            assert all(len(f.result().responses) == len(batch.requests) for f in futures)
    finally:
        for ch in channels:
            ch.close()
    assert code == 0, proc.log()[-3000:]
    assert "draining" in proc.log()
    with (
        grpc.insecure_channel(f"127.0.0.1:{proc.port}") as channel,
        pytest.raises(grpc.RpcError) as info,
    ):
        pb_grpc.RecommendServiceStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=2)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_unloadable_bundle_stops_serve(tmp_path):
    """Workers that cannot load the bundle at first start stop the command: exit 2, a clear line."""
    missing = tmp_path / "no-bundle-here"
    cmd = serve_command(missing, "--workers", "2")
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"{missing}: not a directory" in done.stderr
    assert "listening" not in done.stdout


@pytest.mark.parametrize("workers", ["1", "2"])
def test_bad_admission_flags_are_refused_naming_the_flag(bundle_dir, workers):
    # With workers, each spawned worker died of a ValueError traceback ("threads must be
    # >= 1") and the supervisor exited 1 once they were gone.
    for args, words in (
        (["--threads", "0"], "--threads must be >= 1, got 0"),
        (["--max-in-flight", "0"], "--max-in-flight must be >= 1, got 0"),
    ):
        cmd = serve_command(bundle_dir, "--workers", workers, "--no-pin", *args)
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
        # a usage error like every other: exit code 2 and "error:", as argparse and main() give
        assert done.returncode == 2 and f"xsell serve: error: {words}" in done.stderr, done.stderr[-3000:]
        assert "Traceback" not in done.stderr and "listening" not in done.stdout


@pytest.mark.parametrize("workers", [1, 2])
def test_the_token_file_is_read_once(serve_cli, bundle_dir, tmp_path, workers):
    """The token file is read by the command once: its permission warning is logged once.
    (`serve` read it to fail fast, then the in-process server read it again; with
    --workers N every worker read it once more: N + 1 warnings.) Workers get the table
    read then, so all of them, restarted ones included, check the same tokens."""
    path = tmp_path / "tokens"
    path.write_text("checkout 0123456789abcdef0123\n")
    path.chmod(0o644)  # readable by others: the warning
    proc = serve_cli(
        bundle_dir, "--workers", str(workers), "--no-access-log", "--auth-tokens", str(path)
    )
    with grpc.insecure_channel(f"127.0.0.1:{proc.port}") as channel:
        stub = pb_grpc.RecommendServiceStub(channel)
        bearer = (("authorization", "Bearer 0123456789abcdef0123"),)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=bearer, timeout=10)
        assert info.model_version
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert proc.terminate() == 0
    log = proc.log()
    assert log.count(f"token file {path} is readable by group or others") == 1, log[-3000:]
