"""XsellClient: every method against a real server on a real socket, and the error mapping.

Answers are checked against the test data (catalog categories and prices), the bundle
(version, feature names) and the protobuf the server sent, not against client internals.
"""

from __future__ import annotations

import gc
import math
import warnings
from concurrent import futures

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xsell.clients import (
    CartLine,
    ClientConfigError,
    Filters,
    ModelInfo,
    Recommendations,
    RecommendedItem,
    RecommendRequest,
    ReloadResult,
    TlsOptions,
    XsellClient,
    XsellRpcError,
)
from xsell.clients.results import recommendations_from_pb

from xsell.errors import InvalidRequest, XsellError
from xsell.v1 import xsell_pb2 as pb
from xsell.v1 import xsell_pb2_grpc as pb_grpc

FAST = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def same(a, b) -> bool:
    """Equality where NaN equals NaN (the server sends NaN for unknown feature values)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if hasattr(a, "__dataclass_fields__") and type(a) is type(b):
        return all(same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    return a == b


def check_items(recs: Recommendations, shop, cart: list[str]) -> None:
    for name in ("cross_sell", "up_sell"):
        items = getattr(recs, name)
        scores = [i.score for i in items]
        assert scores == sorted(scores, reverse=True), f"{name} not ranked best first"
        for item in items:
            assert isinstance(item, RecommendedItem)
            assert item.strategy == name
            assert item.category == shop.category[item.item_id]
            assert item.price == pytest.approx(shop.price[item.item_id], rel=1e-5)
            assert item.item_id not in cart
            assert isinstance(item.sources, tuple) and item.sources


# ------------------------------------------------------------------ Recommend


def test_recommend_returns_typed_results_that_match_the_catalog(client, shop, ranker):
    cart = shop.by_popularity[:2]
    recs = client.recommend(user_id=shop.users[0], cart=cart, strategy="both", limit=5)
    assert isinstance(recs, Recommendations)
    assert recs.model_version == ranker.version
    assert 0 < len(recs.cross_sell) <= 5 and 0 < len(recs.up_sell) <= 5
    assert recs.items == recs.cross_sell + recs.up_sell
    check_items(recs, shop, cart)
    for item in recs.up_sell:  # up-sell: pricier, same category as its anchor
        assert item.anchor_item_id in cart
        assert item.category == shop.category[item.anchor_item_id]
        assert item.price_uplift == pytest.approx(
            shop.price[item.item_id] / shop.price[item.anchor_item_id], rel=1e-4
        )
        assert item.price_uplift > 1.0


@pytest.mark.parametrize("strategy", ["cross_sell", "up_sell"])
def test_one_strategy_fills_one_list_up_to_the_limit(client, shop, strategy):
    recs = client.recommend(cart=shop.by_popularity[:1], strategy=strategy, limit=3)
    mine, other = (
        (recs.cross_sell, recs.up_sell)
        if strategy == "cross_sell"
        else (recs.up_sell, recs.cross_sell)
    )
    assert 0 < len(mine) <= 3 and other == ()


def test_raw_returns_the_protobuf_the_typed_result_is_made_of(client, shop):
    kwargs = {"cart": shop.by_popularity[:2], "strategy": "both", "limit": 4, "explain": True}
    raw = client.recommend(**kwargs, raw=True)
    assert isinstance(raw, pb.RecommendResponse)
    typed = client.recommend(**kwargs)
    assert same(recommendations_from_pb(raw), typed)
    assert [i.item_id for i in typed.cross_sell] == [i.item_id for i in raw.cross_sell]


def test_explain_gives_reasons_named_after_model_features(client, shop):
    features = set(client.model_info().feature_names)
    recs = client.recommend(cart=shop.by_popularity[:1], limit=3, explain=True)
    assert recs.items
    for item in recs.items:
        assert item.reasons, f"{item.item_id} has no reasons"
        for reason in item.reasons:
            assert reason.feature in features and reason.text
    plain = client.recommend(cart=shop.by_popularity[:1], limit=3)
    assert all(item.reasons == () for item in plain.items)


def test_cart_forms_are_equivalent(client, shop):
    a, b = shop.by_popularity[:2]
    answers = [
        client.recommend(cart=[a, b], limit=5),
        client.recommend(cart=[(a, 1.0), (b, 1.0)], limit=5),
        client.recommend(cart=[CartLine(a), CartLine(b, 1.0)], limit=5),
    ]
    ids = [[i.item_id for i in r.items] for r in answers]
    assert ids[0] and ids[0] == ids[1] == ids[2]


def test_filters_are_sent_and_honoured(client, shop):
    cart = shop.by_popularity[:1]
    base = client.recommend(cart=cart, strategy="cross_sell", limit=10)
    assert len(base.cross_sell) >= 3
    top, second = base.cross_sell[0], base.cross_sell[1]
    price_max = sorted(i.price for i in base.cross_sell)[len(base.cross_sell) // 2]
    filters = Filters(
        exclude_item_ids=[top.item_id],
        denied_categories=[second.category] if second.category != top.category else [],
        price_max=price_max,
    )
    filtered = client.recommend(cart=cart, strategy="cross_sell", limit=10, filters=filters)
    assert filtered.cross_sell
    for item in filtered.cross_sell:
        assert item.item_id != top.item_id
        assert item.category not in filters.denied_categories
        assert item.price <= price_max + 1e-6
    # the unfiltered list broke at least one rule, so the checks above could fail
    assert any(
        i.item_id == top.item_id or i.category in filters.denied_categories or i.price > price_max
        for i in base.cross_sell
    )


def test_unknown_cart_items_are_reported_and_ids_echoed(client, shop):
    recs = client.recommend(
        cart=["no-such-item", shop.by_popularity[0]], request_id="req-42", variant="B"
    )
    assert recs.unknown_item_ids == ("no-such-item",)
    assert (recs.request_id, recs.variant) == ("req-42", "B")
    assert recs.items


# ------------------------------------------------------------------ RecommendBatch


@FAST
@given(data=st.data())
def test_batch_answers_equal_single_calls_in_order(client, shop, data):
    pool = shop.by_popularity[:30]
    requests = data.draw(
        st.lists(
            st.builds(
                RecommendRequest,
                cart=st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True),
                strategy=st.sampled_from(["cross_sell", "up_sell", "both"]),
                limit=st.integers(1, 8),
            ),
            min_size=1,
            max_size=5,
        )
    )
    batch = client.recommend_batch(requests)
    assert len(batch) == len(requests)
    for request, answer in zip(requests, batch):
        single = client.recommend(cart=request.cart, strategy=request.strategy, limit=request.limit)
        assert same(answer, single)


def test_batch_accepts_dataclasses_dicts_and_protobuf(client, shop):
    a, b = shop.by_popularity[:2]
    answers = client.recommend_batch(
        [
            RecommendRequest(cart=[a], strategy="up_sell", limit=2),
            {"cart": [b], "strategy": "cross_sell", "limit": 3},
            pb.RecommendRequest(cart=[pb.CartLine(item_id=a)], strategy=pb.STRATEGY_CROSS_SELL),
        ]
    )
    assert not answers[0].cross_sell and 0 < len(answers[0].up_sell) <= 2
    assert not answers[1].up_sell and 0 < len(answers[1].cross_sell) <= 3
    assert answers[2].cross_sell
    raw = client.recommend_batch([{"cart": [a]}], raw=True)
    assert isinstance(raw, pb.RecommendBatchResponse) and len(raw.responses) == 1


# ------------------------------------------------------------------ GetModelInfo


def test_model_info_describes_the_bundle(client, ranker, shop, bundle_dir):
    info = client.model_info()
    assert isinstance(info, ModelInfo)
    assert info.model_version == ranker.version
    assert list(info.feature_names) == list(ranker.manifest["feature_names"])
    assert info.num_items == len(shop.category)
    assert info.bundle_path == str(bundle_dir.resolve())
    assert info.training_metrics and all(
        isinstance(v, float) for v in info.training_metrics.values()
    )
    assert isinstance(client.model_info(raw=True), pb.GetModelInfoResponse)


# ------------------------------------------------------------------ ReloadModel


def test_reload_swaps_versions_and_refusals_keep_serving(
    ranker, bundle_root, bundle_dir, copy_bundle, tmp_path
):
    from xsell.server.app import create_server

    new = copy_bundle(
        bundle_dir, bundle_root / f"client-reload-{tmp_path.name}", version="client-v2"
    )
    srv, port = create_server(ranker, bundle_root=bundle_root, access_log=False)
    srv.start()
    try:
        with XsellClient(f"127.0.0.1:{port}", timeout=10) as client:
            result = client.reload(new)
            assert result == ReloadResult(
                model_version="client-v2", previous_version=ranker.version
            )
            assert client.model_info().model_version == "client-v2"
            assert client.recommend(cart=["x"], user_id="u").model_version == "client-v2"

            outside = copy_bundle(bundle_dir, tmp_path / "outside", version="nope")
            with pytest.raises(XsellRpcError) as denied:
                client.reload(outside)
            assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert denied.value.field is None

            with pytest.raises(XsellRpcError) as missing:
                client.reload(bundle_root / "no-such-bundle")
            assert missing.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert missing.value.field == "bundle_path"

            broken = copy_bundle(
                bundle_dir, bundle_root / f"client-broken-{tmp_path.name}", version="bad"
            )
            (broken / "manifest.json").write_text("{not json")
            with pytest.raises(XsellRpcError) as refused:
                client.reload(broken)
            assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert client.model_info().model_version == "client-v2"  # still serving

            back = client.reload(raw=True)  # "" = the startup bundle
            assert isinstance(back, pb.ReloadModelResponse)
            assert (back.model_version, back.previous_version) == (ranker.version, "client-v2")
    finally:
        srv.stop(None)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cart": ["A"], "limit": 101}, "limit"),
        ({"cart": ["A"], "strategy": "both", "up_sell_limit": 500}, "up_sell_limit"),
        ({"cart": ["A"], "filters": Filters(price_min=-1.0)}, "filters.price_min"),
        ({"cart": ["A"], "filters": Filters(price_min=9.0, price_max=1.0)}, "filters.price_min"),
        ({"cart": [""]}, "cart[0].item_id"),
        ({"cart": [("A", float("nan"))]}, "cart[0].quantity"),
        ({"cart": [f"i{n}" for n in range(101)]}, "cart"),
        ({}, "cart"),  # neither a user nor a cart
    ],
)
def test_invalid_argument_raises_with_the_field(client, kwargs, field):
    with pytest.raises(XsellRpcError) as info:
        client.recommend(**kwargs)
    err = info.value
    assert isinstance(err, XsellError) and err.status == "INVALID_ARGUMENT"
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.field == field
    assert err.details.startswith(f"{field}: ")
    assert err.method == "Recommend" and err.attempts == 1
    assert str(err).startswith("Recommend: INVALID_ARGUMENT: ")


@FAST
@given(limit=st.integers(101, 2**32 - 1), position=st.integers(0, 4))
def test_batch_error_names_the_request(client, shop, limit, position):
    requests = [{"cart": shop.by_popularity[:1], "limit": 5} for _ in range(5)]
    requests[position] = {"cart": shop.by_popularity[:1], "limit": limit}
    with pytest.raises(XsellRpcError) as info:
        client.recommend_batch(requests)
    assert info.value.field == f"requests[{position}].limit"
    assert str(limit) in info.value.details


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cart": ["A"], "strategy": "sideways"}, "strategy"),
        ({"cart": "ABC"}, "cart"),
        ({"cart": [("A", 1.0, 2)]}, "cart[0]"),
        ({"cart": ["A"], "limit": -1}, "limit"),
        ({"cart": ["A"], "user_id": None}, "user_id"),
        ({"cart": ["A"], "filters": Filters(exclude_item_ids="AB")}, "filters.exclude_item_ids"),
        ({"cart": ["A"], "filters": Filters(price_max="cheap")}, "filters.price_max"),
    ],
)
def test_requests_the_client_cannot_encode_name_the_field(client, kwargs, field):
    with pytest.raises(InvalidRequest) as info:
        client.recommend(**kwargs)
    assert info.value.field == field


def test_batch_encoding_error_names_the_request(client):
    with pytest.raises(InvalidRequest) as info:
        client.recommend_batch([{"cart": ["A"]}, {"cart": ["A"], "strategy": "nope"}])
    assert info.value.field == "requests[1].strategy"
    with pytest.raises(InvalidRequest) as info:
        client.recommend_batch([{"cart": ["A"], "colour": "red"}])
    assert info.value.field == "requests[0].request"


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    "make",
    [
        lambda: XsellClient("", timeout=1),
        lambda: XsellClient("127.0.0.1:1", timeout=0),
        lambda: XsellClient("127.0.0.1:1", timeout=float("inf")),
        lambda: XsellClient("127.0.0.1:1", retries=-1),
        lambda: XsellClient("127.0.0.1:1", token="two words"),
        lambda: XsellClient("127.0.0.1:1", token="line\nbreak"),
        lambda: XsellClient("127.0.0.1:1", connections=0),
        lambda: XsellClient("127.0.0.1:1", connections=65),
        lambda: XsellClient("127.0.0.1:1", connections=True),
        lambda: TlsOptions(client_cert="cert.pem"),
        lambda: XsellClient("127.0.0.1:1", tls=TlsOptions(ca_cert="/no/such/ca.pem")),
    ],
)
def test_bad_configuration_is_refused_up_front(make):
    with pytest.raises(ClientConfigError):
        make()


def test_missing_tls_file_is_named(tmp_path):
    with pytest.raises(ClientConfigError, match=r"client_key: cannot read '.*key\.pem'"):
        TlsOptions(client_cert=__file__, client_key=tmp_path / "key.pem").credentials()


def test_tls_files_are_closed_once_read(pki):
    """Each connection reads the PEM files; none is left open for the GC to close."""
    tls = TlsOptions(ca_cert=pki.ca, client_cert=pki.client_cert, client_key=pki.client_key)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        tls.credentials()
        gc.collect()
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []


def test_tls_channel_really_speaks_tls(address):
    """A TLS client against this plaintext server fails the handshake (UNAVAILABLE),
    so the secure channel is in use. (The server's TLS is issue 7's; see README.)"""
    with (
        XsellClient(address, tls=TlsOptions(), retries=0, timeout=3) as client,
        pytest.raises(XsellRpcError) as info,
    ):
        client.model_info()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_context_manager_closes_the_channel(address):
    with XsellClient(address) as client:
        assert client.model_info().model_version
    with pytest.raises(ClientConfigError, match="closed"):
        client.model_info()


class _RecordingServicer(pb_grpc.RecommendServiceServicer):
    """Answers GetModelInfo and keeps the metadata of each call."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    def GetModelInfo(self, request, context):
        self.metadata.append(dict(context.invocation_metadata()))
        return pb.GetModelInfoResponse(model_version="recorded")


def test_token_and_extra_metadata_are_sent_on_every_call():
    servicer = _RecordingServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_RecommendServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with XsellClient(
            f"127.0.0.1:{port}", token=" s3cret-token ", metadata=[("x-team", "search")]
        ) as client:
            assert client.model_info().model_version == "recorded"
            client.model_info()
        with XsellClient(f"127.0.0.1:{port}") as anonymous:
            anonymous.model_info()
    finally:
        server.stop(None)
    assert [m.get("authorization") for m in servicer.metadata] == [
        "Bearer s3cret-token",
        "Bearer s3cret-token",
        None,
    ]
    assert servicer.metadata[0]["x-team"] == "search"
