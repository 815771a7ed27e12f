"""Fixtures of the server tests: one real bundle trained on the synthetic data,
real servers on port 0, real channels."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import pytest

from xsell.v1 import xsell_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class Facts:
    """What the test data says, independent of the server: used to check its answers."""

    category: dict[str, str]  # item_id -> leaf category
    price: dict[str, float]  # item_id -> catalog price
    in_stock: dict[str, bool]
    bought: dict[str, frozenset[str]]  # user_id -> items purchased
    items_by_popularity: list[str]  # in-stock items, most purchased first
    users: list[str]


@pytest.fixture(scope="session")
def facts(dataset) -> Facts:
    cat, ev = dataset.catalog, dataset.events
    purchases = ev[ev["event_type"] == "purchase"]
    counts = purchases["item_id"].value_counts()
    stock = dict(zip(cat["item_id"], cat["in_stock"].astype(bool)))
    return Facts(
        category=dict(zip(cat["item_id"], cat["category"])),
        price=dict(zip(cat["item_id"], cat["price"].astype(float))),
        in_stock=stock,
        bought={u: frozenset(g) for u, g in purchases.groupby("user_id")["item_id"]},
        items_by_popularity=[i for i in counts.index if stock.get(i, False)],
        users=sorted(ev["user_id"].unique()),
    )


@pytest.fixture(scope="session")
def channel_options():
    return [("grpc.max_receive_message_length", 16 * 1024 * 1024)]


@pytest.fixture(scope="module")
def channel(server, channel_options):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=channel_options) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel) -> pb_grpc.RecommendServiceStub:
    return pb_grpc.RecommendServiceStub(channel)


# `ranker`, `server`, `copy_bundle` and `serve_cli` (real `xsell serve` subprocesses)
# come from tests/conftest.py.
