"""Loader validation: every problem names file, row and column; nothing is lost silently."""

from __future__ import annotations

import builtins
import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xsell.data.contract import CATALOG_COLUMNS, EVENT_COLUMNS, EVENT_GRADES
from xsell.data.loaders import (
    MAX_EXAMPLES,
    fingerprint,
    load_catalog,
    load_dataset,
    load_events,
    load_users,
    write_table,
)
from xsell.errors import DataError

CATALOG = """item_id,category,price,cost,brand,title,in_stock
A,food/dairy/milk,1.50,1.00,private,Milk,true
B,snacks,2.00,1.20,national,Chips,false
C,snacks,3.25,,national,Nuts,yes
"""
EVENTS = """user_id,item_id,timestamp,event_type,quantity,unit_price,basket_id
u1,A,2024-01-02T10:00:00Z,purchase,2,1.40,o1
u1,B,1704189600,view,1,2.00,o1
u2,C,1704189600,cart,1,3.25,o2
u2,A,2024-01-02T11:00:00+01:00,purchase,3,1.50,o2
"""
USERS = """user_id,segment,region
u1,budget,north
u2,premium,south
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def with_cell(text: str, row: int, column: str, value: str) -> str:
    """CSV text with the cell at file row `row` (header = row 1) set to `value`."""
    lines = text.splitlines()
    header = lines[0].split(",")
    cells = lines[row - 1].split(",")
    cells[header.index(column)] = value
    lines[row - 1] = ",".join(cells)
    return "\n".join(lines) + "\n"


def assert_contract_dtypes(ds) -> None:
    ev, cat = ds.events, ds.catalog
    assert list(ev.columns[: len(EVENT_COLUMNS)]) == list(EVENT_COLUMNS)
    assert list(cat.columns[: len(CATALOG_COLUMNS)]) == list(CATALOG_COLUMNS)
    for df, cols in (
        (ev, ("user_id", "item_id", "event_type", "basket_id")),
        (cat, ("item_id", "category", "category_path", "brand", "title")),
    ):
        for c in cols:
            assert df[c].dtype == object, c
            assert all(isinstance(v, str) for v in df[c]), c
    assert ev["timestamp"].dtype == np.int64
    assert ev["quantity"].dtype == np.float64 and ev["unit_price"].dtype == np.float64
    assert cat["price"].dtype == np.float64 and cat["cost"].dtype == np.float64
    assert cat["in_stock"].dtype == bool
    assert cat["item_id"].is_unique
    assert set(ev["event_type"]) <= set(EVENT_GRADES)


# ----------------------------------------------------------------- the happy path


def test_clean_files_load_with_contract_types(tmp_path):
    ds = load_dataset(
        write(tmp_path, "e.csv", EVENTS),
        write(tmp_path, "c.csv", CATALOG),
        write(tmp_path, "u.csv", USERS),
    )
    assert_contract_dtypes(ds)
    assert ds.report.total_dropped() == 0
    assert ds.report.rows_read == {"catalog": 3, "events": 4, "users": 2}
    assert ds.report.rows_kept == ds.report.rows_read
    ev = ds.events
    assert ev["timestamp"].tolist() == [1704189600, 1704189600, 1704189600, 1704189600]
    assert ev["quantity"].tolist() == [2.0, 1.0, 1.0, 3.0]
    assert ev["unit_price"].tolist() == [1.40, 2.00, 3.25, 1.50]
    assert ds.catalog["in_stock"].tolist() == [True, False, True]
    assert np.isnan(ds.catalog["cost"].iloc[2])
    assert ds.users["segment"].tolist() == ["budget", "premium"]


def test_category_path_keeps_leaf_and_full_path(tmp_path):
    text = "item_id,category,price\nA,food/dairy/milk,1\nB,snacks,2\nC,home / kitchen / pans ,3\n"
    cat = load_catalog(write(tmp_path, "c.csv", text))
    assert cat["category"].tolist() == ["milk", "snacks", "pans"]
    assert cat["category_path"].tolist() == ["food/dairy/milk", "snacks", "home / kitchen / pans "]


def test_loaded_catalog_written_back_loads_unchanged(tmp_path):
    cat = load_catalog(write(tmp_path, "c.csv", CATALOG))
    again = load_catalog(write_table(cat, tmp_path / "again.csv"))
    pd.testing.assert_frame_equal(again, cat)


def test_defaults_fill_missing_optional_columns(tmp_path):
    catalog = write(tmp_path, "c.csv", "item_id,category,price\nA,x,1.5\nB,y,4\n")
    # 23:30 at -02:00 is 01:30 UTC the next day: the default basket uses the UTC day.
    events = write(
        tmp_path,
        "e.csv",
        "user_id,item_id,timestamp\nu1,A,2024-01-01T23:30:00-02:00\n"
        "u1,B,2024-01-02T00:10:00Z\nu2,B,1704067200\n",
    )
    ds = load_dataset(events, catalog)
    ev, cat = ds.events, ds.catalog
    assert ev["event_type"].tolist() == ["purchase"] * 3
    assert ev["quantity"].tolist() == [1.0] * 3
    assert ev["unit_price"].tolist() == [1.5, 4.0, 4.0]
    assert ev["basket_id"].tolist() == ["u1@2024-01-02", "u1@2024-01-02", "u2@2024-01-01"]
    assert cat["brand"].tolist() == ["", ""] and cat["title"].tolist() == ["", ""]
    assert cat["in_stock"].tolist() == [True, True]
    assert cat["cost"].isna().all()
    assert ds.report.defaults_filled == {
        "events.event_type": 3,
        "events.quantity": 3,
        "events.unit_price": 3,
        "events.basket_id": 3,
        "catalog.cost": 2,
        "catalog.brand": 2,
        "catalog.title": 2,
        "catalog.in_stock": 2,
    }
    assert_contract_dtypes(ds)


def test_blank_cells_of_optional_columns_get_defaults(tmp_path):
    events = write(
        tmp_path,
        "e.csv",
        "user_id,item_id,timestamp,event_type,quantity,unit_price,basket_id\n"
        "u1,A,1704067200,,,,\nu1,A,1704067200,View,2,1,b\n",
    )
    ds = load_dataset(events, write(tmp_path, "c.csv", CATALOG))
    assert ds.events["event_type"].tolist() == ["purchase", "view"]
    assert ds.events["quantity"].tolist() == [1.0, 2.0]
    assert ds.events["unit_price"].tolist() == [1.5, 1.0]
    assert ds.events["basket_id"].tolist() == ["u1@2024-01-01", "b"]
    assert ds.report.defaults_filled["events.event_type"] == 1


def test_ids_keep_leading_zeros_and_extra_columns_are_kept(tmp_path):
    catalog = write(tmp_path, "c.csv", "item_id,category,price,colour\n0042,x,1,red\n")
    events = write(
        tmp_path, "e.csv", "user_id,item_id,timestamp,channel\n007,0042,1704067200,web\n"
    )
    ds = load_dataset(events, catalog)
    assert ds.events["user_id"].tolist() == ["007"] and ds.events["item_id"].tolist() == ["0042"]
    assert ds.events["channel"].tolist() == ["web"]
    assert ds.catalog["colour"].tolist() == ["red"]


def test_gzip_csv_and_utf8_bom_are_read(tmp_path):
    path = tmp_path / "c.csv.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"\xef\xbb\xbf" + CATALOG.encode())
    cat = load_catalog(path)
    assert cat["item_id"].tolist() == ["A", "B", "C"]


def test_parquet_with_native_types_matches_csv(tmp_path):
    csv_ds = load_dataset(write(tmp_path, "e.csv", EVENTS), write(tmp_path, "c.csv", CATALOG))
    ev = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u2"],
            "item_id": ["A", "B", "C", "A"],
            "timestamp": pd.to_datetime([1704189600] * 4, unit="s"),  # naive = UTC
            "event_type": ["purchase", "view", "cart", "purchase"],
            "quantity": [2, 1, 1, 3],  # int column
            "unit_price": [1.40, 2.00, 3.25, 1.50],
            "basket_id": ["o1", "o1", "o2", "o2"],
        }
    )
    cat = pd.DataFrame(
        {
            "item_id": ["A", "B", "C"],
            "category": ["food/dairy/milk", "snacks", "snacks"],
            "price": [1.5, 2.0, 3.25],
            "cost": [1.0, 1.2, None],
            "brand": ["private", "national", "national"],
            "title": ["Milk", "Chips", "Nuts"],
            "in_stock": [True, False, True],
        }
    )
    pq_ds = load_dataset(
        write_table(ev, tmp_path / "e.parquet"), write_table(cat, tmp_path / "c.pq")
    )
    pd.testing.assert_frame_equal(pq_ds.events, csv_ds.events)
    pd.testing.assert_frame_equal(pq_ds.catalog, csv_ds.catalog)


def test_parquet_saved_index_is_not_an_extra_column(tmp_path):
    cat = pd.DataFrame({"item_id": ["A", "B"], "category": ["x", "y"], "price": [1.0, 2.0]})
    cat.index = pd.Index([10, 20], name="old_index")
    cat.to_parquet(tmp_path / "c.parquet")  # index saved as a column
    assert "old_index" in pq.read_table(tmp_path / "c.parquet").column_names
    loaded = load_catalog(tmp_path / "c.parquet")
    assert list(loaded.columns) == list(CATALOG_COLUMNS)


def test_parquet_nan_is_a_blank_cell(tmp_path):
    nan = float("nan")
    cat = pa.table(
        {
            "item_id": ["A", "B"],
            "category": ["x", "y"],
            "price": [1.0, nan],
            "cost": pa.array([nan, 0.5], type=pa.float64()),
        }
    )
    assert cat.column("cost").null_count == 0  # a real NaN, not a null
    pq.write_table(cat, tmp_path / "c.parquet")
    rep = load_dataset(
        write(tmp_path, "e.csv", "user_id,item_id,timestamp\n"), tmp_path / "c.parquet"
    ).report
    assert rep.dropped["catalog"] == {"price: missing value": 1}
    assert rep.defaults_filled["catalog.cost"] == 1


def test_parquet_integer_ids_become_text(tmp_path):
    cat = pa.table({"item_id": pa.array([10, 11]), "category": ["x", "y"], "price": [1.0, 2.0]})
    pq.write_table(cat, tmp_path / "c.parquet")
    ev = pa.table(
        {
            "user_id": pa.array([7.0, 8.0, None]),  # a NaN-holding id column
            "item_id": pa.array([10, 11, 10]),
            "timestamp": pa.array([1704067200, 1704067201, 1704067202]),
        }
    )
    pq.write_table(ev, tmp_path / "e.parquet")
    ds = load_dataset(tmp_path / "e.parquet", tmp_path / "c.parquet")
    assert ds.report.dropped["events"] == {"user_id: empty id": 1}
    assert ds.catalog["item_id"].tolist() == ["10", "11"]
    assert ds.events["user_id"].tolist() == ["7", "8"]
    assert_contract_dtypes(ds)


# ----------------------------------------------------------------- row-level problems

# (table, column, bad value, report reason). The bad value goes into file row 3.
ROW_CASES = [
    ("catalog", "item_id", "", "item_id: empty id"),
    ("catalog", "item_id", "   ", "item_id: empty id"),
    ("catalog", "category", "", "category: missing value"),
    ("catalog", "category", "food/", "category: empty leaf"),
    ("catalog", "price", "abc", "price: not a number"),
    ("catalog", "price", "", "price: missing value"),
    ("catalog", "price", "-0.01", "price: negative"),
    ("catalog", "price", "inf", "price: not finite"),
    ("catalog", "cost", "-2", "cost: negative"),
    ("catalog", "cost", "cheap", "cost: not a number"),
    ("catalog", "in_stock", "maybe", "in_stock: not a boolean"),
    ("events", "user_id", "", "user_id: empty id"),
    ("events", "item_id", "", "item_id: empty id"),
    ("events", "item_id", "NOPE", "item_id: not in catalog"),
    ("events", "timestamp", "yesterday", "timestamp: unparseable"),
    ("events", "timestamp", "2024-13-45", "timestamp: unparseable"),
    ("events", "timestamp", "", "timestamp: missing value"),
    ("events", "timestamp", "1704189600000", "timestamp: out of range"),
    ("events", "event_type", "like", "event_type: unknown value"),
    ("events", "quantity", "0", "quantity: not positive"),
    ("events", "quantity", "-1", "quantity: not positive"),
    ("events", "quantity", "two", "quantity: not a number"),
    ("events", "unit_price", "-0.5", "unit_price: negative"),
    ("events", "unit_price", "1,5", None),  # an extra field: the row is malformed
    ("events", "unit_price", "n/a", "unit_price: not a number"),
    ("users", "user_id", "", "user_id: empty id"),
]


def _files(tmp_path, table, column, value):
    texts = {"catalog": CATALOG, "events": EVENTS, "users": USERS}
    # Row 3 of the catalog is item B; no event refers to B when the catalog is broken,
    # so the drop does not cascade into the events.
    if table == "catalog":
        texts["events"] = EVENTS.replace(",B,", ",A,")
    texts[table] = with_cell(texts[table], 3, column, value)
    return {t: write(tmp_path, f"{t}.csv", x) for t, x in texts.items()}


@pytest.mark.parametrize(("table", "column", "value", "reason"), ROW_CASES)
def test_row_problem_strict_names_file_row_column(tmp_path, table, column, value, reason):
    files = _files(tmp_path, table, column, value)
    with pytest.raises(DataError) as info:
        load_dataset(files["events"], files["catalog"], files["users"], strict=True)
    err = info.value
    assert err.file == str(files[table]) and err.row == 3
    assert str(files[table]) in str(err) and "row 3" in str(err)
    if reason is not None:
        assert err.column == column and repr(column) in str(err)


@pytest.mark.parametrize(("table", "column", "value", "reason"), ROW_CASES)
def test_row_problem_drops_the_row_and_counts_it(tmp_path, table, column, value, reason):
    files = _files(tmp_path, table, column, value)
    ds = load_dataset(files["events"], files["catalog"], files["users"])
    rep = ds.report
    reason = reason or "row: wrong number of fields"
    assert rep.dropped[table] == {reason: 1}
    assert rep.total_dropped() == 1
    assert rep.rows_kept[table] == rep.rows_read[table] - 1
    (example,) = rep.examples[f"{table}/{reason}"]
    assert str(files[table]) in example and "row 3" in example


def test_report_counts_by_reason_and_caps_examples(tmp_path):
    rows = ["item_id,category,price"]
    rows += [f"N{i},x,-{i + 1}" for i in range(7)]  # 7 negative prices, rows 2..8
    rows += [f"E{i},,1" for i in range(2)]  # 2 empty categories, rows 9..10
    rows += ["Z,x,abc"]  # both not-a-number ...
    rows += [",,-5"]  # ... and a row with three problems counts once (first column: item_id)
    rows += [f"OK{i},x,1" for i in range(3)]
    ds_report = load_dataset(
        write(tmp_path, "e.csv", "user_id,item_id,timestamp\n"),
        write(tmp_path, "c.csv", "\n".join(rows) + "\n"),
    ).report
    assert ds_report.dropped["catalog"] == {
        "price: negative": 7,
        "category: missing value": 2,
        "price: not a number": 1,
        "item_id: empty id": 1,
    }
    assert ds_report.rows_read["catalog"] == 14 and ds_report.rows_kept["catalog"] == 3
    negative = ds_report.examples["catalog/price: negative"]
    assert len(negative) == MAX_EXAMPLES
    assert [f"row {r}," in m for r, m in zip(range(2, 7), negative, strict=True)] == [True] * 5
    assert "row 12" in ds_report.examples["catalog/item_id: empty id"][0]


def test_strict_reports_the_earliest_bad_row(tmp_path):
    text = with_cell(with_cell(EVENTS, 5, "quantity", "0"), 3, "timestamp", "later")
    with pytest.raises(DataError) as info:
        load_events(write(tmp_path, "e.csv", text), strict=True)
    assert (info.value.row, info.value.column) == (3, "timestamp")


def test_parquet_rows_count_from_one(tmp_path):
    cat = pd.DataFrame({"item_id": ["A", "B"], "category": ["x", "y"], "price": [1.0, -2.0]})
    path = write_table(cat, tmp_path / "c.parquet")
    with pytest.raises(DataError) as info:
        load_catalog(path, strict=True)
    assert (info.value.file, info.value.row, info.value.column) == (str(path), 2, "price")


def test_malformed_csv_row_is_counted_with_its_line(tmp_path):
    text = EVENTS + "u3,A,1704189600,view\nu3,A,1704189600,view,1,1.5,o3\n"
    ds = load_dataset(write(tmp_path, "e.csv", text), write(tmp_path, "c.csv", CATALOG))
    assert ds.report.dropped["events"] == {"row: wrong number of fields": 1}
    assert "row 6" in ds.report.examples["events/row: wrong number of fields"][0]
    assert ds.events["basket_id"].tolist()[-1] == "o3"  # the row after it is kept
    with pytest.raises(DataError) as info:
        load_events(write(tmp_path, "e.csv", text), strict=True)
    assert info.value.row == 6


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_rows_are_file_lines_across_empty_lines(tmp_path, newline):
    # the CSV reader skips empty lines: the rows it names must still be the file's lines
    lines = [
        "item_id,category,price",  # line 1
        "A,x,1",  # 2
        "",  # 3
        "B,x,1,9",  # 4: malformed
        "",  # 5
        "",  # 6
        "C,x,-3",  # 7: negative price
        "D,x,4",  # 8
        "D,x,5",  # 9: conflicting duplicate of line 8
    ]
    path = tmp_path / "c.csv"
    path.write_bytes(newline.join([*lines[:-1], ""]).encode())
    report = load_dataset(write(tmp_path, "e.csv", "user_id,item_id,timestamp\n"), path).report
    assert report.rows_read["catalog"] == 4 and report.rows_kept["catalog"] == 2
    assert "row 4:" in report.examples["catalog/row: wrong number of fields"][0]
    assert "row 7," in report.examples["catalog/price: negative"][0]
    with pytest.raises(DataError) as info:
        load_catalog(path, strict=True)
    assert info.value.row == 4
    path.write_bytes(newline.join([*lines, ""]).encode())
    with pytest.raises(DataError) as info:
        load_catalog(path)
    assert info.value.row == 9 and "row 8 has" in str(info.value)


# ----------------------------------------------------------------- each CSV file is read once


@pytest.fixture
def read_once(monkeypatch):
    """`read_once(path)` watches `path`; `read_once.opens[str(path)]` counts its opens.

    The loader opens CSV files with Python's `open` (`gzip.open` calls it too). Each open
    of a watched path is counted and then unlinks the file: the handle still reads (POSIX),
    but any later read of the path, by Python or by pyarrow's C++ reader (which no Python
    wrapper sees), fails. So a loader reading the file twice either fails with "cannot
    read" / file not found, or counts 2 opens."""
    real_open = builtins.open
    opens: dict[str, int] = {}

    def counting_open(file, *args, **kwargs):
        fh = real_open(file, *args, **kwargs)
        key = os.fspath(file) if isinstance(file, (str, os.PathLike)) else None
        if key in opens:
            opens[key] += 1
            os.unlink(key)
        return fh

    monkeypatch.setattr(builtins, "open", counting_open)

    def watch(path: Path) -> Path:
        opens[str(path)] = 0
        return path

    watch.opens = opens
    return watch


def _write_csv(path: Path, data: bytes) -> Path:
    if path.name.lower().endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


READ_ONCE = pytest.mark.skipif(os.name == "nt", reason="unlinks a file that is open")
SUFFIXES = ["c.csv", "c.csv.gz", "c.CSV.GZ"]  # upper case: pyarrow alone missed the gzip


@READ_ONCE
@pytest.mark.parametrize("name", SUFFIXES)
def test_csv_file_is_read_once_rows_still_file_lines(tmp_path, read_once, name):
    # BOM, empty lines (LF and CRLF), a malformed row and a bad value: every use of the
    # bytes (header, parse, empty-line scan, row numbers) comes from the single read
    text = (
        b"\xef\xbb\xbfitem_id,category,price\n"  # 1
        b"A,x,1\n"  # 2
        b"\n"  # 3
        b"B,x,1,9\r\n"  # 4: malformed
        b"\r\n"  # 5
        b"C,x,-3\n"  # 6: negative price
        b"D,x,4\n"  # 7
    )
    path = read_once(_write_csv(tmp_path / name, text))
    report = load_dataset(write(tmp_path, "e.csv", "user_id,item_id,timestamp\n"), path).report
    assert read_once.opens[str(path)] == 1
    assert not path.exists()  # the fixture did unlink it: nothing could read it again
    assert report.rows_read["catalog"] == 4 and report.rows_kept["catalog"] == 2
    assert "row 4:" in report.examples["catalog/row: wrong number of fields"][0]
    assert "row 6," in report.examples["catalog/price: negative"][0]


@READ_ONCE
@pytest.mark.parametrize("name", SUFFIXES)
def test_not_utf8_error_names_row_and_column_without_reading_again(tmp_path, read_once, name):
    # the UTF-8 error path: pyarrow fails, the bad byte is located in the bytes read once
    text = ("item_id,category,price\n" + "a,x,1\n" * 5000 + "b,caté,2\n").encode("latin-1")
    path = read_once(_write_csv(tmp_path / name, text))
    with pytest.raises(DataError) as info:
        load_catalog(path, strict=True)
    assert read_once.opens[str(path)] == 1
    assert (info.value.file, info.value.row, info.value.column) == (str(path), 5002, "category")
    assert "not valid UTF-8" in str(info.value)


@READ_ONCE
@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "file is empty"),
        ("item_id,category,price\n".encode("utf-16"), "UTF-16"),
        (b"item_id,item_id\nA,B\n", "appears twice"),
    ],
)
def test_header_errors_read_the_file_once(tmp_path, read_once, data, words):
    path = read_once(_write_csv(tmp_path / "c.csv", data))
    with pytest.raises(DataError, match=words) as info:
        load_catalog(path)
    assert read_once.opens[str(path)] == 1
    assert (info.value.file, info.value.row) == (str(path), 1)


GZ_BODY = ("item_id,category,price\n" + "".join(f"i{i},c,{i}.5\n" for i in range(3000))).encode()


def _corrupt_deflate() -> bytes:
    data = bytearray(gzip.compress(GZ_BODY, mtime=0))
    data[12] ^= 0xFF  # inside the first deflate block (the gzip header is 10 bytes)
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "cause"),
    [
        (gzip.compress(GZ_BODY, mtime=0)[:-2000], EOFError),  # cut after the header line
        (_corrupt_deflate(), zlib.error),  # escaped the loader as a bare zlib.error before
    ],
    ids=["cut-late", "corrupt-deflate"],
)
def test_broken_gzip_is_a_data_error_naming_the_file(tmp_path, data, cause):
    with pytest.raises(cause):  # the case is the one it claims to be
        gzip.decompress(data)
    path = tmp_path / "c.csv.gz"
    path.write_bytes(data)
    with pytest.raises(DataError, match="cannot read file") as info:
        load_catalog(path)
    assert info.value.file == str(path) and str(info.value).startswith(str(path))


# ----------------------------------------------------------------- fatal problems


@pytest.mark.parametrize(
    ("table", "column"),
    [
        ("events", "user_id"),
        ("events", "item_id"),
        ("events", "timestamp"),
        ("catalog", "item_id"),
        ("catalog", "category"),
        ("catalog", "price"),
        ("users", "user_id"),
    ],
)
def test_missing_required_column_is_fatal(tmp_path, table, column):
    texts = {"catalog": CATALOG, "events": EVENTS, "users": USERS}
    header, rest = texts[table].split("\n", 1)
    texts[table] = header.replace(column, "something_else", 1) + "\n" + rest
    files = {t: write(tmp_path, f"{t}.csv", x) for t, x in texts.items()}
    with pytest.raises(DataError) as info:
        load_dataset(files["events"], files["catalog"], files["users"])
    assert (info.value.file, info.value.row, info.value.column) == (str(files[table]), 1, column)
    assert "missing required" in str(info.value)


def test_missing_column_hint_names_near_miss(tmp_path):
    path = write(tmp_path, "c.csv", "Item_ID,category,price\nA,x,1\n")
    with pytest.raises(DataError, match="found 'Item_ID'"):
        load_catalog(path)


def test_conflicting_duplicate_catalog_id_is_fatal(tmp_path):
    text = CATALOG + "B,snacks,2.50,1.20,national,Chips,false\n"
    path = write(tmp_path, "c.csv", text)
    with pytest.raises(DataError) as info:
        load_catalog(path)
    err = info.value
    assert (err.file, err.row, err.column) == (str(path), 5, "item_id")
    assert "row 3" in str(err) and "price" in str(err) and "'B'" in str(err)


def test_exact_duplicate_catalog_rows_are_merged(tmp_path):
    text = CATALOG + "B,snacks,2.0,1.2,national,Chips,no\nB,snacks,2,1.20,national,Chips,false\n"
    ds = load_dataset(write(tmp_path, "e.csv", EVENTS), write(tmp_path, "c.csv", text))
    assert ds.catalog["item_id"].tolist() == ["A", "B", "C"]
    assert ds.report.duplicates_merged["catalog"] == 2
    assert ds.report.rows_read["catalog"] == 5 and ds.report.rows_kept["catalog"] == 3


def test_conflicting_duplicate_user_is_fatal(tmp_path):
    path = write(tmp_path, "u.csv", USERS + "u1,premium,north\n")
    with pytest.raises(DataError) as info:
        load_users(path)
    assert (info.value.row, info.value.column) == (4, "user_id") and "segment" in str(info.value)


@pytest.mark.parametrize("name", ["c.txt", "c.xlsx", "c.json", "c"])
def test_unsupported_extension_names_the_file(tmp_path, name):
    path = write(tmp_path, name, CATALOG)
    with pytest.raises(DataError) as info:
        load_catalog(path)
    assert info.value.file == str(path) and ".parquet" in str(info.value)


def test_unreadable_files_are_fatal(tmp_path):
    cases = {
        "missing.csv": None,
        "empty.csv": b"",
        "latin1.csv": "item_id,category,price\nA,caf\xe9,1\n".encode("latin-1"),
        "garbage.parquet": b"this is not parquet at all",
        "dupe_header.csv": b"item_id,category,price,price\nA,x,1,2\n",
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(DataError) as info:
            load_catalog(path)
        assert info.value.file == str(path), name
    # found by fuzz/fuzz_loaders.py: a quoted header name running past the first line
    # (which alone is valid UTF-8) into bytes that are not UTF-8 escaped from pyarrow
    path = tmp_path / "quoted_header.csv"
    path.write_bytes(b'"a\n\xff\xfe",b\nx,y\n')
    with pytest.raises(DataError) as info:
        load_catalog(path)
    assert (info.value.file, info.value.row) == (str(path), 1)
    (tmp_path / "adir.csv").mkdir()
    with pytest.raises(DataError, match="directory"):
        load_catalog(tmp_path / "adir.csv")


def test_fingerprint_is_content_hash(tmp_path):
    a = write(tmp_path, "a.csv", "x\n1\n")
    b = write(tmp_path, "b.csv", "x\n2\n")
    fp = fingerprint([a, b, None])
    assert len(fp) == 64
    assert fingerprint([a, b]) == fp
    assert fingerprint([b, a]) != fp
    copy = write(tmp_path, "copy.csv", "x\n1\n")
    assert fingerprint([copy, b]) == fp
    b.write_text("x\n3\n")
    assert fingerprint([a, b]) != fp
    with pytest.raises(DataError):
        fingerprint([tmp_path / "nope.csv"])


# ----------------------------------------------------------------- properties

_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=12,
).filter(lambda s: s.strip() != "")
_leaf = _text.filter(lambda s: "/" not in s and s == s.strip())
_money = st.floats(min_value=0.0, max_value=1e7, allow_nan=False, allow_infinity=False)


@st.composite
def valid_frames(draw):
    items = draw(st.lists(_text, min_size=1, max_size=8, unique=True))
    n = len(items)
    catalog = pd.DataFrame(
        {
            "item_id": pd.Series(items, dtype=object),
            "category": pd.Series(draw(st.lists(_leaf, min_size=n, max_size=n)), dtype=object),
            "price": draw(st.lists(_money, min_size=n, max_size=n)),
            "cost": draw(
                st.lists(st.one_of(st.just(float("nan")), _money), min_size=n, max_size=n)
            ),
            "brand": pd.Series(
                draw(
                    st.lists(st.sampled_from(["", "private", "national"]), min_size=n, max_size=n)
                ),
                dtype=object,
            ),
            "title": pd.Series(
                draw(st.lists(st.one_of(st.just(""), _text), min_size=n, max_size=n)), dtype=object
            ),
            "in_stock": draw(st.lists(st.booleans(), min_size=n, max_size=n)),
        }
    )
    m = draw(st.integers(0, 12))
    events = pd.DataFrame(
        {
            "user_id": pd.Series(draw(st.lists(_text, min_size=m, max_size=m)), dtype=object),
            "item_id": pd.Series(
                draw(st.lists(st.sampled_from(items), min_size=m, max_size=m)), dtype=object
            ),
            "timestamp": np.array(
                draw(st.lists(st.integers(0, 4_102_444_799), min_size=m, max_size=m)),
                dtype=np.int64,
            ),
            "event_type": pd.Series(
                draw(st.lists(st.sampled_from(sorted(EVENT_GRADES)), min_size=m, max_size=m)),
                dtype=object,
            ),
            "quantity": np.array(
                draw(st.lists(st.floats(1e-6, 1e6), min_size=m, max_size=m)), dtype=np.float64
            ),
            "unit_price": np.array(
                draw(st.lists(_money, min_size=m, max_size=m)), dtype=np.float64
            ),
            "basket_id": pd.Series(draw(st.lists(_text, min_size=m, max_size=m)), dtype=object),
        }
    )
    return events, catalog


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frames=valid_frames(), fmt=st.sampled_from(["csv", "parquet", "csv.gz"]))
def test_valid_frames_round_trip_unchanged(tmp_path, frames, fmt):
    events, catalog = frames
    ds = load_dataset(
        write_table(events, tmp_path / f"e.{fmt}"),
        write_table(catalog, tmp_path / f"c.{fmt}"),
        strict=True,
    )
    pd.testing.assert_frame_equal(ds.events, events)
    expected = catalog.copy()
    expected.insert(2, "category_path", catalog["category"])
    pd.testing.assert_frame_equal(ds.catalog, expected)
    assert ds.report.total_dropped() == 0


_BAD = {  # column -> values that must each drop the row
    "user_id": ["", " "],
    "timestamp": ["soon", "", "-5", "99999999999999"],
    "event_type": ["buy", "clicked"],
    "quantity": ["0", "-3", "x", "nan"],
    "unit_price": ["-1", "free", "-inf"],
    "item_id": ["unknown-item", ""],
}


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_every_row_is_kept_or_counted(tmp_path, data):
    """Random corruption: the kept rows are exactly the clean ones, the rest are counted."""
    n = data.draw(st.integers(1, 30))
    rows, clean = [], []
    for i in range(n):
        cells = {
            "user_id": f"u{i % 4}",
            "item_id": "ABC"[i % 3],
            "timestamp": str(1704067200 + i),
            "event_type": "view",
            "quantity": "1",
            "unit_price": "2.5",
            "tag": f"t{i}",
        }
        column = data.draw(st.sampled_from([None, *_BAD]))
        if column is not None:
            cells[column] = data.draw(st.sampled_from(_BAD[column]))
        else:
            clean.append(f"t{i}")
        rows.append(",".join(cells.values()))
    header = "user_id,item_id,timestamp,event_type,quantity,unit_price,tag"
    path = write(tmp_path, "e.csv", header + "\n" + "\n".join(rows) + "\n")
    ds = load_dataset(path, write(tmp_path, "c.csv", CATALOG))
    rep = ds.report
    assert ds.events["tag"].tolist() == clean
    assert rep.rows_read["events"] == n
    assert rep.rows_kept["events"] + sum(rep.dropped["events"].values()) == n
