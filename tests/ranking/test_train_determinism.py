"""Training is deterministic: the boosters train on worker threads beside the serving
artifacts, and the same data and seed must still give the same bundle contents."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
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


def test_bundles_trained_together_equal_bundles_trained_alone(dataset, tmp_path):
    """`train_bundles` (the evaluator's model and ablations) builds the label windows'
    artifacts, query rows and serving artifacts once; each bundle must still be the one
    `train_bundle` writes for its config alone: same models, same feature list, same files."""
    from dataclasses import replace

    import pytest
    from xsell.ranking.train import train_bundles

    cfg = TrainConfig(label_days=14, max_queries=200, compile_models=False,
                      model=ModelConfig(max_rounds=15, early_stopping_rounds=5),
                      retrieval=RetrievalConfig(factors=8, iterations=2))  # fmt: skip
    variants = {
        "model": cfg,
        "no price": replace(cfg, disabled_feature_groups=(*cfg.disabled_feature_groups, "price")),
        "no complement": replace(
            cfg, disabled_feature_groups=(*cfg.disabled_feature_groups, "complement")
        ),
    }
    together = train_bundles(
        dataset, {k: (tmp_path / "t" / k, c) for k, c in variants.items()}, log=lambda *_: None
    )
    for label, vcfg in variants.items():
        alone = train_bundle(dataset, tmp_path / "a" / label, vcfg, log=lambda *_: None)
        t = together[label]
        ma, mt = (json.loads((d / "manifest.json").read_text()) for d in (alone, t))
        assert mt["feature_names"] == ma["feature_names"], label
        assert mt["metrics"] == ma["metrics"], label
        assert set(mt["files"]) == set(ma["files"]), label
        for name in (
            "model_cross_sell.txt",
            "model_up_sell.txt",
            "item_neighbours.npy",
            "stats.npz",
        ):
            assert (t / name).read_bytes() == (alone / name).read_bytes(), (label, name)
    names = {
        k: json.loads((together[k] / "manifest.json").read_text())["feature_names"]
        for k in variants
    }
    assert len(names["no price"]) < len(names["model"]) and len(names["no complement"]) < len(
        names["model"]
    )
    with pytest.raises(ValueError, match="may differ only in disabled_feature_groups"):
        train_bundles(
            dataset, {"a": (tmp_path / "x", cfg), "b": (tmp_path / "y", replace(cfg, seed=1))}
        )


@given(
    st.lists(st.tuples(st.booleans(), st.floats(0.01, 100.0)), min_size=1, max_size=40),
    st.lists(st.floats(1.0, 10.0), max_size=4, unique=True).map(lambda g: tuple(sorted(g))),
)
def test_upsell_labels_grade_accepted_items_by_uplift(cands, grades):
    """0 for an item not bought; a bought one gets the purchase grade plus one per uplift
    threshold reached, so among accepted items a bigger trade-up never ranks lower."""
    from xsell.ranking.train import upsell_labels

    from xsell.data.contract import EVENT_GRADES

    accepted = np.array([a for a, _ in cands])
    uplift = np.array([u for _, u in cands])
    y = upsell_labels(accepted, uplift, grades)
    for a, u, label in zip(accepted, uplift, y):
        expected = EVENT_GRADES["purchase"] + sum(u >= t for t in grades) if a else 0
        assert label == expected
    order = np.argsort(uplift[accepted], kind="stable")
    assert np.all(np.diff(y[accepted][order]) >= 0)
