"""The discovery model: a third booster for cross-sell requests that exclude the
shopper's purchases, trained on what such a request retrieves (issue 3)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from xsell.ranking import model as lgbm
from xsell.ranking.features import PairBatch, feature_matrix
from xsell.ranking.model import ModelConfig
from xsell.ranking.ranker import Ranker
from xsell.ranking.train import TrainConfig, _cross_sell_queries, _Queries, train_bundle
from xsell.ranking.types import CartLine, Filters, RankRequest, Strategy
from xsell.retrieval.artifacts import DAY, RetrievalConfig

CFG = TrainConfig(label_days=14, max_queries=300, compile_models=False,
                  model=ModelConfig(max_rounds=15, early_stopping_rounds=5),
                  retrieval=RetrievalConfig(factors=8, iterations=2))  # fmt: skip
QUIET = {"log": lambda *_: None}


@pytest.fixture(scope="module")
def bundles(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("discovery")
    with_new = train_bundle(dataset, root / "with", replace(CFG, discovery_model=True), **QUIET)
    without = train_bundle(dataset, root / "without", CFG, **QUIET)
    return with_new, without


def test_discovery_model_is_written_and_leaves_the_other_models_alone(bundles):
    with_new, without = bundles
    assert (with_new / "model_cross_sell_new.txt").is_file()
    assert not (without / "model_cross_sell_new.txt").exists()
    # its query groups are extra: the two strategies' models are the ones trained without it
    for name in ("model_cross_sell.txt", "model_up_sell.txt"):
        assert (with_new / name).read_bytes() == (without / name).read_bytes(), name
    metrics = Ranker.load(with_new).manifest["metrics"]
    assert metrics["cross_sell_new_train_queries"] > 0
    assert metrics["cross_sell_new_best_iteration"] >= 1


def _shopper_and_cart(ranker: Ranker, dataset) -> tuple[str, tuple[CartLine, ...]]:
    """A shopper with purchases, and a cart of one of their items."""
    arts = ranker.arts
    counts = np.diff(arts.user_counts.indptr)
    user = int(np.argmax(counts))
    item = arts.user_counts.indices[arts.user_counts.indptr[user]]
    return str(arts.users.ids[user]), (CartLine(str(arts.items.ids[item])),)


def test_requests_that_exclude_purchases_are_scored_by_the_discovery_model(bundles, dataset):
    ranker = Ranker.load(bundles[0])
    user_id, cart = _shopper_and_cart(ranker, dataset)
    discover = RankRequest(user_id=user_id, cart=cart, strategy=Strategy.CROSS_SELL, limit=10,
                           filters=Filters(exclude_purchased=True))  # fmt: skip
    plain = replace(discover, filters=Filters())
    assert ranker.model_key(Strategy.CROSS_SELL, discover.filters) == "cross_sell_new"
    assert ranker.model_key(Strategy.CROSS_SELL, plain.filters) == "cross_sell"
    assert ranker.model_key(Strategy.UP_SELL, discover.filters) == "up_sell"

    for request, key in ((discover, "cross_sell_new"), (plain, "cross_sell")):
        result = ranker.rank(request)
        assert result.cross_sell
        ctx = ranker._context(request)
        c = ranker._candidates(request, Strategy.CROSS_SELL, ctx)
        x = feature_matrix(PairBatch(ranker.arts, c.items, c.anchors, ctx["user"], c.sources, c.score,
                                     len(ctx["anchors"])), ranker.features)  # fmt: skip
        expected = dict(zip(ranker.arts.items.ids[c.items].tolist(), lgbm.predict(ranker.boosters[key], x)))
        for item in result.cross_sell:
            if item.sources != ("popular",) or item.item_id in expected:
                assert item.score == pytest.approx(expected[item.item_id], abs=1e-9), key


def test_a_bundle_without_it_ranks_such_requests_with_the_cross_sell_model(bundles):
    ranker = Ranker.load(bundles[1])
    assert "cross_sell_new" not in ranker.boosters
    assert ranker.model_key(Strategy.CROSS_SELL, Filters(exclude_purchased=True)) == "cross_sell"


def test_discovery_groups_hold_no_item_the_shopper_bought(bundles, dataset):
    """Every candidate of a discovery group (so every positive) is new to the shopper;
    the plain groups of the same anchors do hold bought items, so the check can fail."""
    ranker = Ranker.load(bundles[0])
    arts = ranker.arts
    events = dataset.events
    start = (int(events["timestamp"].max()) // DAY - 14) * DAY
    window = events[events["timestamp"] >= start]
    cfg = replace(CFG, discovery_model=True, max_queries=150)
    plain, new = _Queries(ranker.features, 400, 0), _Queries(ranker.features, 400, 0)
    _cross_sell_queries(arts, window, cfg, np.random.default_rng(0), plain, new)
    assert new.groups and plain.groups
    col = ranker.feature_names.index("user_item_count_log")
    assert all((x[:, col] == 0).all() for x in new.x)
    assert any((x[:, col] > 0).any() for x in plain.x)
    assert all((y > 0).any() for y in new.y)
