"""The request-time lookups against the plain computations they replace:
pair lookups vs dense indexing, partners by value vs a per-row argsort, the one-sort
fuser vs np.unique + bincount, the small-set membership vs np.isin, and the shared
shopper-row search vs a lookup per table."""

from __future__ import annotations

import copy

import numpy as np
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from xsell.ranking.features import PairBatch, sparse_lookup
from xsell.ranking.rules import _isin
from xsell.retrieval.candidates import SOURCE_BIT, SOURCES, _Fuser, _rrf_weights
from xsell.retrieval.pairs import by_value_within_rows, pair_lookup


@st.composite
def sparse_tables(draw, max_side: int = 12):
    n_rows, n_cols = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    cells = st.sampled_from([0.0, 0.0, 0.0, 1.0, 2.0, 2.0, 3.5])  # ties on purpose
    dense = np.array(draw(st.lists(st.lists(cells, min_size=n_cols, max_size=n_cols),
                                   min_size=n_rows, max_size=n_rows)), dtype=np.float32)  # fmt: skip
    return dense, sp.csr_matrix(dense)


@settings(max_examples=150, deadline=None)
@given(sparse_tables(), st.data())
def test_pair_lookup_equals_dense_indexing(table, data):
    dense, m = table
    n_rows, n_cols = dense.shape
    n = data.draw(st.integers(0, 30))
    rows = np.array(data.draw(st.lists(st.integers(-1, n_rows - 1), min_size=n, max_size=n)), dtype=np.int64)
    cols = np.array(data.draw(st.lists(st.integers(0, n_cols - 1), min_size=n, max_size=n)), dtype=np.int64)
    want = np.where(rows >= 0, dense[np.maximum(rows, 0), cols], 0.0).astype(np.float32)
    distinct = np.unique(rows[rows >= 0])
    np.testing.assert_array_equal(pair_lookup(m, rows, cols, distinct), want)
    # broadcasting: every distinct row against every column
    grid = pair_lookup(m, distinct[:, None], cols[None, :], distinct)
    np.testing.assert_array_equal(grid, dense[distinct][:, cols].reshape(grid.shape))


@settings(max_examples=100, deadline=None)
@given(sparse_tables())
def test_partners_by_value_equal_a_stable_argsort_per_row(table):
    dense, m = table
    for chunk in (1, 3, 2048):
        ranked = by_value_within_rows(m, rows_per_chunk=chunk)
        for r in range(dense.shape[0]):
            lo, hi = m.indptr[r], m.indptr[r + 1]
            want = m.indices[lo:hi][np.argsort(-m.data[lo:hi], kind="stable")]
            np.testing.assert_array_equal(ranked[lo:hi], want)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 40), max_size=25, unique=True), st.sampled_from(SOURCES),
                          st.integers(-1, 5)), max_size=8))  # fmt: skip
def test_fuser_equals_unique_and_bincount(lists):
    fuse = _Fuser()
    for items, source, anchor in lists:
        fuse.add(np.array(items, dtype=np.int64), source, anchor)
    got = fuse.result()
    kept = [(np.array(i, np.int64), s, a) for i, s, a in lists if i]
    if not kept:
        assert len(got) == 0
        return
    items = np.concatenate([i for i, _, _ in kept])
    weights = np.concatenate([_rrf_weights(len(i)) for i, _, _ in kept])
    uniq, first, inverse = np.unique(items, return_index=True, return_inverse=True)
    bits = np.zeros(len(uniq), np.uint8)
    np.bitwise_or.at(bits, inverse, np.concatenate([np.full(len(i), SOURCE_BIT[s]) for i, s, _ in kept]))
    anchors = np.concatenate([np.full(len(i), a) for i, _, a in kept])[first]
    np.testing.assert_array_equal(got.items, uniq)
    np.testing.assert_array_equal(got.score, np.bincount(inverse, weights=weights).astype(np.float32))
    np.testing.assert_array_equal(got.sources, bits)
    np.testing.assert_array_equal(got.anchors, anchors)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(-3, 30), max_size=40), st.lists(st.integers(-3, 30), max_size=40))
def test_small_set_membership_equals_isin(values, members):
    values, members = np.array(values, np.int64), np.array(members, np.int64)
    np.testing.assert_array_equal(_isin(values, members), np.isin(values, members))


def test_shopper_row_search_serves_every_twin_table_and_others_fall_back(ranker):
    arts = ranker.arts
    twins = arts.user_item_twins
    assert "user_counts" in twins and "user_last_day" in twins  # built with one pattern
    rng = np.random.default_rng(0)
    users = [u for u in range(len(arts.users)) if arts.user_counts.indptr[u + 1] > arts.user_counts.indptr[u]][:20]
    for user in users + [-1]:
        bought = arts.user_counts.indices[arts.user_counts.indptr[user] : arts.user_counts.indptr[user + 1]]
        items = np.concatenate([bought[:5], rng.integers(0, len(arts.items), 30)]).astype(np.int64)
        batch = PairBatch(arts, items, np.full(len(items), -1, np.int64), user, np.zeros(len(items), np.uint8),
                          np.zeros(len(items), np.float32), 0)  # fmt: skip
        for table in ("user_counts", "user_last_day", "user_first_day", "user_decay", "user_knn"):
            want = sparse_lookup(getattr(arts, table), user, items)
            np.testing.assert_array_equal(batch.user_item(table), want, err_msg=f"{table} user {user}")
    # a table with another pattern is not taken for a twin (a copy: the ranker is shared)
    other = copy.copy(arts)
    other.__dict__.pop("user_item_twins")
    other.user_decay = sp.csr_matrix(arts.user_decay.shape, dtype=np.float32)
    assert other.user_item_twins == twins - {"user_decay"}


@settings(max_examples=100, deadline=None)
@given(sparse_tables(), st.data())
def test_partners_by_value_break_ties_by_column_even_from_unsorted_indices(table, data_):
    # a table assembled from unsorted parts lists each row's entries in any order: ties in
    # value must still come out in column order (the documented tie-break)
    dense, m = table
    data, indices = m.data.copy(), m.indices.copy()
    for r in range(dense.shape[0]):
        lo, hi = m.indptr[r], m.indptr[r + 1]
        perm = lo + np.array(data_.draw(st.permutations(range(hi - lo))), dtype=np.int64)
        data[lo:hi], indices[lo:hi] = data[perm], indices[perm]
    shuffled = sp.csr_matrix((data, indices, m.indptr.copy()), shape=m.shape)
    ranked = by_value_within_rows(shuffled, rows_per_chunk=3)
    for r in range(dense.shape[0]):
        cols = [c for c in range(dense.shape[1]) if dense[r, c] != 0]
        want = sorted(cols, key=lambda c: (-dense[r, c], c))
        assert ranked[m.indptr[r] : m.indptr[r + 1]].tolist() == want
