"""`Ranker.rank` on random valid requests against the real session bundle: every
answer keeps every rule, whatever the combination of cart, shopper and filters.

Checked against the catalog and purchases of the test data (categories, catalog
prices, stock, what each shopper bought), except the up-sell band, which the API
defines on reference prices (`arts.price`, like the `price_uplift` it returns).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xsell.ranking.types import CartLine, Filters, RankRequest, Strategy


@pytest.fixture(scope="module")
def world(dataset):
    cat, ev = dataset.catalog, dataset.events
    purchases = ev[ev["event_type"] == "purchase"]
    return {
        "category": dict(zip(cat["item_id"], cat["category"])),
        "price": dict(zip(cat["item_id"], cat["price"].astype(float))),
        "in_stock": dict(zip(cat["item_id"], cat["in_stock"].astype(bool))),
        "bought": {u: frozenset(g) for u, g in purchases.groupby("user_id")["item_id"]},
        "users": sorted(ev["user_id"].unique()),
    }


@st.composite
def rank_requests(draw, world):
    items = sorted(world["category"])
    categories = sorted(set(world["category"].values()))
    # repeats and unknown ids on purpose: a cart may list an item twice
    cart = draw(st.one_of(st.just([]), st.lists(st.sampled_from(items + ["unknown-a", "unknown-b"]), max_size=5)))
    user = draw(st.sampled_from(["", "stranger", *world["users"][::15]]))
    if not cart and not user:
        user = world["users"][0]
    prices = sorted(world["price"].values())
    price_min = draw(st.one_of(st.none(), st.sampled_from(prices)))
    price_max = draw(st.one_of(st.none(), st.sampled_from(prices)))
    if price_min is not None and price_max is not None and price_min > price_max:
        price_min, price_max = price_max, price_min
    uplift_min = draw(st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0, 1.1, 1.5])))
    uplift_max = draw(st.one_of(st.none(), st.sampled_from([0.8, 1.0, 1.3, 2.0, 5.0])))
    if uplift_min is not None and uplift_max is not None and uplift_min > uplift_max:
        uplift_min, uplift_max = uplift_max, uplift_min
    def some(values, n):  # often none at all: a filter that removes most items hides the others
        return frozenset(draw(st.one_of(st.just([]), st.lists(st.sampled_from(values), max_size=n))))

    filters = Filters(
        exclude_item_ids=some(items + ["unknown-x"], 6),
        allowed_categories=some(categories + ["no-such-cat"], 8),
        denied_categories=some(categories, 3),
        price_min=price_min,
        price_max=price_max,
        uplift_min=uplift_min,
        uplift_max=uplift_max,
        exclude_purchased=draw(st.booleans()),
        max_per_category=draw(st.sampled_from([0, 0, 1, 2])),
    )
    return RankRequest(
        user_id=user,
        cart=tuple(CartLine(i, draw(st.sampled_from([0.0, 1.0, 3.0]))) for i in cart),
        strategy=draw(st.sampled_from(list(Strategy))),
        limit=draw(st.sampled_from([0, 1, 5, 30, 100])),
        cross_sell_limit=draw(st.sampled_from([0, 3, 100])),
        up_sell_limit=draw(st.sampled_from([0, 3, 100])),
        filters=filters,
        explain=draw(st.booleans()),
    ).validated()


def check_answer(ranker, world, req: RankRequest, res) -> None:
    arts, f = ranker.arts, req.filters
    cart = [line.item_id for line in req.cart]
    known = sorted({i for i in cart if i in world["category"]})
    assert res.unknown_item_ids == [i for i in cart if i not in world["category"]]
    cross_n, up_n = req.limits()
    assert len(res.cross_sell) <= cross_n and len(res.up_sell) <= up_n
    both = {it.item_id for it in res.cross_sell} & {it.item_id for it in res.up_sell}
    assert not both, f"in both lists: {sorted(both)}"
    for items, strategy in ((res.cross_sell, Strategy.CROSS_SELL), (res.up_sell, Strategy.UP_SELL)):
        ids = [it.item_id for it in items]
        assert len(ids) == len(set(ids)), f"an item appears twice: {ids}"
        scores = [it.score for it in items]
        assert all(math.isfinite(s) for s in scores), scores
        assert scores == sorted(scores, reverse=True), scores
        per_category: dict[str, int] = {}
        anchors_used = {it.anchor_item_id for it in items if it.anchor_item_id}
        for it in items:
            assert it.strategy is strategy
            assert it.category == world["category"][it.item_id]
            assert it.price == pytest.approx(world["price"][it.item_id], rel=1e-5)
            assert world["in_stock"][it.item_id], it.item_id
            assert it.item_id not in cart
            assert it.item_id not in f.exclude_item_ids
            assert it.item_id != it.anchor_item_id, f"{it.item_id} recommended for itself"
            assert it.category not in f.denied_categories
            if f.allowed_categories:
                assert it.category in f.allowed_categories
            if f.price_min is not None:
                assert it.price >= f.price_min - 1e-4
            if f.price_max is not None:
                assert it.price <= f.price_max + 1e-4
            if f.exclude_purchased:
                assert it.item_id not in world["bought"].get(req.user_id, frozenset())
            assert all(math.isfinite(r.contribution) and r.text for r in it.reasons)
            per_category[it.category] = per_category.get(it.category, 0) + 1
            if strategy is Strategy.CROSS_SELL:
                # the cart's categories, or the history anchors' when the cart has none known
                anchor_cats = {world["category"][a] for a in (known or anchors_used)}
                assert it.category not in anchor_cats, f"cross-sell {it.item_id} shares an anchor's category"
                if known and it.anchor_item_id:
                    assert it.anchor_item_id in known
            else:
                if known:
                    assert it.anchor_item_id in known, f"up-sell {it.item_id} anchored on {it.anchor_item_id!r}"
                if it.anchor_item_id:
                    assert it.category == world["category"][it.anchor_item_id]
                    ref = float(arts.price[arts.items.get(it.anchor_item_id)])
                    uplift = float(arts.price[arts.items.get(it.item_id)]) / ref
                    assert it.price_uplift == pytest.approx(uplift, rel=1e-6)
                    if f.uplift_min is None:
                        assert uplift > 1.0, f"default up-sell {it.item_id} is not pricier ({uplift})"
                    else:
                        assert uplift >= f.uplift_min - 1e-6
                    if f.uplift_max is not None:
                        assert uplift <= f.uplift_max + 1e-6
        if f.max_per_category:
            assert max(per_category.values(), default=0) <= f.max_per_category


SETTINGS = settings(
    max_examples=200, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)  # fmt: skip


def test_every_answer_keeps_every_rule_and_repeats_itself(ranker, world):
    @SETTINGS
    @given(st.data())
    def run(data):
        req = data.draw(rank_requests(world))
        res = ranker.rank(req)
        check_answer(ranker, world, req, res)
        again = ranker.rank(req)
        # deterministic (repr: a reason's value may be NaN, which equals nothing)
        assert repr((again.cross_sell, again.up_sell)) == repr((res.cross_sell, res.up_sell))

    run()


def test_cart_repeats_and_quantities_do_not_change_the_answer(ranker, world):
    """A line listed twice, or with a quantity, is the same anchor (quantities are not
    a ranking signal): the answer equals the one for the plain cart."""
    arts = ranker.arts
    a, b = (str(arts.items.ids[i]) for i in arts.popular_items[:2])
    plain = ranker.rank(RankRequest(cart=(CartLine(a), CartLine(b)), limit=20))
    repeated = ranker.rank(RankRequest(cart=(CartLine(a, 3.0), CartLine(b), CartLine(a, 0.0)), limit=20))
    assert repeated.cross_sell == plain.cross_sell and repeated.up_sell == plain.up_sell
    assert plain.cross_sell and not np.isnan([it.score for it in plain.cross_sell]).any()


def test_up_sell_of_history_anchors_never_offers_the_anchor_itself(ranker, world):
    """Without a cart the shopper's recent purchases anchor the up-sell; a band that
    admits equal prices (uplift_min <= 1) let the popular top-up offer an anchor as
    its own "premium alternative" (uplift 1.0)."""
    offered = 0
    for user in world["users"][:60]:
        for uplift_min in (0.0, 1.0):
            res = ranker.rank(RankRequest(user_id=user, strategy=Strategy.UP_SELL, limit=100,
                                          filters=Filters(uplift_min=uplift_min)))  # fmt: skip
            offered += len(res.up_sell)
            assert all(it.item_id != it.anchor_item_id for it in res.up_sell), user
    assert offered > 0


def test_a_fixed_candidate_set_listing_an_item_twice_returns_it_once(ranker):
    """`candidate_ids` (evaluation) with repeats: each item once, in the order given."""
    arts = ranker.arts
    ids = [str(i) for i in arts.items.ids[arts.popular_items[:40]]]
    res = ranker.rank(RankRequest(cart=(CartLine(ids[0]),), limit=100, candidate_ids=tuple(ids[::-1] + ids)))
    for items in (res.cross_sell, res.up_sell):
        got = [it.item_id for it in items]
        assert len(got) == len(set(got)), got
    assert res.cross_sell


def test_a_cold_request_does_not_offer_one_item_in_both_lists(ranker):
    """No known cart item and no history: both lists fall back to popular items, and
    the top price tier of the up-sell fallback overlapped the cross-sell one."""
    res = ranker.rank(RankRequest(user_id="stranger", cart=(CartLine("unknown-a"),), limit=30))
    assert res.cross_sell and res.up_sell
    both = {it.item_id for it in res.cross_sell} & {it.item_id for it in res.up_sell}
    assert not both, sorted(both)


def test_a_second_cart_item_in_the_category_does_not_hide_the_up_sells_of_the_first(ranker):
    """Up-sell retrieval attached each candidate to the first anchor that proposed it and
    the band was then checked against that anchor only: with two same-category cart
    items and uplift_max, an up-sell within the band of one of them was dropped when
    the other (cheaper) one came first. Adding a cart item must not remove a candidate
    that the other item alone admits."""
    arts = ranker.arts
    checked = 0
    for cat_items in arts.popular_by_category:
        ranked = np.sort(cat_items[:8])
        for a in ranked:
            for b in ranked:
                if a == b or not arts.price[a] < arts.price[b]:
                    continue
                ids = [str(arts.items.ids[a]), str(arts.items.ids[b])]
                for band in (Filters(uplift_max=1.3), Filters(uplift_min=1.2, uplift_max=1.6)):
                    req = RankRequest(cart=(CartLine(ids[1]),), strategy=Strategy.UP_SELL, filters=band)
                    alone = set(ranker.candidate_ids(req)[1]) - {ids[0]}
                    both = set(ranker.candidate_ids(req.with_(cart=(CartLine(ids[0]), CartLine(ids[1]))))[1])
                    assert alone <= both, (ids, band, sorted(alone - both))
                    checked += bool(alone)
    assert checked > 20


def test_a_free_anchor_gets_no_up_sell(ranker):
    """An anchor whose reference price is 0 has no price to trade up from: every priced
    item of its category would pass any uplift_min (price / ~0), and the answer would
    report price_uplift 0, which the API reserves for "no anchor"."""
    import copy
    import dataclasses

    arts = ranker.arts
    anchor = int(np.argmax(arts.popularity))  # an item with a full category around it
    price = arts.price.copy()
    price[anchor] = 0.0
    free = copy.copy(ranker)
    free.arts = dataclasses.replace(arts, price=price)
    anchor_id = str(arts.items.ids[anchor])
    for uplift_min in (None, 1.5):
        res = free.rank(RankRequest(cart=(CartLine(anchor_id),), strategy=Strategy.UP_SELL, limit=10,
                                    filters=Filters(uplift_min=uplift_min)))  # fmt: skip
        assert [it.item_id for it in res.up_sell if it.anchor_item_id == anchor_id] == []
    # the same item at its own price still gets up-sells: the rule is about price 0 only
    res = ranker.rank(RankRequest(cart=(CartLine(anchor_id),), strategy=Strategy.UP_SELL, limit=10))
    assert any(it.anchor_item_id == anchor_id for it in res.up_sell)
