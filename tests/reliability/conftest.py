"""Fixtures of the reliability and security tests: real servers on 127.0.0.1 port 0,
real channels, real `xsell serve` subprocesses."""

from __future__ import annotations

import time

import grpc
import pytest

from xsell.v1 import xsell_pb2 as pb
from xsell.v1 import xsell_pb2_grpc as pb_grpc


@pytest.fixture(scope="session")
def known_items(dataset) -> list[str]:
    """In-stock catalog item ids, most purchased first (real carts for good requests)."""
    cat, ev = dataset.catalog, dataset.events
    stock = set(cat.loc[cat["in_stock"].astype(bool), "item_id"])
    counts = ev.loc[ev["event_type"] == "purchase", "item_id"].value_counts()
    return [i for i in counts.index if i in stock]


@pytest.fixture(scope="session")
def known_users(dataset) -> list[str]:
    return sorted(dataset.events["user_id"].unique())


def good_request(items: list[str], k: int = 0) -> pb.RecommendRequest:
    return pb.RecommendRequest(cart=[pb.CartLine(item_id=items[k % len(items)])], limit=5)


@pytest.fixture
def make_server(ranker, bundle_root):
    """make_server(model=ranker, **create_server kwargs) -> server; stopped at teardown."""
    from xsell.server.app import create_server

    made = []

    def make(model=ranker, **kwargs):
        kwargs.setdefault("bundle_root", bundle_root)
        kwargs.setdefault("access_log", False)
        srv, _port = create_server(model, **kwargs)
        srv.start()
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.stop(None)


def stub_for(
    port: int,
    credentials: grpc.ChannelCredentials | None = None,
    *,
    server_name: str | None = None,
    **options,
):
    """(channel, stub) to 127.0.0.1:port; TLS when `credentials` is given, verifying the
    server certificate for `server_name` (e.g. `pki.server_name`) instead of 127.0.0.1."""
    # A local subchannel pool: each channel opens its own connection. (By default channels
    # with the same target and options share one, so "8 callers with a channel each"
    # would be one TCP connection to one worker.)
    opts = [("grpc.max_receive_message_length", 16 << 20), ("grpc.use_local_subchannel_pool", 1),
            *options.items()]  # fmt: skip
    target = f"127.0.0.1:{port}"
    if credentials is None:
        channel = grpc.insecure_channel(target, options=opts)
    else:
        if server_name is not None:
            opts.append(("grpc.ssl_target_name_override", server_name))
        channel = grpc.secure_channel(target, credentials, options=opts)
    return channel, pb_grpc.RecommendServiceStub(channel)


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# `ranker`, `copy_bundle`, `pki` (test certificates) and `serve_cli` (real `xsell serve`
# subprocesses) come from tests/conftest.py.
