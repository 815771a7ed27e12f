"""Fixtures shared by every test area."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xsell.data.synthetic import generate

# Small enough to generate in well under a second, large enough that the planted
# structure (complements, tiers, upgraders) shows clearly; ~24k events.
SYNTHETIC_PARAMS = dict(n_users=600, n_items=300, n_categories=20, days=60, seed=7)


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh seeded generator per test: results do not depend on test order."""
    return np.random.default_rng(20_240_601)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with events.csv, catalog.csv, users.csv and truth.json (planted truth)
    of a small synthetic shop (`SYNTHETIC_PARAMS`). Treat it as read-only."""
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, **SYNTHETIC_PARAMS, fmt="csv")
    return out
