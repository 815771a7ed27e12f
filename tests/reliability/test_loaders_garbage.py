"""The data loaders under garbage files: every failure is a DataError that names the
file (and the row / column where one exists), never a bare library traceback."""

from __future__ import annotations

import gzip
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xsell.data.loaders import load_catalog, load_events, load_users
from xsell.errors import DataError

LOADERS = {"catalog": load_catalog, "events": load_events, "users": load_users}
CATALOG = "item_id,category,price\na,x,1.0\nb,y,2.0\n"
EVENTS = "user_id,item_id,timestamp,quantity\nu1,a,2020-01-01T10:00:00,1\nu2,b,1577872800,2\n"


def load(kind: str, path, strict: bool = True):
    return LOADERS[kind](path, strict=strict)


def data_error(kind: str, path, strict: bool = True) -> DataError:
    with pytest.raises(DataError) as info:
        load(kind, path, strict)
    assert info.value.file == str(path)
    assert str(info.value).startswith(str(path))
    return info.value


# (file name, bytes, table, expected row, expected column, words in the message)
CSV_CASES = [
    ("junk.csv", random.Random(1).randbytes(3000), "catalog", 1, None, "not valid UTF-8"),
    ("latin1.csv", "item_id,category,price\na,x,1\ncafé,y,2\n".encode("latin-1"), "catalog", 3, "item_id", "Latin-1"),
    ("latin1-late.csv", ("item_id,category,price\n" + "a,x,1\n" * 5000 + "b,caté,2\n").encode("latin-1"),
     "catalog", 5002, "category", "not valid UTF-8"),
    ("utf16.csv", CATALOG.encode("utf-16"), "catalog", 1, None, "UTF-16"),
    # found by fuzz/fuzz_loaders.py: a bare "\r" on the bad line broke the column lookup
    ("cr-latin1.csv", b"user_id,seg\nu1,caf\xe9\rx\n", "users", 2, "seg", "not valid UTF-8"),
    ("empty.csv", b"", "events", 1, None, "file is empty"),
    ("blank-lines.csv", b"\n\n\n", "events", 1, None, "file is empty"),
    ("ragged.csv", b"item_id,category,price\na,x,1\nb,y,2,extra\n", "catalog", 3, None, "expected 3 fields, found 4"),
    ("short-row.csv", b"user_id,item_id,timestamp\nu,a,1577872800\nu,b\n", "events", 3, None, "found 2"),
    ("open-quote.csv", b'item_id,category,price\n"a,x,1\nb,y,2\n', "catalog", 2, None, "malformed CSV row"),
    ("wrong-columns.csv", CATALOG.encode(), "events", 1, "user_id", "missing required events column"),
    ("dup-header.csv", b"user_id,user_id\nu,u\n", "users", 1, "user_id", "appears twice"),
    ("nan-price.csv", b"item_id,category,price\na,x,nan\n", "catalog", 2, "price", "not a number"),
    ("inf-price.csv", b"item_id,category,price\na,x,inf\n", "catalog", 2, "price", "finite"),
    ("neg-qty.csv", EVENTS.replace(",2\n", ",-2\n").encode(), "events", 3, "quantity", "> 0"),
    ("bad-time.csv", EVENTS.replace("1577872800", "yesterday").encode(), "events", 3, "timestamp", "ISO-8601"),
    ("not-gzip.csv.gz", b"plain text, not gzip", "catalog", None, None, "cannot read file"),
    ("cut-gzip.csv.gz", gzip.compress(CATALOG.encode() * 200)[:40], "catalog", None, None, "cannot read"),
    ("binary.parquet", random.Random(2).randbytes(900), "events", None, None, "cannot read Parquet"),
    ("csv-text.parquet", EVENTS.encode(), "events", None, None, "cannot read Parquet"),
    ("empty.parquet", b"", "users", None, None, "cannot read Parquet"),
    ("table.xlsx", b"PK\x03\x04", "catalog", None, None, "unsupported file type"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "data", "kind", "row", "column", "words"), CSV_CASES, ids=[c[0] for c in CSV_CASES]
)
def test_garbage_files_name_file_row_and_column(tmp_path, name, data, kind, row, column, words):
    path = tmp_path / name
    path.write_bytes(data)
    err = data_error(kind, path)
    assert (err.row, err.column) == (row, column), str(err)
    assert words in str(err), str(err)


def write_parquet(path, **columns):
    pq.write_table(pa.table(columns), path)
    return path


PARQUET_CASES = [
    # (table, columns, row, column, words)
    ("catalog", dict(item_id=["a", "b"], category=["x", "y"], price=["1.5", "cheap"]), 2, "price", "not a number"),
    ("catalog", dict(item_id=["a"], category=[True], price=pa.array([b"\x01"], pa.binary())), 1, "price", "not a number"),
    ("catalog", dict(item_id=[[1, 2]], category=["x"], price=[1.0]), None, "item_id", "list<"),
    ("catalog", dict(item_id=["a"], category=[{"k": 1}], price=[1.0]), None, "category", "struct<"),
    ("events", dict(user_id=["u", "v"], item_id=["a", "b"], timestamp=[1.0e9, 1.0e13]), 2, "timestamp", "1970..2099"),
    ("events", dict(user_id=["u"], item_id=["a"], timestamp=[True]), 1, "timestamp", "ISO-8601"),
    ("events", dict(user_id=pa.array([b"ok", b"\xff\xfe"], pa.binary()), item_id=["a", "b"], timestamp=[1.6e9, 1.6e9]),
     2, "user_id", "not UTF-8"),
    ("users", dict(user_id=["u", "v"], segment=pa.array([b"a", b"\xc3"], pa.binary())), 2, "segment", "not UTF-8"),
    ("users", dict(user_id=["u", "u"], segment=["a", "b"]), 2, "user_id", "duplicate"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "columns", "row", "column", "words"), PARQUET_CASES)
def test_parquet_with_wrong_types_names_row_and_column(tmp_path, kind, columns, row, column, words):
    path = write_parquet(tmp_path / f"{kind}.parquet", **columns)
    err = data_error(kind, path)
    assert (err.row, err.column) == (row, column), str(err)
    assert words in str(err), str(err)


def test_lenient_mode_counts_bad_rows_instead_of_losing_them(tmp_path):
    path = tmp_path / "events.csv"
    path.write_bytes(EVENTS.encode() + b"u3,c\nu4,d,notatime,1\nu5,e,1577872800,0\n")
    from xsell.data.contract import CleaningReport

    report = CleaningReport()
    out = load_events(path, strict=False, report=report)
    assert len(out) == 2
    assert report.rows_read["events"] == 5
    assert report.dropped["events"] == {
        "row: wrong number of fields": 1, "timestamp: unparseable": 1, "quantity: not positive": 1,
    }  # fmt: skip


SETTINGS = settings(
    max_examples=60, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)  # fmt: skip


@st.composite
def mangled(draw, base: bytes) -> bytes:
    """A valid file with bytes flipped, inserted, deleted, or cut short."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(
                st.binary(min_size=1, max_size=8)
                | st.sampled_from([b",", b'"', b"\n", b"\r", b"\x00"])
            )
        elif op == "delete":
            del data[i]
        else:
            del data[i:]
    return bytes(data)


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_any_bytes_load_or_give_a_data_error(tmp_path_factory, suffix):
    """Mutated valid files and random bytes, through all three loaders, strict and lenient."""
    d = tmp_path_factory.mktemp("mangled")
    bases = {
        "catalog": CATALOG.encode(),
        "events": EVENTS.encode(),
        "users": b"user_id,age\nu1,30\nu2,40\n",
    }
    if suffix == ".parquet":
        import io

        for kind, text in list(bases.items()):
            import pyarrow.csv as pacsv

            buf = io.BytesIO()
            pq.write_table(pacsv.read_csv(io.BytesIO(text)), buf)
            bases[kind] = buf.getvalue()
    outcomes = {"ok": 0, "error": 0}

    @SETTINGS
    @given(kind=st.sampled_from(sorted(LOADERS)), data=st.data(), strict=st.booleans())
    def run(kind, data, strict):
        raw = data.draw(mangled(bases[kind]) | st.binary(max_size=300))
        path = d / f"{kind}{suffix}"
        path.write_bytes(gzip.compress(raw) if suffix == ".csv.gz" else raw)
        try:
            load(kind, path, strict)
            outcomes["ok"] += 1
        except DataError as exc:
            assert exc.file == str(path) and str(exc).startswith(str(path)), str(exc)
            outcomes["error"] += 1

    run()
    assert outcomes["error"] > 0


# Found by fuzz/fuzz_loaders.py (atheris): corrupt Parquet files that pyarrow reads
# without complaint and that then failed deep inside pyarrow compute or its schema.


def test_parquet_text_that_is_not_utf8_names_row_and_column(tmp_path):
    raw = pa.array([b"u1", b"u\xff2", b"u3"], pa.binary()).view(pa.string())  # unvalidated
    path = tmp_path / "users.parquet"
    pq.write_table(pa.table({"user_id": ["a", "b", "c"], "segment": raw}), path)
    err = data_error("users", path)
    assert (err.row, err.column) == (2, "segment"), str(err)


def test_parquet_column_name_that_is_not_utf8_is_a_data_error(tmp_path):
    path = tmp_path / "users.parquet"
    pq.write_table(pa.table({"user_id": ["a"], "segmentXX": ["x"]}), path, store_schema=False)
    data = path.read_bytes()
    assert b"segmentXX" in data
    path.write_bytes(data.replace(b"segmentXX", b"segment\x93\x94"))
    err = data_error("users", path)
    assert "cannot read Parquet file" in str(err)
