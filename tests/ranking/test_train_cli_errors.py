"""`xsell train` on bad or unusual input, through the real entry point and real files:
a one-line error naming the file or flag, exit code 2, no traceback, nothing written
that looks like a bundle, and nothing of the user's deleted."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from xsell.cli import main


def _train(capsys, events, catalog, out, *extra):
    code = main(["train", "--events", str(events), "--catalog", str(catalog), "--out", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("xsell train: error: "), err
    return lines[0]


@pytest.fixture
def data_dir(synthetic_dir, tmp_path) -> Path:
    """A private copy of the synthetic shop's files (a test may see them deleted)."""
    d = tmp_path / "data"
    d.mkdir()
    for name in ("events.csv", "catalog.csv"):
        (d / name).write_bytes((Path(synthetic_dir) / name).read_bytes())
    return d


def test_overwrite_refuses_a_directory_that_is_not_a_bundle(data_dir, capsys):
    # --out pointed at the data directory by mistake: --overwrite used to replace it,
    # deleting the input files once training finished
    before = sorted(p.name for p in data_dir.iterdir())
    code, out, err = _train(capsys, data_dir / "events.csv", data_dir / "catalog.csv", data_dir, "--overwrite")
    assert code == 2
    line = _one_line_error(err)
    assert str(data_dir) in line and "not a bundle" in line
    assert sorted(p.name for p in data_dir.iterdir()) == before
    assert "training on" not in out  # refused before any work


def test_overwrite_accepts_a_bundle_and_a_failed_run_keeps_it(data_dir, tmp_path, capsys):
    out_dir = tmp_path / "bundle"
    out_dir.mkdir()
    (out_dir / "manifest.json").write_text(json.dumps({"format": "xsell-bundle/1"}))
    (out_dir / "old.bin").write_bytes(b"old")
    # one shopper: training stops early, but after the output check
    ev = pd.read_csv(data_dir / "events.csv", dtype=str)
    ev[ev["user_id"] == ev["user_id"].iloc[0]].to_csv(tmp_path / "one.csv", index=False)
    code, _, err = _train(capsys, tmp_path / "one.csv", data_dir / "catalog.csv", out_dir, "--overwrite")
    assert code == 2 and "too little data" in err  # got past the output check
    assert (out_dir / "old.bin").read_bytes() == b"old"  # a failed run keeps the old bundle


def test_existing_output_is_refused_before_training(data_dir, tmp_path, capsys):
    out_dir = tmp_path / "bundle"
    out_dir.mkdir()
    (out_dir / "manifest.json").write_text("{}")
    code, out, err = _train(capsys, data_dir / "events.csv", data_dir / "catalog.csv", out_dir)
    assert code == 2
    assert "--overwrite" in _one_line_error(err)
    assert "training on" not in out  # minutes of training used to come first


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_output_path_that_cannot_be_a_directory(data_dir, tmp_path, capsys, where):
    a_file = tmp_path / "afile"
    a_file.write_text("keep me")
    out_dir = a_file if where == "file" else a_file / "bundle"
    code, out, err = _train(capsys, data_dir / "events.csv", data_dir / "catalog.csv", out_dir)
    assert code == 2
    line = _one_line_error(err)
    assert str(a_file) in line and "not a directory" in line
    assert a_file.read_text() == "keep me"
    assert "training on" not in out


def _damaged(data_dir: Path, tmp_path: Path, kind: str) -> Path:
    ev = pd.read_csv(data_dir / "events.csv", dtype=str)
    if kind == "one_shopper":
        ev = ev[ev["user_id"] == ev["user_id"].iloc[0]]
    elif kind == "no_basket_of_two":
        ev = ev.drop_duplicates("basket_id")
    path = tmp_path / f"{kind}.csv"
    ev.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("kind", ["one_shopper", "no_basket_of_two"])
def test_too_little_data_is_a_one_line_error_naming_the_events_file(data_dir, tmp_path, capsys, kind):
    events = _damaged(data_dir, tmp_path, kind)
    out_dir = tmp_path / "bundle"
    code, _, err = _train(capsys, events, data_dir / "catalog.csv", out_dir)
    assert code == 2
    line = _one_line_error(err)
    assert str(events) in line and "too little data" in line
    assert not out_dir.exists() and not list(tmp_path.glob(".bundle*"))


def _flat_prices(data_dir, tmp_path):
    cat = pd.read_csv(data_dir / "catalog.csv", dtype=str).assign(price="5")
    cat.to_csv(tmp_path / "flat.csv", index=False)
    ev = pd.read_csv(data_dir / "events.csv", dtype=str).assign(unit_price="5")
    ev.to_csv(tmp_path / "ev.csv", index=False)
    return tmp_path / "ev.csv", tmp_path / "flat.csv"


def test_no_up_sell_query_trains_the_cross_sell_model_alone(data_dir, tmp_path, capsys):
    """A shop where no shopper traded up (here: one price for everything) still gets its
    cross-sell model; the bundle says why it has no up-sell model, and answers say so."""
    from xsell.ranking.ranker import Ranker
    from xsell.ranking.types import CartLine, RankRequest, Strategy

    events, catalog = _flat_prices(data_dir, tmp_path)
    code, out, err = _train(capsys, events, catalog, tmp_path / "b")
    assert code == 0, err
    assert "WARNING: no up_sell model" in out and "pricier" in out  # says what a query needs
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert list(manifest["untrained_models"]) == ["up_sell"]
    assert (tmp_path / "b" / "model_cross_sell.txt").is_file()
    assert not (tmp_path / "b" / "model_up_sell.txt").exists()
    ranker = Ranker.load(tmp_path / "b")
    item = pd.read_csv(catalog, dtype=str)["item_id"].iloc[0]
    res = ranker.rank(RankRequest(cart=(CartLine(item),), strategy=Strategy.BOTH, limit=5))
    assert len(res.cross_sell) == 5 and res.fallback
    assert "up_sell: no model in this bundle" in res.fallback_reason
    assert "cross_sell" not in res.fallback_reason  # the cross-sell list was scored


def test_one_category_trains_the_up_sell_model_alone(data_dir, tmp_path, capsys):
    cat = pd.read_csv(data_dir / "catalog.csv", dtype=str).assign(category="all")
    cat.to_csv(tmp_path / "one.csv", index=False)
    code, out, err = _train(capsys, data_dir / "events.csv", tmp_path / "one.csv", tmp_path / "b")
    assert code == 0, err
    assert "WARNING: no cross_sell model" in out and "two categories" in out
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert list(manifest["untrained_models"]) == ["cross_sell"]


def test_no_query_of_either_kind_is_a_one_line_error_naming_both(data_dir, tmp_path, capsys):
    events, catalog = _flat_prices(data_dir, tmp_path)
    pd.read_csv(catalog, dtype=str).assign(category="all").to_csv(catalog, index=False)
    code, _, err = _train(capsys, events, catalog, tmp_path / "b")
    assert code == 2
    message = _one_line_error(err).split(".csv: ", 1)[1]  # the tmp path holds the test's name
    assert "cross_sell" in message and "two categories" in message
    assert "up_sell" in message and "pricier" in message
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("flags", [["--until", "2000-01-01"], ["--label-days", "400"]])
def test_periods_outside_the_data_are_a_one_line_error_naming_the_flag(data_dir, tmp_path, capsys, flags):
    code, _, err = _train(capsys, data_dir / "events.csv", data_dir / "catalog.csv", tmp_path / "b", *flags)
    assert code == 2
    assert flags[0] in _one_line_error(err)


def test_a_directory_given_as_an_input_file_is_named_as_such(data_dir, tmp_path, capsys):
    code, _, err = _train(capsys, data_dir, data_dir / "catalog.csv", tmp_path / "b")
    assert code == 2
    assert "is a directory" in _one_line_error(err)


def test_demo_with_half_its_data_names_what_is_missing(data_dir, tmp_path, capsys):
    # a workdir left with events but no catalog (deleted, or an interrupted copy)
    (tmp_path / "w" / "synthetic").mkdir(parents=True)
    (tmp_path / "w" / "synthetic" / "events.csv").write_bytes((data_dir / "events.csv").read_bytes())
    code = main(["demo", "--synthetic", "--workdir", str(tmp_path / "w"), "--exit"])
    assert code == 2
    line = [s for s in capsys.readouterr().err.splitlines() if s.strip()][-1]
    assert line.startswith("xsell demo: error: ") and str(tmp_path / "w" / "synthetic") in line
    assert "catalog" in line
    assert not (tmp_path / "w" / "bundle-synthetic").exists()


@pytest.mark.parametrize("command", [
    ["train", "--events", "e.csv", "--catalog", "c.csv", "--out", "b"],
    ["evaluate", "--events", "e.csv", "--catalog", "c.csv", "--out", "r"],
    ["data", "synthetic", "--out", "s"],
])  # fmt: skip
def test_a_negative_seed_is_refused_naming_the_flag(capsys, command):
    # numpy's generators take no negative seed: it used to fail with a traceback mid-run
    from xsell.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*command, "--seed", "-1"])
    assert exc.value.code == 2
    assert "argument --seed: must be an integer >= 0, got -1" in capsys.readouterr().err
    assert build_parser().parse_args([*command, "--seed", "0"]).seed == 0


def test_train_help_states_the_defaults_the_code_uses(capsys):
    from xsell.ranking.train import TrainConfig

    from xsell.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"(default {TrainConfig.label_days})" in help_text
    assert f"(default {TrainConfig.seed})" in help_text
    # the users table feeds the segment features only, and they are off by default
    assert "segment" in help_text.rsplit("--users USERS", 1)[1].split("--out", 1)[0]


def test_events_all_missing_from_the_catalog_say_why_nothing_is_left(data_dir, tmp_path, capsys):
    # the cleaning report that explains the drops is written into the bundle, which a
    # failed training never writes: the error itself must give the reason
    cat = pd.read_csv(data_dir / "catalog.csv", dtype=str)
    cat.assign(item_id="other-" + cat["item_id"]).to_csv(tmp_path / "cat.csv", index=False)
    n_rows = len(pd.read_csv(data_dir / "events.csv", dtype=str))
    code, _, err = _train(capsys, data_dir / "events.csv", tmp_path / "cat.csv", tmp_path / "b")
    assert code == 2
    line = _one_line_error(err)
    assert str(data_dir / "events.csv") in line and f"item_id: not in catalog {n_rows:,}" in line
    code = main(["evaluate", "--events", str(data_dir / "events.csv"), "--catalog", str(tmp_path / "cat.csv"),
                 "--no-model", "--quiet", "--out", str(tmp_path / "rep")])  # fmt: skip
    assert code == 2
    assert f"item_id: not in catalog {n_rows:,}" in capsys.readouterr().err


def test_disabling_every_feature_group_is_refused_before_loading(data_dir, tmp_path, capsys):
    # LightGBM used to fail with a traceback once the query groups were built
    from xsell.ranking.features import GROUPS

    code, out, err = _train(capsys, data_dir / "events.csv", data_dir / "catalog.csv", tmp_path / "b",
                            "--disable-feature-groups", *GROUPS)  # fmt: skip
    assert code == 2
    assert "--disable-feature-groups" in _one_line_error(err)
    assert "loaded" not in out and not (tmp_path / "b").exists()


def test_a_bundle_without_an_up_sell_model_serves_over_grpc(data_dir, tmp_path, capsys, serve_cli):
    """The server loads it (its probe and its workers) and answers both strategies over a
    real socket; the response says the up-sell list is not the model's."""
    import grpc

    from xsell.v1 import xsell_pb2 as pb
    from xsell.v1 import xsell_pb2_grpc as pb_grpc

    events, catalog = _flat_prices(data_dir, tmp_path)
    code, _, err = _train(capsys, events, catalog, tmp_path / "b")
    assert code == 0, err
    proc = serve_cli(tmp_path / "b", "--workers", "2", "--no-pin")
    item = pd.read_csv(catalog, dtype=str)["item_id"].iloc[0]
    with grpc.insecure_channel(f"127.0.0.1:{proc.port}") as channel:
        stub = pb_grpc.RecommendServiceStub(channel)
        res = stub.Recommend(pb.RecommendRequest(cart=[pb.CartLine(item_id=item)], limit=5, explain=True),
                             timeout=30)  # fmt: skip
        assert len(res.cross_sell) == 5 and all(r.reasons for r in res.cross_sell)  # the model's, explained
        assert res.fallback and "up_sell: no model in this bundle" in res.fallback_reason
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
        assert "up_sell_valid_ndcg@10" not in info.training_metrics
        assert "cross_sell_valid_ndcg@10" in info.training_metrics
    assert proc.terminate() == 0


def test_segment_features_without_a_users_table_are_warned_about(data_dir, tmp_path, capsys):
    """Turning the segment group on without --users trains on a column that is NaN in
    every row: allowed (the model simply cannot use it), but said."""
    code, out, err = _train(capsys, data_dir / "events.csv", data_dir / "catalog.csv", tmp_path / "b",
                            "--disable-feature-groups", "neighbours", "trend")  # fmt: skip
    assert code == 0, err
    assert "WARNING: the segment features are on but no users table was given (--users)" in out
    code, out, err = _train(capsys, data_dir / "events.csv", data_dir / "catalog.csv", tmp_path / "c")
    assert code == 0, err
    assert "segment features" not in out  # off by default: nothing to say
