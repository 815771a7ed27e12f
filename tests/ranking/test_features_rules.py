"""The feature table and the business rules, on small hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from xsell.ranking.features import (
    FEATURES,
    GROUPS,
    check_feature_names,
    feature_names,
    sparse_lookup,
)
from xsell.ranking.rules import apply_diversity
from xsell.ranking.types import CartLine, Filters, RankRequest, Strategy
from xsell.retrieval.candidates import SOURCE_BIT, _Fuser

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
