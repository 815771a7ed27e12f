"""The trainer's label windows: where they fall, and that a bundle learns from each."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from xsell.ranking.bundle import read_manifest
from xsell.ranking.train import label_windows
from xsell.retrieval.artifacts import DAY


@given(
    first=st.integers(0, 400 * DAY),
    span=st.integers(0, 200 * DAY),
    label_days=st.integers(1, 60),
    count=st.integers(1, 5),
)
def test_windows_are_consecutive_day_aligned_and_each_has_history(first, span, label_days, count):
    ts = np.array([first, first + span // 3, first + span], dtype=np.int64)
    starts = label_windows(ts, label_days, count)
    assert len(starts) <= count
    last_day_end = (ts.max() // DAY + 1) * DAY
    for k, start in enumerate(starts):
        assert start % DAY == 0
        assert start == last_day_end - (k + 1) * label_days * DAY  # latest first, no gaps
        assert ts.min() < start  # something to learn from before it
        if k:  # an earlier window: at least a window's length of history
            assert ts.min() <= start - label_days * DAY
    # a window is dropped only when its history is too short, and then so are all before it
    if len(starts) < count:
        next_start = last_day_end - (len(starts) + 1) * label_days * DAY
        assert ts.min() >= next_start or (starts and ts.min() > next_start - label_days * DAY)


def test_the_latest_window_ends_with_the_last_day():
    ts = np.array([0, 10 * DAY + 5, 30 * DAY + 100], dtype=np.int64)
    assert label_windows(ts, 7, 2) == [24 * DAY, 17 * DAY]
    assert label_windows(ts, 7, 4) == [24 * DAY, 17 * DAY, 10 * DAY]  # 3 days of history: not enough for a 4th
    assert label_windows(ts, 20, 2) == [11 * DAY]  # 11 days before the 2nd window: too few
    assert label_windows(ts, 31, 2) == []  # the only window would start before the first event


def test_a_bundle_learns_from_every_window(dataset, tmp_path):
    from xsell.ranking.model import ModelConfig
    from xsell.ranking.train import TrainConfig, train_bundle
    from xsell.retrieval.artifacts import RetrievalConfig

    cfg = TrainConfig(label_days=14, label_windows=3, max_queries=300, compile_models=False,
                      model=ModelConfig(max_rounds=10, early_stopping_rounds=5),
                      retrieval=RetrievalConfig(factors=8, iterations=2))  # fmt: skip
    manifest = read_manifest(train_bundle(dataset, tmp_path / "b", cfg, log=lambda *_: None))
    windows = manifest["data"]["label_windows"]
    assert [w["start"] for w in windows] == label_windows(dataset.events["timestamp"].to_numpy(), 14, 3)
    assert len(windows) == 3 and manifest["data"]["label_start"] == windows[0]["start"]
    m = manifest["metrics"]
    for strategy in ("cross_sell", "up_sell"):
        counts = [w[f"{strategy}_queries"] for w in windows]
        assert all(n > 0 for n in counts)  # each window added query groups
        assert sum(counts) == m[f"{strategy}_train_queries"] + m[f"{strategy}_valid_queries"]
    # the windows tile the last 42 days; each has more history than the one after it
    assert [w["history_events"] for w in windows] == sorted((w["history_events"] for w in windows), reverse=True)
    ends = [w["start"] + 14 * DAY for w in windows]
    assert ends[1:] == [w["start"] for w in windows[:-1]]


def test_train_cli_states_the_default_and_refuses_zero_windows(capsys):
    from xsell.ranking.train import TrainConfig

    from xsell.cli import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    assert f"(default {TrainConfig.label_windows};" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["train", "--events", "e.csv", "--catalog", "c.csv", "--out", "b", "--label-windows", "0"])
    assert exc.value.code == 2
    assert "--label-windows: must be a positive integer, got 0" in capsys.readouterr().err


def test_train_cli_feature_groups_default_to_the_config_and_refuse_unknown_names(capsys):
    from xsell.ranking.train import TrainConfig

    from xsell.cli import build_parser

    parser = build_parser()
    base = ["train", "--events", "e.csv", "--catalog", "c.csv", "--out", "b"]
    assert parser.parse_args(base).disable_feature_groups is None  # -> TrainConfig's default
    assert parser.parse_args([*base, "--disable-feature-groups"]).disable_feature_groups == []
    assert parser.parse_args([*base, "--disable-feature-groups", "price", "segment"]).disable_feature_groups == [
        "price", "segment"]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([*base, "--disable-feature-groups", "prices"])
    assert exc.value.code == 2
    assert "invalid choice: 'prices'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    assert f"(default {' '.join(TrainConfig.disabled_feature_groups)};" in " ".join(capsys.readouterr().out.split())
