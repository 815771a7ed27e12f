"""benchmarks/bench_ceiling.py's parts: the shopper halves it cross-fits on, the bundle
that pairs one bundle's retrieval artifacts with another's rankers, and the test-period
popularity that each half borrows from the other (never its own)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from xsell.ranking.bundle import COMPILED_FILES, MANIFEST, MODEL_FILES

from xsell.evaluation.queries import build_history, cross_sell_queries

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_ceiling.py"
_spec = importlib.util.spec_from_file_location("bench_ceiling", SCRIPT)
bench_ceiling = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_ceiling)


@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=30))
def test_a_shoppers_half_depends_on_their_id_alone(ids):
    halves = bench_ceiling.shopper_half(np.asarray(ids, dtype=object))
    assert set(halves.tolist()) <= {0, 1}
    again = bench_ceiling.shopper_half(np.asarray(ids[::-1], dtype=object))[::-1]
    assert (halves == again).all()  # order and company do not matter


def test_the_halves_split_real_shoppers_about_evenly(dataset):
    users = dataset.events["user_id"].unique()
    share = bench_ceiling.shopper_half(users).mean()
    assert 0.4 < share < 0.6, share


@pytest.fixture(scope="module")
def other_bundle(dataset, tmp_path_factory):
    """A second real bundle: trained on the first 70% of the time span, with another seed."""
    from xsell.ranking.model import ModelConfig
    from xsell.ranking.train import TrainConfig, train_bundle
    from xsell.retrieval.artifacts import RetrievalConfig

    from xsell.data.contract import Dataset

    ts = dataset.events["timestamp"]
    early = dataset.events[ts < ts.min() + 0.7 * (ts.max() - ts.min())]
    config = TrainConfig(
        label_days=14, max_queries=400, seed=3, compile_models=False,
        model=ModelConfig(max_rounds=30, early_stopping_rounds=10, learning_rate=0.15, threads=1),
        retrieval=RetrievalConfig(factors=16, iterations=4),
    )  # fmt: skip
    out = tmp_path_factory.mktemp("ceiling") / "early"
    return train_bundle(Dataset(early, dataset.catalog, dataset.users, dataset.report), out, config,
                        log=lambda *_: None)  # fmt: skip


def test_swapped_bundle_serves_one_bundles_artifacts_with_the_others_models(
    other_bundle, bundle_dir, tmp_path
):
    from xsell.ranking.ranker import Ranker

    out = bench_ceiling.swap_models(other_bundle, bundle_dir, tmp_path / "swapped")
    model_names = {*MODEL_FILES.values(), *COMPILED_FILES.values()}
    for f in out.iterdir():
        if f.name == MANIFEST:
            continue
        source = bundle_dir if f.name in model_names or f.name.endswith(".so.json") else other_bundle
        assert f.read_bytes() == (source / f.name).read_bytes(), f.name
    for name in MODEL_FILES.values():
        assert (bundle_dir / name).read_bytes() != (other_bundle / name).read_bytes()  # a real swap
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["num_items"] == json.loads((other_bundle / MANIFEST).read_text())["num_items"]
    Ranker.load(out)  # every hash in the rewritten manifest matches


def test_swapping_in_models_of_other_features_is_refused(other_bundle, bundle_dir, tmp_path, copy_bundle):
    odd = copy_bundle(bundle_dir, tmp_path / "odd")
    manifest = json.loads((odd / MANIFEST).read_text())
    manifest["feature_names"] = manifest["feature_names"][:-1]
    (odd / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match="features differ"):
        bench_ceiling.swap_models(other_bundle, odd, tmp_path / "swapped")


def test_each_half_is_ranked_by_the_other_halfs_popularity(dataset):
    events = dataset.events
    ts = events["timestamp"]
    cut = ts.max() - 14 * 86_400
    history = build_history(events[ts <= cut], dataset.catalog)
    queries = cross_sell_queries(events[ts > cut], history, max_queries=300, seed=0)
    assert len(queries) > 50
    rng = np.random.default_rng(0)
    pop = rng.random((2, history.n_items))  # two unrelated orders
    query_half = np.arange(len(queries)) % 2
    ranked = bench_ceiling.popularity_rankings(queries, history, pop, query_half, k=5)
    for q in range(len(queries)):
        other = pop[1 - query_half[q]]
        top = ranked[q][ranked[q] >= 0]
        assert len(top) == 5
        assert (np.diff(other[top]) <= 0).all()  # best first, by the other half's counts
        allowed = history.category != history.category[queries.anchor[q]]
        best_allowed = np.sort(other[allowed])[::-1][:5]
        assert np.allclose(other[top], best_allowed)


def test_test_period_popularity_counts_baskets_per_half_and_only_warm_items():
    from types import SimpleNamespace

    import pandas as pd
    import scipy.sparse as sp

    history = SimpleNamespace(
        items=pd.Index(["a", "b", "c"]), n_items=3,
        user_items=sp.csr_matrix(np.array([[1.0, 0.0, 3.0]])),  # training popularity: c > a > b
    )  # fmt: skip
    test = pd.DataFrame({
        "user_id": ["u1", "u1", "u1", "u2", "u2", "u3"],
        "basket_id": ["k1", "k1", "k2", "k3", "k3", "k4"],
        "item_id": ["a", "a", "a", "b", "cold", "a"],  # "a" twice in basket k1: one basket
        "event_type": ["purchase"] * 5 + ["view"],  # a view is no purchase
    })  # fmt: skip
    half = np.array([0, 0, 0, 1, 1, 0])
    pop = bench_ceiling.test_period_popularity(test, history, half)
    assert np.allclose(pop[0], [2, 0, 0], atol=1e-5) and np.allclose(pop[1], [0, 1, 0], atol=1e-5)
    # the tie-break is training popularity, far below one basket
    assert pop[1][2] > pop[1][0] > 0 and pop[1][2] < 1e-5
