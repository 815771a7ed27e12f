"""Time split of the event log (DESIGN.md section 3).

    |---------------- fit ----------------|---- valid (valid_days) ----|---- test (test_days) ----|
                                       valid_start                   test_start               t_max

A row belongs to the test period when its timestamp is > t_max - test_days days, to the
validation window when it is in (t_max - (test_days + valid_days) days, test_start], and
to the fit period otherwise. The split is by row timestamp, never by basket, so a basket
that straddles a boundary is cut rather than letting a single test-period row into
training. Pure functions: no I/O, the inputs are never modified.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from xsell.errors import DataError

DAY = 86_400  # seconds


@dataclass(frozen=True)
class TimeSplit:
    fit: pd.DataFrame  # history for the validation queries
    valid: pd.DataFrame  # validation window: tuning targets / early stopping
    test: pd.DataFrame  # never seen while fitting anything
    valid_start: int  # epoch seconds; valid rows have valid_start < ts <= test_start
    test_start: int  # test rows have ts > test_start
    t_max: int

    @property
    def train(self) -> pd.DataFrame:
        """Everything before the test period (fit + valid): what the model is trained on."""
        return pd.concat([self.fit, self.valid], ignore_index=True)

    def summary(self) -> dict:
        return {
            "fit_rows": len(self.fit),
            "valid_rows": len(self.valid),
            "test_rows": len(self.test),
            "valid_start": _iso(self.valid_start),
            "test_start": _iso(self.test_start),
            "t_max": _iso(self.t_max),
        }


def _iso(ts: int) -> str:
    return pd.Timestamp(ts, unit="s", tz="UTC").isoformat()


def time_split(events: pd.DataFrame, *, test_days: int = 28, valid_days: int = 28) -> TimeSplit:
    """Split `events` (contract dtypes, `timestamp` in epoch seconds) into fit/valid/test.

    Raises DataError when there are no events or no fit period is left: an evaluation
    with no training history is meaningless, not zero. The test period always holds the
    last event; the validation window may be empty (`valid_days=0`, or a gap in the data).
    """
    if test_days <= 0 or valid_days < 0:
        raise ValueError(
            f"test_days must be > 0 and valid_days >= 0, got {test_days}, {valid_days}"
        )
    if events.empty:
        raise DataError("no events to split", column="timestamp")
    ts = events["timestamp"].to_numpy(dtype=np.int64)
    t_max = int(ts.max())
    test_start = t_max - test_days * DAY
    valid_start = test_start - valid_days * DAY
    is_test = ts > test_start
    is_fit = ts <= valid_start
    is_valid = ~is_test & ~is_fit
    split = TimeSplit(
        fit=events.loc[is_fit].reset_index(drop=True),
        valid=events.loc[is_valid].reset_index(drop=True),
        test=events.loc[is_test].reset_index(drop=True),
        valid_start=int(valid_start),
        test_start=int(test_start),
        t_max=t_max,
    )
    span_days = (t_max - int(ts.min())) / DAY
    if split.fit.empty:
        raise DataError(
            f"the events span {span_days:.1f} days: nothing left to train on after a "
            f"{test_days}-day test period (--test-days) and a {valid_days}-day validation "
            "window (--valid-days)",
            column="timestamp",
        )
    return split
