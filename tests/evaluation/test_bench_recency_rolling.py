"""benchmarks/bench_recency.py's basket counts and benchmarks/bench_rolling.py's pooling
of weekly reports, on hand-built inputs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    sys.path.insert(0, str(BENCH))  # bench_recency imports bench_ceiling as a sibling script
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


bench_recency = load("bench_recency")
bench_rolling = load("bench_rolling")


def test_baskets_since_counts_distinct_purchase_baskets_after_the_time():
    history = SimpleNamespace(items=pd.Index(["a", "b", "c"]), n_items=3)
    events = pd.DataFrame({
        "basket_id": ["k1", "k1", "k2", "k3", "k4", "k5"],
        "item_id": ["a", "a", "a", "b", "cold", "c"],  # "a" twice in k1 counts once
        "timestamp": [200, 200, 300, 300, 300, 100],  # k5 is not after 150
        "event_type": ["purchase", "purchase", "purchase", "view", "purchase", "purchase"],
    })  # fmt: skip
    np.testing.assert_array_equal(bench_recency.baskets_since(events, history, 150), [2, 0, 0])
    np.testing.assert_array_equal(bench_recency.baskets_since(events, history, -1), [2, 0, 1])


def test_weekly_reports_are_pooled_per_method_in_week_order(tmp_path):
    weeks = []
    for k, blend in enumerate(([0.5], None)):
        d = tmp_path / f"week_{k + 1}"
        d.mkdir()
        arrays = {"cross_sell/model/ndcg": np.array([0.1 * (k + 1), 0.2 * (k + 1)]),
                  "cross_sell/popularity/ndcg": np.array([k, k]),
                  "up_sell/model/ndcg": np.array([1.0])}  # fmt: skip
        if blend is not None:  # week 2 had no tuned blend: it cannot be pooled
            arrays["cross_sell/tuned blend/ndcg"] = np.array(blend * 2)
        np.savez(d / "per_query_ndcg.npz", **arrays)
        weeks.append(d)
    got = bench_rolling.pooled(weeks, "cross_sell")
    assert set(got) == {"model", "popularity"}
    np.testing.assert_allclose(got["model"], [0.1, 0.2, 0.2, 0.4])
    np.testing.assert_allclose(got["popularity"], [0, 0, 1, 1])
    assert set(bench_rolling.pooled(weeks, "up_sell")) == {"model"}
    with pytest.raises(FileNotFoundError):
        bench_rolling.pooled([tmp_path / "missing"], "cross_sell")
