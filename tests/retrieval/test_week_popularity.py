"""This week's popularity (`week_popularity`, features log_week_popularity / week_share):
baskets holding the item in the last `week_days` days before the cut-off."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from xsell.retrieval.artifacts import Artifacts, RetrievalConfig, build_artifacts

QUICK = RetrievalConfig(factors=8, iterations=2, item_neighbours_k=0)


@pytest.fixture(scope="module")
def arts(dataset):
    return build_artifacts(dataset, config=QUICK, log=lambda *_: None)


def test_the_week_is_a_shorter_recent_window(dataset, arts):
    week, recent = arts.week_popularity, arts.recent_popularity
    assert week.dtype == np.float32 and week.shape == recent.shape
    assert (week >= 0).all() and (week <= recent).all()
    assert 0 < week.sum() < recent.sum()  # the synthetic shop spans more than 28 days
    same = build_artifacts(dataset, config=replace(QUICK, week_days=QUICK.recent_days), log=lambda *_: None)
    np.testing.assert_array_equal(same.week_popularity, same.recent_popularity)
    everything = build_artifacts(dataset, config=replace(QUICK, week_days=100_000), log=lambda *_: None)
    np.testing.assert_array_equal(everything.week_popularity, everything.popularity)


def test_the_week_counts_baskets_of_the_last_seven_days(dataset, arts):
    """Against a direct count: distinct baskets per item among the events of the last
    seven days before the cut-off (day >= cut_day - 7)."""
    ev = dataset.events
    day = ev["timestamp"].to_numpy() // 86_400
    last = ev[day >= arts.cut_day - 7].drop_duplicates(["item_id", "basket_id"])
    counts = last["item_id"].value_counts()
    expected = np.zeros(len(arts.items), dtype=np.float32)
    codes = arts.items.encode(counts.index.to_numpy())
    expected[codes[codes >= 0]] = counts.to_numpy()[codes >= 0]
    np.testing.assert_array_equal(arts.week_popularity, expected)


def test_artifacts_from_before_the_week_still_load(arts, tmp_path):
    arts.save(tmp_path)
    np.testing.assert_array_equal(Artifacts.load(tmp_path, ann_file=None).week_popularity, arts.week_popularity)
    stats = dict(np.load(tmp_path / "stats.npz"))
    del stats["week_popularity"]
    np.savez(tmp_path / "stats.npz", **stats)
    assert Artifacts.load(tmp_path, ann_file=None).week_popularity is None
