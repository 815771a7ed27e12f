"""Read a sparse (rows x cols) table at many (row, col) pairs with one binary search.

A request looks the co-purchase and switch tables up for every (anchor, candidate)
pair: a few anchors times a few hundred candidates. Row by row that was a dozen numpy
calls per anchor; keyed by `row * n_cols + col` (increasing over a CSR matrix with
sorted indices) it is one `searchsorted` for all pairs.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class PairTable:
    """`m[rows[i], cols[i]]` for arrays of pairs; 0 where absent or where the row is < 0."""

    def __init__(self, m: sp.csr_matrix) -> None:
        if not m.has_sorted_indices:
            m = m.sorted_indices()
        n_rows, self.n_cols = m.shape
        self.indptr = m.indptr
        row_of = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(m.indptr))
        self.keys = row_of * self.n_cols + m.indices
        self.values = np.asarray(m.data, dtype=np.float32)

    def lookup(self, rows: np.ndarray, cols: np.ndarray, distinct_rows: np.ndarray | None = None) -> np.ndarray:
        """float32 values at the pairs (rows and cols broadcast against each other).

        `distinct_rows`: the sorted distinct rows >= 0 among `rows`, when the caller has
        them (a request's few anchors): the search then runs over those rows' entries
        only, which stay in cache, instead of the whole table."""
        keys, values = self.keys, self.values
        if distinct_rows is not None:
            spans = [slice(self.indptr[r], self.indptr[r + 1]) for r in distinct_rows]
            keys = np.concatenate([keys[s] for s in spans]) if spans else keys[:0]
            values = np.concatenate([values[s] for s in spans]) if spans else values[:0]
        # broadcasts; a row < 0 gives a key < 0, which no entry has
        q = np.asarray(rows, dtype=np.int64) * self.n_cols + np.asarray(cols, dtype=np.int64)
        out = np.zeros(q.shape, dtype=np.float32)
        if not len(keys):
            return out
        pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
        hit = keys[pos] == q
        out[hit] = values[pos[hit]]
        return out


def by_value_within_rows(m: sp.csr_matrix) -> np.ndarray:
    """m.indices reordered so that each row lists its columns by value, largest first
    (ties in column order). Row r's top k columns are then a slice:
    `out[m.indptr[r] : min(m.indptr[r] + k, m.indptr[r + 1])]`."""
    if not m.has_sorted_indices:
        m = m.sorted_indices()
    row_of = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
    # lexsort is stable: equal values keep their (column-sorted) order
    order = np.lexsort((-m.data, row_of))
    return m.indices[order]


__all__ = ["PairTable", "by_value_within_rows"]
