"""Load and validate the three input tables (DESIGN.md section 1).

Files are CSV (``.csv``, ``.csv.gz``) or Parquet (``.parquet``, ``.pq``), chosen by
extension. Every problem names the file, the row and the column.

Row numbers (``DataError.row`` and the report examples) are what a person sees:

* CSV: the header is row 1, so the first data row is row 2, i.e. the line number in
  the file (it drifts only if a quoted field spans several lines).
* Parquet: the first data row is row 1 (there is no header line).

Policy:

* *fatal* (always ``DataError``): unreadable or unsupported file, missing required
  column, duplicate id (catalog ``item_id``, users ``user_id``) whose rows differ.
* *row-level* (bad value, empty id, unknown item, CSV row with the wrong number of
  fields): the row is dropped and counted in the ``CleaningReport`` by table and
  reason, with up to ``MAX_EXAMPLES`` messages per reason. With ``strict=True`` the
  first such problem (lowest row) raises ``DataError`` instead.
* exact duplicate catalog/users rows are merged and counted in ``duplicates_merged``.

Report keys: ``report.dropped[table]["<column>: <reason>"]`` (e.g. ``"price: negative"``,
``"row: wrong number of fields"``) and ``report.examples["<table>/<column>: <reason>"]``.
CSV columns beyond the contract are kept as text; Parquet ones keep their type.

Everything is vectorised (pyarrow CSV reader, numpy masks): Ta-Feng's 817k events
load in about a second and a half.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from xsell.data.contract import (
    CATALOG_COLUMNS,
    EVENT_COLUMNS,
    EVENT_GRADES,
    CleaningReport,
    Dataset,
)
from xsell.errors import DataError

__all__ = [
    "MAX_EXAMPLES",
    "SUPPORTED_SUFFIXES",
    "cannot_write",
    "default_basket_ids",
    "fingerprint",
    "load_catalog",
    "load_dataset",
    "load_events",
    "load_users",
    "write_table",
]

SUPPORTED_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
MAX_EXAMPLES = 5
# Epoch seconds outside [1970, 2100) are almost always milliseconds or garbage.
_TS_MIN, _TS_MAX = 0, 4_102_444_800
_DAY = 86_400
_TRUE = {"true", "t", "yes", "y", "1", "1.0"}
_FALSE = {"false", "f", "no", "n", "0", "0.0"}

EVENTS_REQUIRED = ("user_id", "item_id", "timestamp")
CATALOG_REQUIRED = ("item_id", "category", "price")
USERS_REQUIRED = ("user_id",)


# --------------------------------------------------------------------------- reading


def _file_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise DataError(
        f"unsupported file type; use one of {', '.join(SUPPORTED_SUFFIXES)}", file=str(path)
    )


@dataclass
class _Raw:
    """A table as read: columns untouched (CSV: all strings), plus file row numbers."""

    file: str
    fmt: str
    columns: dict[str, pa.ChunkedArray]
    rows: np.ndarray  # file row number of each data row (see module doc)
    malformed: list[tuple[int, str]] = field(default_factory=list)  # (row, message)

    @property
    def n(self) -> int:
        return len(self.rows)


_BOMS = {
    b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32",
    b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16",
}  # fmt: skip


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _read_bytes(path: Path) -> bytes:
    """The whole content of a CSV file (decompressed if .gz): the only time it is read.

    Header, parse, empty-line scan and the UTF-8 error locator all work on these bytes.
    (Reading it here and again in pyarrow cost a second read, and for .gz a second
    decompression; pyarrow also missed the compression of an upper-case ``.GZ``.)
    """
    try:
        with _open_bytes(path) as fh:
            return fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: corrupt deflate data in a .gz
        raise DataError(f"cannot read file: {exc}", file=str(path)) from exc


def _not_utf8(
    path: Path, data: bytes, exc: UnicodeDecodeError, header: list[str] | None
) -> DataError:
    """A DataError naming the row (line) and, when the header is known, the column of
    the first byte that is not UTF-8."""
    for bom, name in _BOMS.items():
        if data.startswith(bom):
            return DataError(f"file is {name} text; save it as UTF-8", file=str(path), row=1)
    start = exc.start
    row = data.count(b"\n", 0, start) + 1
    line_start = data.rfind(b"\n", 0, start) + 1
    line_end = data.find(b"\n", start)
    line = data[line_start : line_end if line_end >= 0 else len(data)]
    column = None
    if header is not None:
        try:  # best effort: a stray "\r" or quote on that line only costs the column name
            fields = next(csv.reader(io.StringIO(line.decode("utf-8", "replace"), newline="")), [])
        except csv.Error:
            fields = []
        bad = [j for j, f in enumerate(fields) if "\ufffd" in f]
        if bad and bad[0] < len(header):
            column = header[bad[0]]
    return DataError(
        f"file is not valid UTF-8 text: byte 0x{data[start]:02x} at offset {start} "
        f"(a binary file, or another encoding such as Latin-1: save it as UTF-8)",
        file=str(path),
        row=row,
        column=column,
    )


def _csv_header(path: Path, data: bytes) -> list[str]:
    """The header (first line, at most 1 MiB of it) of CSV content `data`."""
    end = data.find(b"\n", 0, 1 << 20) + 1  # as readline(1 << 20): up to 1 MiB, "\n" kept
    first = data[: end or 1 << 20]
    try:
        # incremental: a multi-byte character cut by the 1 MiB read is not an error
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(first, final=False)
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, first, exc, None) from None
    try:
        # newline="": "\r" alone ends a line too (old Mac files), as in the CSV reader
        header = next(csv.reader(io.StringIO(text, newline="")), None)
    except csv.Error as exc:
        raise DataError(f"cannot read the header line: {exc}", file=str(path), row=1) from exc
    if not header or header == [""]:
        raise DataError(
            "file is empty (expected a header line with column names)", file=str(path), row=1
        )
    return header


def _locate_utf8_error(path: Path, data: bytes, header: list[str]) -> DataError | None:
    """Find the first non-UTF-8 byte of CSV content `data` (only called once parsing
    failed; works on the bytes already read, the file is not read again)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _not_utf8(path, data, exc, header)
    return None


def _read(path: str | Path) -> _Raw:
    path = Path(path)
    fmt = _file_format(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "file not found"
        raise DataError(what, file=str(path))
    if fmt == "parquet":
        try:
            table = pq.read_table(path)
            names = table.column_names
            meta = table.schema.pandas_metadata or {}
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"cannot read Parquet file: {exc}", file=str(path)) from exc
        except (UnicodeDecodeError, ValueError) as exc:  # a corrupt schema (e.g. a name not UTF-8)
            raise DataError(
                f"cannot read Parquet file: corrupt schema ({exc})", file=str(path)
            ) from exc
        _check_unique_names(names, path)
        for i, name in enumerate(names):
            _check_valid(table.column(i), name, path)
        # A pandas index saved with the frame is not data: leave it out.
        index_cols = {c for c in meta.get("index_columns", []) if isinstance(c, str)}
        names = [n for n in names if n not in index_cols]
        return _Raw(
            str(path), fmt, {n: table.column(n) for n in names}, np.arange(1, table.num_rows + 1)
        )

    data = _read_bytes(path)  # the file's only read, also for the error messages below
    header = _csv_header(path, data)
    _check_unique_names(header, path)
    bad: list[tuple[int | None, str]] = []

    def on_bad_row(row: pacsv.InvalidRow) -> str:
        text = row.text if len(row.text) <= 80 else row.text[:77] + "..."
        bad.append(
            (
                row.number,
                f"expected {row.expected_columns} fields, found {row.actual_columns}: {text!r}",
            )
        )
        return "skip"

    try:
        table = pacsv.read_csv(
            pa.BufferReader(data),  # zero-copy over `data`, not the path: no second read
            # Single-threaded so pyarrow reports the line number of bad rows (still ~0.3 s
            # for Ta-Feng's 64 MB).
            read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(
                newlines_in_values=True, invalid_row_handler=on_bad_row
            ),
            # Everything as text: we parse ourselves so each bad cell gets its own message
            # and ids like "0012" keep their leading zeros.
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in header}, strings_can_be_null=False
            ),
        )
    except (OSError, pa.ArrowException) as exc:
        msg = str(exc)
        if "UTF8" in msg or "utf8" in msg.lower():
            located = _locate_utf8_error(path, data, header)
            if located is not None:
                raise located from None
            msg = f"file is not valid UTF-8 text ({msg})"
        raise DataError(f"cannot read CSV file: {msg}", file=str(path)) from exc
    try:
        names = table.column_names
    except UnicodeDecodeError:  # a quoted name ran past the first line into non-UTF-8 bytes
        raise DataError(
            "cannot read the header line: a column name is not valid UTF-8 text",
            file=str(path),
            row=1,
        ) from None
    n_total = table.num_rows + len(bad)
    # Data record i (0-based) sits on row i + 2: the header is row 1.
    bad_rows = [num if num is not None else -1 for num, _ in bad]
    rows = np.arange(2, n_total + 2)
    if bad:
        rows = np.setdiff1d(rows, np.asarray(bad_rows), assume_unique=True)[: table.num_rows]
    malformed = [(r, m) for r, (_, m) in zip(bad_rows, bad, strict=True)]
    empty = _empty_lines(data)
    if len(empty):  # the reader skips empty lines and numbers the rest: back to file lines
        rows = _file_lines(rows, empty)
        malformed = [(int(_file_lines(r, empty)) if r >= 0 else r, m) for r, m in malformed]
    return _Raw(str(path), fmt, {n: table.column(n) for n in names}, rows, malformed)


_EMPTY_LINE = re.compile(rb"\n\r?\n")


def _empty_lines(data: bytes) -> np.ndarray:
    """Sorted numbers (1-based) of the empty lines of CSV content `data`: nothing before
    LF or CRLF."""
    # the usual case: none, and no scan. One regex pass finds "\n\n" or "\n\r\n" about
    # 3x faster than two `in` tests (Ta-Feng's 69 MB: 0.03 s against 0.11 s).
    if _EMPTY_LINE.search(data) is None:
        return np.zeros(0, dtype=np.int64)
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == ord("\n"))
    starts = np.concatenate([[0], ends[:-1] + 1])
    empty = (ends == starts) | ((ends == starts + 1) & (buf[np.maximum(ends - 1, 0)] == ord("\r")))
    return np.flatnonzero(empty).astype(np.int64) + 1


def _file_lines(rows, empty: np.ndarray):
    """Row numbers counted without the `empty` lines (as the CSV reader numbers rows) ->
    line numbers in the file."""
    # the first row after empty line empty[j] (0-based j) is numbered empty[j] - j
    return rows + np.searchsorted(empty - np.arange(len(empty)), rows, side="right")


def _check_valid(col: pa.ChunkedArray, name: str, path: Path) -> None:
    """Parquet text columns are not checked for UTF-8 when read (found by fuzz/fuzz_loaders.py:
    a corrupt file then failed deep inside pyarrow compute): check them once here."""
    try:
        col.validate(full=True)
    except pa.ArrowInvalid as exc:
        row = None
        if _is_textual(col) and not pa.types.is_dictionary(col.type):
            values = pc.cast(col, pa.large_binary()).to_pylist()
            for i, value in enumerate(values):
                try:
                    value is None or value.decode("utf-8")
                except UnicodeDecodeError:
                    row = i + 1  # Parquet rows count from 1
                    break
        raise DataError(
            f"invalid values in a Parquet column ({exc})", file=str(path), row=row, column=name
        ) from None


def _check_unique_names(names: list[str], path: Path) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(
                "column appears twice in the header", file=str(path), row=1, column=name
            )
        seen.add(name)


def _require(raw: _Raw, required: Iterable[str], table: str) -> None:
    for col in required:
        if col not in raw.columns:
            near = [c for c in raw.columns if c.strip().lower() == col]
            hint = f" (found {near[0]!r}: names are case- and space-sensitive)" if near else ""
            found = ", ".join(repr(c) for c in list(raw.columns)[:20])
            raise DataError(
                f"missing required {table} column{hint}; columns found: {found}",
                file=raw.file,
                row=1 if raw.fmt == "csv" else None,
                column=col,
            )


# --------------------------------------------------------------------------- problems


@dataclass
class _Problems:
    """Row-level problems of one table; each row is charged to its first problem."""

    raw: _Raw
    table: str
    reasons: list[tuple[str, str | None, Callable[[int], str]]] = field(default_factory=list)
    reason_of: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.reason_of = np.full(self.raw.n, -1, dtype=np.int32)

    def flag(
        self, mask: np.ndarray, column: str | None, reason: str, describe: Callable[[int], str]
    ) -> None:
        """Drop rows where `mask` holds; `describe(i)` words the problem of data row i."""
        new = np.asarray(mask, dtype=bool) & (self.reason_of < 0)
        if new.any():
            self.reasons.append((reason, column, describe))
            self.reason_of[new] = len(self.reasons) - 1

    @property
    def keep(self) -> np.ndarray:
        return self.reason_of < 0

    def _error(self, k: int, i: int) -> DataError:
        _reason, column, describe = self.reasons[k]
        return DataError(describe(i), file=self.raw.file, row=int(self.raw.rows[i]), column=column)

    def finish(self, report: CleaningReport, strict: bool) -> None:
        """Raise the first problem if strict, else count them all into `report`."""
        flagged = np.flatnonzero(self.reason_of >= 0)
        first_row = int(self.raw.rows[flagged[0]]) if len(flagged) else None
        if strict and self.raw.malformed:
            row, msg = min(self.raw.malformed)
            if first_row is None or row < first_row:
                raise DataError(f"malformed CSV row: {msg}", file=self.raw.file, row=row)
        if strict and len(flagged):
            raise self._error(int(self.reason_of[flagged[0]]), int(flagged[0]))
        dropped = report.dropped.setdefault(self.table, {})
        if self.raw.malformed:
            key = "row: wrong number of fields"
            dropped[key] = dropped.get(key, 0) + len(self.raw.malformed)
            ex = report.examples.setdefault(f"{self.table}/{key}", [])
            for row, msg in self.raw.malformed[: MAX_EXAMPLES - len(ex)]:
                ex.append(str(DataError(f"malformed CSV row: {msg}", file=self.raw.file, row=row)))
        counts = np.bincount(self.reason_of[flagged], minlength=len(self.reasons))
        for k, (reason, column, _) in enumerate(self.reasons):
            key = f"{column}: {reason}" if column else reason
            dropped[key] = dropped.get(key, 0) + int(counts[k])
            ex = report.examples.setdefault(f"{self.table}/{key}", [])
            for i in np.flatnonzero(self.reason_of == k)[: max(0, MAX_EXAMPLES - len(ex))]:
                ex.append(str(self._error(k, int(i))))


def _show(value: object) -> str:
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------- parsers


class _NotText(Exception):
    """A column that cannot serve as text; `index` = the first bad data row, if known."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)


def _in_column(raw: _Raw, name: str, parse: Callable, col: pa.ChunkedArray | None = None):
    """`parse(column)`, with a column that cannot be read as text reported as DataError
    naming the file, the column and (when known) the row."""
    try:
        return parse(raw.columns[name] if col is None else col)
    except _NotText as exc:
        row = int(raw.rows[exc.index]) if exc.index is not None else None
        raise DataError(str(exc), file=raw.file, row=row, column=name) from None


def _is_textual(col: pa.ChunkedArray) -> bool:
    t = col.type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t)


def _as_text(col: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_dictionary(col.type):
        col = pc.cast(col, col.type.value_type)
    if _is_textual(col):
        return col
    t = col.type
    if pa.types.is_nested(t) or not (
        pa.types.is_primitive(t) or pa.types.is_decimal(t) or _is_binary(t) or pa.types.is_null(t)
    ):
        raise _NotText(f"column of type {t} cannot be read as text")
    if _is_binary(t):
        try:
            return pc.cast(col, pa.string())
        except pa.ArrowInvalid:
            for i, value in enumerate(col.to_pylist()):
                try:
                    value is None or value.decode("utf-8")
                except UnicodeDecodeError:
                    raise _NotText(
                        f"binary value is not UTF-8 text: {_show(value)}", index=i
                    ) from None
            raise
    if pa.types.is_floating(col.type):
        # Integral floats (e.g. ids from a NaN-holding int column) print without ".0".
        vals = np.asarray(col.to_numpy(), dtype=np.float64)
        missing = np.isnan(vals)
        if (np.floor(vals[~missing]) == vals[~missing]).all() and (
            np.abs(vals[~missing]) < 2**53
        ).all():
            text = np.where(missing, 0, vals).astype(np.int64).astype(str).astype(object)
            return pa.chunked_array([pa.array(text, type=pa.string(), mask=missing)])
    return pc.cast(col, pa.string())


def _text(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(object array of str, blank mask). Null and whitespace-only count as blank."""
    col = _as_text(col)
    blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(col), ""), True).to_numpy(
        zero_copy_only=False
    )
    values = pc.fill_null(col, "").to_numpy(zero_copy_only=False)
    return values.astype(object, copy=False), np.asarray(blank, dtype=bool)


def _numbers(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float64 values, blank mask, unparseable mask). Blank cells hold NaN."""
    t = col.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        vals = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
        # Null and NaN both mean "no value" in a typed column (pandas writes either).
        blank = np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool) | np.isnan(
            vals
        )
        return vals, blank, np.zeros(len(vals), dtype=bool)
    if not _is_textual(col):  # bool, timestamp, ...: not a number
        n = len(col)
        blank = np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        return np.full(n, np.nan), blank, ~blank
    col = _as_text(col)
    blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(col), ""), True).to_numpy(
        zero_copy_only=False
    )
    blank = np.asarray(blank, dtype=bool)
    try:  # fast path: every non-blank cell is a plain number
        vals = pc.cast(pc.if_else(blank, "nan", col), pa.float64()).to_numpy(zero_copy_only=False)
        vals = np.asarray(vals, dtype=np.float64)
    except pa.ArrowInvalid:
        text = pd.Series(pc.fill_null(col, "").to_numpy(zero_copy_only=False), dtype=object)
        vals = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    vals = np.where(blank, np.nan, vals)
    # A literal "nan" is not a number a price can have; blank is handled by the caller.
    unparseable = np.isnan(vals) & ~blank
    return vals, blank, unparseable


def _timestamps(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int64 epoch seconds, blank mask, unparseable mask): ISO-8601 text or epoch seconds."""
    t = col.type
    n = len(col)
    blank = np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        # Naive datetimes are taken as UTC, like ISO text without an offset.
        unit = pa.timestamp("s", tz=t.tz) if pa.types.is_timestamp(t) else pa.timestamp("s")
        secs = pc.cast(pc.cast(col, unit, safe=False), pa.int64())
        vals = np.asarray(pc.fill_null(secs, 0).to_numpy(zero_copy_only=False), dtype=np.float64)
        return np.where(blank, np.nan, vals), blank, np.zeros(n, dtype=bool)
    if not _is_textual(col):
        vals, blank, bad = _numbers(col)
        return vals, blank, bad
    nums, blank, not_num = _numbers(col)
    if not_num.any():
        text = pd.Series(
            pc.fill_null(_as_text(col), "").to_numpy(zero_copy_only=False)[not_num], dtype=object
        )
        parsed = pd.to_datetime(text.str.strip(), format="ISO8601", utc=True, errors="coerce")
        secs = parsed.to_numpy(dtype="datetime64[s]")  # NaT stays NaT
        ok = ~np.isnat(secs)
        iso = np.full(len(text), np.nan)
        iso[ok] = secs[ok].astype(np.int64)
        nums[not_num] = iso
    return nums, blank, np.isnan(nums) & ~blank


def _booleans(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bool values, blank mask, unparseable mask). Accepts true/false, yes/no, 1/0, t/f, y/n."""
    t = col.type
    if pa.types.is_boolean(t):
        blank = np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        vals = np.asarray(pc.fill_null(col, True).to_numpy(zero_copy_only=False), dtype=bool)
        return vals, blank, np.zeros(len(vals), dtype=bool)
    text, blank = _text(col)
    norm = pd.Series(text, dtype=object).str.strip().str.lower()
    is_true = norm.isin(_TRUE).to_numpy()
    is_false = norm.isin(_FALSE).to_numpy()
    return is_true, blank, ~(is_true | is_false | blank)


def _object(values: np.ndarray) -> pd.Series:
    # Explicit object dtype: pandas 3 would otherwise infer its own string dtype.
    return pd.Series(values, dtype=object)


def _extras(raw: _Raw, known: Iterable[str], keep: np.ndarray) -> dict[str, pd.Series]:
    out: dict[str, pd.Series] = {}
    for name, col in raw.columns.items():
        if name in known:
            continue
        if _is_textual(col):
            out[name] = _object(_in_column(raw, name, _text)[0][keep])
        else:
            out[name] = col.to_pandas().iloc[np.flatnonzero(keep)].reset_index(drop=True)
    return out


def _start_report(report: CleaningReport | None, table: str, raw: _Raw) -> CleaningReport:
    report = report if report is not None else CleaningReport()
    report.files[table] = raw.file
    report.rows_read[table] = raw.n + len(raw.malformed)
    report.dropped.setdefault(table, {})
    return report


def _count_default(report: CleaningReport, key: str, n: int) -> None:
    if n:
        report.defaults_filled[key] = report.defaults_filled.get(key, 0) + int(n)


# --------------------------------------------------------------------------- tables


def _check_price(
    probs: _Problems,
    name: str,
    vals: np.ndarray,
    blank: np.ndarray,
    bad: np.ndarray,
    raw_text: Callable[[int], object],
    required: bool,
) -> None:
    probs.flag(bad, name, "not a number", lambda i: f"{name} is not a number: {_show(raw_text(i))}")
    if required:
        probs.flag(blank, name, "missing value", lambda i: f"{name} is empty (required)")
    probs.flag(
        ~blank & ~bad & ~np.isfinite(vals),
        name,
        "not finite",
        lambda i: f"{name} must be finite, got {_show(vals[i])}",
    )
    probs.flag(
        ~blank & (vals < 0),
        name,
        "negative",
        lambda i: f"{name} must be >= 0, got {_show(vals[i])}",
    )


def _cell(raw: _Raw, name: str) -> Callable[[int], object]:
    """Lazy accessor for the original value of a cell (only used to word messages)."""
    return lambda i: raw.columns[name][int(i)].as_py()


def _dedupe(
    df: pd.DataFrame, key: str, raw: _Raw, rows: np.ndarray, table: str, report: CleaningReport
) -> np.ndarray:
    """Mask of rows to keep after merging exact duplicates; a repeated `key` with
    different values is fatal (DataError naming both rows and the first differing column)."""
    keep = np.ones(len(df), dtype=bool)
    dup = df.duplicated(key, keep=False).to_numpy()
    if dup.any():
        sub = df[dup]
        try:
            same = sub.duplicated(keep="first").to_numpy()
        except TypeError:  # unhashable extra column (e.g. lists in Parquet): compare as text
            same = sub.astype(str).duplicated(keep="first").to_numpy()
        exact = sub[~same]
        conflict = exact.duplicated(key, keep=False).to_numpy()
        if conflict.any():
            first_id = exact[key].to_numpy()[np.flatnonzero(conflict)[0]]
            idx = np.flatnonzero(df[key].to_numpy() == first_id)
            a = df.iloc[idx[0]]
            j = next(j for j in idx[1:] if not _rows_equal(a, df.iloc[j]))
            b = df.iloc[j]
            col = next(c for c in df.columns if not _same_value(a[c], b[c]))
            raise DataError(
                f"duplicate {key} {first_id!r} with different values: row {int(rows[idx[0]])} has "
                f"{col}={_show(a[col])}, row {int(rows[j])} has {col}={_show(b[col])}",
                file=raw.file,
                row=int(rows[j]),
                column=key,
            )
        keep[np.flatnonzero(dup)[same]] = False
    report.duplicates_merged[table] = report.duplicates_merged.get(table, 0) + int((~keep).sum())
    return keep


def _same_value(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _rows_equal(a: pd.Series, b: pd.Series) -> bool:
    return all(_same_value(a[c], b[c]) for c in a.index)


def load_catalog(
    path: str | Path, *, strict: bool = False, report: CleaningReport | None = None
) -> pd.DataFrame:
    """Load and validate a catalog file; returns the contract catalog frame.

    Columns out: item_id, category (leaf), category_path, price, cost (NaN = unknown),
    brand, title, in_stock, then any extra columns. A category `a/b/c` keeps the leaf
    `c` (surrounding spaces stripped) in `category` and the full text in
    `category_path`; an input `category_path` column, if present, is kept for rows
    whose category has no `/` (so a loaded catalog written back loads unchanged).
    Row numbers: see the module docstring. `report`, if given, is filled in place.
    """
    raw = _read(path)
    _require(raw, CATALOG_REQUIRED, "catalog")
    report = _start_report(report, "catalog", raw)
    probs = _Problems(raw, "catalog")
    n = raw.n

    item_id, blank = _in_column(raw, "item_id", _text)
    probs.flag(blank, "item_id", "empty id", lambda i: "item_id is empty")
    cat_text, blank = _in_column(raw, "category", _text)
    probs.flag(blank, "category", "missing value", lambda i: "category is empty")
    cat_s = pd.Series(cat_text, dtype=object)
    has_path = cat_s.str.contains("/", regex=False).to_numpy(dtype=bool)
    leaf = cat_text.copy()
    if has_path.any():
        leaf[has_path] = (
            cat_s[has_path].str.rsplit("/", n=1).str[-1].str.strip().to_numpy(dtype=object)
        )
    leaf_blank = has_path & (leaf == "")
    probs.flag(
        leaf_blank,
        "category",
        "empty leaf",
        lambda i: f"category path {_show(cat_text[i])} ends in an empty leaf",
    )
    path_col = cat_text.copy()
    if "category_path" in raw.columns:
        given, given_blank = _in_column(raw, "category_path", _text)
        use = ~has_path & ~given_blank
        path_col[use] = given[use]

    price, blank, bad = _numbers(raw.columns["price"])
    _check_price(probs, "price", price, blank, bad, _cell(raw, "price"), required=True)
    if "cost" in raw.columns:
        cost, cost_blank, bad = _numbers(raw.columns["cost"])
        _check_price(probs, "cost", cost, cost_blank, bad, _cell(raw, "cost"), required=False)
    else:
        cost, cost_blank = np.full(n, np.nan), np.ones(n, dtype=bool)
    if "in_stock" in raw.columns:
        in_stock, stock_blank, bad = _in_column(raw, "in_stock", _booleans)
        probs.flag(
            bad,
            "in_stock",
            "not a boolean",
            lambda i: (
                "in_stock must be true/false (or yes/no, 1/0), "
                f"got {_show(_cell(raw, 'in_stock')(i))}"
            ),
        )
        in_stock = in_stock | stock_blank  # default: in stock
    else:
        in_stock, stock_blank = np.ones(n, dtype=bool), np.ones(n, dtype=bool)
    texts = {}
    for name in ("brand", "title"):
        if name in raw.columns:
            vals, _ = _in_column(raw, name, _text)  # kept verbatim; null -> ""
            texts[name] = (vals, vals == "")
        else:
            texts[name] = (np.full(n, "", dtype=object), np.ones(n, dtype=bool))

    probs.finish(report, strict)
    keep = probs.keep
    df = pd.DataFrame(
        {
            "item_id": _object(item_id[keep]),
            "category": _object(leaf[keep]),
            "category_path": _object(path_col[keep]),
            "price": price[keep],
            "cost": cost[keep],
            "brand": _object(texts["brand"][0][keep]),
            "title": _object(texts["title"][0][keep]),
            "in_stock": in_stock[keep].astype(bool),
        }
    )
    for name, col in _extras(raw, CATALOG_COLUMNS, keep).items():
        df[name] = col
    unique = _dedupe(df, "item_id", raw, raw.rows[keep], "catalog", report)
    df = df[unique].reset_index(drop=True)
    _count_default(report, "catalog.cost", cost_blank[keep][unique].sum())
    _count_default(report, "catalog.in_stock", stock_blank[keep][unique].sum())
    for name, (_, blank) in texts.items():
        _count_default(report, f"catalog.{name}", blank[keep][unique].sum())
    report.rows_kept["catalog"] = len(df)
    return df


def load_users(
    path: str | Path, *, strict: bool = False, report: CleaningReport | None = None
) -> pd.DataFrame:
    """Load the optional users table: user_id (unique) plus segment columns as str.

    Null cells become "". Row numbers: see the module docstring.
    """
    raw = _read(path)
    _require(raw, USERS_REQUIRED, "users")
    report = _start_report(report, "users", raw)
    probs = _Problems(raw, "users")
    user_id, blank = _in_column(raw, "user_id", _text)
    probs.flag(blank, "user_id", "empty id", lambda i: "user_id is empty")
    probs.finish(report, strict)
    keep = probs.keep
    data = {"user_id": _object(user_id[keep])}
    for name in raw.columns:
        if name != "user_id":
            data[name] = _object(_in_column(raw, name, _text)[0][keep])
    df = pd.DataFrame(data)
    df = df[_dedupe(df, "user_id", raw, raw.rows[keep], "users", report)].reset_index(drop=True)
    report.rows_kept["users"] = len(df)
    return df


def load_events(
    path: str | Path,
    *,
    catalog: pd.DataFrame | None = None,
    strict: bool = False,
    report: CleaningReport | None = None,
) -> pd.DataFrame:
    """Load and validate an events file; returns the contract events frame.

    Defaults: event_type "purchase", quantity 1, unit_price = catalog price, basket_id =
    "<user_id>@<YYYY-MM-DD>" (UTC day of the timestamp). timestamp is ISO-8601 text
    (no offset = UTC) or epoch seconds, output as int64 epoch seconds (fractions
    floored); values outside 1970..2099 are rejected (usually milliseconds).
    event_type is matched case-insensitively after stripping spaces.

    With `catalog` (a frame from `load_catalog`), events whose item is not in it are
    dropped and counted; without it that check is skipped and blank unit_price stays
    NaN. Row numbers: see the module docstring. `report`, if given, is filled in place.
    """
    raw = _read(path)
    _require(raw, EVENTS_REQUIRED, "events")
    report = _start_report(report, "events", raw)
    probs = _Problems(raw, "events")
    n = raw.n

    user_id, blank = _in_column(raw, "user_id", _text)
    probs.flag(blank, "user_id", "empty id", lambda i: "user_id is empty")
    item_id, blank = _in_column(raw, "item_id", _text)
    probs.flag(blank, "item_id", "empty id", lambda i: "item_id is empty")

    ts, blank, bad = _timestamps(raw.columns["timestamp"])
    probs.flag(blank, "timestamp", "missing value", lambda i: "timestamp is empty")
    probs.flag(
        bad,
        "timestamp",
        "unparseable",
        lambda i: (
            f"timestamp is neither ISO-8601 nor epoch seconds: {_show(_cell(raw, 'timestamp')(i))}"
        ),
    )
    with np.errstate(invalid="ignore"):
        out_of_range = ~blank & ~bad & ~((ts >= _TS_MIN) & (ts < _TS_MAX))
    probs.flag(
        out_of_range,
        "timestamp",
        "out of range",
        lambda i: (
            f"timestamp {_show(ts[i])} is outside 1970..2099 (milliseconds instead of seconds?)"
        ),
    )

    if "event_type" in raw.columns:
        etype, etype_blank = _in_column(raw, "event_type", _text)
        etype = (
            pd.Series(etype, dtype=object).str.strip().str.lower().to_numpy(dtype=object, copy=True)
        )
        unknown = ~etype_blank & ~pd.Series(etype, dtype=object).isin(list(EVENT_GRADES)).to_numpy()
        probs.flag(
            unknown,
            "event_type",
            "unknown value",
            lambda i: (
                f"event_type must be one of {sorted(EVENT_GRADES)}, "
                f"got {_show(_cell(raw, 'event_type')(i))}"
            ),
        )
        etype[etype_blank] = "purchase"
    else:
        etype, etype_blank = np.full(n, "purchase", dtype=object), np.ones(n, dtype=bool)

    if "quantity" in raw.columns:
        qty, qty_blank, bad = _numbers(raw.columns["quantity"])
        probs.flag(
            bad,
            "quantity",
            "not a number",
            lambda i: f"quantity is not a number: {_show(_cell(raw, 'quantity')(i))}",
        )
        with np.errstate(invalid="ignore"):
            not_pos = ~qty_blank & ~bad & ~((qty > 0) & np.isfinite(qty))
        probs.flag(
            not_pos,
            "quantity",
            "not positive",
            lambda i: f"quantity must be a finite number > 0, got {_show(qty[i])}",
        )
        qty = np.where(qty_blank, 1.0, qty)
    else:
        qty, qty_blank = np.ones(n), np.ones(n, dtype=bool)

    if "unit_price" in raw.columns:
        price, price_blank, bad = _numbers(raw.columns["unit_price"])
        _check_price(
            probs, "unit_price", price, price_blank, bad, _cell(raw, "unit_price"), required=False
        )
    else:
        price, price_blank = np.full(n, np.nan), np.ones(n, dtype=bool)

    if "basket_id" in raw.columns:
        basket, basket_blank = _in_column(raw, "basket_id", _text)
    else:
        basket, basket_blank = np.full(n, "", dtype=object), np.ones(n, dtype=bool)

    if catalog is not None:
        pos = pd.Index(catalog["item_id"].to_numpy(dtype=object)).get_indexer(item_id)
        probs.flag(
            pos < 0,
            "item_id",
            "not in catalog",
            lambda i: f"item {_show(item_id[i])} is not in the catalog",
        )
        fill = price_blank & (pos >= 0)
        price[fill] = catalog["price"].to_numpy(dtype=np.float64)[pos[fill]]

    probs.finish(report, strict)
    keep = probs.keep
    ts_out = np.floor(ts[keep]).astype(np.int64)
    basket_out = basket[keep]
    need = basket_blank[keep]
    if need.any():
        basket_out = basket_out.copy()
        basket_out[need] = default_basket_ids(user_id[keep][need], ts_out[need])
    _count_default(report, "events.event_type", (etype_blank & keep).sum())
    _count_default(report, "events.quantity", (qty_blank & keep).sum())
    if catalog is not None:
        _count_default(report, "events.unit_price", (price_blank & keep).sum())
    _count_default(report, "events.basket_id", int(need.sum()))
    df = pd.DataFrame(
        {
            "user_id": _object(user_id[keep]),
            "item_id": _object(item_id[keep]),
            "timestamp": ts_out,
            "event_type": _object(etype[keep]),
            "quantity": qty[keep].astype(np.float64),
            "unit_price": price[keep].astype(np.float64),
            "basket_id": _object(basket_out),
        }
    )
    for name, col in _extras(raw, EVENT_COLUMNS, keep).items():
        df[name] = col
    report.rows_kept["events"] = len(df)
    return df


def default_basket_ids(user_ids: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Basket id when none is given: "<user_id>@<YYYY-MM-DD>" (UTC calendar day)."""
    days = np.asarray(timestamps, dtype=np.int64) // _DAY
    uniq, inv = np.unique(days, return_inverse=True)  # few distinct days: format each once
    labels = np.array(
        ["@" + str(d) for d in (uniq * _DAY).astype("datetime64[s]").astype("datetime64[D]")],
        dtype=object,
    )
    return np.asarray(user_ids, dtype=object) + labels[inv]


def load_dataset(
    events_path: str | Path,
    catalog_path: str | Path,
    users_path: str | Path | None = None,
    *,
    strict: bool = False,
) -> Dataset:
    """Load catalog, then events checked against it, then the optional users table.

    With `strict=False` bad rows are dropped and counted in `Dataset.report`; with
    `strict=True` the first bad row raises `DataError`. Fatal problems always raise.
    """
    report = CleaningReport()
    catalog = load_catalog(catalog_path, strict=strict, report=report)
    events = load_events(events_path, catalog=catalog, strict=strict, report=report)
    users = load_users(users_path, strict=strict, report=report) if users_path is not None else None
    return Dataset(events=events, catalog=catalog, users=users, report=report)


# --------------------------------------------------------------------------- writing, hashing


def cannot_write(exc: OSError, path: str | Path, what: str) -> DataError:
    """The DataError for an output that cannot be written (`what`: which, e.g. "--out: the
    report"), naming the path; mkdir's "File exists" means a file is in the way."""
    in_the_way = isinstance(exc, (FileExistsError, NotADirectoryError))
    why = "a file is in the way" if in_the_way else exc.strerror or str(exc)
    return DataError(f"cannot write {what}: {why}", file=str(exc.filename or path))


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a frame as CSV or Parquet by extension (the inverse of the loaders)."""
    path = Path(path)
    fmt = _file_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        df.to_parquet(path, index=False)
    else:
        # pandas writes floats with repr(), which reads back bit-exact. Text is always
        # quoted: pandas would leave a bare "\r" inside a value unquoted, splitting the row.
        df.to_csv(
            path,
            index=False,
            quoting=csv.QUOTE_NONNUMERIC,
            compression="gzip" if path.name.lower().endswith(".gz") else None,
        )
    return path


def fingerprint(paths: Iterable[str | Path | None]) -> str:
    """sha256 hex digest over the bytes of the given files, in order (None skipped).

    Each file contributes its length then its bytes, so moving bytes between files
    changes the digest. Names do not count: a renamed copy has the same fingerprint.
    """
    h = hashlib.sha256()
    for p in paths:
        if p is None:
            continue
        p = Path(p)
        try:
            h.update(p.stat().st_size.to_bytes(8, "little"))
            with p.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        except OSError as exc:
            raise DataError(f"cannot read file: {exc}", file=str(p)) from exc
    return h.hexdigest()
