"""The feature table and the business rules, on small hand-made inputs."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, target
from hypothesis import strategies as st
from xsell.ranking.features import (
    FEATURES,
    GROUPS,
    PairBatch,
    check_feature_names,
    feature_names,
    sparse_lookup,
)
from xsell.ranking.rules import RequestScope, apply_diversity, hard_filter
from xsell.ranking.types import CartLine, Filters, RankRequest, Strategy
from xsell.retrieval.candidates import SOURCE_BIT, Candidates, _Fuser

from xsell.errors import BundleError, InvalidRequest


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.data())
def test_sparse_lookup_equals_dense_indexing(n_rows, n_cols, data):
    dense = np.array(data.draw(st.lists(st.lists(st.sampled_from([0.0, 0.0, 1.0, 2.5]), min_size=n_cols,
                                                 max_size=n_cols), min_size=n_rows, max_size=n_rows)), dtype=np.float32)
    m = sp.csr_matrix(dense)
    m.sort_indices()
    row = data.draw(st.integers(-1, n_rows - 1))
    cols = np.array(data.draw(st.lists(st.integers(0, n_cols - 1), max_size=20)), dtype=np.int64)
    want = np.zeros(len(cols), np.float32) if row < 0 else dense[row, cols]
    np.testing.assert_array_equal(sparse_lookup(m, row, cols), want)


def test_feature_names_are_unique_and_documented():
    names = [f.name for f in FEATURES]
    assert len(names) == len(set(names))
    assert all(f.doc and f.group in GROUPS for f in FEATURES)


def test_disabling_a_group_removes_exactly_its_features():
    price = {f.name for f in FEATURES if f.group == "price"}
    assert price and set(feature_names(("price",))) == set(feature_names()) - price
    with pytest.raises(ValueError, match="nonsense"):
        feature_names(("nonsense",))


def test_unknown_feature_name_is_a_bundle_error():
    with pytest.raises(BundleError, match="not_a_feature"):
        check_feature_names(["log_price", "not_a_feature"])


def test_reciprocal_rank_fusion_sums_ranks_and_sources():
    fuse = _Fuser()
    fuse.add(np.array([5, 7, 9]), "ann", 1)
    fuse.add(np.array([7, 3]), "copurchase", 2)
    c = fuse.result()
    assert list(c.items) == [3, 5, 7, 9]
    score = dict(zip(c.items.tolist(), c.score.tolist()))
    assert score[7] == pytest.approx(1 / 22 + 1 / 21)  # rank 2 in ann, rank 1 in copurchase
    assert score[7] > score[5] > score[9]
    bits = dict(zip(c.items.tolist(), c.sources.tolist()))
    assert bits[7] == SOURCE_BIT["ann"] | SOURCE_BIT["copurchase"]
    assert dict(zip(c.items.tolist(), c.anchors.tolist()))[7] == 1  # the first source's anchor


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=0, max_size=40), st.integers(0, 3), st.integers(1, 15))
def test_diversity_cap(categories, cap, limit):
    cats = np.array(categories, dtype=np.int64)
    order = np.arange(len(cats))
    picked = apply_diversity(order, cats, cap, limit)
    assert len(picked) <= limit
    assert list(picked) == sorted(picked)  # keeps rank order
    if cap:
        assert max(np.bincount(cats[picked]), default=0) <= cap
        # greedy: every skipped item before the last pick was over its category's cap
        for i in range(picked[-1] if len(picked) else 0):
            if i not in picked:
                assert (cats[picked[picked < i]] == cats[i]).sum() >= cap
    else:
        assert list(picked) == list(order[:limit])


@pytest.mark.parametrize(
    "request_, field",
    [
        (RankRequest(), "cart"),
        (RankRequest(user_id="u", limit=101), "limit"),
        (RankRequest(user_id="u", cart=tuple(CartLine(str(i)) for i in range(101))), "cart"),
        (RankRequest(user_id="u", cart=(CartLine(""),)), "cart[0].item_id"),
        (RankRequest(user_id="u", cart=(CartLine("a", float("nan")),)), "cart[0].quantity"),
        (RankRequest(user_id="u", filters=Filters(price_min=5, price_max=1)), "filters.price_min"),
        (RankRequest(user_id="u", filters=Filters(uplift_min=2, uplift_max=1.5)), "filters.uplift_min"),
        (RankRequest(user_id="u", filters=Filters(price_max=float("inf"))), "filters.price_max"),
        (RankRequest(user_id="u", filters=Filters(max_per_category=-1)), "filters.max_per_category"),
    ],
)
def test_invalid_requests_name_the_field(request_, field):
    with pytest.raises(InvalidRequest) as err:
        request_.validated()
    assert err.value.field == field
    assert str(err.value).startswith(field)


def test_limits_per_strategy():
    assert RankRequest(user_id="u", strategy=Strategy.CROSS_SELL, limit=4).limits() == (4, 0)
    assert RankRequest(user_id="u", strategy=Strategy.UP_SELL).limits() == (0, 10)
    assert RankRequest(user_id="u", limit=5, up_sell_limit=2).limits() == (5, 2)


def greedy_diversity(order, categories, cap, limit):
    """The rule as stated: walk best first, skip an item whose category already has `cap`."""
    if cap <= 0:
        return list(order[:limit])
    taken: dict[int, int] = {}
    out = []
    for i in order:
        if len(out) == limit:
            break
        if taken.get(int(categories[i]), 0) < cap:
            taken[int(categories[i])] = taken.get(int(categories[i]), 0) + 1
            out.append(int(i))
    return out


@settings(max_examples=150, deadline=None)
@given(st.permutations(range(30)), st.lists(st.integers(0, 4), min_size=30, max_size=30),
       st.integers(0, 3), st.integers(0, 32))  # fmt: skip
def test_diversity_cap_equals_the_greedy_walk(order, categories, cap, limit):
    # fills up to `limit` whenever enough items pass the cap; follows `order`, not the index
    order, cats = np.array(order, dtype=np.int64), np.array(categories, dtype=np.int64)
    assert apply_diversity(order, cats, cap, limit).tolist() == greedy_diversity(order, cats, cap, limit)


def test_diversity_with_a_limit_of_0_takes_nothing():
    # with a cap the walk checked the limit only after taking an item, so 0 meant "no limit"
    assert apply_diversity(np.arange(5), np.array([0, 0, 1, 1, 2]), 1, 0).tolist() == []


POW2 = [0.5, 1.0, 2.0, 4.0]  # reference prices and uplift bounds: every ratio is exact


@st.composite
def filter_cases(draw):
    n_items, n_users = draw(st.integers(1, 8)), draw(st.integers(1, 3))
    item = st.tuples(st.integers(0, 1), st.sampled_from([True, True, True, False]), st.sampled_from([1.0, 2.0, 3.0, 4.0]),
                     st.sampled_from([0.0, *POW2]))  # category, in stock, catalog price, reference price
    catalog = draw(st.lists(item, min_size=n_items, max_size=n_items))
    bought = draw(st.lists(st.lists(st.booleans(), min_size=n_items, max_size=n_items),
                           min_size=n_users, max_size=n_users))
    ids = st.integers(0, n_items - 1)
    # anchor -2 stands for "the item itself" (history anchors are not cart items)
    pairs = draw(st.lists(st.tuples(ids, st.integers(-2, n_items - 1)), min_size=1, max_size=16))
    pairs = [(i, i if a == -2 else a) for i, a in pairs]

    def some(values):  # often none: every rule that removes an item hides the others
        return draw(st.one_of(st.just(set()), st.sets(values, max_size=2)))

    scope = dict(cart=some(ids), cart_cats=some(st.integers(0, 1)), excluded=some(ids),
                 allowed=draw(st.one_of(st.none(), st.sets(st.integers(0, 1), min_size=1))),
                 denied=some(st.integers(0, 1)), user=draw(st.integers(-1, n_users - 1)))

    def maybe(values):
        return draw(st.one_of(st.none(), st.sampled_from(values)))

    f = Filters(price_min=maybe([1.0, 2.0, 3.0, 4.0]), price_max=maybe([1.0, 2.0, 3.0, 4.0]),
                uplift_min=maybe(POW2), uplift_max=maybe(POW2), exclude_purchased=draw(st.booleans()))
    return catalog, bought, pairs, scope, f, draw(st.sampled_from([Strategy.CROSS_SELL, Strategy.UP_SELL]))


@settings(max_examples=400, deadline=None)
@given(filter_cases())
def test_hard_filter_keeps_exactly_the_candidates_every_rule_admits(case):
    catalog, bought, pairs, s, f, strategy = case
    cat = [c for c, _, _, _ in catalog]
    shown = [p for _, _, p, _ in catalog]  # the catalog price: price_min / price_max
    ref = [r for _, _, _, r in catalog]  # the reference price: the up-sell band
    arts = SimpleNamespace(
        in_stock=np.array([stock for _, stock, _, _ in catalog]), item_category=np.array(cat, dtype=np.int32),
        catalog_price=np.array(shown, dtype=np.float32), price=np.array(ref, dtype=np.float32),
        user_counts=sp.csr_matrix(np.array(bought, dtype=np.float32)),
    )  # fmt: skip
    scope = RequestScope(
        np.array(sorted(s["cart"]), np.int64), np.array(sorted(s["cart_cats"]), np.int32),
        np.array(sorted(s["excluded"]), np.int64),
        None if s["allowed"] is None else np.array(sorted(s["allowed"]), np.int32),
        np.array(sorted(s["denied"]), np.int32), s["user"],
    )  # fmt: skip
    c = Candidates(np.array([i for i, _ in pairs], np.int64), np.array([a for _, a in pairs], np.int64),
                   np.zeros(len(pairs), np.uint8), np.arange(len(pairs), dtype=np.float32))  # fmt: skip

    def admitted(i: int, a: int) -> bool:
        if not catalog[i][1] or i in s["cart"] or i in s["excluded"] or cat[i] in s["denied"]:
            return False
        if s["allowed"] is not None and cat[i] not in s["allowed"]:
            return False
        if (f.price_min is not None and shown[i] < f.price_min) or (f.price_max is not None and shown[i] > f.price_max):
            return False
        if f.exclude_purchased and s["user"] >= 0 and bought[s["user"]][i]:
            return False
        if strategy is Strategy.CROSS_SELL:
            return cat[i] not in s["cart_cats"]
        # up-sell: a real anchor, not the item itself, same category, priced, in the band
        if a < 0 or a == i or cat[a] != cat[i] or ref[a] <= 0:
            return False
        uplift = ref[i] / ref[a]  # exact: powers of two
        low_ok = uplift >= f.uplift_min if f.uplift_min is not None else uplift > 1.0
        return low_ok and (f.uplift_max is None or uplift <= f.uplift_max)

    keep = [j for j, (i, a) in enumerate(pairs) if admitted(i, a)]
    target(float(len(keep)))  # steer the search to cases keeping many: a wrong drop shows there
    got = hard_filter(arts, c, strategy, scope, f)
    assert got.items.tolist() == [pairs[j][0] for j in keep]
    assert got.anchors.tolist() == [pairs[j][1] for j in keep]
    assert got.score.tolist() == [float(j) for j in keep]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(-1, 3), st.floats(-10, 10, width=32)), min_size=1, max_size=20))
def test_per_anchor_blanks_exactly_the_rows_without_an_anchor(rows):
    # NaN ("missing" to LightGBM), not 0: a 0 would read as "no co-purchase" for a fallback row;
    # item 0 is a real anchor
    anchors = np.array([a for a, _ in rows], dtype=np.int64)
    values = np.array([v for _, v in rows], dtype=np.float32)
    n = len(rows)
    batch = PairBatch(None, np.zeros(n, np.int64), anchors, -1, np.zeros(n, np.uint8), np.zeros(n, np.float32), 1)
    got = batch.per_anchor(values)
    assert got.dtype == np.float32
    for (anchor, value), g in zip(rows, got.tolist()):
        assert math.isnan(g) if anchor < 0 else g == value


# item: (category, in stock, catalog price, reference price). Item 0 is the usual anchor
# (index 0 on purpose); shopper 0 bought item 3; item 7 is free.
SHOP = [(0, True, 2.0, 1.0), (0, True, 3.0, 2.0), (0, True, 1.0, 1.0), (0, True, 4.0, 1.5),
        (1, True, 2.0, 4.0), (0, False, 2.0, 3.0), (1, True, 5.0, 8.0), (0, True, 1.0, 0.0)]  # fmt: skip
UP, CROSS = Strategy.UP_SELL, Strategy.CROSS_SELL


@pytest.mark.parametrize(
    "strategy, f, user, pairs, kept",
    [
        # default band: strictly pricier (by reference price) in the anchor's category, in stock,
        # never the anchor itself, never without an anchor
        (UP, Filters(), -1, [(1, 0), (2, 0), (3, 0), (4, 0), (5, 0), (0, 0), (1, -1)], [1, 3]),
        # explicit bounds are inclusive; uplift 1.0 admits equal prices but still not the anchor
        (UP, Filters(uplift_min=1.0, uplift_max=1.5), -1, [(1, 0), (2, 0), (3, 0), (0, 0)], [2, 3]),
        # price_min / price_max bound the catalog price (1: 3.0, 3: 4.0, 2: 1.0), inclusive
        (UP, Filters(price_min=3.0, price_max=4.0), -1, [(1, 0), (3, 0), (2, 0)], [1, 3]),
        (UP, Filters(price_min=3.5, price_max=3.5), -1, [(1, 0), (3, 0)], []),
        # shopper 0 (a real shopper: index 0) bought item 3
        (UP, Filters(exclude_purchased=True), 0, [(1, 0), (3, 0)], [1]),
        (UP, Filters(exclude_purchased=False), 0, [(1, 0), (3, 0)], [1, 3]),
        # a free anchor has no band, whatever the bounds
        (UP, Filters(), -1, [(1, 7), (3, 7)], []),
        (UP, Filters(uplift_min=1.5), -1, [(1, 7), (3, 7)], []),
        # cross-sell: anything in stock outside the cart's categories (category 0 here)
        (CROSS, Filters(), -1, [(1, -1), (4, -1), (6, 0), (5, -1)], [4, 6]),
        (CROSS, Filters(price_max=2.0), -1, [(4, -1), (6, -1)], [4]),
    ],
)
def test_hard_filter_rule_by_rule(strategy, f, user, pairs, kept):
    arts = SimpleNamespace(
        in_stock=np.array([s[1] for s in SHOP]), item_category=np.array([s[0] for s in SHOP], np.int32),
        catalog_price=np.array([s[2] for s in SHOP], np.float32), price=np.array([s[3] for s in SHOP], np.float32),
        user_counts=sp.csr_matrix(np.array([[0, 0, 0, 2, 0, 0, 0, 0]], np.float32)),
    )  # fmt: skip
    scope = RequestScope(np.empty(0, np.int64), np.array([0], np.int32), np.empty(0, np.int64), None,
                         np.empty(0, np.int32), user)  # fmt: skip
    c = Candidates(np.array([i for i, _ in pairs], np.int64), np.array([a for _, a in pairs], np.int64),
                   np.zeros(len(pairs), np.uint8), np.zeros(len(pairs), np.float32))  # fmt: skip
    assert hard_filter(arts, c, strategy, scope, f).items.tolist() == kept


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.data())
def test_pair_features_read_the_table_for_every_anchor_including_item_0(n_anchors, n_items, data):
    dense = np.array(data.draw(st.lists(st.lists(st.sampled_from([0.0, 0.0, 1.0, 3.0]), min_size=n_items,
                                                 max_size=n_items), min_size=n_anchors, max_size=n_anchors)),
                     dtype=np.float32)  # fmt: skip
    rows = data.draw(st.lists(st.tuples(st.integers(-1, n_anchors - 1), st.integers(0, n_items - 1)), max_size=15))
    anchors = np.array([a for a, _ in rows], dtype=np.int64)
    items = np.array([i for _, i in rows], dtype=np.int64)
    arts = SimpleNamespace(copurchase=sp.csr_matrix(dense), switches=sp.csr_matrix(dense * 2))
    n = len(rows)
    b = PairBatch(arts, items, anchors, -1, np.zeros(n, np.uint8), np.zeros(n, np.float32), 1)
    want = [dense[a, i] if a >= 0 else 0.0 for a, i in rows]
    assert b.copurchase.tolist() == want
    assert b.switches.tolist() == [2 * w for w in want]
