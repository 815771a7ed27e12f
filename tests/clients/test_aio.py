"""AsyncXsellClient against real servers: same answers, errors and retries as the sync client."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from xsell.clients import (
    AsyncXsellClient,
    Backoff,
    ClientConfigError,
    ModelInfo,
    Recommendations,
    ReloadResult,
    XsellClient,
    XsellRpcError,
)

from xsell.v1 import xsell_pb2 as pb


def ids(recs: Recommendations) -> list[tuple[str, str, float]]:
    return [(i.strategy, i.item_id, i.score) for i in recs.items]


def test_every_method_answers_like_the_sync_client(address, shop, ranker):
    carts = [shop.by_popularity[i : i + 2] for i in range(0, 10, 2)]
    with XsellClient(address, timeout=10) as sync:
        expected = [sync.recommend(cart=c, limit=5) for c in carts]
        expected_info = sync.model_info()

    async def run():
        async with AsyncXsellClient(address, timeout=10) as client:
            # concurrent calls on one channel
            answers = await asyncio.gather(*(client.recommend(cart=c, limit=5) for c in carts))
            batch = await client.recommend_batch([{"cart": c, "limit": 5} for c in carts])
            info = await client.model_info()
            raw = await client.recommend(cart=carts[0], limit=5, raw=True)
            return answers, batch, info, raw

    answers, batch, info, raw = asyncio.run(run())
    assert all(isinstance(a, Recommendations) for a in answers)
    assert [ids(a) for a in answers] == [ids(e) for e in expected]
    assert [ids(b) for b in batch] == [ids(e) for e in expected]
    assert isinstance(info, ModelInfo) and info.model_version == ranker.version
    assert info.feature_names == expected_info.feature_names
    assert isinstance(raw, pb.RecommendResponse)
    assert [i.item_id for i in raw.cross_sell] == [i.item_id for i in expected[0].cross_sell]


def test_reload(ranker, bundle_root, bundle_dir, copy_bundle, tmp_path):
    from xsell.server.app import create_server

    new = copy_bundle(bundle_dir, bundle_root / f"aio-reload-{tmp_path.name}", version="aio-v2")
    srv, port = create_server(ranker, bundle_root=bundle_root, access_log=False)
    srv.start()

    async def run():
        async with AsyncXsellClient(f"127.0.0.1:{port}") as client:
            first = await client.reload(new)
            now = (await client.model_info()).model_version
            return first, now

    try:
        first, now = asyncio.run(run())
    finally:
        srv.stop(None)
    assert first == ReloadResult(model_version="aio-v2", previous_version=ranker.version)
    assert now == "aio-v2"


def test_invalid_argument_carries_the_field(address, shop):
    async def run():
        async with AsyncXsellClient(address) as client:
            with pytest.raises(XsellRpcError) as single:
                await client.recommend(cart=shop.by_popularity[:1], limit=0, up_sell_limit=101)
            with pytest.raises(XsellRpcError) as batch:
                await client.recommend_batch([{"cart": ["A"]}, {"cart": ["A"], "limit": 999}])
            return single.value, batch.value

    single, batch = asyncio.run(run())
    assert single.code == grpc.StatusCode.INVALID_ARGUMENT and single.field == "up_sell_limit"
    assert single.attempts == 1
    assert batch.field == "requests[1].limit" and batch.details.startswith("requests[1].limit: ")


def test_unavailable_is_retried_then_raised(not_serving, server_calls):
    async def run():
        async with AsyncXsellClient(
            f"127.0.0.1:{not_serving.port}", retries=3, timeout=10, backoff=Backoff(0.01, 0.05)
        ) as client:
            with pytest.raises(XsellRpcError) as info:
                await client.recommend(cart=["A"])
            return info.value

    err = asyncio.run(run())
    assert err.code == grpc.StatusCode.UNAVAILABLE and err.attempts == 4
    assert server_calls(not_serving, "Recommend", "UNAVAILABLE") == 4


def test_non_retryable_code_is_raised_at_once(server, server_calls):
    before = server_calls(server, "RecommendBatch", "INVALID_ARGUMENT")

    async def run():
        async with AsyncXsellClient(f"127.0.0.1:{server.port}", retries=5) as client:
            with pytest.raises(XsellRpcError) as info:
                await client.recommend_batch([{"cart": ["A"]}] * 65)  # over the 64 cap
            return info.value

    err = asyncio.run(run())
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.field == "requests"
    assert server_calls(server, "RecommendBatch", "INVALID_ARGUMENT") - before == 1


def test_closed_client_refuses_calls(address):
    async def run():
        client = AsyncXsellClient(address)
        await client.close()
        with pytest.raises(ClientConfigError, match="closed"):
            await client.model_info()

    asyncio.run(run())
