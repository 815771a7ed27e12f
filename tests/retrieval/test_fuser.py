"""Reciprocal-rank fusion with eligible anchors: which anchor a fused candidate keeps; and
the other pure helpers of retrieval/candidates.py (the cap after fusion, the up-sell band,
the shopper's history source) against the rules their docstrings state."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from xsell.retrieval.candidates import (
    RRF_K,
    SOURCE_BIT,
    Candidates,
    _Fuser,
    cap,
    history_items,
    upsell_band,
)

lists_ = st.lists(
    st.tuples(
        st.lists(st.integers(0, 12), max_size=8, unique=True),  # a source's items, best first
        st.integers(0, 5),  # its anchor
        st.data(),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(lists_)
def test_an_item_keeps_the_anchor_of_its_first_eligible_entry(lists):
    plain, banded = _Fuser(), _Fuser()
    entries: dict[int, list[tuple[int, bool]]] = {}  # item -> (anchor, eligible) in add order
    for items, anchor, data in lists:
        ok = np.array(data.draw(st.lists(st.booleans(), min_size=len(items), max_size=len(items))), dtype=bool)
        plain.add(np.array(items, dtype=np.int64), "category", anchor)
        banded.add(np.array(items, dtype=np.int64), "category", anchor, ok)
        for item, e in zip(items, ok):
            entries.setdefault(item, []).append((anchor, bool(e)))
    a, b = plain.result(), banded.result()
    # eligibility picks the anchor only: items, scores and sources are those of plain fusion
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.score, b.score)
    np.testing.assert_array_equal(a.sources, b.sources)
    for item, anchor_plain, anchor_banded in zip(b.items.tolist(), a.anchors.tolist(), b.anchors.tolist()):
        seen = entries[item]
        assert anchor_plain == seen[0][0]
        eligible = [anc for anc, e in seen if e]
        assert anchor_banded == (eligible[0] if eligible else seen[0][0])


@pytest.mark.parametrize("lengths", [(3,), (1024, 1025), (1300, 40, 1100)])
def test_fused_score_is_the_sum_of_reciprocal_ranks_for_lists_of_any_length(lengths):
    # ranks past the precomputed weight table (1024) follow the same 1 / (K + rank)
    rng = np.random.default_rng(len(lengths))
    fuse = _Fuser()
    want: dict[int, float] = {}
    for n in lengths:
        items = rng.permutation(1500)[:n]
        fuse.add(items.astype(np.int64), "popular")
        for rank, item in enumerate(items.tolist(), start=1):
            want[item] = want.get(item, 0.0) + 1.0 / (RRF_K + rank)
    c = fuse.result()
    assert c.items.tolist() == sorted(want)
    np.testing.assert_allclose(c.score, [want[i] for i in c.items.tolist()], rtol=1e-5)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.01, 0.02, 0.03]),  # ties on purpose
            st.sampled_from([int(SOURCE_BIT[s]) for s in ("history", "ann", "copurchase")]
                            + [int(SOURCE_BIT["history"] | SOURCE_BIT["category"])]),
        ),
        max_size=80,
    ),
    st.data(),
)
def test_cap_keeps_the_n_best_first_in_order_plus_every_history_item(rows, data):
    n = data.draw(st.integers(0, len(rows) + 1))  # mostly a cut inside the list
    history = int(SOURCE_BIT["history"])
    sources = np.array([bits for _, bits in rows], dtype=np.uint8)
    c = Candidates(
        np.arange(len(rows), dtype=np.int64) * 7 + 3,
        np.arange(len(rows), dtype=np.int64) % 4 - 1,
        sources,
        np.array([s for s, _ in rows], dtype=np.float32),
    )
    got = cap(c, n)
    if len(rows) <= n:
        keep = list(range(len(rows)))
    else:
        # best score first; among equal scores the earlier candidate
        best = sorted(range(len(rows)), key=lambda i: (-c.score[i], i))[:n]
        keep = [i for i in range(len(rows)) if i in best or sources[i] & history]
    np.testing.assert_array_equal(got.items, c.items[keep])
    np.testing.assert_array_equal(got.anchors, c.anchors[keep])
    np.testing.assert_array_equal(got.sources, c.sources[keep])
    np.testing.assert_array_equal(got.score, c.score[keep])


RATIOS = [0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0]  # dyadic: price / anchor is exact in float32


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0]), st.sampled_from(RATIOS)), min_size=1, max_size=20),
    st.one_of(st.none(), st.sampled_from(RATIOS)),
    st.one_of(st.none(), st.sampled_from(RATIOS)),
)
def test_upsell_band_bounds_are_inclusive_and_the_default_is_strictly_pricier(pairs, uplift_min, uplift_max):
    anchor_prices = np.array([a for a, _ in pairs], dtype=np.float32)
    prices = np.array([a * r if a > 0 else r for a, r in pairs], dtype=np.float32)
    want = [
        a > 0
        and (r >= uplift_min if uplift_min is not None else r > 1.0)
        and (uplift_max is None or r <= uplift_max)
        for a, r in pairs
    ]
    assert upsell_band(prices, anchor_prices, uplift_min, uplift_max).tolist() == want
    # one anchor for all (how retrieval calls it): the same answer per item
    for a in {a for a, _ in pairs}:
        rows = [i for i, (x, _) in enumerate(pairs) if x == a]
        got = upsell_band(prices[rows], np.float32(a), uplift_min, uplift_max)
        assert got.tolist() == [want[i] for i in rows]


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 4), st.integers(1, 10), st.data())
def test_history_items_are_most_bought_first_then_most_recent(n_users, n_items, data):
    # each (shopper, item): not bought, or (times bought, last day + 1); small ranges for ties
    cell = st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 4)))
    grid = data.draw(st.lists(st.lists(cell, min_size=n_items, max_size=n_items), min_size=n_users, max_size=n_users))
    counts = np.array([[c[0] if c else 0 for c in row] for row in grid], dtype=np.float32)
    last = np.array([[c[1] if c else 0 for c in row] for row in grid], dtype=np.float32)
    arts = SimpleNamespace(user_counts=sp.csr_matrix(counts), user_last_day=sp.csr_matrix(last))
    user = data.draw(st.integers(-1, n_users - 1))
    k = data.draw(st.integers(0, n_items + 2))
    got = history_items(arts, user, k)
    assert got.dtype == np.int64
    if user < 0:
        assert len(got) == 0
        return
    bought = [i for i in range(n_items) if grid[user][i]]
    assert len(got) == min(k, len(bought)) and len(set(got.tolist())) == len(got)
    assert set(got.tolist()) <= set(bought)
    keys = sorted((grid[user][i] for i in bought), reverse=True)  # (count, last), largest first
    assert [grid[user][i] for i in got.tolist()] == keys[:k]
