"""The simple methods the model must beat, scored under each query set's candidate rule.

Each baseline gives a dense score for every warm item of a batch of queries (numpy, one
matrix per batch); the candidate rule masks it and `top_k` takes the best k with
argpartition. Count baselines (popularity, buy-again, co-purchase) break their many ties
by popularity, so "buy again" falls back to "popular" once the shopper's own items run out.

The blend is a weighted sum of the per-query min-max normalised scores (counts through
log1p first), with weights found by coordinate search on validation queries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .metrics import ndcg_at_k
from .queries import History, QuerySet, candidate_mask

COMPONENTS = ("popularity", "buy_again", "co_purchase", "als_user", "als_item")
COUNT_LIKE = frozenset({"popularity", "buy_again", "co_purchase"})
DEFAULT_GRID = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class AlsConfig:
    factors: int = 64
    iterations: int = 15
    regularization: float = 0.01  # implicit's default
    alpha: float = 1.0  # implicit's default: confidence = 1 + alpha * count
    threads: int = 0  # 0 = all cores


def fit_als(user_items: sp.csr_matrix, *, config: AlsConfig = AlsConfig(), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """implicit's CPU ALS on (users x items) basket counts: (user_factors, item_factors)."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    model = AlternatingLeastSquares(
        factors=config.factors,
        regularization=config.regularization,
        alpha=config.alpha,
        iterations=config.iterations,
        num_threads=config.threads,
        random_state=seed,
    )
    # implicit parallelises its own loop; a threaded BLAS underneath only oversubscribes
    with threadpool_limits(1, "blas"):
        model.fit(user_items.astype(np.float32).tocsr(), show_progress=False)
    return np.asarray(model.user_factors, dtype=np.float32), np.asarray(model.item_factors, dtype=np.float32)


@dataclass
class Baselines:
    """Fitted baseline state for one history (fit period, or fit + validation)."""

    history: History
    co_counts: sp.csr_matrix  # (items x items) baskets holding both; diagonal 0
    user_factors: np.ndarray
    item_factors: np.ndarray
    item_unit: np.ndarray  # item factors scaled to unit length (cosine)
    tiebreak: np.ndarray  # popularity rank / n_items / 2, in [0, 0.5): orders equal counts
    als_seconds: float = 0.0
    seed: int = 0

    @classmethod
    def fit(cls, history: History, *, seed: int = 0, als: AlsConfig = AlsConfig()) -> "Baselines":
        import time

        co = (history.baskets.T @ history.baskets).tocsr()
        co.setdiag(0)
        co.eliminate_zeros()
        t0 = time.perf_counter()
        uf, vf = fit_als(history.user_items, config=als, seed=seed)
        seconds = time.perf_counter() - t0
        unit = vf / np.maximum(np.linalg.norm(vf, axis=1, keepdims=True), 1e-12)
        rank = np.empty(history.n_items, dtype=np.float64)
        rank[np.argsort(history.popularity, kind="stable")] = np.arange(history.n_items)
        return cls(history, co, uf, vf, unit, rank / max(history.n_items, 1) / 2, seconds, seed)

    def raw(self, name: str, queries: QuerySet, rows: np.ndarray) -> np.ndarray:
        """(len(rows), n_items) float64 scores of component `name` (higher = better)."""
        h = self.history
        if name == "popularity":
            return np.broadcast_to(h.popularity, (len(rows), h.n_items)).astype(np.float64)
        if name == "buy_again":
            return h.user_items[queries.user[rows]].toarray().astype(np.float64)
        if name == "co_purchase":
            return self.co_counts[queries.anchor[rows]].toarray().astype(np.float64)
        if name == "als_user":
            return (self.user_factors[queries.user[rows]] @ self.item_factors.T).astype(np.float64)
        if name == "als_item":
            return (self.item_unit[queries.anchor[rows]] @ self.item_unit.T).astype(np.float64)
        if name == "random":
            # keyed by (seed, query position) so a query's order does not depend on batching
            out = np.empty((len(rows), h.n_items))
            for j, q in enumerate(rows):
                out[j] = np.random.default_rng([self.seed, int(q)]).random(h.n_items)
            return out
        raise KeyError(f"unknown baseline {name!r}; known: {COMPONENTS + ('random',)}")

    def ranking_score(self, name: str, raw: np.ndarray) -> np.ndarray:
        return raw + self.tiebreak if name in COUNT_LIKE else raw


def normalise(name: str, raw: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-query min-max over the candidates (log1p first for counts); 0 outside the mask
    and for a query where the component is constant."""
    t = np.log1p(raw) if name in COUNT_LIKE else raw
    big = np.where(mask, t, np.inf).min(axis=1, keepdims=True)
    top = np.where(mask, t, -np.inf).max(axis=1, keepdims=True)
    span = top - big
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(mask & (span > 0), (t - big) / span, 0.0)
    return out


def top_k(scores: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """(n, k) int64 item codes of the k best masked items per row, best first; -1 pads rows
    with fewer than k candidates. Ties go to the lower item code."""
    s = np.where(mask, scores, -np.inf)
    n_items = s.shape[1]
    kk = min(k, n_items)
    part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
    vals = np.take_along_axis(s, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    idx = np.take_along_axis(part, order, axis=1)
    idx = np.where(np.take_along_axis(s, idx, axis=1) == -np.inf, -1, idx)
    if kk < k:
        idx = np.pad(idx, ((0, 0), (0, k - kk)), constant_values=-1)
    return idx.astype(np.int64)


def batches(n: int, size: int) -> Iterator[np.ndarray]:
    for start in range(0, n, size):
        yield np.arange(start, min(start + size, n))


@dataclass(frozen=True)
class Blend:
    weights: dict[str, float]

    def score(self, normalised: dict[str, np.ndarray], tiebreak: np.ndarray) -> np.ndarray:
        total = sum(w * normalised[c] for c, w in self.weights.items() if w)
        # ties (e.g. every weight on buy-again) fall back to popularity, like the count baselines
        return total + 1e-6 * tiebreak


def rank_baselines(
    queries: QuerySet,
    base: Baselines,
    *,
    singles: Sequence[str] = COMPONENTS,
    blends: dict[str, Blend] | None = None,
    k: int = 10,
    batch_size: int = 256,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Top-k item codes (n_queries, k) for each single baseline and each blend."""
    blends = blends or {}
    needed = set(singles) | {c for b in blends.values() for c, w in b.weights.items() if w}
    out = {name: np.full((len(queries), k), -1, dtype=np.int64) for name in [*singles, *blends]}
    for rows in batches(len(queries), batch_size):
        mask = candidate_mask(queries, base.history, rows)
        raw = {c: base.raw(c, queries, rows) for c in needed}
        for name in singles:
            out[name][rows] = top_k(base.ranking_score(name, raw[name]), mask, k)
        if blends:
            norm = {c: normalise(c, raw[c], mask) for c in raw if c in COMPONENTS}
            for name, blend in blends.items():
                out[name][rows] = top_k(blend.score(norm, base.tiebreak), mask, k)
        if on_batch:
            on_batch(len(rows))
    return out


# --- blend tuning --------------------------------------------------------------------------


@dataclass
class CandidatePool:
    """Per query, the union of each component's top `depth` candidates, with every
    component's normalised score there: enough to rank any blend's top k quickly. (An item
    outside every component's top `depth` rarely tops a blend; tuning only needs the
    ordering of weight settings, the final test scores are computed on all candidates.)"""

    items: np.ndarray  # (n_queries, width) item codes, -1 = empty slot
    scores: np.ndarray  # (n_queries, width, n_components) float32
    relevant: np.ndarray  # (n_queries, width) bool
    tiebreak: np.ndarray  # (n_queries, width) float32
    n_relevant: np.ndarray
    components: tuple[str, ...]


def build_pool(
    queries: QuerySet, base: Baselines, *, depth: int = 50, components: Sequence[str] = COMPONENTS, batch_size: int = 256
) -> CandidatePool:
    n, width, nc = len(queries), depth * len(components), len(components)
    items = np.full((n, width), -1, dtype=np.int64)
    scores = np.zeros((n, width, nc), dtype=np.float32)
    n_items = base.history.n_items
    rel_codes = queries.relevant_codes(n_items)
    for rows in batches(n, batch_size):
        mask = candidate_mask(queries, base.history, rows)
        raw = {c: base.raw(c, queries, rows) for c in components}
        union = np.concatenate([top_k(base.ranking_score(c, raw[c]), mask, depth) for c in components], axis=1)
        union.sort(axis=1)
        dup = np.zeros_like(union, dtype=bool)
        dup[:, 1:] = union[:, 1:] == union[:, :-1]
        union[dup] = -1
        items[rows] = union
        safe = np.maximum(union, 0)
        for j, c in enumerate(components):
            scores[rows, :, j] = np.take_along_axis(normalise(c, raw[c], mask), safe, axis=1)
    codes = np.arange(n, dtype=np.int64)[:, None] * n_items + items
    relevant = (items >= 0) & np.isin(codes, rel_codes)
    tiebreak = np.where(items >= 0, base.tiebreak[np.maximum(items, 0)], 0).astype(np.float32)
    return CandidatePool(items, scores, relevant, tiebreak, queries.n_relevant, tuple(components))


def pool_ndcg(pool: CandidatePool, weights: np.ndarray, k: int = 10) -> float:
    s = pool.scores @ weights.astype(np.float32) + 1e-6 * pool.tiebreak
    s = np.where(pool.items >= 0, s, -np.inf)
    kk = min(k, s.shape[1])
    part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
    vals = np.take_along_axis(s, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    part = np.take_along_axis(part, order, axis=1)
    hits = np.take_along_axis(pool.relevant, part, axis=1) & (np.take_along_axis(s, part, axis=1) > -np.inf)
    return float(ndcg_at_k(hits, pool.n_relevant).mean()) if len(hits) else 0.0


@dataclass
class TuningResult:
    blend: Blend
    validation_ndcg: float
    single_ndcg: dict[str, float]
    evaluations: int
    trace: list[tuple[dict[str, float], float]] = field(default_factory=list)


def tune_blend(
    pool: CandidatePool, *, grid: Sequence[float] = DEFAULT_GRID, max_passes: int = 4, k: int = 10
) -> TuningResult:
    """Coordinate search over the weights, starting from the best single component.

    Each pass tries every grid value for every component with the others fixed and keeps
    a change only if validation NDCG@k improves; stops when a pass changes nothing.
    """
    nc = len(pool.components)
    eye = np.eye(nc)
    single = {c: pool_ndcg(pool, eye[j], k) for j, c in enumerate(pool.components)}
    best_j = int(np.argmax([single[c] for c in pool.components]))
    w = eye[best_j].copy()
    best = single[pool.components[best_j]]
    trace = [(dict(zip(pool.components, w.tolist())), best)]
    evaluations = nc
    for _ in range(max_passes):
        improved = False
        for j in range(nc):
            for g in grid:
                if g == w[j]:
                    continue
                cand = w.copy()
                cand[j] = g
                if not cand.any():
                    continue
                value = pool_ndcg(pool, cand, k)
                evaluations += 1
                if value > best + 1e-9:
                    best, w, improved = value, cand, True
                    trace.append((dict(zip(pool.components, w.tolist())), best))
        if not improved:
            break
    return TuningResult(Blend(dict(zip(pool.components, w.tolist()))), best, single, evaluations, trace)
