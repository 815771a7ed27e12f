"""Metric functions against hand-computed cases and brute-force definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xsell.evaluation import metrics as M

LOG2_3 = math.log2(3)


def test_ndcg_hand_computed():
    # ranks 1 and 3 hit, 3 relevant items in total, k = 4
    hits = np.array([[True, False, True, False]])
    dcg = 1 + 1 / 2  # 1/log2(2) + 1/log2(4)
    ideal = 1 + 1 / LOG2_3 + 1 / 2
    assert M.ndcg_at_k(hits, np.array([3]))[0] == pytest.approx(dcg / ideal)
    # ideal DCG is capped at k hits: 20 relevant items, all 2 slots hit = perfect
    assert M.ndcg_at_k(np.array([[True, True]]), np.array([20]))[0] == pytest.approx(1.0)
    # one relevant item found at rank 2
    assert M.ndcg_at_k(np.array([[False, True, False]]), np.array([1]))[0] == pytest.approx(
        1 / LOG2_3
    )
    # nothing relevant: 0, not NaN
    assert M.ndcg_at_k(np.array([[False, False]]), np.array([0]))[0] == 0.0


def test_recall_hit_rate_revenue_uplift_hand_computed():
    hits = np.array([[True, False, True], [False, False, False], [False, True, False]])
    n_rel = np.array([4, 2, 1])
    prices = np.array([[10.0, 99.0, 5.0], [1.0, 2.0, 3.0], [7.0, 8.0, np.nan]])
    np.testing.assert_allclose(M.recall_at_k(hits, n_rel), [0.5, 0.0, 1.0])
    np.testing.assert_allclose(M.hit_rate_at_k(hits), [1.0, 0.0, 1.0])
    np.testing.assert_allclose(M.revenue_at_k(hits, prices), [15.0, 0.0, 8.0])
    uplift = M.price_uplift_of_hits(hits, prices, np.array([5.0, 1.0, 4.0]))
    assert uplift[0] == pytest.approx((10 / 5 + 5 / 5) / 2)
    assert math.isnan(uplift[1])  # no hit: undefined, skipped by the mean
    assert uplift[2] == pytest.approx(2.0)
    assert M.mean_ci(uplift).mean == pytest.approx((1.5 + 2.0) / 2)


def brute_ndcg(ranked: list[int], relevant: set[int], k: int) -> float:
    dcg = sum(1 / math.log2(r + 2) for r, item in enumerate(ranked[:k]) if item in relevant)
    ideal = sum(1 / math.log2(r + 2) for r in range(min(len(relevant), k)))
    return dcg / ideal if ideal else 0.0


rankings = st.integers(1, 12).flatmap(
    lambda k: st.tuples(
        st.just(k),
        st.lists(st.lists(st.integers(-1, 30), min_size=k, max_size=k), min_size=1, max_size=8),
        st.lists(st.sets(st.integers(0, 30), max_size=15), min_size=8, max_size=8),
    )
)


@settings(max_examples=200, deadline=None)
@given(rankings)
def test_hits_and_metrics_match_brute_force(case):
    k, ranked_lists, relevant_sets = case
    ranked = np.array(ranked_lists, dtype=np.int64)
    # a real ranking never repeats an item; -1 (empty slot) may repeat
    for row in ranked:
        seen = set()
        for j, v in enumerate(row):
            if v in seen:
                row[j] = -1
            seen.add(int(v))
    rel = relevant_sets[: len(ranked)]
    n_items = 31
    codes = np.sort(
        np.array([q * n_items + i for q, s in enumerate(rel) for i in s], dtype=np.int64)
    )
    hits = M.hits_matrix(ranked, codes, n_items)
    n_rel = np.array([len(s) for s in rel])
    for q, row in enumerate(ranked):
        expected_hits = [v >= 0 and int(v) in rel[q] for v in row]
        assert hits[q].tolist() == expected_hits
    ndcg = M.ndcg_at_k(hits, n_rel)
    recall = M.recall_at_k(hits, n_rel)
    for q, row in enumerate(ranked):
        assert ndcg[q] == pytest.approx(brute_ndcg([int(v) for v in row], rel[q], k))
        n_found = len({int(v) for v in row if v >= 0} & rel[q])
        assert recall[q] == pytest.approx(n_found / len(rel[q]) if rel[q] else 0.0)
    assert ((ndcg >= 0) & (ndcg <= 1 + 1e-12)).all()


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 15), st.integers(0, 40))
def test_ndcg_is_one_exactly_when_the_top_is_filled_with_hits(k, n_rel):
    perfect = np.zeros((1, k), dtype=bool)
    perfect[0, : min(n_rel, k)] = True
    assert M.ndcg_at_k(perfect, np.array([n_rel]))[0] == pytest.approx(1.0 if n_rel else 0.0)
    if 0 < n_rel < k:
        # the same number of hits one rank lower is strictly worse
        shifted = np.roll(perfect, 1, axis=1)
        assert M.ndcg_at_k(shifted, np.array([n_rel]))[0] < 1.0


def test_mean_ci_normal_approximation_by_hand():
    v = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    e = M.mean_ci(v)
    sd = np.std([1, 2, 3, 4], ddof=1)
    assert e.n == 4 and e.mean == pytest.approx(2.5)
    assert e.hi - e.mean == pytest.approx(1.959963984540054 * sd / 2)
    assert e.mean - e.lo == pytest.approx(e.hi - e.mean)
    assert M.mean_ci(np.array([np.nan])).n == 0


def test_paired_difference_is_tighter_than_independent_intervals(rng):
    base = rng.random(2000)  # large shared per-query variation
    a = base + 0.01 + rng.normal(0, 0.002, 2000)
    d = M.paired_difference(a, base)
    assert d.lo > 0  # a small but consistent gain is detected
    ia, ib = M.mean_ci(a), M.mean_ci(base)
    assert ia.lo < ib.hi  # ... which the two separate intervals would not show
    assert d.mean == pytest.approx(float(np.mean(a - base)))


@settings(max_examples=25, deadline=None)
@given(st.integers(200, 600), st.floats(0.15, 1.0), st.integers(0, 2**32 - 1))
def test_bootstrap_agrees_with_normal_interval_on_metric_like_values(n, p_nonzero, seed):
    # NDCG-like per-query values: many zeros, the rest spread over (0, 1]. With at least
    # ~30 nonzero queries the CLT interval holds; with a handful it does not (documented
    # in metrics.py: one hit in 200 queries puts the normal lower bound below 0).
    rng = np.random.default_rng(seed)
    values = np.where(rng.random(n) < p_nonzero, rng.random(n), 0.0)
    normal = M.mean_ci(values)
    boot = M.bootstrap_ci(values, n_boot=400, seed=1)
    half = (normal.hi - normal.lo) / 2
    assert boot.mean == pytest.approx(normal.mean)
    # percentile-bootstrap bounds within 30% of the CLT half-width (400 replicates are noisy)
    assert abs(boot.lo - normal.lo) <= 0.3 * half
    assert abs(boot.hi - normal.hi) <= 0.3 * half


def test_normal_interval_fails_where_documented():
    one_hit = np.zeros(200)
    one_hit[0] = 1.0
    assert M.mean_ci(one_hit).lo < 0 <= M.bootstrap_ci(one_hit, n_boot=400).lo


def test_an_unpriced_hit_adds_no_revenue_and_a_free_anchor_has_no_uplift():
    # revenue: a hit whose price is unknown (NaN) adds 0; it must not turn the query's
    # revenue into NaN, which `mean_ci` would then silently drop from the mean
    hits = np.array([[True, True, False]])
    prices = np.array([[np.nan, 4.0, 9.0]])
    np.testing.assert_array_equal(M.revenue_at_k(hits, prices), [4.0])
    # uplift: a hit on a free anchor (price 0) is undefined, not infinite
    uplift = M.price_uplift_of_hits(
        np.array([[True, False], [True, False]]),
        np.array([[3.0, 1.0], [3.0, 1.0]]),
        np.array([0.0, 2.0]),
    )
    assert math.isnan(uplift[0])
    assert uplift[1] == pytest.approx(3.0 / 2.0)


def test_paired_difference_uses_only_the_queries_where_both_are_defined():
    # uplift is NaN for a query without a hit: such a query is not a pair
    a = np.array([1.0, np.nan, 3.0, 5.0])
    b = np.array([0.0, 2.0, np.nan, 1.0])
    d = M.paired_difference(a, b)
    # the pairs are queries 0 and 3: differences 1 and 4, mean 2.5, sd sqrt(4.5)
    assert d.n == 2
    assert d.mean == pytest.approx(2.5)
    assert d.hi - d.mean == pytest.approx(1.959963984540054 * math.sqrt(4.5) / math.sqrt(2))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.one_of(st.none(), st.floats(-5, 5)), st.one_of(st.none(), st.floats(-5, 5))),
        min_size=1,
        max_size=30,
    )
)
def test_paired_difference_equals_the_mean_of_the_defined_pairs(pairs):
    a = np.array([np.nan if x is None else x for x, _ in pairs])
    b = np.array([np.nan if y is None else y for _, y in pairs])
    diffs = [x - y for x, y in pairs if x is not None and y is not None]
    d = M.paired_difference(a, b)
    assert d.n == len(diffs)
    if diffs:
        assert d.mean == pytest.approx(sum(diffs) / len(diffs), abs=1e-9)
    else:
        assert math.isnan(d.mean)


@pytest.mark.parametrize("n_ones", [500, 200])
def test_bootstrap_interval_is_the_central_95_percent_of_the_resampled_means(n_ones):
    # For a 0/1 sample of size n with m ones, a resampled mean is exactly Binomial(n, m/n) / n,
    # so the percentile interval must sit on the binomial 2.5% and 97.5% quantiles (up to
    # one count of discreteness and the Monte Carlo noise of 10,000 replicates, ~0.03 sd).
    # A 90% interval (5%, 95%) would be 0.31 sd narrower on each side.
    from scipy import stats

    n = 1000
    values = np.zeros(n)
    values[:n_ones] = 1.0
    p = n_ones / n
    sd = math.sqrt(n * p * (1 - p))
    e = M.bootstrap_ci(values, n_boot=10_000, seed=3)
    tolerance = 1 + 0.1 * sd  # counts
    assert abs(e.lo * n - stats.binom.ppf(0.025, n, p)) <= tolerance
    assert abs(e.hi * n - stats.binom.ppf(0.975, n, p)) <= tolerance
    assert e.mean == pytest.approx(p)
