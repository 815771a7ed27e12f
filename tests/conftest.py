"""Fixtures shared by every test area."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xsell.data.synthetic import generate

# Small enough to generate in well under a second, large enough that the planted
# structure (complements, tiers, upgraders) shows clearly; ~24k events.
SYNTHETIC_PARAMS = dict(n_users=600, n_items=300, n_categories=20, days=60, seed=7)


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh seeded generator per test: results do not depend on test order."""
    return np.random.default_rng(20_240_601)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with events.csv, catalog.csv, users.csv and truth.json (planted truth)
    of a small synthetic shop (`SYNTHETIC_PARAMS`). Treat it as read-only."""
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, **SYNTHETIC_PARAMS, fmt="csv")
    return out


@pytest.fixture(scope="session")
def dataset(synthetic_dir):
    """The synthetic shop loaded through the real loaders."""
    from xsell.data.loaders import load_dataset

    d = Path(synthetic_dir)
    return load_dataset(d / "events.csv", d / "catalog.csv", d / "users.csv")


@pytest.fixture(scope="session")
def truth(synthetic_dir) -> dict:
    """The planted structure of the synthetic shop (complement pairs, tiers, levels)."""
    return json.loads((Path(synthetic_dir) / "truth.json").read_text())


@pytest.fixture(scope="session")
def bundle_root(tmp_path_factory) -> Path:
    """Directory holding the session's trained bundle (ReloadModel may load from it)."""
    return tmp_path_factory.mktemp("bundles")


@pytest.fixture(scope="session")
def bundle_dir(dataset, bundle_root) -> Path:
    """One real bundle trained on the synthetic shop, shared by every test area.

    Small and quick (a few seconds) yet good enough to find the planted structure.
    """
    from xsell.ranking.model import ModelConfig
    from xsell.ranking.train import TrainConfig, train_bundle
    from xsell.retrieval.artifacts import RetrievalConfig

    config = TrainConfig(
        max_queries=600,
        seed=0,
        model=ModelConfig(max_rounds=60, early_stopping_rounds=15, learning_rate=0.15, threads=1),
        retrieval=RetrievalConfig(factors=32, iterations=8),
        compile_models=False,  # tests/ranking/test_compiled_ranker.py compiles a copy
    )
    return train_bundle(dataset, bundle_root / "base", config, log=lambda *_: None)
