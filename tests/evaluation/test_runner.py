"""`evaluate` end to end on the synthetic shop, and the `xsell evaluate` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xsell.cli import main
from xsell.evaluation.metrics import paired_difference
from xsell.evaluation.runner import MODEL, evaluate
from xsell.evaluation.split import time_split

SMALL = {"test_days": 14, "valid_days": 14, "max_queries": 800, "seed": 0}


def small_config():
    from xsell.ranking.model import ModelConfig
    from xsell.ranking.train import TrainConfig
    from xsell.retrieval.artifacts import RetrievalConfig

    # the conftest bundle's settings: quick, still finds the planted structure
    return TrainConfig(
        label_days=14,
        max_queries=600,
        seed=0,
        model=ModelConfig(max_rounds=60, early_stopping_rounds=15, learning_rate=0.15, threads=1),
        retrieval=RetrievalConfig(factors=32, iterations=8),
    )


@pytest.fixture(scope="module")
def report(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation")
    return out, evaluate(
        dataset, out, **SMALL, config=small_config(), ablations=False, progress=False
    )


def test_model_beats_popularity_on_the_planted_structure(report):
    out, r = report
    per_query = np.load(out / "per_query_ndcg.npz")
    for view in ("cross_sell", "cross_sell_new", "up_sell"):
        v = r["views"][view]
        assert v["queries"] > 100, view
        # paired over the same queries: model - popularity is positive beyond noise
        diff = paired_difference(
            per_query[f"{view}/{MODEL}/ndcg"], per_query[f"{view}/popularity/ndcg"]
        )
        assert diff.lo > 0, (view, diff)
        assert 0 < v["candidate_recall"]["recall"]["mean"] <= 1
    # the planted complements: the model finds a cross-sell in most baskets
    assert r["views"]["cross_sell"]["methods"][MODEL]["hit_rate"]["mean"] > 0.5


def test_model_was_trained_on_pre_test_events_only(report, dataset):
    _, r = report
    split = time_split(dataset.events, test_days=SMALL["test_days"], valid_days=SMALL["valid_days"])
    manifest = json.loads((Path(r["bundles"][MODEL]) / "manifest.json").read_text())
    # end_timestamp = last training event + 1: no test-period row reached train_bundle
    assert manifest["data"]["end_timestamp"] <= split.test_start + 1
    assert manifest["data"]["events"] == len(split.train)


def test_report_files(report):
    out, r = report
    md = (out / "report.md").read_text()
    for text in ("Cross-sell, all relevant items", "items new to the shopper", "Up-sell", "tuned blend", "model",
                 "Candidate recall", "Targets"):  # fmt: skip
        assert text in md, text
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["views"]["up_sell"]["queries"] == r["views"]["up_sell"]["queries"]
    assert "uplift" in on_disk["views"]["up_sell"]["methods"][MODEL]
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    per_query = np.load(out / "per_query_ndcg.npz")
    assert len(per_query[f"cross_sell/{MODEL}/ndcg"]) == r["views"]["cross_sell"]["queries"]
    # every paired difference is over the same queries as the methods
    v = r["views"]["cross_sell"]
    assert all(d["ndcg"]["n"] == v["queries"] for d in v["paired_vs_best"].values())


def test_cli_baselines_only(synthetic_dir, tmp_path, capsys):
    d = Path(synthetic_dir)
    code = main(["evaluate", "--events", str(d / "events.csv"), "--catalog", str(d / "catalog.csv"),
                 "--users", str(d / "users.csv"), "--test-days", "14", "--valid-days", "14",
                 "--max-queries", "300", "--no-model", "--quiet", "--out", str(tmp_path / "rep")])  # fmt: skip
    assert code == 0
    r = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert r["views"]["cross_sell"]["queries"] == 300
    assert MODEL not in r["views"]["cross_sell"]["methods"]
    assert r["views"]["cross_sell"]["best_baseline"] in r["views"]["cross_sell"]["baselines"]


def test_cli_errors_name_the_problem(synthetic_dir, tmp_path, capsys):
    d = Path(synthetic_dir)
    code = main(["evaluate", "--events", str(tmp_path / "missing.csv"), "--catalog", str(d / "catalog.csv"),
                 "--out", str(tmp_path / "rep")])  # fmt: skip
    assert code == 2
    assert "missing.csv" in capsys.readouterr().err
    # a history too short for the requested periods
    code = main(["evaluate", "--events", str(d / "events.csv"), "--catalog", str(d / "catalog.csv"),
                 "--test-days", "40", "--valid-days", "40", "--no-model", "--quiet", "--out", str(tmp_path / "rep")])  # fmt: skip
    assert code == 2
    assert "nothing left to train on" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(
            [
                "evaluate",
                "--events",
                "e.csv",
                "--catalog",
                "c.csv",
                "--test-days",
                "0",
                "--out",
                "x",
            ]
        )


def test_worker_processes_give_the_same_answers(dataset, bundle_dir):
    from xsell.evaluation.model import ModelClient, RankerSpec, candidate_recall, model_rankings
    from xsell.evaluation.queries import build_history, cross_sell_queries, new_to_shopper

    split = time_split(dataset.events, test_days=14, valid_days=14)
    history = build_history(split.train, dataset.catalog)
    qs = new_to_shopper(cross_sell_queries(split.test, history, max_queries=60, seed=1), history)
    spec = RankerSpec(str(bundle_dir))
    with ModelClient(1) as local, ModelClient(2) as pool:
        a = model_rankings(local, spec, qs, history)
        b = model_rankings(pool, spec, qs, history)
        ra, na = candidate_recall(local, spec, qs, history)
        rb, nb = candidate_recall(pool, spec, qs, history)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(na, nb)
    np.testing.assert_allclose(ra, rb)
    assert (a[:, 0] >= 0).mean() > 0.9  # the model answers nearly every query with a known item
    # exclude_purchased is on in this view: nothing the shopper bought in training comes back
    bought = history.user_items[qs.user].toarray() > 0
    ranked = np.where(a >= 0, a, 0)
    assert not np.take_along_axis(bought, ranked, axis=1)[a >= 0].any()


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("xsell evaluate: error: "), err
    return lines[0]


def test_cli_period_errors_name_the_events_file(synthetic_dir, tmp_path, capsys):
    events = Path(synthetic_dir) / "events.csv"
    code = main(["evaluate", "--events", str(events), "--catalog", str(Path(synthetic_dir) / "catalog.csv"),
                 "--test-days", "100", "--no-model", "--quiet", "--out", str(tmp_path / "rep")])  # fmt: skip
    assert code == 2
    line = _one_line_error(capsys.readouterr().err)
    assert str(events) in line and "--test-days" in line
    assert not (tmp_path / "rep").exists()  # bad input leaves no empty report directory behind


def test_cli_out_that_is_a_file_is_a_one_line_error(synthetic_dir, tmp_path, capsys):
    d = Path(synthetic_dir)
    a_file = tmp_path / "afile"
    a_file.write_text("keep me")
    code = main(["evaluate", "--events", str(d / "events.csv"), "--catalog", str(d / "catalog.csv"),
                 "--no-model", "--quiet", "--out", str(a_file)])  # fmt: skip
    assert code == 2
    assert str(a_file) in _one_line_error(capsys.readouterr().err)
    assert a_file.read_text() == "keep me"


def test_cli_too_little_data_for_the_model_is_a_one_line_error(synthetic_dir, tmp_path, capsys):
    import pandas as pd

    d = Path(synthetic_dir)
    # no basket with two items: the baselines run, the ranker has no cross-sell query
    events = tmp_path / "single.csv"
    pd.read_csv(d / "events.csv", dtype=str).drop_duplicates("basket_id").to_csv(events, index=False)
    code = main(["evaluate", "--events", str(events), "--catalog", str(d / "catalog.csv"), "--test-days", "14",
                 "--valid-days", "14", "--max-queries", "200", "--no-ablations", "--quiet",
                 "--out", str(tmp_path / "rep")])  # fmt: skip
    assert code == 2
    line = _one_line_error(capsys.readouterr().err)
    assert str(events) in line and "too little data" in line and "--valid-days" in line
    assert not (tmp_path / "rep" / "report.md").exists()
