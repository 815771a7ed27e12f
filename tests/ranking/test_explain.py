"""Reason texts: every feature of the table has a sentence, and the retrieval reason names its sources."""

from __future__ import annotations

import math

import pytest
from xsell.ranking.explain import reason_text
from xsell.ranking.features import FEATURES
from xsell.retrieval.candidates import SOURCES


@pytest.fixture(scope="module")
def arts(bundle_dir):
    from xsell.ranking.ranker import Ranker

    return Ranker.load(bundle_dir).arts


@pytest.mark.parametrize("name", [f.name for f in FEATURES])
def test_every_feature_reads_as_a_sentence(arts, name):
    item, anchor = int(arts.popular_items[0]), int(arts.popular_items[1])
    text = reason_text(name, 0.5, arts, item, anchor, up_sell=False, sources=("copurchase",))
    assert text and not text.startswith(f"{name} =")  # no raw "name = value" fallback
    assert reason_text(name, math.nan, arts, item, anchor, False) == f"{name}: unknown"


def test_retrieval_reason_names_the_sources(arts):
    item, anchor = int(arts.popular_items[0]), int(arts.popular_items[1])
    anchor_id = str(arts.items.ids[anchor])
    text = reason_text("retrieval_score", 0.1, arts, item, anchor, False, sources=("copurchase", "history"))
    assert f"bought together with {anchor_id}" in text and "bought by this shopper before" in text
    texts = {reason_text(f"src_{s}", 1.0, arts, item, anchor, False) for s in SOURCES}
    assert len(texts) == len(SOURCES)  # each source says something different


@pytest.mark.parametrize("value", [-0.7, -0.01, 0.0])
def test_an_up_sell_that_is_not_pricier_is_not_called_premium(arts, value):
    """uplift_min < 1 admits cheaper (or equal-price) up-sells: their uplift reason
    must not read "premium alternative: -50% price"."""
    item, anchor = int(arts.popular_items[0]), int(arts.popular_items[1])
    text = reason_text("price_uplift_log", value, arts, item, anchor, up_sell=True)
    assert "premium" not in text and f"{(math.exp(value) - 1) * 100:+.0f}% price" in text
    assert "premium" in reason_text("price_uplift_log", 0.3, arts, item, anchor, up_sell=True)


def test_a_category_lift_below_one_does_not_read_more_often(arts):
    item, anchor = int(arts.popular_items[0]), int(arts.popular_items[1])
    low = reason_text("cat_lift_log", math.log(0.4), arts, item, anchor, up_sell=False)
    assert "0.4x as often as average" in low and "more often" not in low
    assert "2.5x more often than average" in reason_text("cat_lift_log", math.log(2.5), arts, item, anchor, False)
