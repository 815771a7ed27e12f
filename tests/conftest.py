"""Fixtures shared by every test area."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
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


@pytest.fixture(scope="session")
def dataset(synthetic_dir):
    """The synthetic shop loaded through the real loaders."""
    from xsell.data.loaders import load_dataset

    d = Path(synthetic_dir)
    return load_dataset(d / "events.csv", d / "catalog.csv", d / "users.csv")


@pytest.fixture(scope="session")
def truth(synthetic_dir) -> dict:
    """The planted structure of the synthetic shop (complement pairs, tiers, levels)."""
    return json.loads((Path(synthetic_dir) / "truth.json").read_text())


@pytest.fixture(scope="session")
def bundle_root(tmp_path_factory) -> Path:
    """Directory holding the session's trained bundle (ReloadModel may load from it)."""
    return tmp_path_factory.mktemp("bundles")


@pytest.fixture(scope="session")
def bundle_dir(dataset, bundle_root) -> Path:
    """One real bundle trained on the synthetic shop, shared by every test area.

    Small and quick (a few seconds) yet good enough to find the planted structure.
    """
    from xsell.ranking.model import ModelConfig
    from xsell.ranking.train import TrainConfig, train_bundle
    from xsell.retrieval.artifacts import RetrievalConfig

    config = TrainConfig(
        max_queries=600,
        seed=0,
        model=ModelConfig(max_rounds=60, early_stopping_rounds=15, learning_rate=0.15, threads=1),
        retrieval=RetrievalConfig(factors=32, iterations=8),
        compile_models=False,  # tests/ranking/test_compiled_ranker.py compiles a copy
    )
    return train_bundle(dataset, bundle_root / "base", config, log=lambda *_: None)


# ------------------------------------------------------------ `xsell serve` subprocesses

READY = re.compile(
    r"listening on (?P<host>[^ ]+):(?P<port>\d+) workers=(?P<n>\d+) pids=(?P<pids>[\d,]+)"
)


@dataclass
class ServeProcess:
    """A running `xsell serve` (its own session) and the port it listens on."""

    process: subprocess.Popen
    port: int
    pids: list[int]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0, *, group: bool = False) -> int:
        """SIGTERM the supervisor (or, with `group`, every process of its group, as
        systemd does), then wait for it to exit; returns the exit code."""
        if self.process.poll() is None:
            if group:
                os.killpg(self.process.pid, signal.SIGTERM)
            else:
                self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def start_serve(
    bundle: Path, log_path: Path, *args: str, env: dict | None = None, timeout: float = 90.0
) -> ServeProcess:
    """Run `xsell serve --bundle BUNDLE --port 0 ARGS` and wait for its "listening" line."""
    cmd = [
        sys.executable,
        "-m",
        "xsell.cli",
        "serve",
        "--bundle",
        str(bundle),
        "--port",
        "0",
        *args,
    ]
    with open(log_path, "wb") as log_file:
        # its own session: signals to its process group reach it and its workers only
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=log_file, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if not line:
            break  # exited
        match = READY.search(line)
        if match:
            pids = [int(p) for p in match["pids"].split(",")]
            return ServeProcess(proc, int(match["port"]), pids, log_path)
    proc.kill()
    proc.wait()
    raise AssertionError(
        f"`xsell serve` did not start:\n{log_path.read_text(errors='replace')[-4000:]}"
    )


@pytest.fixture
def serve_cli(tmp_path):
    """serve_cli(bundle, *args, env=None, timeout=90) -> ServeProcess once it prints its
    "listening" line. Whatever still runs at teardown gets SIGTERM, then SIGKILL."""
    started: list[ServeProcess] = []

    def start(bundle: Path, *args: str, env: dict | None = None, timeout: float = 90.0):
        log_path = tmp_path / f"serve-{len(started)}.log"
        proc = start_serve(bundle, log_path, *args, env=env, timeout=timeout)
        started.append(proc)
        return proc

    yield start
    for sp in started:
        if sp.process.poll() is None:
            sp.process.terminate()
            try:
                sp.process.wait(20)
            except subprocess.TimeoutExpired:
                sp.process.kill()
                sp.process.wait()
