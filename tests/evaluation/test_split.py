"""The time split never lets a test-period row reach training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from xsell.errors import DataError
from xsell.evaluation.split import DAY, time_split


def events_at(timestamps) -> pd.DataFrame:
    ts = np.asarray(timestamps, dtype=np.int64)
    n = len(ts)
    return pd.DataFrame(
        {
            "user_id": [f"u{i % 7}" for i in range(n)],
            "item_id": [f"i{i % 11}" for i in range(n)],
            "timestamp": ts,
            "event_type": "purchase",
            "quantity": 1.0,
            "unit_price": 1.0,
            "basket_id": [f"b{i // 3}" for i in range(n)],
            "row": np.arange(n),  # identifies each input row
        }
    )


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(0, 200 * DAY), min_size=1, max_size=300),
    st.integers(1, 60),
    st.integers(0, 60),
)
def test_no_test_row_reaches_training(timestamps, test_days, valid_days):
    # the first event is placed early enough that a fit period exists
    events = events_at([0, *timestamps]).sample(frac=1.0, random_state=0)  # any input order
    t_max = int(events["timestamp"].max())
    if t_max - (test_days + valid_days) * DAY < 0:
        with pytest.raises(DataError):
            time_split(events, test_days=test_days, valid_days=valid_days)
        return
    s = time_split(events, test_days=test_days, valid_days=valid_days)
    train = s.train
    # every row lands in exactly one period
    rows = np.concatenate([s.fit["row"], s.valid["row"], s.test["row"]])
    assert sorted(rows.tolist()) == list(range(len(events)))
    # the test period is exactly the last `test_days` days, and nothing of it is in training
    assert (s.test["timestamp"] > t_max - test_days * DAY).all()
    assert (train["timestamp"] <= t_max - test_days * DAY).all()
    assert set(train["row"]).isdisjoint(set(s.test["row"]))
    if len(s.test) and len(train):
        assert train["timestamp"].max() < s.test["timestamp"].min()
    # the validation window sits right before the test period; fit before it
    assert (s.valid["timestamp"] > s.valid_start).all() and (
        s.valid["timestamp"] <= s.test_start
    ).all()
    assert (s.fit["timestamp"] <= s.valid_start).all()
    assert s.test_start - s.valid_start == valid_days * DAY


def test_daily_timestamps_give_whole_days():
    # Ta-Feng style: one timestamp per calendar day at midnight
    days = np.arange(100) * DAY
    s = time_split(events_at(days), test_days=28, valid_days=28)
    assert len(s.test) == 28 and len(s.valid) == 28 and len(s.fit) == 44
    assert s.test["timestamp"].min() == 72 * DAY


def test_baskets_straddling_the_cut_are_cut_not_leaked():
    ev = events_at([0, 9 * DAY - 1, 10 * DAY])  # the cut is at 9 days
    ev["basket_id"] = "same"
    s = time_split(ev, test_days=1, valid_days=0)
    assert s.test["row"].tolist() == [2]
    assert 2 not in s.train["row"].tolist()


def test_errors():
    with pytest.raises(DataError, match="nothing left to train on"):
        time_split(events_at([0, DAY, 2 * DAY]), test_days=28, valid_days=28)
    with pytest.raises(DataError):
        time_split(events_at([]))
    with pytest.raises(ValueError):
        time_split(events_at([0, 100 * DAY]), test_days=0)


def test_inputs_are_not_modified():
    ev = events_at(np.arange(100) * DAY)
    before = ev.copy()
    time_split(ev, test_days=10, valid_days=10)
    pd.testing.assert_frame_equal(ev, before)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(0, 120 * DAY), min_size=1, max_size=200),
    st.integers(1, 30),
    st.integers(0, 30),
)
def test_training_is_every_row_before_the_test_period(timestamps, test_days, valid_days):
    # `train` is what the model learns from: fit and valid together, i.e. every input row up
    # to test_start. Dropping the validation window would lose the most recent history.
    events = events_at([0, *timestamps]).sample(frac=1.0, random_state=1)
    t_max = int(events["timestamp"].max())
    assume(t_max - (test_days + valid_days) * DAY >= 0)  # else no fit period: an error
    s = time_split(events, test_days=test_days, valid_days=valid_days)
    before_test = events.loc[events["timestamp"] <= t_max - test_days * DAY, "row"]
    assert sorted(s.train["row"].tolist()) == sorted(before_test.tolist())
    assert len(s.train) == len(s.fit) + len(s.valid)
