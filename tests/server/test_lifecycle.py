"""Health, reflection, hot reload under traffic, path confinement, overload, deadlines.

Each test that changes server state starts its own server on port 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from xsell.server.app import create_server

from xsell.v1 import xsell_pb2 as pb
from xsell.v1 import xsell_pb2_grpc as pb_grpc

SERVICE = "xsell.v1.RecommendService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def call_error(fn, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture
def make_server(ranker, bundle_root, channel_options):
    """make_server(ranker_or_dir, **kwargs) -> (server, stub, channel); all stopped at teardown."""
    made = []

    def make(model=ranker, **kwargs):
        kwargs.setdefault("bundle_root", bundle_root)
        kwargs.setdefault("access_log", False)
        srv, port = create_server(model, **kwargs)
        srv.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options)
        made.append((srv, channel))
        return srv, pb_grpc.RecommendServiceStub(channel), channel

    yield make
    for srv, channel in made:
        channel.close()
        srv.stop(None)


def heavy_batch(facts, n: int = 64) -> pb.RecommendBatchRequest:
    """A real, slow call: 64 explained requests of 3-item carts (~1 s here)."""
    items = facts.items_by_popularity
    return pb.RecommendBatchRequest(requests=[
        pb.RecommendRequest(cart=[pb.CartLine(item_id=items[(7 * k + j) % len(items)]) for j in range(3)],
                            explain=True, limit=100)
        for k in range(n)
    ])  # fmt: skip


def one_request(facts) -> pb.RecommendRequest:
    return pb.RecommendRequest(cart=[pb.CartLine(item_id=facts.items_by_popularity[0])], limit=5)


# ------------------------------------------------------------------ health, reflection


def test_health_follows_the_bundle_and_shutdown(make_server, facts, ranker):
    srv, stub, channel = make_server(None)  # started without a bundle
    health = health_pb2_grpc.HealthStub(channel)

    def status(service: str = "") -> int:
        return health.Check(health_pb2.HealthCheckRequest(service=service)).status

    assert status("") == NOT_SERVING and status(SERVICE) == NOT_SERVING
    assert call_error(stub.Recommend, one_request(facts)).code() == grpc.StatusCode.UNAVAILABLE
    assert (
        call_error(stub.GetModelInfo, pb.GetModelInfoRequest()).code()
        == grpc.StatusCode.UNAVAILABLE
    )
    empty = call_error(stub.ReloadModel, pb.ReloadModelRequest())  # no startup bundle to reload
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT and empty.details().startswith(
        "bundle_path"
    )

    watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
    assert next(watch).status == NOT_SERVING
    reply = stub.ReloadModel(
        pb.ReloadModelRequest(bundle_path="base")
    )  # relative to the bundle root
    assert (reply.model_version, reply.previous_version) == (ranker.version, "")
    assert next(watch).status == SERVING
    assert status("") == SERVING and status(SERVICE) == SERVING
    assert stub.Recommend(one_request(facts)).cross_sell

    # Shutdown: NOT_SERVING first; calls still work during the drain delay; then refused.
    stopper = threading.Thread(target=lambda: srv.graceful_stop(5.0, drain_delay=1.0).wait())
    stopper.start()
    assert next(watch).status == NOT_SERVING
    watch.cancel()
    assert status(SERVICE) == NOT_SERVING
    assert stub.Recommend(one_request(facts)).cross_sell
    stopper.join(10)
    assert not stopper.is_alive()
    assert (
        call_error(stub.Recommend, one_request(facts), timeout=2).code()
        == grpc.StatusCode.UNAVAILABLE
    )


def test_reflection_lists_and_describes_the_service(server, channel):
    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    assert {SERVICE, "grpc.health.v1.Health"} <= services
    described = descriptor_pool.DescriptorPool(db).FindServiceByName(SERVICE)
    assert {m.name for m in described.methods} == {
        "Recommend",
        "RecommendBatch",
        "GetModelInfo",
        "ReloadModel",
    }
    assert (
        described.FindMethodByName("Recommend").input_type.full_name == "xsell.v1.RecommendRequest"
    )


# ------------------------------------------------------------------ hot reload


def _tamper_hash(path):  # a byte changed: the manifest's sha256 no longer matches
    target = path / "model_cross_sell.txt"
    target.write_bytes(target.read_bytes() + b"\n# tampered\n")


def _garbage_model(path):  # garbage with a matching hash: only loading can tell
    target = path / "model_up_sell.txt"
    target.write_bytes(b"this is not a LightGBM model\n" * 10)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["model_up_sell.txt"] = hashlib.sha256(target.read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))


def _feature_mismatch(path):  # the model and the manifest disagree on the features
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["feature_names"] = list(reversed(manifest["feature_names"]))
    (path / "manifest.json").write_text(json.dumps(manifest))


def _no_manifest(path):
    (path / "manifest.json").unlink()


def test_reload_swaps_and_refuses_while_traffic_flows(
    make_server, facts, ranker, bundle_dir, bundle_root, copy_bundle
):
    srv, stub, _ = make_server(ranker, threads=4)
    tag = uuid.uuid4().hex[:8]
    v2 = copy_bundle(bundle_dir, bundle_root / f"v2-{tag}", version=f"v2-{tag}")
    bad = {}
    for name, spoil in (("hash", _tamper_hash), ("garbage", _garbage_model),
                        ("features", _feature_mismatch), ("manifest", _no_manifest)):  # fmt: skip
        bad[name] = copy_bundle(bundle_dir, bundle_root / f"bad-{name}-{tag}")
        spoil(bad[name])

    stop = threading.Event()
    versions: Counter[str] = Counter()
    errors: list[BaseException] = []

    def traffic(k: int) -> None:
        req = pb.RecommendRequest(cart=[pb.CartLine(item_id=facts.items_by_popularity[k])], limit=5)
        while not stop.is_set():
            try:
                versions[stub.Recommend(req, timeout=10).model_version] += 1
            except grpc.RpcError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=traffic, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: versions[ranker.version] >= 20)
        reply = stub.ReloadModel(pb.ReloadModelRequest(bundle_path=str(v2)))
        assert (reply.model_version, reply.previous_version) == (f"v2-{tag}", ranker.version)
        assert wait_until(lambda: versions[f"v2-{tag}"] >= 20)
        assert stub.GetModelInfo(pb.GetModelInfoRequest()).bundle_path == str(v2.resolve())

        for name, path in bad.items():
            err = call_error(stub.ReloadModel, pb.ReloadModelRequest(bundle_path=path.name))
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, name
            assert path.name in err.details(), err.details()
            assert stub.GetModelInfo(pb.GetModelInfoRequest()).model_version == f"v2-{tag}"
        before = versions[f"v2-{tag}"]
        assert wait_until(lambda: versions[f"v2-{tag}"] >= before + 20), (
            "traffic stalled after refusals"
        )

        back = stub.ReloadModel(pb.ReloadModelRequest())  # empty = the startup bundle again
        assert (back.model_version, back.previous_version) == (ranker.version, f"v2-{tag}")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert errors == []
    assert set(versions) == {ranker.version, f"v2-{tag}"}
    assert srv.metrics.sample("xsell_reloads_total", {"outcome": "refused"}) == len(bad)
    assert srv.metrics.sample("xsell_model_info", {"version": ranker.version}) == 1
    assert srv.metrics.sample("xsell_model_info", {"version": f"v2-{tag}"}) == 0


def test_reload_stays_inside_the_bundle_root(
    server, stub, bundle_dir, bundle_root, tmp_path, copy_bundle
):
    outside = copy_bundle(
        bundle_dir, tmp_path / "outside", version="outside"
    )  # loadable if it were allowed
    link = bundle_root / f"link-{uuid.uuid4().hex[:8]}"
    os.symlink(outside, link)
    try:
        for path in (
            str(outside),
            os.path.relpath(outside, bundle_root),
            link.name,
            "../" + bundle_root.name + "/../x",
        ):
            err = call_error(stub.ReloadModel, pb.ReloadModelRequest(bundle_path=path))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED, path
            assert err.details().startswith("bundle_path")
        missing = call_error(stub.ReloadModel, pb.ReloadModelRequest(bundle_path="no-such-bundle"))
        assert missing.code() == grpc.StatusCode.INVALID_ARGUMENT and missing.details().startswith(
            "bundle_path"
        )
    finally:
        link.unlink()
    assert stub.GetModelInfo(pb.GetModelInfoRequest()).bundle_path == str(bundle_dir.resolve())


# ------------------------------------------------------------------ overload, deadlines


def test_over_the_in_flight_bound_answers_resource_exhausted(make_server, facts):
    srv, stub, _ = make_server(threads=1, max_in_flight=1)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(stub.RecommendBatch, heavy_batch(facts), timeout=30)
        assert wait_until(lambda: srv.metrics.sample("xsell_in_flight_requests") == 1)
        start = time.perf_counter()
        err = call_error(stub.Recommend, one_request(facts), timeout=10)
        refused_after = time.perf_counter() - start
        assert not slow.done(), "the slow call ended before the probe: the test proved nothing"
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused_after < 0.5, "the refusal waited instead of answering at once"
        m = srv.metrics  # what an operator sees: why, and how many
        assert m.sample("xsell_shed_total", {"reason": "at_arrival"}) == 1
        assert m.sample("xsell_shed_total", {"reason": "waited"}) == 0
        assert m.sample("xsell_overloads_total", {"trigger": "bound"}) == 1
        assert m.sample("xsell_overloaded") == 1
        assert len(slow.result().responses) == 64  # the accepted call is unharmed
    assert stub.Recommend(one_request(facts)).cross_sell  # and the server recovers


def outcome(fn, *args, **kwargs) -> tuple[str, str]:
    """(status code name, details) of a call: ("OK", "") or its error."""
    try:
        fn(*args, **kwargs)
        return "OK", ""
    except grpc.RpcError as err:
        return err.code().name, err.details()


@pytest.mark.parametrize("standing_after", [0.05, 30.0], ids=["overloaded", "busy"])
def test_overloaded_a_call_that_waited_too_long_is_shed(make_server, facts, standing_after):
    """The queueing-delay rule over a real socket: while a queue stands (here: for 50 ms
    of CPU time), a call that waited more than overload_wait is refused at once rather
    than run late. With the same waits but no overload (standing_after 30 s) it runs."""
    srv, stub, _ = make_server(
        threads=1, max_in_flight=8, standing_after=standing_after, overload_wait=0.1
    )
    with ThreadPoolExecutor(3) as pool:
        slow = pool.submit(stub.RecommendBatch, heavy_batch(facts), timeout=30)
        assert wait_until(lambda: srv.admission.running == 1)
        first = pool.submit(outcome, stub.Recommend, one_request(facts), timeout=20)
        assert wait_until(lambda: srv.admission.waiting == 1)
        time.sleep(0.3)  # first waits 300 ms > overload_wait while the batch burns CPU
        second = pool.submit(outcome, stub.Recommend, one_request(facts), timeout=20)
        code, details = first.result(timeout=20)
        first_done_before_batch = not slow.done()
        assert len(slow.result().responses) == 64  # the running call is unharmed
        if standing_after < 1:
            assert first_done_before_batch, "the refusal waited for the slot instead"
            assert code == "RESOURCE_EXHAUSTED", details
            assert details.startswith("overloaded: waited over 100 ms") and "retry" in details
            assert srv.admission.shed_waiting >= 1
            assert srv.metrics.sample("xsell_shed_total", {"reason": "waited"}) == srv.admission.shed_waiting
            assert srv.metrics.sample("xsell_overloads_total", {"trigger": "slow_queue"}) >= 1
        else:
            assert (code, details) == ("OK", "")
            assert second.result(timeout=20) == ("OK", "")
            assert srv.admission.shed_waiting == 0
            assert srv.metrics.sample("xsell_shed_total", {"reason": "waited"}) == 0
            assert srv.metrics.sample("xsell_overloads_total", {"trigger": "slow_queue"}) == 0
        second.result(timeout=20)
    assert stub.Recommend(one_request(facts)).cross_sell  # and the server serves again


def test_deadline_exceeded_stops_the_work(make_server, facts):
    srv, stub, _ = make_server()
    batch = heavy_batch(facts)
    start = time.perf_counter()
    stub.RecommendBatch(batch)
    full = time.perf_counter() - start

    # a quarter of the work: on a loaded host a tenth could expire before the handler
    # started (then nothing shows the server stopping), and the bounds below still
    # tell "stopped near the deadline" from "ranked the whole batch"
    start = time.perf_counter()
    err = call_error(stub.RecommendBatch, batch, timeout=full / 4)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.perf_counter() - start < full * 0.6

    def seen(code: str) -> float:
        return srv.metrics.sample(
            "xsell_requests_total", {"method": "RecommendBatch", "code": code}
        )

    # The server noticed and stopped between requests: its handler answered DEADLINE_EXCEEDED
    # (not OK) well before the whole batch could have been ranked.
    assert wait_until(lambda: seen("DEADLINE_EXCEEDED") == 1, timeout=full * 2)
    assert seen("OK") == 1
    total = srv.metrics.sample("xsell_request_latency_seconds_sum", {"method": "RecommendBatch"})
    assert total - full < full / 2


class _LoopbackContext:
    """The one thing ReloadModel asks of its gRPC context: who is calling."""

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


def test_workers_agree_after_a_reload_crosses_another_workers(
    ranker, bundle_dir, copy_bundle, tmp_path
):
    """Worker A reloads x while worker B's reload of z reaches A's poller: A's poller had
    read z's state and loaded z right after A loaded and published x, so A served z while
    the state file (and so B) said x, and A never looked again."""
    from xsell.ranking.ranker import Ranker
    from xsell.server.metrics import ServerMetrics
    from xsell.server.service import ModelHolder, RecommendServicer, ReloadBroadcast

    tag = uuid.uuid4().hex[:6]
    for name in ("x", "z"):
        copy_bundle(bundle_dir, tmp_path / name, version=f"{name}-{tag}")
    gate = threading.Event()

    def slow_x(path):  # the real load, held at the gate for bundle x
        if path.name == "x":
            assert gate.wait(30)
        return Ranker.load(path)

    state = tmp_path / "reload.json"
    workers = []
    for loader in (slow_x, Ranker.load):
        holder = ModelHolder(loader=loader, probe=lambda _path: None)
        holder.set(ranker)
        broadcast = ReloadBroadcast(state, holder)
        servicer = RecommendServicer(holder, ServerMetrics(), bundle_root=tmp_path,
                                     broadcast=broadcast)  # fmt: skip
        workers.append((holder, broadcast, servicer))
    (holder_a, poll_a, servicer_a), (holder_b, poll_b, servicer_b) = workers

    def reload(servicer, name):
        servicer.ReloadModel(pb.ReloadModelRequest(bundle_path=name), _LoopbackContext())

    a_reload = threading.Thread(target=reload, args=(servicer_a, "x"))
    a_reload.start()  # held in the load of x
    reload(servicer_b, "z")  # B serves z and publishes it
    a_poll = threading.Thread(target=poll_a.poll_once)
    a_poll.start()
    wait_until(lambda: poll_a._applied is not None, timeout=1.0)  # A's poller read z's state
    gate.set()
    a_reload.join(30)
    a_poll.join(30)
    poll_b.poll_once()
    poll_a.poll_once()
    published = json.loads(state.read_text())["version"]
    versions = (holder_a.current().version, holder_b.current().version)
    assert versions == (published, published), (versions, published)
