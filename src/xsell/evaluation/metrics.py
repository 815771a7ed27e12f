"""Top-k metrics as per-query arrays, and their confidence intervals.

Every metric returns one value per query so that intervals and *paired* differences
(same queries, two methods) can be computed from the same arrays. Relevance is binary.

Inputs are a `hits` matrix: bool (n_queries, k), hits[q, j] = the item at rank j of
query q is relevant (padding positions, where a method returned fewer than k items, are
False).

Intervals use the normal approximation (CLT): mean +- 1.96 * sd / sqrt(n). With the
thousands of queries of an evaluation the sampling distribution of a mean of bounded
per-query values is close to normal; `bootstrap_ci` (percentile bootstrap) is kept as a
cross-check, and the tests compare the two. The approximation is poor when only a handful
of queries are nonzero (one hit in 200 queries gives a lower bound below 0): read the
intervals of near-zero methods (random) with that in mind.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

Z95 = 1.959963984540054


def discounts(k: int) -> np.ndarray:
    """DCG position discounts 1 / log2(rank + 1), rank = 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """NDCG@k with binary gains; the ideal DCG puts min(|relevant|, k) hits on top."""
    hits = np.asarray(hits, dtype=bool)
    k = hits.shape[1]
    disc = discounts(k)
    dcg = hits @ disc
    ideal_cum = np.concatenate([[0.0], np.cumsum(disc)])
    ideal = ideal_cum[np.minimum(np.asarray(n_relevant), k)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ideal > 0, dcg / ideal, 0.0)


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Share of the relevant items found in the top k (denominator |relevant|, not min(.., k))."""
    n_relevant = np.asarray(n_relevant, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_relevant > 0, np.asarray(hits, dtype=bool).sum(axis=1) / n_relevant, 0.0)


def hit_rate_at_k(hits: np.ndarray) -> np.ndarray:
    """1 when at least one relevant item is in the top k."""
    return np.asarray(hits, dtype=bool).any(axis=1).astype(np.float64)


def revenue_at_k(hits: np.ndarray, prices: np.ndarray) -> np.ndarray:
    """Sum of the unit prices of the hits (prices: (n_queries, k), price of each ranked item)."""
    return np.where(np.asarray(hits, dtype=bool), np.nan_to_num(prices), 0.0).sum(axis=1)


def price_uplift_of_hits(
    hits: np.ndarray, prices: np.ndarray, anchor_price: np.ndarray
) -> np.ndarray:
    """Mean price(hit) / price(anchor) over the hits of each query; NaN for a query with no hit
    (or a free anchor). Aggregate with `nanmean`: the uplift *of hits*, not of misses."""
    hits = np.asarray(hits, dtype=bool)
    n = hits.sum(axis=1)
    total = np.where(hits, np.nan_to_num(prices), 0.0).sum(axis=1)
    anchor_price = np.asarray(anchor_price, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / n / anchor_price
    return np.where((n > 0) & (anchor_price > 0), out, np.nan)


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% interval (normal approximation); NaNs in the input are skipped."""

    mean: float
    lo: float
    hi: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def mean_ci(values: np.ndarray) -> Estimate:
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    n = len(v)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    mean = float(v.mean())
    half = Z95 * float(v.std(ddof=1)) / np.sqrt(n) if n > 1 else float("nan")
    return Estimate(mean, mean - half, mean + half, n)


def paired_difference(a: np.ndarray, b: np.ndarray) -> Estimate:
    """Mean of a - b over the queries where both are defined, with its 95% interval.

    Pairing removes the between-query variance both methods share, so this interval is
    much tighter than the difference of two independent intervals.
    """
    return mean_ci(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))


def bootstrap_ci(values: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """Percentile bootstrap of the mean; a cross-check for `mean_ci` on skewed metrics
    (revenue). Not used in reports: O(n_boot * n)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    # resample counts instead of indices (one multinomial row per replicate), in chunks
    # so that n_boot x n never sits in memory at once
    probs = np.full(len(v), 1.0 / len(v))
    means = np.concatenate([
        rng.multinomial(len(v), probs, size=min(100, n_boot - start)) @ v / len(v)
        for start in range(0, n_boot, 100)
    ])  # fmt: skip
    lo, hi = np.percentile(means, [2.5, 97.5])
    return Estimate(float(v.mean()), float(lo), float(hi), len(v))


def hits_matrix(ranked: np.ndarray, relevant_codes: np.ndarray, n_items: int) -> np.ndarray:
    """bool (n_queries, k): ranked[q, j] (item code, -1 = empty) is relevant to query q.

    relevant_codes: sorted int64 query * n_items + item (QuerySet.relevant_codes)."""
    ranked = np.asarray(ranked, dtype=np.int64)
    q = np.arange(len(ranked), dtype=np.int64)[:, None]
    codes = q * n_items + ranked
    pos = np.searchsorted(relevant_codes, codes)
    pos = np.minimum(pos, max(len(relevant_codes) - 1, 0))
    found = (
        relevant_codes[pos] == codes if len(relevant_codes) else np.zeros(codes.shape, dtype=bool)
    )
    return found & (ranked >= 0)
