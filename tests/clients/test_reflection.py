"""clients/reflection.py discovers and calls the service with no .proto and no xsell code.

The script runs in a fresh interpreter where importing `xsell` is made impossible, so
every type it uses must have come from the server's reflection service.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2_grpc
from xsell.clients import XsellClient

SCRIPT = Path(__file__).resolve().parents[2] / "clients" / "reflection.py"
# sys.modules[name] = None makes `import name` raise ImportError
BLOCKED = (
    "import runpy, sys; sys.modules['xsell'] = None; sys.modules['xsell.v1'] = None; "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def reflect(address: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKED, str(SCRIPT), "--address", address, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_lists_and_describes_the_services(address):
    listed = reflect(address, "list")
    assert listed.returncode == 0, listed.stderr
    services = listed.stdout.split()
    assert {"xsell.v1.RecommendService", "grpc.health.v1.Health"} <= set(services)
    described = reflect(address, "describe", "xsell.v1.RecommendService")
    assert described.returncode == 0, described.stderr
    assert json.loads(described.stdout)["Recommend"] == {
        "input": "xsell.v1.RecommendRequest",
        "output": "xsell.v1.RecommendResponse",
    }
    assert set(json.loads(described.stdout)) == {
        "Recommend",
        "RecommendBatch",
        "GetModelInfo",
        "ReloadModel",
    }


def test_calls_recommend_like_the_client(address, shop):
    cart = shop.by_popularity[:2]
    request = {
        "cart": [{"item_id": i} for i in cart],
        "strategy": "STRATEGY_CROSS_SELL",
        "limit": 4,
    }
    proc = reflect(address, "call", "xsell.v1.RecommendService/Recommend", json.dumps(request))
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    with XsellClient(address, timeout=10) as client:
        expected = client.recommend(cart=cart, strategy="cross_sell", limit=4)
    assert [i["item_id"] for i in answer["cross_sell"]] == [i.item_id for i in expected.cross_sell]
    assert [i["score"] for i in answer["cross_sell"]] == [i.score for i in expected.cross_sell]
    assert answer["model_version"] == expected.model_version


def test_server_errors_are_reported(address):
    proc = reflect(
        address,
        "call",
        "xsell.v1.RecommendService/Recommend",
        '{"cart": [{"item_id": "A"}], "limit": 500}',
    )
    assert proc.returncode == 2
    assert "INVALID_ARGUMENT: limit: must be between 1 and 100" in proc.stderr


@pytest.fixture(scope="module")
def silent_socket():
    """A TCP socket that accepts connections and never says a word (no HTTP/2 SETTINGS)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # the kernel completes the TCP handshakes; nothing ever reads or writes
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


class _StuckReflection(reflection_pb2_grpc.ServerReflectionServicer):
    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def ServerReflectionInfo(self, request_iterator, context):
        self.release.wait()  # a server that takes the call and never answers it
        return iter(())


@pytest.fixture(scope="module")
def stuck_reflection():
    """A real gRPC server whose reflection handler blocks until the tests are done."""
    release = threading.Event()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(_StuckReflection(release), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    release.set()
    server.stop(None)


@pytest.mark.parametrize("peer", ["silent_socket", "stuck_reflection"])
@pytest.mark.parametrize(
    "command",
    [["list"], ["describe", "xsell.v1.RecommendService"],
     ["call", "xsell.v1.RecommendService/Recommend", "{}"]],
    ids=["list", "describe", "call"],
)  # fmt: skip
def test_gives_up_after_the_timeout(peer, command, request):
    """list, describe and call (which looks the method up by reflection first) stop after
    --timeout with a message naming the address, on a server that never answers."""
    address = request.getfixturevalue(peer)
    start = time.monotonic()
    # 15 s: well below gRPC's own 20 s handshake limit, far above 1 s + interpreter start
    proc = reflect(address, "--timeout", "1", *command, timeout=15)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    assert elapsed < 10, elapsed
    assert f"reflection: {address}: " in proc.stderr and "--timeout 1 s" in proc.stderr
    assert "DEADLINE_EXCEEDED" in proc.stderr
