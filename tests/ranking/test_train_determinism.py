"""Training is deterministic: the boosters train on worker threads beside the serving
artifacts, and the same data and seed must still give the same bundle contents."""

from __future__ import annotations

import json

from xsell.ranking.model import ModelConfig
from xsell.ranking.train import TrainConfig, train_bundle
from xsell.retrieval.artifacts import RetrievalConfig


def test_same_data_and_seed_give_the_same_models(dataset, tmp_path):
    cfg = TrainConfig(label_days=14, max_queries=200, compile_models=False,
                      model=ModelConfig(max_rounds=15, early_stopping_rounds=5),
                      retrieval=RetrievalConfig(factors=8, iterations=2))  # fmt: skip
    a = train_bundle(dataset, tmp_path / "a", cfg, log=lambda *_: None)
    b = train_bundle(dataset, tmp_path / "b", cfg, log=lambda *_: None)
    for name in ("model_cross_sell.txt", "model_up_sell.txt", "item_neighbours.npy"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma, mb = (json.loads((d / "manifest.json").read_text())["metrics"] for d in (a, b))
    assert ma == mb
