"""Statistics of the load-test report: percentiles, timelines, schedules, histogram quantiles."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xsell.clients.loadtest.stats import (
    arrival_offsets,
    count_codes,
    histogram_quantile,
    percentile_rank,
    percentiles,
    split_count,
    summarize_latency,
    timeline,
)

LEVELS = (0.0, 1.0, 25.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0)


def test_percentiles_of_a_known_sample():
    values = np.arange(1, 1001, dtype=float)[::-1]  # 1000 .. 1, unsorted on purpose
    p = percentiles(values, (50.0, 90.0, 99.0, 99.9, 100.0))
    # nearest rank: the k-th smallest with k = ceil(q/100 * n)
    assert p == {50.0: 500.0, 90.0: 900.0, 99.0: 990.0, 99.9: 999.0, 100.0: 1000.0}
    for q in (50.0, 90.0, 99.0):
        assert p[q] == np.percentile(values, q, method="inverted_cdf")
    # numpy computes 0.999 * 1000 in binary floating point, lands above 999 and answers the
    # 1000th value: the exact level is why `percentiles` reads q from its decimal text
    assert np.percentile(values, 99.9, method="inverted_cdf") == 1000.0


def test_percentiles_of_a_skewed_latency_sample():
    # 990 fast calls and 10 slow ones: p99 is still fast, p99.9 is slow, max the slowest
    lat = np.concatenate([np.full(990, 1.0), np.linspace(50.0, 95.0, 10)])
    p = percentiles(lat, (50.0, 99.0, 99.9))
    assert p[50.0] == 1.0 and p[99.0] == 1.0 and p[99.9] == 90.0
    s = summarize_latency(lat / 1e3)
    assert s.count == 1000 and s.max == pytest.approx(95.0) and s.min == pytest.approx(1.0)
    assert s.mean == pytest.approx(lat.mean())
    assert s.p[99.9] == pytest.approx(90.0)


def test_percentiles_refuse_empty_nan_and_bad_levels():
    with pytest.raises(ValueError):
        percentiles([], (50.0,))
    with pytest.raises(ValueError):
        percentiles([1.0, math.nan], (50.0,))
    with pytest.raises(ValueError):
        percentile_rank(10, 100.5)
    assert summarize_latency(np.empty(0)) is None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(min_value=0, max_value=1e4, allow_nan=False), min_size=1, max_size=400),
    st.sampled_from(LEVELS) | st.floats(min_value=0, max_value=100),
)
def test_percentile_is_the_nearest_rank(values, q):
    a = np.array(values)
    v = percentiles(a, (q,))[q]
    n, level = len(a), Fraction(repr(float(q))) / 100
    assert v in a
    # the definition: at least q% of the sample is <= v, and fewer than q% is < v
    assert (a <= v).sum() >= level * n
    assert (a < v).sum() < level * n or v == a.min()
    if (level * n).denominator != 1:  # away from exact ranks numpy's float rounding agrees
        assert v == np.percentile(a, q, method="inverted_cdf")


def test_count_codes_most_frequent_first():
    codes = ["OK"] * 5 + ["UNAVAILABLE"] * 2 + ["DEADLINE_EXCEEDED"] * 2 + ["INTERNAL"]
    assert list(count_codes(codes).items()) == [
        ("OK", 5), ("DEADLINE_EXCEEDED", 2), ("UNAVAILABLE", 2), ("INTERNAL", 1)
    ]  # fmt: skip


def test_timeline_rates_errors_and_percentiles_per_second():
    # second 0: 10 ok calls of 1..10 ms; second 1: 4 ok of 20 ms and 2 errors; second 2 empty
    t = np.concatenate([np.linspace(0, 0.9, 10), np.linspace(1.0, 1.5, 6)])
    lat = np.concatenate([np.arange(1, 11) / 1e3, np.full(6, 0.020)])
    ok = np.array([True] * 10 + [True] * 4 + [False] * 2)
    rows = timeline(t, lat, ok, duration=3.0)
    assert [r["t"] for r in rows] == [0.0, 1.0, 2.0]
    assert [r["rate"] for r in rows] == [10.0, 6.0, 0.0]
    assert [r["errors"] for r in rows] == [0, 2, 0]
    assert rows[0]["p50_ms"] == pytest.approx(5.0) and rows[0]["p99_ms"] == pytest.approx(10.0)
    assert rows[1]["max_ms"] == pytest.approx(20.0)
    assert math.isnan(rows[2]["p50_ms"])


def test_timeline_rate_leaves_out_calls_not_sent():
    # second 0: 4 calls sent, 6 more due but dropped (never sent); all 6 are errors
    t = np.linspace(0, 0.9, 10)
    lat = np.array([0.001] * 4 + [np.nan] * 6)
    ok = np.array([True] * 4 + [False] * 6)
    rows = timeline(t, lat, ok, duration=1.0, sent=~np.isnan(lat))
    assert rows[0]["rate"] == 4.0 and rows[0]["errors"] == 6


def test_timeline_partial_last_step_rate():
    rows = timeline(np.array([0.1, 2.1, 2.2]), np.full(3, 0.001), np.ones(3, bool), duration=2.5)
    assert len(rows) == 3 and rows[2]["rate"] == pytest.approx(2 / 0.5)


def test_uniform_arrivals_are_evenly_spaced():
    off = arrival_offsets(200.0, 1.5, seed=0, arrival="uniform")
    assert len(off) == 300
    assert np.allclose(np.diff(off), 1 / 200.0)
    assert off[0] == 0.0 and off[-1] < 1.5


@settings(max_examples=30, deadline=None)
@given(st.floats(min_value=50, max_value=5000), st.integers(0, 2**31))
def test_poisson_arrivals_rate_and_shape(rate, seed):
    duration = 4.0
    off = arrival_offsets(rate, duration, seed=seed)
    expected = rate * duration
    assert np.all(np.diff(off) >= 0) and off[0] == 0.0 and off[-1] < duration
    assert abs(len(off) - expected) < 6 * math.sqrt(expected) + 2  # Poisson count, 6 sigma
    gaps = np.diff(off)
    # exponential gaps: mean 1/rate, coefficient of variation 1
    assert gaps.mean() == pytest.approx(1 / rate, rel=6 / math.sqrt(len(gaps)))
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.25)


def test_poisson_arrivals_are_seeded():
    a = arrival_offsets(100.0, 2.0, seed=3)
    assert np.array_equal(a, arrival_offsets(100.0, 2.0, seed=3))
    assert not np.array_equal(a, arrival_offsets(100.0, 2.0, seed=4))
    with pytest.raises(ValueError):
        arrival_offsets(0.0, 1.0, seed=0)
    with pytest.raises(ValueError):
        arrival_offsets(10.0, 1.0, seed=0, arrival="bursty")


@given(st.integers(0, 1000), st.integers(1, 64))
def test_split_count_sums_and_balances(total, parts):
    s = split_count(total, parts)
    assert sum(s) == total and len(s) == parts and max(s) - min(s) <= 1


def test_histogram_quantile_known_buckets():
    b = [(1.0, 10.0), (2.0, 20.0), (4.0, 20.0), (math.inf, 20.0)]
    assert histogram_quantile(0.5, b) == pytest.approx(1.0)
    assert histogram_quantile(0.75, b) == pytest.approx(1.5)
    assert histogram_quantile(0.25, b) == pytest.approx(0.5)  # the lowest bucket starts at 0
    # a rank in the +Inf bucket answers the highest finite bound, as Prometheus does
    assert histogram_quantile(0.99, [(1.0, 5.0), (2.0, 5.0), (math.inf, 10.0)]) == 2.0
    assert math.isnan(histogram_quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]))


BOUNDS = (0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(min_value=1e-5, max_value=0.12), min_size=1, max_size=300),
    st.sampled_from((0.5, 0.9, 0.99)),
)
def test_histogram_quantile_lies_in_the_bucket_of_the_true_quantile(values, q):
    a = np.array(values)
    bounds = (*BOUNDS, math.inf)
    buckets = [(le, float((a <= le).sum())) for le in bounds]
    est = histogram_quantile(q, buckets)
    true = percentiles(a, (q * 100,))[q * 100]
    k = next(i for i, le in enumerate(bounds) if true <= le)
    lo = 0.0 if k == 0 else bounds[k - 1]
    assert lo - 1e-12 <= est <= bounds[k] + 1e-12
