"""The shopper / trade-up features on a hand-made shop built through the real
`build_artifacts` (no Annoy index: these features do not read it)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from xsell.ranking.features import FEATURES_BY_NAME, PairBatch
from xsell.retrieval.artifacts import DAY, RetrievalConfig, build_artifacts
from xsell.retrieval.candidates import neighbour_items

from xsell.data.contract import CleaningReport, Dataset

# items: a, b, c in category X (prices 1, 2, 4), d in category Y
CATALOG = pd.DataFrame({
    "item_id": ["a", "b", "c", "d"], "category": ["X", "X", "X", "Y"], "category_path": ["X", "X", "X", "Y"],
    "price": [1.0, 2.0, 4.0, 3.0], "cost": [np.nan] * 4, "brand": [""] * 4, "title": [""] * 4,
    "in_stock": [True] * 4,
})  # fmt: skip
# (user, item, day): u1 buys a on days 0, 10, 20 (every 10 days) and switches a -> b on day 30;
# u2 buys a (day 5) then c (day 6), and d on day 6; u3 buys d only.
LINES = [("u1", "a", 0), ("u1", "a", 10), ("u1", "a", 20), ("u1", "b", 30),
         ("u2", "a", 5), ("u2", "c", 6), ("u2", "d", 6), ("u3", "d", 1)]  # fmt: skip
CUT_DAY = 40


@pytest.fixture(scope="module")
def arts():
    events = pd.DataFrame({
        "user_id": [u for u, _, _ in LINES], "item_id": [i for _, i, _ in LINES],
        "timestamp": [d * DAY + 3600 for _, _, d in LINES], "event_type": ["purchase"] * len(LINES),
        "quantity": [1.0] * len(LINES), "unit_price": [CATALOG.set_index("item_id").price[i] for _, i, _ in LINES],
        "basket_id": [f"{u}-{d}" for u, _, d in LINES],
    })  # fmt: skip
    data = Dataset(events, CATALOG, None, CleaningReport())
    return build_artifacts(data, until=CUT_DAY * DAY, config=RetrievalConfig(factors=4, iterations=2, knn_neighbours=2), log=lambda *a: None)


def _feature(arts, name, user_id, items, anchor="a"):
    items = arts.items.encode(items).astype(np.int64)
    anchors = np.full(len(items), arts.items.get(anchor), dtype=np.int64)
    b = PairBatch(arts, items, anchors, arts.users.get(user_id), np.zeros(len(items), np.uint8),
                  np.zeros(len(items), np.float32), 1)  # fmt: skip
    return FEATURES_BY_NAME[name].fn(b)


def test_repeat_cycle_is_days_since_over_mean_gap(arts):
    # u1 bought a on days 0..20: mean gap 10, last 20 days before the cut -> 2.0; b once -> NaN
    got = _feature(arts, "repeat_cycle", "u1", ["a", "b"])
    assert got[0] == pytest.approx(2.0)
    assert np.isnan(got[1])


def test_decayed_count_weighs_older_baskets_less(arts):
    # u1's baskets, newest first: day 30 (b), 20, 10, 0 (a) -> a = 0.9 + 0.81 + 0.729
    got = _feature(arts, "user_item_decay", "u1", ["a", "b", "c"])
    np.testing.assert_allclose(got, [0.9 + 0.81 + 0.729, 1.0, 0.0], rtol=1e-6)


def test_switches_follow_the_shoppers_next_purchase_in_the_category(arts):
    # a -> b (u1) and a -> c (u2): one each out of the anchor's two switches
    np.testing.assert_allclose(_feature(arts, "switch_log", "u1", ["b", "c", "d"]), np.log1p([1, 1, 0]))
    np.testing.assert_allclose(_feature(arts, "switch_share", "u1", ["b", "c", "d"]), [0.5, 0.5, 0.0])


def test_price_level_within_the_category_is_the_shoppers_own(arts):
    # price percentiles in X: a 1/3, b 2/3, c 1. u1 bought a, a, a, b there -> mean 5/12
    got = _feature(arts, "price_pct_vs_user_cat", "u1", ["c", "d"])
    assert got[0] == pytest.approx(1.0 - 5 / 12)
    assert np.isnan(got[1])  # never bought in Y


def test_neighbour_source_proposes_what_similar_shoppers_bought(arts):
    # u3 (d only) is most similar to u2 (a, c, d): u2's other items reach u3
    got = set(arts.items.ids[neighbour_items(arts, arts.users.get("u3"), 10)])
    assert {"a", "c"} <= got
    assert _feature(arts, "knn_score", "u3", ["c"])[0] > 0
    assert len(neighbour_items(arts, -1, 10)) == 0


def test_copurchase_features_count_shared_baskets_and_blank_rows_without_anchor(arts):
    # c and d share one basket (u2, day 6), b never shares one with c; c is in 1 basket.
    items = arts.items.encode(["d", "b", "d"]).astype(np.int64)
    c = arts.items.get("c")
    b = PairBatch(arts, items, np.array([c, c, -1], dtype=np.int64), arts.users.get("u2"),
                  np.zeros(3, np.uint8), np.zeros(3, np.float32), 1)  # fmt: skip
    log_count = FEATURES_BY_NAME["copurchase_log"].fn(b)
    np.testing.assert_allclose(log_count[:2], [np.log(2.0), 0.0], rtol=1e-6)
    conf = FEATURES_BY_NAME["copurchase_conf"].fn(b)
    np.testing.assert_allclose(conf[:2], [1.0, 0.0], rtol=1e-6)
    assert np.isnan(log_count[2]) and np.isnan(conf[2])  # no anchor: missing, not 0
