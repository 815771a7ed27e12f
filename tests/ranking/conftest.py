"""A small real bundle for the ranking tests (trained once per session)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xsell.data.loaders import load_dataset
from xsell.ranking.model import ModelConfig
from xsell.ranking.train import TrainConfig, train_bundle
from xsell.retrieval.artifacts import RetrievalConfig

SMALL = TrainConfig(
    max_queries=600,
    model=ModelConfig(max_rounds=60, early_stopping_rounds=15, learning_rate=0.15, threads=1),
    retrieval=RetrievalConfig(factors=32, iterations=8),
)


@pytest.fixture(scope="session")
def synthetic_data(synthetic_dir):
    d = Path(synthetic_dir)
    return load_dataset(d / "events.csv", d / "catalog.csv", d / "users.csv")


@pytest.fixture(scope="session")
def truth(synthetic_dir) -> dict:
    return json.loads((Path(synthetic_dir) / "truth.json").read_text())


@pytest.fixture(scope="session")
def small_bundle(synthetic_data, tmp_path_factory) -> Path:
    return train_bundle(synthetic_data, tmp_path_factory.mktemp("rank") / "bundle", SMALL, log=lambda *_: None)
