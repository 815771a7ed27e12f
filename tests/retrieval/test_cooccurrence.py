"""Co-occurrence tables against brute-force counts over random baskets."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from xsell.retrieval.cooccurrence import (
    category_complements,
    copurchase_counts,
    top_complements,
    top_n_per_row,
)

baskets_strategy = st.lists(st.lists(st.integers(0, 7), min_size=1, max_size=6), min_size=1, max_size=40)


def _codes(baskets):
    b = np.array([i for i, items in enumerate(baskets) for _ in items], dtype=np.int64)
    items = np.array([x for items in baskets for x in items], dtype=np.int64)
    return b, items


@settings(max_examples=60, deadline=None)
@given(baskets_strategy)
def test_copurchase_counts_baskets_holding_both(baskets):
    b, items = _codes(baskets)
    got = copurchase_counts(b, items, 8, top_n=100).toarray()
    for i in range(8):
        for j in range(8):
            want = 0 if i == j else sum(1 for bk in baskets if i in bk and j in bk)
            assert got[i, j] == want, (i, j)


@settings(max_examples=60, deadline=None)
@given(baskets_strategy, st.integers(1, 4))
def test_top_n_keeps_the_largest_per_row(baskets, n):
    b, items = _codes(baskets)
    full = copurchase_counts(b, items, 8, top_n=100).toarray()
    pruned = top_n_per_row(copurchase_counts(b, items, 8, top_n=100), n).toarray()
    for r in range(8):
        kept = np.flatnonzero(pruned[r])
        assert len(kept) <= n
        assert np.all(pruned[r, kept] == full[r, kept])
        dropped = np.setdiff1d(np.flatnonzero(full[r]), kept)
        if len(dropped) and len(kept):
            assert full[r, dropped].max() <= full[r, kept].min()


def test_complement_lift_finds_the_planted_pair(rng):
    # category 0 always comes with 1; 2 and 3 appear at random
    baskets = []
    for _ in range(400):
        basket = [0, 1] if rng.random() < 0.3 else []
        basket += [c for c in (2, 3) if rng.random() < 0.4]
        baskets.append(basket or [2])
    b, cats = _codes(baskets)
    table = category_complements(b, cats, 4, prior=0.0)
    p1 = np.mean([1 in bk for bk in baskets])
    assert abs(table.cond_prob[0, 1] - 1.0) < 1e-6
    assert abs(table.lift[0, 1] - 1.0 / p1) < 1e-4
    assert table.lift[2, 3] < 1.5
    assert top_complements(table, 0, 1)[0] == 1
    assert np.all(np.diag(table.lift) == 0)


def test_shrinkage_pulls_rare_pairs_toward_independence():
    # one basket with both 0 and 1, many with neither: raw lift is huge, shrunk lift is not
    baskets = [[0, 1]] + [[2]] * 200
    b, cats = _codes(baskets)
    raw = category_complements(b, cats, 3, prior=0.0)
    shrunk = category_complements(b, cats, 3, prior=20.0)
    assert raw.lift[0, 1] > 100
    assert shrunk.lift[0, 1] < raw.lift[0, 1] / 5
