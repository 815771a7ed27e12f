"""Implicit-feedback matrix factorization (ALS, Hu, Koren & Volinsky 2008).

A thin wrapper over the `implicit` library's CPU ALS so the rest of xsell sees
plain float32 factor arrays and a seed.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def confidence(counts: sp.csr_matrix, alpha: float = 2.0) -> sp.csr_matrix:
    """Confidence weights c = 1 + alpha * log1p(count): damps heavy repeat buyers."""
    weighted = counts.astype(np.float32).tocsr(copy=True)
    weighted.data = 1.0 + alpha * np.log1p(weighted.data)
    return weighted


def train_als(
    interactions: sp.csr_matrix,
    *,
    factors: int = 64,
    iterations: int = 15,
    regularization: float = 0.05,
    alpha: float = 2.0,
    seed: int = 0,
    threads: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit ALS on a (rows x items) count matrix; return (row_factors, item_factors), float32."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    # implicit warns (and slows down) when BLAS also runs threads; its own loop is parallel.
    with threadpool_limits(1, "blas"):
        return _fit(AlternatingLeastSquares, interactions, factors, iterations, regularization, alpha, seed, threads)


def _fit(als_cls, interactions, factors, iterations, regularization, alpha, seed, threads):
    model = als_cls(
        factors=factors,
        regularization=regularization,
        alpha=1.0,  # confidence already applied by `confidence`
        iterations=iterations,
        random_state=seed,
        num_threads=threads,
        calculate_training_loss=False,
    )
    model.fit(confidence(interactions, alpha), show_progress=False)
    return (
        np.ascontiguousarray(model.user_factors, dtype=np.float32),
        np.ascontiguousarray(model.item_factors, dtype=np.float32),
    )


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Unit-length rows (zero rows stay zero): cosine = dot of normalised vectors."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
