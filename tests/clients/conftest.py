"""Fixtures of the client tests: a real server (in-process, real socket) on the
session bundle, and what the test data says independently of the server; and a
server with mutual TLS and bearer tokens (the certificates, `pki`, come from
tests/conftest.py)."""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass

import pytest

# CI sets this so that a missing toolchain (node, go, buf, protoc) fails instead of skipping.
REQUIRE_TOOLCHAINS = os.environ.get("XSELL_REQUIRE_TOOLCHAINS") == "1"


def _missing_tool(reason: str) -> None:
    if REQUIRE_TOOLCHAINS:
        pytest.fail(f"{reason} (XSELL_REQUIRE_TOOLCHAINS=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def missing_tool():
    """missing_tool(reason): skip with the reason, or fail when CI requires every toolchain."""
    return _missing_tool


@dataclass(frozen=True)
class Shop:
    """Facts of the synthetic shop, read from the data, not from the server."""

    category: dict[str, str]  # item_id -> leaf category
    price: dict[str, float]
    by_popularity: list[str]  # in-stock items, most purchased first
    users: list[str]  # most active first


@pytest.fixture(scope="session")
def shop(dataset) -> Shop:
    cat, ev = dataset.catalog, dataset.events
    purchases = ev[ev["event_type"] == "purchase"]
    stock = dict(zip(cat["item_id"], cat["in_stock"].astype(bool)))
    return Shop(
        category=dict(zip(cat["item_id"], cat["category"])),
        price=dict(zip(cat["item_id"], cat["price"].astype(float))),
        by_popularity=[i for i in purchases["item_id"].value_counts().index if stock.get(i)],
        users=list(purchases["user_id"].value_counts().index),
    )


@pytest.fixture(scope="module")
def address(server) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture
def client(address):
    from xsell.clients import XsellClient

    with XsellClient(address, timeout=10.0) as c:
        yield c


@pytest.fixture
def not_serving(bundle_root):
    """A server with no bundle loaded: every RecommendService call answers UNAVAILABLE."""
    from xsell.server.app import create_server

    srv, _port = create_server(None, bundle_root=bundle_root, access_log=False)
    srv.start()
    yield srv
    srv.stop(None)


def _calls(server, method: str, code: str) -> int:
    value = server.metrics.registry.get_sample_value(
        "xsell_requests_total", {"method": method, "code": code}
    )
    return int(value or 0)


@pytest.fixture(scope="session")
def server_calls():
    """server_calls(server, method, code): how many `method` calls that server answered
    with `code`, from its own metrics (counts attempts on the server side)."""
    return _calls


@pytest.fixture(scope="session")
def require_tool():
    """require_tool(name_or_path, why) -> path: the tool, else skip (fail in CI)."""

    def find(tool: str, why: str) -> str:
        path = tool if os.path.isabs(tool) and os.access(tool, os.X_OK) else shutil.which(tool)
        if path is None:
            _missing_tool(f"{tool} not installed: {why}")
        return path

    return find


# ------------------------------------------------------------- TLS and tokens


@dataclass(frozen=True)
class AuthTokens:
    """The callers in `secure_server`'s token table."""

    checkout: str = "checkout-token-0123456789abcdef"
    ops: str = "ops-admin-token-0123456789abcdef"  # admin


@pytest.fixture(scope="session")
def auth_tokens() -> AuthTokens:
    return AuthTokens()


@pytest.fixture(scope="module")
def secure_server(ranker, bundle_root, pki, auth_tokens):
    """A server with mutual TLS (client certificates signed by `pki.ca`) and tokens."""
    security = pytest.importorskip("xsell.server.security", reason="server TLS/auth not built")
    from xsell.server.app import create_server

    tokens = security.parse_tokens(
        f"checkout {auth_tokens.checkout}\nops {auth_tokens.ops} admin\n", file="<test tokens>"
    )
    tls = security.TlsFiles(
        cert=str(pki.server_cert), key=str(pki.server_key), client_ca=str(pki.ca)
    )
    srv, _port = create_server(
        ranker, bundle_root=bundle_root, access_log=False, tls=tls, tokens=tokens
    )
    srv.start()
    yield srv
    srv.stop(None)


@pytest.fixture(scope="module")
def secure_address(secure_server) -> str:
    return f"127.0.0.1:{secure_server.port}"


# A GetModelInfo access-log line and the pid of the worker that answered it.
ACCESS = re.compile(r'\{"method": "GetModelInfo", "code": "OK", [^}]*"pid": (?P<pid>\d+)')


def answered(proc, seen_before: int, calls: int) -> set[int]:
    """Pids of the workers of `xsell serve` process `proc` that logged the `calls`
    GetModelInfo calls after the first `seen_before` ones (waits for the lines: workers
    write their log asynchronously)."""
    deadline = time.monotonic() + 10
    while True:
        pids = [int(m["pid"]) for m in ACCESS.finditer(proc.log())]
        if len(pids) >= seen_before + calls or time.monotonic() > deadline:
            return set(pids[seen_before : seen_before + calls])
        time.sleep(0.05)
