"""Fixtures shared by every test area."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
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


@pytest.fixture(scope="session")
def ranker(bundle_dir):
    """The session bundle, loaded once."""
    from xsell.ranking.ranker import Ranker

    return Ranker.load(bundle_dir)


@pytest.fixture(scope="module")
def server(ranker, bundle_root):
    """A server on the session bundle (in-process, 127.0.0.1, port 0), shared by the
    tests of one module that do not change its state; each test that does makes its own."""
    from xsell.server.app import create_server

    srv, _port = create_server(ranker, bundle_root=bundle_root, access_log=False)
    srv.start()
    yield srv
    srv.stop(None)


def copy_bundle_files(src: Path, dst: Path, *, version: str | None = None) -> Path:
    shutil.copytree(src, dst)
    if version is not None:
        manifest_path = dst / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["version"] = version
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return dst


@pytest.fixture(scope="session")
def copy_bundle():
    """copy_bundle(src, dst, version=None) -> dst: a copy of a bundle; with `version` its
    manifest says that version (still a valid bundle: the manifest hashes the other
    files, not itself)."""
    return copy_bundle_files


def unused_port() -> int:
    """A port nothing listens on right now (for a server started later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    """`unused_port()` as a fixture."""
    return unused_port()


# ------------------------------------------------------------------ certificates


@dataclass(frozen=True)
class Pki:
    """PEM files made for the session (tests/clients and tests/reliability share them).

    - `ca`: the test CA; it signed `server_cert` and `client_cert` ("checkout").
    - `server_cert`: names only `server_name`, so a client dialling 127.0.0.1 must
      override the name it verifies (gRPC: `grpc.ssl_target_name_override`).
    - `other_ca`: a CA with the same name as `ca` but another key; it signed only
      `rogue_cert`, a client certificate with the same names as `client_cert`. Only the
      signatures tell them apart: a client trusting `other_ca` must refuse the server,
      and a server trusting `ca` must refuse `rogue_cert`.
    """

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    rogue_cert: Path
    rogue_key: Path
    server_name: str = "xsell.internal"

    def read(self, name: str) -> bytes:
        return getattr(self, name).read_bytes()

    def channel_credentials(self, *, client: str | None = "client", ca: str = "ca"):
        """gRPC credentials trusting `ca` (or "other_ca"), presenting the `client` (or
        "rogue") certificate, or none."""
        import grpc

        if client is None:
            return grpc.ssl_channel_credentials(root_certificates=self.read(ca))
        return grpc.ssl_channel_credentials(
            root_certificates=self.read(ca),
            private_key=self.read(f"{client}_key"),
            certificate_chain=self.read(f"{client}_cert"),
        )


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject_key, subject: str, issuer_key, issuer: str, *, ca: bool, sans=(), usage=None):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(name(issuer))
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pem(path: Path, cert=None, key=None) -> Path:
    """Writes a certificate, or else a private key (unencrypted PKCS#8, mode 600)."""
    from cryptography.hazmat.primitives import serialization

    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    """The session's certificates (`Pki`), made with `cryptography`."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    d = tmp_path_factory.mktemp("pki")
    ca_name = "xsell test CA"
    ca_key, other_ca_key = _key(), _key()
    ca = _cert(ca_key, ca_name, ca_key, ca_name, ca=True)
    other_ca = _cert(other_ca_key, ca_name, other_ca_key, ca_name, ca=True)
    server_key, client_key, rogue_key = _key(), _key(), _key()
    server = _cert(server_key, "xsell server", ca_key, ca_name, ca=False,
                   sans=[x509.DNSName(Pki.server_name)], usage=ExtendedKeyUsageOID.SERVER_AUTH)  # fmt: skip
    client = _cert(client_key, "checkout", ca_key, ca_name, ca=False,
                   usage=ExtendedKeyUsageOID.CLIENT_AUTH)  # fmt: skip
    rogue = _cert(rogue_key, "checkout", other_ca_key, ca_name, ca=False,
                  usage=ExtendedKeyUsageOID.CLIENT_AUTH)  # fmt: skip
    return Pki(
        ca=_write_pem(d / "ca.pem", ca),
        server_cert=_write_pem(d / "server.pem", server),
        server_key=_write_pem(d / "server.key", key=server_key),
        client_cert=_write_pem(d / "client.pem", client),
        client_key=_write_pem(d / "client.key", key=client_key),
        other_ca=_write_pem(d / "other-ca.pem", other_ca),
        rogue_cert=_write_pem(d / "rogue.pem", rogue),
        rogue_key=_write_pem(d / "rogue.key", key=rogue_key),
    )


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


def serve_command(bundle: Path, *args: str) -> list[str]:
    """The command line `xsell serve --bundle BUNDLE --port 0 ARGS` (this interpreter)."""
    return [sys.executable, "-m", "xsell.cli", "serve", "--bundle", str(bundle), "--port", "0",
            *args]  # fmt: skip


def start_serve(
    bundle: Path, log_path: Path, *args: str, env: dict | None = None, timeout: float = 90.0
) -> ServeProcess:
    """Run `serve_command(bundle, *args)` and wait for its "listening" line."""
    with open(log_path, "wb") as log_file:
        # its own session: signals to its process group reach it and its workers only
        proc = subprocess.Popen(
            serve_command(bundle, *args), stdout=subprocess.PIPE, stderr=log_file, start_new_session=True,
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
