"""Faults: corrupt bundles offered for reload while traffic flows, kill -9 of a worker
under load, training killed or out of disk half-way, deadlines shorter than the work,
calls abandoned in the queue."""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from xsell.errors import BundleError
from xsell.v1 import xsell_pb2 as pb

from .conftest import good_request, stub_for, wait_until


def _rehash(bundle: Path, name: str) -> None:
    """Make the manifest agree with a spoiled file, so only loading it can tell."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _truncate(bundle: Path, name: str, keep: float) -> None:
    data = (bundle / name).read_bytes()
    (bundle / name).write_bytes(data[: int(len(data) * keep)])


def spoil_truncated_annoy(b):  # the manifest's hash catches it
    _truncate(b, "ann.idx", 0.5)


def spoil_truncated_annoy_rehashed(b):  # annoy itself must refuse it
    _truncate(b, "ann.idx", 0.37)
    _rehash(b, "ann.idx")


def spoil_half_node_annoy_rehashed(b):
    _truncate(b, "ann.idx", 0.999)
    _rehash(b, "ann.idx")


def spoil_garbage_lightgbm(b):
    (b / "model_cross_sell.txt").write_bytes(os.urandom(5000))
    _rehash(b, "model_cross_sell.txt")


def spoil_lightgbm_cut(b):
    _truncate(b, "model_up_sell.txt", 0.6)
    _rehash(b, "model_up_sell.txt")


def spoil_hash_mismatch(b):
    with open(b / "items.json", "a") as fh:
        fh.write(" ")


def spoil_feature_mismatch(b):
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["feature_names"] = manifest["feature_names"][:-1]
    (b / "manifest.json").write_text(json.dumps(manifest))


def spoil_partial_copy(b):  # a copy interrupted half-way: some files missing
    for name in sorted(p.name for p in b.iterdir() if p.name != "manifest.json")[::2]:
        (b / name).unlink()


def spoil_manifest_cut(b):
    _truncate(b, "manifest.json", 0.5)


def spoil_empty_dir(b):
    for p in b.iterdir():
        p.unlink()


def spoil_npz_garbage(b):
    (b / "stats.npz").write_bytes(b"PK\x03\x04" + os.urandom(200))
    _rehash(b, "stats.npz")


SPOILERS = [spoil_truncated_annoy, spoil_truncated_annoy_rehashed, spoil_half_node_annoy_rehashed,
            spoil_garbage_lightgbm, spoil_lightgbm_cut, spoil_hash_mismatch, spoil_feature_mismatch,
            spoil_partial_copy, spoil_manifest_cut, spoil_empty_dir, spoil_npz_garbage]  # fmt: skip


def test_corrupt_bundles_are_refused_while_traffic_flows(make_server, ranker, known_items, bundle_root,
                                                         bundle_dir, copy_bundle, caplog):  # fmt: skip
    srv = make_server(threads=4)
    tag = uuid.uuid4().hex[:6]
    bad = {}
    for spoil in SPOILERS:
        bad[spoil.__name__] = copy_bundle(bundle_dir, bundle_root / f"{spoil.__name__}-{tag}")
        spoil(bad[spoil.__name__])

    stop = threading.Event()
    ok: Counter[str] = Counter()
    failures: list[str] = []

    def traffic(k: int) -> None:
        channel, stub = stub_for(srv.port)
        with channel:
            while not stop.is_set():
                try:
                    ok[stub.Recommend(good_request(known_items, k), timeout=10).model_version] += 1
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code().name}: {exc.details()}")

    threads = [threading.Thread(target=traffic, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    channel, stub = stub_for(srv.port)
    try:
        assert wait_until(lambda: sum(ok.values()) >= 20, timeout=20)
        for name, path in bad.items():
            before = sum(ok.values())
            with pytest.raises(grpc.RpcError) as info:
                stub.ReloadModel(pb.ReloadModelRequest(bundle_path=path.name), timeout=30)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, (
                name,
                info.value.details(),
            )
            assert path.name in info.value.details()
            assert stub.GetModelInfo(pb.GetModelInfoRequest()).model_version == ranker.version
            assert wait_until(lambda b=before: sum(ok.values()) >= b + 5, timeout=20), (
                f"traffic stalled after {name}"
            )
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        channel.close()
    assert failures == []
    assert set(ok) == {ranker.version}
    assert srv.metrics.sample("xsell_reloads_total", {"outcome": "refused"}) == len(SPOILERS)
    refused = [r.getMessage() for r in caplog.records if "bundle refused" in r.getMessage()]
    assert len(refused) == len(SPOILERS) and all(ranker.version in line for line in refused)


@pytest.mark.slow  # two spawned workers and a restart: 15-30 s on a quiet 2-core host
def test_kill_9_of_one_worker_under_load(serve_cli, bundle_dir, known_items):
    proc = serve_cli(bundle_dir, "--workers", "2", "--no-access-log")
    stop = threading.Event()
    codes: Counter[str] = Counter()
    seen_pids: set[int] = set()
    lock = threading.Lock()

    def traffic(k: int) -> None:
        channel, stub = stub_for(proc.port)  # one connection each: spread over both workers
        with channel:
            while not stop.is_set():
                try:
                    # wait_for_ready: a call made while this connection is re-dialling
                    # waits for it instead of failing fast, so only calls that were in
                    # flight on the killed worker can fail (what the assertion counts)
                    stub.Recommend(good_request(known_items, k), timeout=5, wait_for_ready=True)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                with lock:
                    codes[code] += 1

    def answering_pid() -> int:
        channel, stub = stub_for(proc.port)
        with channel:
            _, call = stub.GetModelInfo.with_call(pb.GetModelInfoRequest(), timeout=5)
            return int(dict(call.trailing_metadata())["xsell-worker-pid"])

    callers = 4
    threads = [threading.Thread(target=traffic, args=(k,)) for k in range(callers)]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: codes["OK"] >= 100, timeout=30)
        victim = proc.pids[0]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        ok_at_kill = codes["OK"]
        # the survivor keeps serving meanwhile
        assert wait_until(lambda: codes["OK"] >= ok_at_kill + 100, timeout=20)

        def replaced() -> bool:
            try:
                seen_pids.add(answering_pid())
            except grpc.RpcError:
                return False
            return bool(seen_pids - set(proc.pids))

        # a spawned worker imports and loads in a few seconds, much longer on a busy host
        assert wait_until(replaced, timeout=90, interval=0.1), proc.log()[-3000:]
        restart_seconds = time.monotonic() - killed_at
        ok_after_restart = codes["OK"]
        assert wait_until(lambda: codes["OK"] >= ok_after_restart + 100, timeout=20)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    lost = codes["UNAVAILABLE"]
    print(f"\nkill -9 of 1 of 2 workers under {callers} callers: {codes['OK']} ok, {lost} lost "
          f"({dict(codes)}), replacement serving after {restart_seconds:.1f}s")  # fmt: skip
    # Only calls on the dead worker may fail: the one in flight per caller, and at most
    # one more per caller whose re-dialled connection the kernel handed to the dying
    # worker's listening socket (SO_REUSEPORT) in the instant before it closed (seen
    # once in ~10 runs on a loaded host). The survivor, serving everyone alone
    # meanwhile, may shed (RESOURCE_EXHAUSTED: "retry").
    assert lost <= 2 * callers, dict(codes)
    assert set(codes) <= {"OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED"}, dict(codes)
    assert "died" in proc.log()


# ------------------------------------------------------------------ training


def _train_cmd(synthetic_dir: Path, out: Path) -> list[str]:
    d = Path(synthetic_dir)
    return [sys.executable, "-m", "xsell.cli", "train", "--events", str(d / "events.csv"),
            "--catalog", str(d / "catalog.csv"), "--out", str(out)]  # fmt: skip


def _leftovers(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.tmp-*"))


def _never_loadable_unless_complete(path: Path) -> str:
    """'refused' when the directory is not a loadable bundle, 'complete' when it loads and
    every file matches its manifest hash; anything else fails the test."""
    from xsell.ranking.ranker import Ranker

    try:
        Ranker.load(path)
    except BundleError:
        return "refused"
    return "complete"


@pytest.mark.slow  # a real `xsell train` run (~10 s)
def test_training_killed_half_way_leaves_no_loadable_half_bundle(tmp_path, synthetic_dir):
    out = tmp_path / "bundles" / "trained"
    proc = subprocess.Popen(
        _train_cmd(synthetic_dir, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    rng = random.Random(11)
    files_before_kill = rng.randint(1, 12)  # somewhere inside the writing of the bundle
    try:
        assert wait_until(
            lambda: any(len(list(t.iterdir())) >= files_before_kill for t in _leftovers(out)) or proc.poll() is not None,
            timeout=120, interval=0.002,
        )  # fmt: skip
        proc.kill()
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, (
        "training ended before the kill: the test proved nothing"
    )
    assert not out.exists(), "the final bundle directory appeared before training finished"
    left = _leftovers(out)
    assert left, "no temporary directory: the kill did not land while the bundle was being written"
    for tmp in left:
        assert _never_loadable_unless_complete(tmp) == "refused", sorted(
            p.name for p in tmp.iterdir()
        )


@pytest.mark.slow  # a real `xsell train` run (~10 s)
def test_disk_full_half_way_leaves_nothing_behind(tmp_path, synthetic_dir):
    out = tmp_path / "bundles" / "trained"

    def small_disk() -> None:  # in the child: writes past 60 kB fail with EFBIG, like ENOSPC
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))

    done = subprocess.run(_train_cmd(synthetic_dir, out), preexec_fn=small_disk, capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode != 0
    assert "File too large" in done.stderr, done.stderr[-3000:]
    assert not out.exists()
    assert _leftovers(out) == []  # the temporary directory was removed


def test_bundle_directory_appears_whole_or_not_at_all(tmp_path, bundle_dir):
    """The writer's rename, watched from another thread while a bundle is written slowly."""
    from xsell.ranking.bundle import atomic_bundle_dir, write_manifest

    out = tmp_path / "b"
    states: Counter[str] = Counter()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if not out.exists():
                states["absent"] += 1
            else:
                states[_never_loadable_unless_complete(out)] += 1

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with atomic_bundle_dir(out) as tmp:
            for src in sorted(bundle_dir.iterdir()):
                if src.name != "manifest.json":
                    shutil.copy(src, tmp / src.name)
                    time.sleep(0.01)
            manifest = json.loads((bundle_dir / "manifest.json").read_text())
            write_manifest(tmp, {k: v for k, v in manifest.items() if k not in ("files", "format")})
        assert wait_until(lambda: states["complete"] >= 1, timeout=10)
    finally:
        stop.set()
        watcher.join()
    assert set(states) == {"absent", "complete"}, states

    with pytest.raises(RuntimeError), atomic_bundle_dir(tmp_path / "c") as tmp:
        shutil.copy(bundle_dir / "ann.idx", tmp / "ann.idx")
        raise RuntimeError("disk full")
    assert not (tmp_path / "c").exists() and _leftovers(tmp_path / "c") == []


# ------------------------------------------------------------------ deadlines


def heavy_batch(items: list[str], n: int = 64) -> pb.RecommendBatchRequest:
    return pb.RecommendBatchRequest(requests=[
        pb.RecommendRequest(cart=[pb.CartLine(item_id=items[(7 * k + j) % len(items)]) for j in range(3)],
                            explain=True, limit=100)
        for k in range(n)
    ])  # fmt: skip


def test_short_deadlines_fail_fast_and_queued_calls_are_not_run(make_server, known_items):
    srv = make_server(threads=1, max_in_flight=8)
    channel, stub = stub_for(srv.port)

    def count(code: str, method: str = "Recommend") -> float:
        return srv.metrics.sample("xsell_requests_total", {"method": method, "code": code})

    with channel, ThreadPoolExecutor(8) as pool:
        start = time.perf_counter()
        with pytest.raises(grpc.RpcError) as info:
            stub.Recommend(good_request(known_items), timeout=0.001)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.perf_counter() - start < 0.5

        time.sleep(0.3)  # the server may or may not have seen that call; let it settle
        # (with ranking at ~1.5 ms it may even have answered it in time: OK on the server)
        expired_before, ok_before = count("DEADLINE_EXCEEDED"), count("OK")

        # One slow call holds the only work slot; five short-deadline calls queue behind it.
        slow = pool.submit(stub.RecommendBatch, heavy_batch(known_items), timeout=60)
        assert wait_until(lambda: srv.metrics.sample("xsell_in_flight_requests") == 1)

        def short_call(k: int) -> tuple[str, float]:
            t0 = time.perf_counter()
            try:
                stub.Recommend(good_request(known_items, k), timeout=0.2)
                return "OK", time.perf_counter() - t0
            except grpc.RpcError as exc:
                return exc.code().name, time.perf_counter() - t0

        results = list(pool.map(short_call, range(5)))
        assert not slow.done(), "the slow call ended first: the queue was never tested"
        assert [code for code, _ in results] == ["DEADLINE_EXCEEDED"] * 5
        assert max(t for _, t in results) < 1.0
        # The server gave up on them while they waited: none was ranked, none got OK, and
        # each left the queue about when its deadline passed, not when the slot freed.
        assert wait_until(lambda: count("DEADLINE_EXCEEDED") == expired_before + 5, timeout=5)
        assert count("OK") == ok_before
        assert not slow.done()
        waited = srv.metrics.sample("xsell_request_latency_seconds_sum", {"method": "Recommend"})
        assert waited < 5 * 0.5 + 0.1, waited  # each gave up near its 0.2 s deadline
        assert len(slow.result().responses) == 64
    assert wait_until(lambda: srv.admission.held == 0, timeout=5)


def test_calls_abandoned_in_the_queue_release_their_place(make_server, known_items):
    """Calls cancelled by their client before a thread ran them never run the handler;
    their admission ticket must come back anyway, or the server would refuse for ever."""
    srv = make_server(threads=1, max_in_flight=4)
    channel, stub = stub_for(srv.port)
    with channel, ThreadPoolExecutor(4) as pool:
        for _round in range(3):
            slow = pool.submit(stub.RecommendBatch, heavy_batch(known_items, 24), timeout=60)
            assert wait_until(lambda: srv.metrics.sample("xsell_in_flight_requests") == 1)
            futures = [
                stub.Recommend.future(good_request(known_items, k), timeout=30) for k in range(3)
            ]
            assert wait_until(lambda: srv.admission.held == 4, timeout=5)
            for f in futures:
                f.cancel()
            slow.result()
            assert wait_until(lambda: srv.admission.held == 0, timeout=5), srv.admission.held
        assert stub.Recommend(good_request(known_items), timeout=10).cross_sell


# ------------------------------------------------------------------ bind failure


def test_a_failed_bind_releases_the_server_and_its_pool(ranker, bundle_root, monkeypatch):
    """BindError: the unstarted grpc.Server is stopped and dropped and its thread pool shut
    down before the error is raised. (They were left to the garbage collector, and the
    error's traceback kept them alive: a worker logging it, or a caller holding it.)"""
    import socket

    from xsell.server import app

    made = []  # (weak reference to the grpc.Server, its thread pool)
    real = grpc.server

    def server(pool, **kwargs):
        srv = real(pool, **kwargs)
        made.append((weakref.ref(srv), pool))
        return srv

    monkeypatch.setattr(grpc, "server", server)
    with socket.socket() as taken:  # a listener without SO_REUSEPORT: the port is taken
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(app.BindError) as info:
            app.create_server(ranker, port=port, bundle_root=bundle_root, access_log=False)
    assert f"cannot listen on 127.0.0.1:{port}" in str(info.value)
    [(server_ref, pool)] = made
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(print)
    assert server_ref() is None, "the error still holds the unstarted grpc.Server"
