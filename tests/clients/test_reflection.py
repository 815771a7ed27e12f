"""clients/reflection.py discovers and calls the service with no .proto and no xsell code.

The script runs in a fresh interpreter where importing `xsell` is made impossible, so
every type it uses must have come from the server's reflection service.
"""

from __future__ import annotations

import json
import os
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


def reflect(
    address: str, *args: str, timeout: float = 60, token_env: str | None = None
) -> subprocess.CompletedProcess:
    """Runs the script; $XSELL_TOKEN is `token_env` (unset by default, whatever the
    environment of the tests holds)."""
    env = {k: v for k, v in os.environ.items() if k != "XSELL_TOKEN"}
    if token_env is not None:
        env["XSELL_TOKEN"] = token_env
    return subprocess.run(
        [sys.executable, "-c", BLOCKED, str(SCRIPT), "--address", address, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
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


# ------------------------------------------------ a server with mutual TLS and tokens


def mtls_flags(pki) -> list[str]:
    return ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert),
            "--tls-key", str(pki.client_key), "--tls-server-name", pki.server_name]  # fmt: skip


@pytest.fixture(scope="module")
def token_address(ranker, bundle_root, auth_tokens):
    """A plaintext server with token auth only (`xsell serve --auth-tokens FILE`)."""
    security = pytest.importorskip("xsell.server.security", reason="server auth not built")
    from xsell.server.app import create_server

    tokens = security.parse_tokens(f"checkout {auth_tokens.checkout}\n", file="<test tokens>")
    srv, port = create_server(ranker, bundle_root=bundle_root, access_log=False, tokens=tokens)
    srv.start()
    yield f"127.0.0.1:{port}"
    srv.stop(None)


def test_lists_the_services_of_a_plaintext_server_with_tokens(token_address, auth_tokens):
    listed = reflect(token_address, "--token", auth_tokens.checkout, "list")
    assert listed.returncode == 0, listed.stderr
    assert "xsell.v1.RecommendService" in listed.stdout.split()
    refused = reflect(token_address, "list")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"reflection: {token_address}: UNAUTHENTICATED: missing bearer token" in refused.stderr


def test_lists_describes_and_calls_with_tls_and_a_token(secure_address, pki, auth_tokens, ranker):
    """`secure_server` (tests/clients/conftest.py) refuses every call without a client
    certificate and a known bearer token, reflection's included."""
    flags = mtls_flags(pki)
    listed = reflect(secure_address, *flags, "--token", auth_tokens.checkout, "list")
    assert listed.returncode == 0, listed.stderr
    assert {"xsell.v1.RecommendService", "grpc.health.v1.Health"} <= set(listed.stdout.split())
    # the token from the environment, as the other clients take it
    described = reflect(secure_address, *flags, "describe", "xsell.v1.RecommendService",
                        token_env=auth_tokens.checkout)  # fmt: skip
    assert described.returncode == 0, described.stderr
    assert "GetModelInfo" in json.loads(described.stdout)
    called = reflect(secure_address, *flags, "--token", auth_tokens.checkout,
                     "call", "xsell.v1.RecommendService/GetModelInfo")  # fmt: skip
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["model_version"] == ranker.version


def test_without_a_token_the_refusal_is_one_clear_line(secure_address, pki):
    proc = reflect(secure_address, *mtls_flags(pki), "list")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and not proc.stdout
    assert proc.stderr.strip() == (
        f"reflection: {secure_address}: UNAUTHENTICATED: missing bearer token "
        "(send `authorization: Bearer <token>`) (give --token or set $XSELL_TOKEN)"
    )


def test_a_refused_handshake_names_the_flags_to_give(secure_address, pki, auth_tokens):
    token = ["--token", auth_tokens.checkout]
    plaintext = reflect(secure_address, *token, "list")
    assert plaintext.returncode == 2
    assert f"reflection: {secure_address}: UNAVAILABLE: " in plaintext.stderr
    assert "(plaintext channel: if the server uses TLS, give --tls-ca or --tls)" in plaintext.stderr
    no_cert = reflect(secure_address, "--tls-ca", str(pki.ca), "--tls-server-name", pki.server_name,
                      *token, "list")  # fmt: skip
    assert no_cert.returncode == 2
    assert "(if the server requires mutual TLS, give --tls-cert and --tls-key)" in no_cert.stderr


def test_a_wrong_token_is_refused(secure_address, pki):
    proc = reflect(secure_address, *mtls_flags(pki), "--token", "not-a-known-token-at-all", "list")
    assert proc.returncode == 2
    assert f"reflection: {secure_address}: UNAUTHENTICATED: unknown bearer token" in proc.stderr


def test_bad_security_flags_are_named_before_any_call(pki, tmp_path, silent_socket):
    """In the words of `xsell recommend` (tests/clients/test_cross_language.py). The
    silent socket never answers: an error that came from a call would be a timeout."""
    missing = tmp_path / "missing.pem"
    for flags, message in [
        (["--tls-ca", str(missing)], f"--tls-ca: cannot read {missing}: No such file or directory"),
        (["--tls-ca", str(pki.client_key)], f"--tls-ca: no certificate in {pki.client_key}"),
        (["--tls-cert", str(pki.client_cert)], "--tls-cert and --tls-key go together (mutual TLS needs both)"),
        (["--tls-server-name", pki.server_name], "--tls-server-name needs TLS (--tls-ca, --tls-cert or --tls)"),
        (["--token", "two words"], "--token: must be printable ASCII without spaces"),
    ]:  # fmt: skip
        proc = reflect(silent_socket, "--timeout", "30", *flags, "list", timeout=20)
        assert proc.returncode == 2, flags
        assert proc.stderr.strip() == f"reflection: {message}", flags
        if flags[0].startswith("--tls"):  # the script keeps its own copy of these checks
            cli = subprocess.run(
                [sys.executable, "-m", "xsell.cli", "recommend", "--address", silent_socket, "--user", "u",
                 "--timeout", "30", *flags],
                check=False, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert cli.returncode == 2 and cli.stderr.strip() == f"xsell recommend: error: {message}", cli.stderr
