"""Shopper signals (retrieval/shopper.py) on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from xsell.retrieval.shopper import (
    basket_recency,
    decayed_vectors,
    neighbour_scores,
    recent_mean,
    repeat_rates,
    switch_counts,
    top_per_row,
    user_category_mean,
)


def test_decay_counts_the_shoppers_later_baskets_not_days():
    # shopper 0: item 0 in baskets on days 1 and 50, item 1 on day 50 (twice in one basket);
    # shopper 1: item 0 once. Basket rank: most recent = 0.
    user = np.array([0, 0, 0, 0, 1])
    item = np.array([0, 0, 1, 1, 0])
    basket = np.array([10, 11, 11, 11, 12])
    day = np.array([1, 50, 50, 50, 3])
    m = decayed_vectors(user, item, basket, day, n_users=2, n_items=2, decay=0.5).toarray()
    np.testing.assert_allclose(m, [[1.0 + 0.5, 1.0], [1.0, 0.0]])


def test_repeat_rates_shrink_items_towards_the_shop_mean():
    # pairs: (u0,i0)=3, (u1,i0)=1, (u0,i1)=1 -> shop-wide repeat share 1/3
    counts = sp.csr_matrix(np.array([[3.0, 1.0], [1.0, 0.0]], dtype=np.float32))
    item, user = repeat_rates(counts, prior=3.0)
    np.testing.assert_allclose(item, [(1 + 3 / 3) / (2 + 3), (0 + 3 / 3) / (1 + 3)], rtol=1e-6)
    np.testing.assert_allclose(user, [0.5, 0.0])
    _, user_none = repeat_rates(sp.csr_matrix((1, 2), dtype=np.float32))
    assert np.isnan(user_none[0])


def test_switches_count_next_purchase_in_the_category_on_a_later_day():
    # shopper 0, category 0: item 0 (day 1) -> item 1 (day 2) -> item 1 (day 3, a repeat) -> item 0 (day 4)
    # item 2 is another category in between: it must not break the chain. Shopper 1: same day, no switch.
    user = np.array([0, 0, 0, 0, 0, 1, 1])
    item = np.array([0, 2, 1, 1, 0, 0, 1])
    cat = np.array([0, 1, 0, 0, 0, 0, 0])
    day = np.array([1, 1, 2, 3, 4, 5, 5])
    m = switch_counts(user, item, cat, day, n_items=3).toarray()
    want = np.zeros((3, 3))
    want[0, 1] = 1  # 0 -> 1
    want[1, 0] = 1  # 1 -> 0 (after the repeat of 1)
    np.testing.assert_array_equal(m, want)


def test_user_category_mean_is_stored_plus_one():
    m = user_category_mean(np.array([0, 0, 1]), np.array([1, 1, 0]), np.array([0.0, 0.5, 1.0]), 2, 2).toarray()
    np.testing.assert_allclose(m, [[0.0, 1.25], [2.0, 0.0]])


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.integers(1, 5), st.data())
def test_top_per_row_keeps_the_largest(n_rows, n_cols, keep, data):
    dense = np.array(data.draw(st.lists(st.lists(st.sampled_from([0.0, 1.0, 2.0, 3.5]), min_size=n_cols,
                                                 max_size=n_cols), min_size=n_rows, max_size=n_rows)))
    out = top_per_row(sp.csr_matrix(dense), keep).toarray()
    for r in range(n_rows):
        nz = np.sort(dense[r][dense[r] > 0])[::-1]
        kept = np.sort(out[r][out[r] > 0])[::-1]
        np.testing.assert_array_equal(kept, nz[:keep])
        assert set(np.flatnonzero(out[r])) <= set(np.flatnonzero(dense[r]))


def test_neighbour_score_comes_from_the_most_similar_shopper():
    # shoppers 0 and 1 share items 0 and 1, shopper 1 also bought item 2; shopper 2 bought item 3 only.
    u = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1]], dtype=np.float32)
    score = neighbour_scores(sp.csr_matrix(u), k=1, keep=10).toarray()
    # k=1: shopper 0's only neighbour is shopper 1 (cosine 2/sqrt(6)), weights normalised to 1
    np.testing.assert_allclose(score[0], u[1] / np.sqrt(3), rtol=1e-6)
    assert score[0, 3] == 0.0  # nothing from the unrelated shopper
    assert score[1, 2] == 0.0 and score[1, 0] > 0  # shopper 1 gets shopper 0's items


def test_neighbour_scores_of_a_single_shopper_are_empty():
    assert neighbour_scores(sp.csr_matrix(np.ones((1, 3), np.float32)), k=5).nnz == 0


@pytest.mark.parametrize("keep", [1, 2])
def test_neighbour_scores_keep_at_most_keep_items(keep):
    u = sp.csr_matrix(np.eye(4, dtype=np.float32) + np.roll(np.eye(4, dtype=np.float32), 1, axis=1))
    assert np.diff(neighbour_scores(u, k=2, keep=keep).indptr).max() <= keep


def test_neighbour_scores_are_off_with_k_zero():
    assert neighbour_scores(sp.csr_matrix(np.ones((3, 2), np.float32)), k=0).nnz == 0


def test_basket_recency_counts_the_shoppers_later_baskets():
    # shopper 0: baskets 10 (day 1), 11 (day 5, two rows), 12 (day 5: same day, higher id = later);
    # shopper 1: basket 20 (day 2)
    user = np.array([0, 0, 0, 0, 1])
    basket = np.array([10, 11, 11, 12, 20])
    day = np.array([1, 5, 5, 5, 2])
    np.testing.assert_array_equal(basket_recency(user, basket, day), [2, 1, 1, 0, 0])


def test_recent_mean_weights_the_latest_baskets_most():
    # shopper 0 bought at level 0.2 long ago and 0.8 in the latest basket; shopper 1 nothing
    user = np.array([0, 0, 0])
    basket = np.array([1, 2, 3])
    day = np.array([1, 2, 3])
    value = np.array([0.2, 0.2, 0.8])
    level = recent_mean(user, basket, day, value, n_users=2, decay=0.5)
    np.testing.assert_allclose(level[0], (0.8 + 0.5 * 0.2 + 0.25 * 0.2) / 1.75, rtol=1e-6)
    assert level[0] > value.mean()  # trading up: the recent level is above the plain mean
    assert np.isnan(level[1])
    np.testing.assert_allclose(recent_mean(user, basket, day, value, n_users=2, decay=1.0)[0], value.mean(), rtol=1e-6)


def test_artifacts_from_before_the_recent_price_level_still_load(dataset, tmp_path):
    """A bundle written before `user_recent_price_level` existed has no such array in
    stats.npz; it loads (its models do not use the features that need it)."""
    from xsell.retrieval.artifacts import Artifacts, build_artifacts

    arts = build_artifacts(dataset, log=lambda *_: None)
    assert arts.user_recent_price_level is not None
    assert np.nanmean(np.abs(arts.user_recent_price_level - arts.user_price_level)) > 0
    arts.save(tmp_path)
    back = Artifacts.load(tmp_path, ann_file=None)
    np.testing.assert_array_equal(back.user_recent_price_level, arts.user_recent_price_level)
    stats = dict(np.load(tmp_path / "stats.npz"))
    del stats["user_recent_price_level"]
    np.savez(tmp_path / "stats.npz", **stats)
    assert Artifacts.load(tmp_path, ann_file=None).user_recent_price_level is None
