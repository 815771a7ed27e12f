"""Sparse-table reads a request makes many of, in a few numpy calls.

A request looks the co-purchase and switch tables up for every (anchor, candidate)
pair: a few anchors times a few hundred candidates. Row by row that was a dozen numpy
calls per anchor; `pair_lookup` does one binary search for all pairs. And it takes the
top co-purchase partners of each anchor, which `by_value_within_rows` sorts once at load
instead of once per request.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def pair_lookup(m: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray, distinct_rows: np.ndarray) -> np.ndarray:
    """`m[rows, cols]` as float32 (rows and cols broadcast against each other), 0 where
    absent or where the row is < 0. `m` has sorted indices; `distinct_rows` are the
    sorted distinct rows >= 0 among `rows` (a request's few anchors): the search runs
    over those rows' entries only, which stay in cache, and needs no table-wide index."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    out = np.zeros(np.broadcast_shapes(rows.shape, cols.shape), dtype=np.float32)
    spans = [(m.indptr[r], m.indptr[r + 1]) for r in distinct_rows]
    lengths = [hi - lo for lo, hi in spans]
    if not sum(lengths):
        return out
    n_cols = m.shape[1]
    # key = slot of the row among distinct_rows * n_cols + column: increasing, since the
    # rows are sorted and each row's columns are
    keys = np.concatenate([m.indices[lo:hi] for lo, hi in spans]) + np.repeat(
        np.arange(len(spans), dtype=np.int64) * n_cols, lengths
    )
    values = np.concatenate([m.data[lo:hi] for lo, hi in spans])
    q = np.searchsorted(distinct_rows, rows) * n_cols + cols
    pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
    hit = (keys[pos] == q) & (rows >= 0)
    out[hit] = values[pos[hit]]
    return out


def by_value_within_rows(m: sp.csr_matrix, *, rows_per_chunk: int = 2048) -> np.ndarray:
    """m.indices reordered so that each row lists its columns by value, largest first
    (ties in column order). Row r's top k columns are then a slice:
    `out[m.indptr[r] : min(m.indptr[r] + k, m.indptr[r + 1])]`. Sorted a chunk of rows
    at a time: whole-table sort keys would be temporaries several times the result's
    size, which the allocator keeps in a serving process."""
    if not m.has_sorted_indices:
        m = m.sorted_indices()
    out = np.empty_like(m.indices)
    for start in range(0, m.shape[0], rows_per_chunk):
        stop = min(start + rows_per_chunk, m.shape[0])
        lo, hi = m.indptr[start], m.indptr[stop]
        row_of = np.repeat(np.arange(stop - start, dtype=np.int32), np.diff(m.indptr[start : stop + 1]))
        # lexsort is stable: equal values keep their (column-sorted) order
        out[lo:hi] = m.indices[lo:hi][np.lexsort((-m.data[lo:hi], row_of))]
    return out


__all__ = ["by_value_within_rows", "pair_lookup"]
