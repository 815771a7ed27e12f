"""Basket co-occurrence statistics: item co-purchase counts and category complements.

Pure functions over integer codes (basket, item, category); no pandas, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


def basket_matrix(basket_codes: np.ndarray, col_codes: np.ndarray, n_cols: int) -> sp.csr_matrix:
    """Binary (baskets x cols) matrix: 1 where the basket holds the column at least once."""
    n_baskets = int(basket_codes.max()) + 1 if len(basket_codes) else 0
    m = sp.csr_matrix(
        (np.ones(len(basket_codes), dtype=np.float32), (basket_codes, col_codes)),
        shape=(n_baskets, n_cols),
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def top_n_per_row(m: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """Keep the n largest entries of each row (ties broken by column index); sorted indices."""
    m = m.tocsr()
    rows, cols, vals = [], [], []
    indptr, indices, data = m.indptr, m.indices, m.data
    for r in range(m.shape[0]):
        lo, hi = indptr[r], indptr[r + 1]
        if hi == lo:
            continue
        v = data[lo:hi]
        keep = np.argsort(-v, kind="stable")[:n] if hi - lo > n else slice(None)
        rows.append(np.full(len(v[keep]), r, dtype=np.int64))
        cols.append(indices[lo:hi][keep])
        vals.append(v[keep])
    if not rows:
        return sp.csr_matrix(m.shape, dtype=np.float32)
    out = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=m.shape, dtype=np.float32
    )
    out.sort_indices()
    return out


def copurchase_counts(
    basket_codes: np.ndarray, item_codes: np.ndarray, n_items: int, *, top_n: int = 100
) -> sp.csr_matrix:
    """(items x items) number of baskets holding both items; diagonal 0; top_n per row."""
    b = basket_matrix(basket_codes, item_codes, n_items)
    c = (b.T @ b).tocsr()
    c.setdiag(0)
    c.eliminate_zeros()
    return top_n_per_row(c, top_n)


@dataclass(frozen=True)
class ComplementTable:
    """Directional category complements from basket co-occurrence.

    cond_prob[a, b] = P(b in basket | a in basket); lift[a, b] = cond_prob / P(b).
    Both are shrunk toward independence with `prior` pseudo-baskets so that a pair
    seen in two baskets does not get a lift of 50.
    """

    cond_prob: np.ndarray  # float32 (n_cat, n_cat)
    lift: np.ndarray  # float32 (n_cat, n_cat)
    basket_share: np.ndarray  # float32 (n_cat,) P(category in basket)
    n_baskets: int


def category_complements(
    basket_codes: np.ndarray, category_codes: np.ndarray, n_categories: int, *, prior: float = 20.0
) -> ComplementTable:
    b = basket_matrix(basket_codes, category_codes, n_categories)
    n_baskets = max(b.shape[0], 1)
    both = (b.T @ b).toarray().astype(np.float64)
    count = np.diag(both).copy()
    share = count / n_baskets
    # shrinkage: (n_ab + prior * P(b)) / (n_a + prior)
    cond = (both + prior * share[None, :]) / (count[:, None] + prior)
    np.fill_diagonal(cond, 0.0)
    lift = cond / np.maximum(share[None, :], 1.0 / n_baskets)
    np.fill_diagonal(lift, 0.0)
    return ComplementTable(
        cond_prob=cond.astype(np.float32),
        lift=lift.astype(np.float32),
        basket_share=share.astype(np.float32),
        n_baskets=int(b.shape[0]),
    )


def top_complements(table: ComplementTable, category: int, n: int, *, min_lift: float = 1.0) -> np.ndarray:
    """Up to n categories with the highest lift from `category` (lift > min_lift)."""
    row = table.lift[category]
    order = np.argsort(-row, kind="stable")[:n]
    return order[row[order] > min_lift]
