"""Query builders on tiny hand-made shops: every rule of DESIGN.md section 3, by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xsell.evaluation.queries import (
    build_history,
    candidate_mask,
    cross_sell_queries,
    new_to_shopper,
    up_sell_queries,
)

DAY = 86_400

CATALOG = pd.DataFrame(
    {
        "item_id": ["A1", "A2", "A3", "A4", "B1", "B2", "C1", "X"],
        "category": ["A", "A", "A", "A", "B", "B", "C", "A"],
        "price": [10.0, 20.0, 22.9, 23.5, 5.0, 30.0, 100.0, 12.0],
    }
)


def lines(rows: list[tuple]) -> pd.DataFrame:
    """rows: (user, item, day, basket, unit_price[, event_type])."""
    out = pd.DataFrame(
        [
            (r[0], r[1], r[2] * DAY, r[5] if len(r) > 5 else "purchase", 1.0, r[4], r[3])
            for r in rows
        ],
        columns=[
            "user_id",
            "item_id",
            "timestamp",
            "event_type",
            "quantity",
            "unit_price",
            "basket_id",
        ],
    )
    return out.astype({"timestamp": "int64"})


TRAIN = lines(
    [
        ("u1", "A1", 1, "t1", 10.0),
        ("u1", "B1", 1, "t1", 5.0),
        ("u1", "B1", 2, "t2", 5.0),
        ("u1", "A2", 3, "t3", 20.0),  # u1's most recent A purchase: the up-sell anchor
        ("u2", "A1", 1, "t4", 10.0),
        ("u2", "B2", 1, "t4", 30.0),
        ("u2", "C1", 2, "t5", 100.0),
        # A3/A4 priced by the median of their training lines, not by the catalog
        ("u3", "A3", 1, "t6", 22.0),
        ("u3", "A3", 2, "t7", 22.9),
        ("u3", "A3", 3, "t8", 99.0),
        ("u3", "A4", 1, "t6", 23.5),
        ("u3", "B2", 1, "t6", 30.0),
        ("u3", "C1", 3, "t8", 100.0, "view"),  # a view is not a purchase
    ]
)
TEST = lines(
    [
        # u1: a 5-item basket; X was never bought in training (cold)
        ("u1", "A1", 10, "s1", 10.0),
        ("u1", "A3", 10, "s1", 22.9),
        ("u1", "B1", 10, "s1", 5.0),
        ("u1", "C1", 10, "s1", 100.0),
        ("u1", "X", 10, "s1", 12.0),
        # u2: one-category basket: no anchor has a relevant item
        ("u2", "A1", 11, "s2", 10.0),
        ("u2", "A2", 11, "s2", 20.0),
        # u2: single-item basket
        ("u2", "B1", 12, "s3", 5.0),
        # cold user
        ("u9", "A1", 10, "s4", 10.0),
        ("u9", "B2", 10, "s4", 30.0),
        # u1 buys A4 in a second basket: up-sell over anchor A2 (23.5 / 20 = 1.175)
        ("u1", "A4", 12, "s5", 23.5),
    ]
)


@pytest.fixture(scope="module")
def history():
    return build_history(TRAIN, CATALOG)


def as_sets(qs, history):
    items = history.items.to_numpy()
    return {
        (history.users[qs.user[q]], items[qs.anchor[q]]): set(items[qs.relevant(q)].tolist())
        for q in range(len(qs))
    }


def test_history_prices_are_training_medians_of_purchases(history):
    price = dict(zip(history.items, history.price))
    assert price["A3"] == pytest.approx(22.9)  # median of 22.0, 22.9, 99.0
    assert price["A2"] == 20.0
    assert "X" not in price  # never bought in training: cold
    assert set(history.users) == {"u1", "u2", "u3"}
    ui = history.user_items.toarray()
    u1, b1 = history.users.get_loc("u1"), history.items.get_loc("B1")
    assert ui[u1, b1] == 2  # two baskets


def test_cross_sell_queries_by_hand(history):
    qs = cross_sell_queries(TEST, history, anchors_per_basket=10, seed=0)
    got = as_sets(qs, history)
    assert got == {
        ("u1", "A1"): {"B1", "C1"},
        ("u1", "A3"): {"B1", "C1"},
        ("u1", "B1"): {"A1", "A3", "C1"},
        ("u1", "C1"): {"A1", "A3", "B1"},
    }
    st = qs.stats
    assert st["anchors_dropped_cold_user"] == 2  # u9's two lines
    assert st["users_dropped_cold"] == 1
    assert st["anchors_dropped_cold_item"] == 1  # X as an anchor
    assert st["relevant_dropped_cold_item"] == 2  # X as a relevant item of B1 and C1
    assert st["anchors_dropped_no_other_category"] == 2  # u2's all-A basket
    assert st["baskets"] == 5 and st["baskets_2plus_items"] == 3


def test_new_to_shopper_removes_training_purchases(history):
    qs = new_to_shopper(cross_sell_queries(TEST, history, anchors_per_basket=10, seed=0), history)
    got = as_sets(qs, history)
    # u1 bought A1 and B1 in training: neither is relevant any more; C1 and A3 are new
    assert got == {
        ("u1", "A1"): {"C1"},
        ("u1", "A3"): {"C1"},
        ("u1", "B1"): {"A3", "C1"},
        ("u1", "C1"): {"A3"},
    }
    assert qs.exclude_bought
    mask = candidate_mask(qs, history, np.arange(len(qs)))
    bought = [history.items.get_loc(i) for i in ("A1", "B1", "A2")]
    assert not mask[:, bought].any()


def test_anchor_cap_and_query_cap_are_seeded(history):
    a = cross_sell_queries(TEST, history, anchors_per_basket=2, seed=3)
    b = cross_sell_queries(TEST, history, anchors_per_basket=2, seed=3)
    assert len(a) == 2 and a.stats["eligible_anchors"] == 4
    np.testing.assert_array_equal(a.anchor, b.anchor)
    seen = {
        tuple(cross_sell_queries(TEST, history, anchors_per_basket=2, seed=s).anchor)
        for s in range(20)
    }
    assert len(seen) > 1  # the seed matters
    assert len(cross_sell_queries(TEST, history, anchors_per_basket=10, max_queries=3, seed=0)) == 3


def test_up_sell_queries_by_hand(history):
    qs = up_sell_queries(TEST, TRAIN, history, min_uplift=1.15)
    got = as_sets(qs, history)
    # u1's last A purchase is A2 (20): A4 (23.5 = 1.175x) is relevant, A3 (22.9 = 1.145x) not,
    # A1 (cheaper) not. u2's last A purchase is A1 (10): A2 (20) is relevant. B and C have
    # no pricier purchase after a training one.
    assert got == {("u1", "A2"): {"A4"}, ("u2", "A1"): {"A2"}}
    assert qs.stats["user_categories_dropped_cold_user"] == 2  # u9: A, B
    q = [history.users[u] for u in qs.user].index("u1")
    mask = candidate_mask(qs, history, np.arange(len(qs)))
    assert set(history.items[mask[q]]) == {"A3", "A4"}  # same category, pricier than A2
    strict = candidate_mask(qs.with_rule("r", min_uplift=1.15), history, np.arange(len(qs)))
    assert set(history.items[strict[q]]) == {"A4"}
    # a lower threshold lets A3 in
    looser = as_sets(up_sell_queries(TEST, TRAIN, history, min_uplift=1.1), history)
    assert looser[("u1", "A2")] == {"A3", "A4"}


def test_cross_sell_candidate_rule(history):
    qs = cross_sell_queries(TEST, history, anchors_per_basket=10, seed=0)
    mask = candidate_mask(qs, history, np.arange(len(qs)))
    cat = history.category
    for q in range(len(qs)):
        a = qs.anchor[q]
        assert not mask[q, a]
        assert (mask[q] == (cat != cat[a])).all()


# --- property tests on random shops -------------------------------------------------------


@st.composite
def shops(draw):
    n_items = draw(st.integers(3, 15))
    n_cats = draw(st.integers(1, 4))
    cats = [f"c{draw(st.integers(0, n_cats - 1))}" for _ in range(n_items)]
    catalog = pd.DataFrame(
        {"item_id": [f"i{i}" for i in range(n_items)], "category": cats, "price": 1.0}
    )
    n_lines = draw(st.integers(1, 80))
    rows = []
    for _ in range(n_lines):
        user = f"u{draw(st.integers(0, 5))}"
        day = draw(st.integers(0, 19))
        item = f"i{draw(st.integers(0, n_items - 1))}"
        price = float(draw(st.sampled_from([1.0, 2.0, 3.0, 5.0, 8.0])))
        rows.append((user, item, day, f"{user}-{day}", price))
    ev = lines(rows)
    return catalog, ev[ev["timestamp"] < 10 * DAY], ev[ev["timestamp"] >= 10 * DAY]


@settings(max_examples=40, deadline=None)
@given(shops(), st.integers(0, 5))
def test_query_invariants(shop, seed):
    catalog, train, test = shop
    if train.empty:
        return
    h = build_history(train, catalog)
    cat = h.category
    cross = cross_sell_queries(test, h, anchors_per_basket=3, seed=seed)
    for view in (cross, new_to_shopper(cross, h), up_sell_queries(test, train, h, seed=seed)):
        mask = (
            candidate_mask(view, h, np.arange(len(view)))
            if len(view)
            else np.zeros((0, h.n_items), bool)
        )
        for q in range(len(view)):
            rel = view.relevant(q)
            a = view.anchor[q]
            assert len(rel) > 0 and a not in rel  # the anchor is never a valid answer
            assert mask[q, rel].all()  # every relevant item is a candidate
            assert len(set(rel.tolist())) == len(rel)
            if view.task == "cross_sell":
                assert (cat[rel] != cat[a]).all()
            else:
                assert (cat[rel] == cat[a]).all()
                assert (h.price[rel] >= 1.15 * h.price[a]).all()
            if view.exclude_bought:
                assert h.user_items[view.user[q]].toarray()[0, rel].max() == 0
    # at most 3 anchors per test basket
    assert cross.stats["queries"] <= 3 * max(cross.stats["baskets_2plus_items"], 0)
