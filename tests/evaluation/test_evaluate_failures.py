"""`xsell evaluate` runs that fail: an earlier report in --out stays exactly as it was,
the failed run leaves nothing of its own there, and the error says that no report was
written (so the earlier one cannot pass for the failed run's result)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from xsell.cli import main

PERIODS = ["--test-days", "14", "--valid-days", "14", "--quiet"]
REPORT = {"report.md", "report.json", "report.png", "per_query_ndcg.npz"}


def evaluate(data: Path, out: Path, *flags: str, events: Path | None = None) -> int:
    events = events or data / "events.csv"
    return main(["evaluate", "--events", str(events), "--catalog", str(data / "catalog.csv"),
                 *PERIODS, *flags, "--out", str(out)])  # fmt: skip


def snapshot(out: Path) -> dict[str, bytes | None]:
    """Every path under `out` (hidden ones too) with its bytes (None: a directory)."""
    return {
        str(p.relative_to(out)): p.read_bytes() if p.is_file() else None
        for p in sorted(out.rglob("*"))
    }


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("xsell evaluate: error: "), err
    return lines[0]


@pytest.fixture
def earlier_report(synthetic_dir, tmp_path, capsys) -> Path:
    """--out holding the report of a good run (baselines only, --max-queries 300)."""
    out = tmp_path / "rep"
    assert evaluate(Path(synthetic_dir), out, "--no-model", "--max-queries", "300") == 0
    capsys.readouterr()
    assert {p.name for p in out.iterdir()} == REPORT  # no temporary file left
    return out


def invalid_events(synthetic_dir: Path, tmp_path: Path) -> Path:
    events = pd.read_csv(synthetic_dir / "events.csv", dtype=str)
    events["timestamp"] = "not a time"  # every row dropped on loading
    path = tmp_path / "invalid.csv"
    events.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("failure", ["all event rows invalid", "--test-days beyond the data"])
def test_a_failed_run_leaves_the_earlier_report_and_says_it_is_earlier(
    failure, earlier_report, synthetic_dir, tmp_path, capsys
):
    data, out = Path(synthetic_dir), earlier_report
    before = snapshot(out)
    if failure == "all event rows invalid":
        code = evaluate(data, out, "--no-model", events=invalid_events(data, tmp_path))
    else:
        code = evaluate(data, out, "--no-model", "--test-days", "100")
    assert code == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.endswith(f"no new report was written; the report in {out} is from an earlier run")
    assert snapshot(out) == before


def test_a_directory_in_the_way_fails_before_any_file_is_replaced(
    earlier_report, synthetic_dir, capsys
):
    """Before: report.json and report.md of the failed run replaced the earlier ones, then
    writing report.png failed; a report half from each run."""
    out = earlier_report
    (out / "report.png").unlink()
    (out / "report.png").mkdir()
    before = snapshot(out)
    code = evaluate(Path(synthetic_dir), out, "--no-model", "--max-queries", "200")
    assert snapshot(out) == before
    assert json.loads((out / "report.json").read_text())["protocol"]["max_queries"] == 300
    assert code == 2
    line = one_line_error(capsys.readouterr().err)
    assert str(out / "report.png") in line and "a directory is in the way" in line
    assert "no new report was written" in line


def test_a_run_failing_mid_way_leaves_no_directory_behind(synthetic_dir, tmp_path, capsys):
    """The model fails after the baselines ran (no basket with two items: no cross-sell
    query to train on); the --out this run created goes, temporary files and all."""
    data = Path(synthetic_dir)
    events = tmp_path / "single.csv"
    pd.read_csv(data / "events.csv", dtype=str).drop_duplicates("basket_id").to_csv(events, index=False)
    out = tmp_path / "new" / "rep"
    code = evaluate(data, out, "--max-queries", "200", "--no-ablations", events=events)
    assert code == 2
    assert not out.exists()
    line = one_line_error(capsys.readouterr().err)
    assert "too little data" in line and line.endswith(f"no report was written to {out}")


def test_an_out_it_cannot_write_in_is_named_not_the_temporary_directory(synthetic_dir, tmp_path, capsys):
    """--out exists, but no file can be made in it: here because its path is a few bytes
    short of PATH_MAX (a real OS failure that root gets too, unlike a read-only mode).
    Before: the error named `--out/.evaluate-tmp-XXXX`, a path the user never gave."""
    limit = os.pathconf(tmp_path, "PC_PATH_MAX")
    out = tmp_path
    while len(str(out)) < limit - 16:  # room for --out itself, none for a name inside it
        out = out / ("d" * min(200, limit - 16 - len(str(out))))
    out.mkdir(parents=True)
    code = evaluate(Path(synthetic_dir), out, "--no-model", "--max-queries", "200")
    assert code == 2
    line = one_line_error(capsys.readouterr().err)
    assert "cannot write the report directory (--out)" in line, line
    assert str(out) in line and ".evaluate-tmp" not in line


def test_bundles_the_new_report_does_not_name_are_removed(synthetic_dir, tmp_path, capsys):
    """An earlier run with ablations left bundles/no_price_features and friends; a run
    without them replaced the report but left those bundles beside it, so bundles/ held
    models the report says nothing about. Before the fix the stale ones stayed."""
    out = tmp_path / "rep"
    earlier = {"no_price_features", "no_complement_features"}
    for name in earlier:  # what a run with ablations leaves (only the names matter here)
        (out / "bundles" / name).mkdir(parents=True)
        (out / "bundles" / name / "manifest.json").write_text("{}")
    (out / "bundles" / "not_ours").mkdir()  # a directory the evaluator never writes
    code = evaluate(Path(synthetic_dir), out, "--max-queries", "200", "--no-ablations")
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert {Path(p).name for p in report["bundles"].values()} == {"model"}
    assert {p.name for p in (out / "bundles").iterdir()} == {"model", "not_ours"}
    assert {p.name for p in out.iterdir()} == REPORT | {"bundles"}  # no temporary left


def test_a_run_without_a_model_removes_the_earlier_models_bundle(earlier_report, synthetic_dir, capsys):
    out = earlier_report
    (out / "bundles" / "model").mkdir(parents=True)
    code = evaluate(Path(synthetic_dir), out, "--no-model", "--max-queries", "200")
    assert code == 0, capsys.readouterr().err
    assert {p.name for p in out.iterdir()} == REPORT  # the emptied bundles/ went too
