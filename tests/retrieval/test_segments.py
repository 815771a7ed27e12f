"""Shopper segments (retrieval/segments.py): hand-computed counts, the lift, storage,
and the three segment features on the synthetic shop's planted price levels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from xsell.retrieval.segments import (
    MAX_VALUES,
    SegmentTable,
    build_segments,
    log_lift,
    segment_columns,
)


def _tiny():
    """3 shoppers: u0 area A age X, u1 area B (age empty), u2 missing from the users table.
    Baskets: b0 (u0: items 0, 1), b1 (u0: item 0), b2 (u1: items 1, 2), b3 (u2: item 2)."""
    users = pd.DataFrame(
        {"user_id": ["u0", "u1", "u9"], "area": ["A", "B", "A"], "age": ["X", "", "Y"]}
    )
    basket_items = pd.DataFrame({
        "b": [0, 0, 1, 2, 2, 3], "i": [0, 1, 0, 1, 2, 2], "u": [0, 0, 0, 1, 1, 2], "c": [0, 1, 0, 1, 1, 1],
    })  # fmt: skip
    # purchase lines: u0 buys in category 1 at pct 0.2 six times; u1 once at 0.9
    purchases = pd.DataFrame({"u": [0] * 6 + [1], "c": [1] * 7, "pct": [0.2] * 6 + [0.9]})
    return users, basket_items, purchases


def _tiny_table():
    users, basket_items, purchases = _tiny()
    return build_segments(
        users,
        ["u0", "u1", "u2"],
        basket_items,
        purchases,
        n_items=3,
        n_categories=2,
        log=lambda *_: None,
    )


def test_counts_rows_and_unknowns_by_hand():
    seg = _tiny_table()
    assert seg.columns == ("area", "age")
    assert seg.values == (("A", "B"), ("X", "Y"))
    # rows: area A=0, B=1; age X=2, Y=3. u1's age is empty, u2 is not in the users table
    np.testing.assert_array_equal(seg.user_rows, [[0, 2], [1, -1], [-1, -1]])
    np.testing.assert_array_equal(seg.baskets, [2, 1, 2, 0])  # A: b0 b1; B: b2; X: b0 b1
    np.testing.assert_array_equal(
        seg.item_baskets.toarray(), [[2, 1, 0], [0, 1, 1], [2, 1, 0], [0, 0, 0]]
    )
    np.testing.assert_array_equal(seg.cat_baskets, [[2, 1], [0, 1], [2, 1], [0, 0]])
    assert seg.n_baskets == 4  # every basket, also those of shoppers without a segment
    # price level: u0's 6 lines (>= MIN_PRICE_LINES) count, u1's single line does not
    np.testing.assert_allclose(seg.cat_price[[0, 2], 1], [0.2, 0.2], rtol=1e-6)
    assert np.isnan(seg.cat_price[1, 1]) and np.isnan(seg.cat_price[0, 0])
    np.testing.assert_array_equal(seg.rows_of(0), [0, 2])
    assert len(seg.rows_of(2)) == 0 and len(seg.rows_of(-1)) == 0


def test_no_users_table_or_no_usable_column_gives_no_table():
    users, basket_items, purchases = _tiny()
    args = (["u0", "u1", "u2"], basket_items, purchases, 3, 2)
    assert build_segments(None, *args, log=lambda *_: None) is None
    ids_only = users[["user_id"]].assign(same=["x", "x", "x"])  # one value: says nothing
    assert build_segments(ids_only, *args, log=lambda *_: None) is None


def test_a_column_with_too_many_values_is_skipped_and_said():
    ids = [f"u{i}" for i in range(MAX_VALUES + 1)]
    users = pd.DataFrame(
        {"user_id": ids, "postcode": ids, "area": ["A", "B"] * (MAX_VALUES // 2) + ["A"]}
    )
    said = []
    assert [name for name, _ in segment_columns(users, said.append)] == ["area"]
    assert "postcode" in said[0] and str(MAX_VALUES) in said[0]


def test_save_and_load_round_trip(tmp_path):
    seg = _tiny_table()
    seg.save(tmp_path / "segments.npz")
    back = SegmentTable.load(tmp_path / "segments.npz")
    assert (back.columns, back.values, back.n_baskets) == (seg.columns, seg.values, seg.n_baskets)
    for name in ("user_rows", "baskets", "cat_baskets", "cat_price"):
        np.testing.assert_array_equal(getattr(back, name), getattr(seg, name))
    assert (back.item_baskets != seg.item_baskets).nnz == 0


@given(
    baskets=st.floats(0, 1e6),
    share=st.floats(0, 1),
    extra=st.floats(0.5, 1e4),
)
def test_log_lift_is_zero_at_the_expected_count_and_grows_with_the_count(baskets, share, extra):
    expected = baskets * share
    assert log_lift(np.float64(expected), baskets, share) == pytest.approx(0.0, abs=1e-12)
    assert log_lift(np.float64(expected + extra), baskets, share) > 0
    if expected >= extra:
        assert log_lift(np.float64(expected - extra), baskets, share) < 0


def test_segment_features_follow_the_planted_price_levels(dataset, truth):
    """The synthetic users table's segment is mostly the shopper's price level: shoppers of
    the premium segment must pay above what the budget segment pays in the same category."""
    from xsell.ranking.features import FEATURES_BY_NAME, PairBatch
    from xsell.retrieval.artifacts import build_artifacts

    arts = build_artifacts(dataset, log=lambda *_: None)
    seg = arts.segments
    assert seg is not None and "segment" in seg.columns
    col = seg.columns.index("segment")
    offset = sum(len(v) for v in seg.values[:col])
    budget, premium = (offset + seg.values[col].index(v) for v in ("budget", "premium"))
    both = ~np.isnan(seg.cat_price[budget]) & ~np.isnan(seg.cat_price[premium])
    assert both.sum() >= 5
    assert (seg.cat_price[premium, both] > seg.cat_price[budget, both]).mean() > 0.9

    # features of one premium shopper over every item: the lift favours pricier items
    user = next(u for u in range(len(arts.users)) if seg.user_rows[u, col] == premium)
    items = np.arange(len(arts.items), dtype=np.int64)
    batch = PairBatch(arts, items, np.full(len(items), -1), user, np.zeros(len(items), np.uint8),
                      np.zeros(len(items), np.float32), 0)  # fmt: skip
    lift = FEATURES_BY_NAME["segment_item_lift"].fn(batch)
    assert lift.dtype == np.float32 and not np.isnan(lift).any()
    top = arts.price_pct >= 0.75
    assert lift[top].mean() > lift[arts.price_pct <= 0.25].mean()
    vs_level = FEATURES_BY_NAME["price_pct_vs_segment_cat"].fn(batch)
    known = ~np.isnan(vs_level)
    rows = seg.rows_of(user)
    level = np.nanmean(seg.cat_price[rows][:, arts.item_category[known]], axis=0)
    np.testing.assert_allclose(vs_level[known], arts.price_pct[known] - level, rtol=1e-5, atol=1e-6)
    # an unknown shopper has no segment: every segment feature is missing
    anon = PairBatch(
        arts, items, np.full(len(items), -1), -1, batch.sources, batch.retrieval_score, 0
    )
    for name in ("segment_item_lift", "segment_cat_lift", "price_pct_vs_segment_cat"):
        assert np.isnan(FEATURES_BY_NAME[name].fn(anon)).all()


def test_artifacts_without_a_users_table_have_no_segments_and_still_round_trip(dataset, tmp_path):
    from xsell.retrieval.artifacts import Artifacts, build_artifacts

    from xsell.data.contract import Dataset

    arts = build_artifacts(
        Dataset(dataset.events, dataset.catalog, None, dataset.report), log=lambda *_: None
    )
    assert arts.segments is None
    assert "segments.npz" not in arts.save(tmp_path)
    assert Artifacts.load(tmp_path, ann_file=None).segments is None


def test_the_data_fingerprint_covers_the_users_table_and_costs(dataset):
    """Segments and margins are features: a bundle trained on other segments or costs is
    another model and must not share the data fingerprint."""
    from xsell.ranking.train import data_fingerprint

    from xsell.data.contract import Dataset

    base = data_fingerprint(dataset)
    assert data_fingerprint(dataset) == base
    assert data_fingerprint(Dataset(dataset.events, dataset.catalog, None, dataset.report)) != base
    users = dataset.users.copy()
    users.iloc[0, 1] = users.iloc[0, 1] + "-changed"
    assert data_fingerprint(Dataset(dataset.events, dataset.catalog, users, dataset.report)) != base
    catalog = dataset.catalog.copy()
    catalog.loc[0, "cost"] = float(catalog.loc[0, "price"]) / 3
    assert data_fingerprint(Dataset(dataset.events, catalog, dataset.users, dataset.report)) != base


def test_a_bundle_without_segment_features_carries_no_segment_table(bundle_dir):
    """The default config leaves the group out, so training builds no table from the users file."""
    import json

    from xsell.ranking.train import TrainConfig

    assert "segment" in TrainConfig.disabled_feature_groups
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert "segments.npz" not in manifest["files"]
    assert not any(n.startswith("segment") for n in manifest["feature_names"])


def test_a_bundle_trained_with_segment_features_serves_them(dataset, tmp_path):
    """Turned on, the segment features go through training, the bundle (segments.npz is
    hashed in the manifest) and serving: a known shopper's answer carries them, not NaN."""
    import json

    from xsell.ranking.model import ModelConfig
    from xsell.ranking.ranker import Ranker
    from xsell.ranking.train import TrainConfig, train_bundle
    from xsell.ranking.types import CartLine, RankRequest, Strategy
    from xsell.retrieval.artifacts import RetrievalConfig

    cfg = TrainConfig(label_days=14, max_queries=200, compile_models=False, disabled_feature_groups=("neighbours",),
                      model=ModelConfig(max_rounds=15, early_stopping_rounds=5),
                      retrieval=RetrievalConfig(factors=8, iterations=2))  # fmt: skip
    out = train_bundle(dataset, tmp_path / "b", cfg, log=lambda *_: None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "segments.npz" in manifest["files"]
    names = ["segment_item_lift", "segment_cat_lift", "price_pct_vs_segment_cat"]
    assert set(names) <= set(manifest["feature_names"])

    ranker = Ranker.load(out)
    user = str(dataset.users["user_id"].iloc[0])
    assert ranker.arts.users.get(user) >= 0
    item = str(dataset.events.loc[dataset.events["user_id"] == user, "item_id"].iloc[0])
    request = RankRequest(
        user_id=user, cart=(CartLine(item),), strategy=Strategy.CROSS_SELL, limit=5
    )
    ctx = ranker._context(request)
    cands = {Strategy.CROSS_SELL: ranker._candidates(request, Strategy.CROSS_SELL, ctx)}
    x = ranker._feature_matrices(cands, ctx)[Strategy.CROSS_SELL]
    cols = [ranker.feature_names.index(n) for n in names]
    assert not np.isnan(
        x[:, cols[:2]]
    ).any()  # lifts: defined for every candidate of a known shopper
    assert len(ranker.rank(request).cross_sell) == 5
