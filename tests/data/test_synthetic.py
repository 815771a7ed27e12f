"""The synthetic shop: seeded, contract-valid, and its planted structure is really there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xsell.data.contract import CATALOG_COLUMNS, EVENT_COLUMNS
from xsell.data.loaders import load_dataset
from xsell.data.synthetic import TIER_NAMES, complement_of, generate, generate_frames

SMALL = dict(n_users=600, n_items=300, n_categories=20, days=60)


@pytest.fixture(scope="module")
def shop():
    return generate_frames(**SMALL, seed=11)


@pytest.fixture(scope="module")
def purchases(shop):
    ev = shop.events[shop.events["event_type"] == "purchase"]
    return ev.merge(
        shop.catalog[["item_id", "category", "price"]], on="item_id", validate="many_to_one"
    )


def category_lift(purchases: pd.DataFrame) -> pd.DataFrame:
    """lift[A, B] = P(B in basket | A in basket) / P(B in basket), over purchase baskets."""
    onehot = pd.crosstab(purchases["basket_id"], purchases["category"]).clip(upper=1).astype(float)
    p = onehot.mean()
    together = onehot.T @ onehot / len(onehot)
    return together.div(p, axis=0).div(p, axis=1)


def test_same_seed_same_frames_other_seed_differs():
    a, b = generate_frames(**SMALL, seed=5), generate_frames(**SMALL, seed=5)
    for x, y in ((a.events, b.events), (a.catalog, b.catalog), (a.users, b.users)):
        pd.testing.assert_frame_equal(x, y)
    assert a.truth == b.truth
    c = generate_frames(**SMALL, seed=6)
    assert not a.events.equals(c.events)


def test_frames_have_contract_columns_and_types(shop):
    assert list(shop.events.columns) == list(EVENT_COLUMNS)
    assert list(shop.catalog.columns) == list(CATALOG_COLUMNS)
    assert shop.events["timestamp"].dtype == np.int64
    assert shop.catalog["item_id"].is_unique and shop.users["user_id"].is_unique
    assert set(shop.events["event_type"]) == {"view", "cart", "purchase"}
    assert set(shop.events["item_id"]) <= set(shop.catalog["item_id"])
    assert (shop.events["timestamp"].diff().dropna() >= 0).all()  # time-ordered
    span_days = (shop.events["timestamp"].max() - shop.events["timestamp"].min()) / 86_400
    assert SMALL["days"] - 2 < span_days < SMALL["days"]


def test_event_volume_follows_events_per_user():
    for epu in (10.0, 40.0):
        n = len(generate_frames(**SMALL, seed=1, events_per_user=epu).events)
        assert 0.8 < n / (SMALL["n_users"] * epu) < 1.2


def test_anchors_mean_sets_the_basket_size_not_the_event_volume():
    """bench_shops.py's "big baskets" shop: more items per basket, about the same events."""
    from xsell.errors import DataError

    sizes, volumes = [], []
    for anchors in (0.5, 1.2, 4.0):
        ev = generate_frames(**SMALL, seed=1, anchors_mean=anchors).events
        sizes.append(ev[ev["event_type"] == "purchase"].groupby("basket_id")["item_id"].nunique().mean())
        volumes.append(len(ev))
    assert sizes[0] < sizes[1] < sizes[2] and sizes[2] > 2 * sizes[1]
    assert max(volumes) / min(volumes) < 1.3
    # the recorded parameters regenerate the same shop
    big = generate_frames(**SMALL, seed=1, anchors_mean=4.0)
    pd.testing.assert_frame_equal(generate_frames(**big.params).events, big.events)
    with pytest.raises(DataError, match="anchors_mean"):
        generate_frames(**SMALL, anchors_mean=-1.0)


def test_planted_complements_cooccur_far_above_chance(shop, purchases):
    lift = category_lift(purchases)
    planted = shop.truth.complement_of
    assert len(planted) == SMALL["n_categories"]
    for a, b in planted.items():
        assert complement_of(a) == b
        assert lift.loc[a, b] > 3.0, (a, b, lift.loc[a, b])
    others = [
        lift.loc[a, b] for a in lift.index for b in lift.columns if a != b and planted[a] != b
    ]
    assert max(others) < 1.5


def test_each_category_has_price_tiers_with_brands(shop):
    cat = shop.catalog.assign(tier=shop.catalog["item_id"].map(shop.truth.item_tier))
    medians = cat.groupby(["category", "tier"])["price"].median().unstack()
    assert medians.shape[1] == len(TIER_NAMES) and medians.notna().all().all()
    assert (np.diff(medians.to_numpy(), axis=1) > 0).all()  # basic < standard < plus < premium
    national = cat.groupby(cat["tier"] >= 2)["brand"].apply(lambda b: (b == "national").mean())
    assert national[True] > 0.7 and national[False] < 0.3


def test_shoppers_buy_their_price_level(shop, purchases):
    tier = purchases["item_id"].map(shop.truth.item_tier)
    level = purchases["user_id"].map(shop.truth.user_level)
    day = (purchases["timestamp"] - shop.truth.start) // 86_400
    upgraded = day >= purchases["user_id"].map(shop.truth.upgrade_day).fillna(np.inf)
    now_level = np.minimum(level + upgraded, len(TIER_NAMES) - 1)
    assert (tier == now_level).mean() > 0.6  # chance would be about 0.25
    seg = shop.users.set_index("user_id")["segment"]
    assert (
        seg.map({"budget": 0, "value": 1, "mainstream": 2, "premium": 3})
        == pd.Series(shop.truth.user_level)
    ).mean() > 0.8


def test_upgraders_trade_up_later(shop, purchases):
    up = pd.Series(shop.truth.upgrade_day)
    assert 0 < len(up) < SMALL["n_users"]
    p = purchases.assign(
        tier=purchases["item_id"].map(shop.truth.item_tier),
        day=(purchases["timestamp"] - shop.truth.start) // 86_400,
    )
    mine = p[p["user_id"].isin(up.index)]
    after = mine["day"] >= mine["user_id"].map(up)
    gain = mine.loc[after, "tier"].mean() - mine.loc[~after, "tier"].mean()
    others = p[~p["user_id"].isin(up.index)]
    half = others["day"] >= SMALL["days"] * 0.7
    drift = others.loc[half, "tier"].mean() - others.loc[~half, "tier"].mean()
    assert gain > 0.5 and abs(drift) < 0.15


def test_popularity_is_skewed_within_category(purchases):
    counts = purchases.groupby(["category", "item_id"]).size()
    top_share = counts.groupby(level=0).apply(lambda c: c.max() / c.sum())
    items_per_cat = counts.groupby(level=0).size()
    assert (top_share > 2.0 / items_per_cat).mean() > 0.8


def test_some_items_out_of_stock(shop):
    share = 1 - shop.catalog["in_stock"].mean()
    assert 0 < share < 0.1


def test_baskets_hold_several_purchases_and_views(shop):
    ev = shop.events
    per_basket = ev[ev["event_type"] == "purchase"].groupby("basket_id")["item_id"].nunique()
    assert per_basket.mean() > 2.5
    assert (ev.groupby("basket_id")["user_id"].nunique() == 1).all()
    assert (ev.groupby("basket_id")["timestamp"].agg(lambda t: t.max() - t.min()) < 86_400).all()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_written_files_load_cleanly_with_leaf_categories(tmp_path, fmt):
    paths = generate(tmp_path, n_users=80, n_items=60, n_categories=6, days=20, seed=2, fmt=fmt)
    ds = load_dataset(paths["events"], paths["catalog"], paths["users"], strict=True)
    frames = generate_frames(n_users=80, n_items=60, n_categories=6, days=20, seed=2)
    assert ds.report.total_dropped() == 0
    pd.testing.assert_frame_equal(ds.events, frames.events)
    pd.testing.assert_frame_equal(ds.catalog, frames.catalog)
    pd.testing.assert_frame_equal(ds.users, frames.users)
    truth = json.loads(paths["truth"].read_text())
    assert truth["complement_of"] == frames.truth.complement_of


def test_shared_fixture_directory(synthetic_dir):
    d = Path(synthetic_dir)
    ds = load_dataset(d / "events.csv", d / "catalog.csv", d / "users.csv", strict=True)
    assert len(ds.events) > 10_000 and ds.catalog["category"].nunique() == 20
    truth = json.loads((d / "truth.json").read_text())
    assert set(truth["item_tier"]) == set(ds.catalog["item_id"])


def test_odd_category_count_and_bad_arguments():
    shop = generate_frames(n_users=50, n_items=40, n_categories=5, days=10, seed=0)
    assert "c004" not in shop.truth.complement_of
    assert shop.events["item_id"].isin(shop.catalog["item_id"]).all()
    from xsell.errors import DataError

    with pytest.raises(DataError, match="n_items"):
        generate_frames(n_users=5, n_items=3, n_categories=4)
