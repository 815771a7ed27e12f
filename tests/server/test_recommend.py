"""Recommend / RecommendBatch / GetModelInfo over a real socket against a real bundle.

Every answer is checked against the test data itself (catalog categories, prices,
stock, purchases), not against the server's internals.
"""

from __future__ import annotations

import math

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xsell.v1 import xsell_pb2 as pb

CROSS, UP, BOTH = pb.STRATEGY_CROSS_SELL, pb.STRATEGY_UP_SELL, pb.STRATEGY_BOTH


def request(items=(), **kwargs) -> pb.RecommendRequest:
    return pb.RecommendRequest(cart=[pb.CartLine(item_id=i, quantity=1) for i in items], **kwargs)


def call_error(fn, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value


def error_field(err: grpc.RpcError) -> str | None:
    return dict(err.trailing_metadata() or ()).get("xsell-error-field")


def check_invariants(req: pb.RecommendRequest, resp: pb.RecommendResponse, facts) -> None:
    """Every rule the API promises, checked on one answer."""
    f = req.filters
    cart = [line.item_id for line in req.cart]
    known = [i for i in cart if i in facts.category]
    cart_categories = {facts.category[i] for i in known}
    assert list(resp.unknown_item_ids) == [i for i in cart if i not in facts.category]
    limit = req.limit or 10
    cross_n = (
        limit
        if req.strategy == CROSS
        else 0
        if req.strategy == UP
        else (req.cross_sell_limit or limit)
    )
    up_n = (
        limit
        if req.strategy == UP
        else 0
        if req.strategy == CROSS
        else (req.up_sell_limit or limit)
    )
    assert len(resp.cross_sell) <= cross_n and len(resp.up_sell) <= up_n
    for items, strategy in ((resp.cross_sell, CROSS), (resp.up_sell, UP)):
        ids = [it.item_id for it in items]
        assert len(ids) == len(set(ids)), "an item appears twice in one list"
        scores = [it.score for it in items]
        assert scores == sorted(scores, reverse=True), "list not ranked best first"
        per_category: dict[str, int] = {}
        for it in items:
            assert it.strategy == strategy
            assert it.item_id in facts.category, f"{it.item_id} is not in the catalog"
            assert it.category == facts.category[it.item_id]
            assert it.price == pytest.approx(facts.price[it.item_id], rel=1e-5)
            assert facts.in_stock[it.item_id], f"{it.item_id} is out of stock"
            assert it.item_id not in cart, f"{it.item_id} is in the cart"
            assert it.item_id not in f.exclude_item_ids
            assert it.category not in f.denied_categories
            if f.allowed_categories:
                assert it.category in f.allowed_categories
            if f.HasField("price_min"):
                assert it.price >= f.price_min - 1e-6
            if f.HasField("price_max"):
                assert it.price <= f.price_max + 1e-6
            if f.exclude_purchased and req.user_id:
                assert it.item_id not in facts.bought.get(req.user_id, frozenset())
            per_category[it.category] = per_category.get(it.category, 0) + 1
            if it.anchor_item_id and known:
                assert it.anchor_item_id in known, f"anchor {it.anchor_item_id} is not a cart item"
            if strategy == CROSS:
                assert it.category not in cart_categories, (
                    f"cross-sell {it.item_id} shares a cart category"
                )
            else:
                if known:
                    assert it.anchor_item_id, (
                        f"up-sell {it.item_id} has no anchor although the cart has known items"
                    )
                if it.anchor_item_id:
                    assert it.category == facts.category[it.anchor_item_id], (
                        "up-sell left the anchor's category"
                    )
                    band_min = f.uplift_min if f.HasField("uplift_min") else 1.0
                    assert it.price_uplift >= band_min - 1e-6
                    if not f.HasField("uplift_min"):
                        assert it.price_uplift > 1.0, "default up-sell must be strictly pricier"
                    if f.HasField("uplift_max"):
                        assert it.price_uplift <= f.uplift_max + 1e-6
        if f.max_per_category:
            assert max(per_category.values(), default=0) <= f.max_per_category


# ------------------------------------------------------------------ strategies


def test_cross_sell_leaves_the_cart_categories(stub, facts):
    for cart in (facts.items_by_popularity[:1], facts.items_by_popularity[:3]):
        req = request(cart, strategy=CROSS, limit=20)
        resp = stub.Recommend(req)
        assert resp.cross_sell, f"no cross-sell for {cart}"
        assert not resp.up_sell
        assert {it.category for it in resp.cross_sell}.isdisjoint(facts.category[i] for i in cart)
        check_invariants(req, resp, facts)


def test_up_sell_same_category_and_pricier(stub, facts):
    # the cheapest popular item of a category has pricier siblings to up-sell to
    anchor = min(facts.items_by_popularity[:30], key=lambda i: facts.price[i])
    req = request([anchor], strategy=UP, limit=10)
    resp = stub.Recommend(req)
    assert resp.up_sell and not resp.cross_sell
    for it in resp.up_sell:
        assert it.anchor_item_id == anchor
        assert it.category == facts.category[anchor]
        assert it.price_uplift > 1.0
    check_invariants(req, resp, facts)


def test_both_sizes_each_list(stub, facts):
    req = request(facts.items_by_popularity[:2], strategy=BOTH, cross_sell_limit=4, up_sell_limit=2)
    resp = stub.Recommend(req)
    assert len(resp.cross_sell) == 4 and len(resp.up_sell) == 2
    check_invariants(req, resp, facts)
    # UNSPECIFIED means BOTH
    unspecified = stub.Recommend(
        request(facts.items_by_popularity[:2], cross_sell_limit=4, up_sell_limit=2)
    )
    assert [i.item_id for i in unspecified.cross_sell] == [i.item_id for i in resp.cross_sell]


def test_response_echoes_ids_and_version(stub, facts, ranker):
    resp = stub.Recommend(request(facts.items_by_popularity[:1], request_id="req-42", variant="B"))
    assert (resp.request_id, resp.variant, resp.model_version) == ("req-42", "B", ranker.version)


# ------------------------------------------------------------------ filters


def _top(stub, cart, strategy=CROSS, **kwargs):
    return stub.Recommend(request(cart, strategy=strategy, limit=20, **kwargs))


def test_filter_exclude_item_ids(stub, facts):
    cart = facts.items_by_popularity[:1]
    before = [i.item_id for i in _top(stub, cart).cross_sell]
    excluded = before[:3]
    req = request(cart, strategy=CROSS, limit=20, filters=pb.Filters(exclude_item_ids=excluded))
    after = stub.Recommend(req)
    assert after.cross_sell and not {i.item_id for i in after.cross_sell} & set(excluded)
    check_invariants(req, after, facts)


def test_filter_categories(stub, facts):
    cart = facts.items_by_popularity[:1]
    before = _top(stub, cart).cross_sell
    denied = before[0].category
    req = request(cart, strategy=CROSS, limit=20, filters=pb.Filters(denied_categories=[denied]))
    resp = stub.Recommend(req)
    assert resp.cross_sell and denied not in {i.category for i in resp.cross_sell}
    check_invariants(req, resp, facts)

    allowed = before[-1].category
    req = request(cart, strategy=CROSS, limit=20, filters=pb.Filters(allowed_categories=[allowed]))
    resp = stub.Recommend(req)
    assert resp.cross_sell and {i.category for i in resp.cross_sell} == {allowed}
    check_invariants(req, resp, facts)


def test_filter_price_band(stub, facts):
    cart = facts.items_by_popularity[:1]
    prices = sorted(i.price for i in _top(stub, cart).cross_sell)
    lo, hi = prices[len(prices) // 4], prices[3 * len(prices) // 4]
    assert lo < hi
    req = request(cart, strategy=CROSS, limit=20, filters=pb.Filters(price_min=lo, price_max=hi))
    resp = stub.Recommend(req)
    assert resp.cross_sell
    check_invariants(req, resp, facts)


def test_filter_uplift_band(stub, facts):
    anchor = min(facts.items_by_popularity[:30], key=lambda i: facts.price[i])
    uplifts = sorted(i.price_uplift for i in _top(stub, [anchor], strategy=UP).up_sell)
    lo, hi = uplifts[0] * 1.01, uplifts[-1] * 0.99
    assert lo < hi, uplifts
    req = request([anchor], strategy=UP, limit=20, filters=pb.Filters(uplift_min=lo, uplift_max=hi))
    resp = stub.Recommend(req)
    assert resp.up_sell
    assert all(lo <= i.price_uplift <= hi for i in resp.up_sell)
    check_invariants(req, resp, facts)


def test_filter_max_per_category(stub, facts):
    cart = facts.items_by_popularity[:1]
    before = _top(stub, cart).cross_sell
    assert len({i.category for i in before}) < len(before), (
        "need repeated categories to test the cap"
    )
    req = request(cart, strategy=CROSS, limit=20, filters=pb.Filters(max_per_category=1))
    resp = stub.Recommend(req)
    categories = [i.category for i in resp.cross_sell]
    assert categories and len(categories) == len(set(categories))


def test_filter_exclude_purchased(stub, facts):
    # find shoppers whose unfiltered list holds something they bought before
    hits = []
    for user in facts.users[:80]:
        cart = facts.items_by_popularity[:1]
        resp = stub.Recommend(request(cart, user_id=user, limit=30))
        bought = facts.bought.get(user, frozenset())
        if any(i.item_id in bought for i in [*resp.cross_sell, *resp.up_sell]):
            hits.append(user)
        if len(hits) == 3:
            break
    assert hits, "no shopper was recommended an item they bought: the filter test would be vacuous"
    for user in hits:
        req = request(
            facts.items_by_popularity[:1],
            user_id=user,
            limit=30,
            filters=pb.Filters(exclude_purchased=True),
        )
        check_invariants(req, stub.Recommend(req), facts)


# --------------------------------------------------------- explain, fallback, users


def test_explain_returns_reasons(stub, facts, ranker):
    names = set(ranker.manifest["feature_names"])
    resp = stub.Recommend(request(facts.items_by_popularity[:2], explain=True, limit=5))
    items = [*resp.cross_sell, *resp.up_sell]
    assert items
    for it in items:
        if "popular" in it.sources and len(it.sources) == 1:
            continue  # a popularity top-up has no model score to explain
        assert it.reasons, f"{it.item_id} has no reasons"
        for r in it.reasons:
            assert r.feature in names and r.text and math.isfinite(r.contribution)
    plain = stub.Recommend(request(facts.items_by_popularity[:2], limit=5))
    assert not any(it.reasons for it in [*plain.cross_sell, *plain.up_sell])


def test_all_anchors_unknown_falls_back(stub, facts):
    req = request(["no-such-item-1", "no-such-item-2"], strategy=BOTH, limit=5)
    resp = stub.Recommend(req)
    assert resp.fallback and resp.fallback_reason
    assert list(resp.unknown_item_ids) == ["no-such-item-1", "no-such-item-2"]
    assert resp.cross_sell and resp.up_sell
    check_invariants(req, resp, facts)


def test_some_anchors_unknown_are_named(stub, facts):
    known = facts.items_by_popularity[0]
    req = request([known, "ghost"], strategy=CROSS, limit=5)
    resp = stub.Recommend(req)
    assert list(resp.unknown_item_ids) == ["ghost"]
    assert resp.cross_sell and all(
        i.anchor_item_id == known for i in resp.cross_sell if "popular" not in i.sources
    )
    check_invariants(req, resp, facts)


def test_unknown_user_with_anchors_works(stub, facts):
    req = request(facts.items_by_popularity[:1], user_id="never-seen-user", limit=5)
    resp = stub.Recommend(req)
    assert resp.cross_sell and resp.up_sell
    check_invariants(req, resp, facts)


def test_known_user_without_cart(stub, facts):
    user = max(facts.bought, key=lambda u: len(facts.bought[u]))
    req = pb.RecommendRequest(user_id=user, limit=5)
    resp = stub.Recommend(req)
    assert resp.cross_sell
    check_invariants(req, resp, facts)


# ------------------------------------------------------------------ property test


@st.composite
def requests_(draw, facts):
    items = sorted(facts.category)
    categories = sorted(set(facts.category.values()))
    cart = draw(
        st.lists(
            st.sampled_from(items + ["unknown-a", "unknown-b"]), min_size=0, max_size=4, unique=True
        )
    )
    user = draw(st.sampled_from(["", "stranger", *facts.users[:50]]))
    if not cart and not user:
        cart = [items[0]]
    filters = pb.Filters(
        exclude_item_ids=draw(st.lists(st.sampled_from(items), max_size=5)),
        denied_categories=draw(st.lists(st.sampled_from(categories), max_size=2)),
        allowed_categories=draw(
            st.one_of(st.just([]), st.lists(st.sampled_from(categories), min_size=1, max_size=4))
        ),
        exclude_purchased=draw(st.booleans()),
        max_per_category=draw(st.integers(0, 3)),
    )
    prices = sorted(facts.price.values())
    if draw(st.booleans()):
        filters.price_min = draw(st.sampled_from(prices[: len(prices) // 2]))
    if draw(st.booleans()):
        filters.price_max = draw(st.sampled_from(prices[len(prices) // 2 :]))
    if draw(st.booleans()):
        filters.uplift_min = draw(st.floats(1.0, 1.5))
    if draw(st.booleans()):
        filters.uplift_max = draw(st.floats(1.6, 4.0))
    return pb.RecommendRequest(
        user_id=user,
        cart=[pb.CartLine(item_id=i, quantity=draw(st.sampled_from([0, 1, 2.5]))) for i in cart],
        strategy=draw(st.sampled_from([0, CROSS, UP, BOTH])),
        limit=draw(st.integers(0, 25)),
        cross_sell_limit=draw(st.integers(0, 10)),
        up_sell_limit=draw(st.integers(0, 10)),
        filters=filters,
        explain=draw(st.booleans()),
    )


def test_every_answer_keeps_every_rule(stub, facts):
    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        derandomize=True,
    )
    @given(st.data())
    def run(data):
        req = data.draw(requests_(facts))
        check_invariants(req, stub.Recommend(req), facts)

    run()


# ------------------------------------------------------------------ bad input


def _many(n: int) -> list[pb.CartLine]:
    return [pb.CartLine(item_id=f"i{k}") for k in range(n)]


INVALID = [
    ("limit", pb.RecommendRequest(user_id="u", limit=101)),
    ("cross_sell_limit", pb.RecommendRequest(user_id="u", cross_sell_limit=1000)),
    ("up_sell_limit", pb.RecommendRequest(user_id="u", up_sell_limit=101)),
    ("cart", pb.RecommendRequest()),  # neither user nor anchors
    ("cart", pb.RecommendRequest(user_id="u", cart=_many(101))),
    ("cart[1].item_id", pb.RecommendRequest(cart=[pb.CartLine(item_id="a"), pb.CartLine(item_id="")])),
    ("cart[0].quantity", pb.RecommendRequest(cart=[pb.CartLine(item_id="a", quantity=-2)])),
    ("cart[0].quantity", pb.RecommendRequest(cart=[pb.CartLine(item_id="a", quantity=math.inf)])),
    ("strategy", pb.RecommendRequest(user_id="u", strategy=7)),
    ("filters.price_min", pb.RecommendRequest(user_id="u", filters=pb.Filters(price_min=10, price_max=5))),
    ("filters.price_min", pb.RecommendRequest(user_id="u", filters=pb.Filters(price_min=math.nan))),
    ("filters.price_max", pb.RecommendRequest(user_id="u", filters=pb.Filters(price_max=-1))),
    ("filters.uplift_min", pb.RecommendRequest(user_id="u", filters=pb.Filters(uplift_min=2, uplift_max=1.5))),
    ("filters.exclude_item_ids", pb.RecommendRequest(user_id="u", filters=pb.Filters(exclude_item_ids=[str(i) for i in range(1001)]))),
]  # fmt: skip
# limit <= 0 cannot be sent: the field is uint32 and 0 means "default" (see the .proto).


@pytest.mark.parametrize(
    ("field", "req"), INVALID, ids=[f"{f}-{i}" for i, (f, _) in enumerate(INVALID)]
)
def test_invalid_request_names_the_field(stub, field, req):
    err = call_error(stub.Recommend, req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(f"{field}: ")
    assert error_field(err) == field


def test_batch_too_big(stub, facts):
    batch = pb.RecommendBatchRequest(requests=[request(facts.items_by_popularity[:1])] * 65)
    err = call_error(stub.RecommendBatch, batch)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and error_field(err) == "requests"
    assert "64" in err.details()


def test_batch_names_the_bad_request(stub, facts):
    good = request(facts.items_by_popularity[:1])
    batch = pb.RecommendBatchRequest(
        requests=[good, good, pb.RecommendRequest(user_id="u", strategy=12), good]
    )
    err = call_error(stub.RecommendBatch, batch)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_field(err) == "requests[2].strategy" and err.details().startswith(
        "requests[2].strategy: "
    )


def test_oversized_message_is_refused(stub):
    err = call_error(stub.Recommend, pb.RecommendRequest(user_id="x" * (5 * 1024 * 1024)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # gRPC's own receive limit (4 MiB)


# ------------------------------------------------------------------ batch, model info


def test_batch_answers_in_request_order(stub, facts):
    reqs = [
        request(
            facts.items_by_popularity[k : k + 1],
            strategy=[CROSS, UP, BOTH][k % 3],
            limit=3 + k,
            request_id=f"r{k}",
        )
        for k in range(6)
    ]
    batch = stub.RecommendBatch(pb.RecommendBatchRequest(requests=reqs))
    assert [r.request_id for r in batch.responses] == [f"r{k}" for k in range(6)]
    for req, got in zip(reqs, batch.responses):
        single = stub.Recommend(req)
        assert [i.item_id for i in got.cross_sell] == [i.item_id for i in single.cross_sell]
        assert [i.item_id for i in got.up_sell] == [i.item_id for i in single.up_sell]
    assert stub.RecommendBatch(pb.RecommendBatchRequest()).responses == []


def test_model_info(stub, ranker, bundle_dir, facts):
    info = stub.GetModelInfo(pb.GetModelInfoRequest())
    manifest = ranker.manifest
    assert info.model_version == manifest["version"]
    assert list(info.feature_names) == manifest["feature_names"]
    assert info.created == manifest["created"]
    assert info.data_fingerprint == manifest["data_fingerprint"]
    assert info.num_items == len(facts.category)
    assert info.num_users == manifest["num_users"] > 0
    numeric = {k: v for k, v in manifest["metrics"].items() if isinstance(v, (int, float))}
    assert numeric and dict(info.training_metrics) == pytest.approx(numeric)
    assert info.bundle_path == str(bundle_dir.resolve())
