"""Fixtures of the server tests: one real bundle trained on the synthetic data,
real servers on port 0, real channels."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from xsell.v1 import xsell_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class Facts:
    """What the test data says, independent of the server: used to check its answers."""

    category: dict[str, str]  # item_id -> leaf category
    price: dict[str, float]  # item_id -> catalog price
    in_stock: dict[str, bool]
    bought: dict[str, frozenset[str]]  # user_id -> items purchased
    items_by_popularity: list[str]  # in-stock items, most purchased first
    users: list[str]


@pytest.fixture(scope="session")
def facts(dataset) -> Facts:
    cat, ev = dataset.catalog, dataset.events
    purchases = ev[ev["event_type"] == "purchase"]
    counts = purchases["item_id"].value_counts()
    stock = dict(zip(cat["item_id"], cat["in_stock"].astype(bool)))
    return Facts(
        category=dict(zip(cat["item_id"], cat["category"])),
        price=dict(zip(cat["item_id"], cat["price"].astype(float))),
        in_stock=stock,
        bought={u: frozenset(g) for u, g in purchases.groupby("user_id")["item_id"]},
        items_by_popularity=[i for i in counts.index if stock.get(i, False)],
        users=sorted(ev["user_id"].unique()),
    )


@pytest.fixture(scope="session")
def ranker(bundle_dir):
    from xsell.ranking.ranker import Ranker

    return Ranker.load(bundle_dir)


def _copy_bundle(src: Path, dst: Path, *, version: str | None = None) -> Path:
    shutil.copytree(src, dst)
    if version is not None:
        manifest_path = dst / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["version"] = version
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return dst


@pytest.fixture(scope="session")
def copy_bundle():
    """copy_bundle(src, dst, version=None): a copy of a bundle; with `version` its manifest
    says that version (still a valid bundle: the manifest hashes the other files, not itself)."""
    return _copy_bundle


@pytest.fixture(scope="session")
def channel_options():
    return [("grpc.max_receive_message_length", 16 * 1024 * 1024)]


@pytest.fixture(scope="module")
def server(ranker, bundle_root):
    """A shared server for read-only tests (each test that changes state makes its own)."""
    from xsell.server.app import create_server

    srv, _port = create_server(ranker, bundle_root=bundle_root, access_log=False)
    srv.start()
    yield srv
    srv.stop(None)


@pytest.fixture(scope="module")
def channel(server, channel_options):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=channel_options) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel) -> pb_grpc.RecommendServiceStub:
    return pb_grpc.RecommendServiceStub(channel)


# ------------------------------------------------------------ `xsell serve` subprocesses

READY = re.compile(
    r"listening on (?P<host>[^ ]+):(?P<port>\d+) workers=(?P<n>\d+) pids=(?P<pids>[\d,]+)"
)


@dataclass
class ServeProcess:
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


def start_serve(bundle: Path, log_path: Path, *args: str, timeout: float = 60.0) -> ServeProcess:
    """Run `xsell serve` in a subprocess and wait for its "listening" line."""
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
    log_file = open(log_path, "wb")  # noqa: SIM115 - the child owns it
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # its own session: signals to its process group reach it and its workers only
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=log_file, env=env, start_new_session=True
    )
    log_file.close()
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if not line:
            break  # exited
        match = READY.search(line)
        if match:
            return ServeProcess(
                proc, int(match["port"]), [int(p) for p in match["pids"].split(",")], log_path
            )
    proc.kill()
    proc.wait()
    raise AssertionError(
        f"`xsell serve` did not start:\n{log_path.read_text(errors='replace')[-4000:]}"
    )


@pytest.fixture
def serve_cli(tmp_path):
    """Factory: start `xsell serve` subprocesses; kills any still running at teardown."""
    started: list[ServeProcess] = []

    def start(bundle: Path, *args: str, timeout: float = 60.0) -> ServeProcess:
        proc = start_serve(bundle, tmp_path / f"serve-{len(started)}.log", *args, timeout=timeout)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.process.poll() is None:
            proc.process.kill()
            proc.process.wait()
