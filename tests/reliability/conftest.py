"""Fixtures of the reliability and security tests: real servers on 127.0.0.1 port 0,
real channels, certificates made here with `cryptography`, real `xsell serve`
subprocesses."""

from __future__ import annotations

import datetime as dt
import ipaddress
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from xsell.v1 import xsell_pb2 as pb
from xsell.v1 import xsell_pb2_grpc as pb_grpc


@pytest.fixture(scope="session")
def ranker(bundle_dir):
    from xsell.ranking.ranker import Ranker

    return Ranker.load(bundle_dir)


@pytest.fixture(scope="session")
def known_items(dataset) -> list[str]:
    """In-stock catalog item ids, most purchased first (real carts for good requests)."""
    cat, ev = dataset.catalog, dataset.events
    stock = set(cat.loc[cat["in_stock"].astype(bool), "item_id"])
    counts = ev.loc[ev["event_type"] == "purchase", "item_id"].value_counts()
    return [i for i in counts.index if i in stock]


@pytest.fixture(scope="session")
def known_users(dataset) -> list[str]:
    return sorted(dataset.events["user_id"].unique())


def good_request(items: list[str], k: int = 0) -> pb.RecommendRequest:
    return pb.RecommendRequest(cart=[pb.CartLine(item_id=items[k % len(items)])], limit=5)


@pytest.fixture
def make_server(ranker, bundle_root):
    """make_server(model=ranker, **create_server kwargs) -> server; stopped at teardown."""
    from xsell.server.app import create_server

    made = []

    def make(model=ranker, **kwargs):
        kwargs.setdefault("bundle_root", bundle_root)
        kwargs.setdefault("access_log", False)
        srv, _port = create_server(model, **kwargs)
        srv.start()
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.stop(None)


def stub_for(port: int, credentials: grpc.ChannelCredentials | None = None, **options):
    """(channel, stub) to 127.0.0.1:port; TLS when `credentials` is given."""
    # A local subchannel pool: each channel opens its own connection. (By default channels
    # with the same target and options share one, so "8 callers with a channel each"
    # would be one TCP connection to one worker.)
    opts = [("grpc.max_receive_message_length", 16 << 20), ("grpc.use_local_subchannel_pool", 1),
            *options.items()]  # fmt: skip
    target = f"127.0.0.1:{port}"
    if credentials is None:
        channel = grpc.insecure_channel(target, options=opts)
    else:
        channel = grpc.secure_channel(target, credentials, options=opts)
    return channel, pb_grpc.RecommendServiceStub(channel)


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# ------------------------------------------------------------------ certificates


@dataclass(frozen=True)
class Pki:
    """PEM files of a test CA, a server certificate for 127.0.0.1 / localhost, a client
    certificate signed by the CA, and a client certificate of an unrelated CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_cert: Path
    rogue_key: Path

    def read(self, name: str) -> bytes:
        return getattr(self, name).read_bytes()

    def channel_credentials(self, *, client: str | None = "client", ca: str = "ca"):
        """Credentials trusting `ca`; presenting the `client` (or `rogue`) certificate, or none."""
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


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _cert(subject_key, subject: str, issuer_key, issuer: str, *, ca: bool, sans=(), usage=None):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
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


def _write(path: Path, cert=None, key=None) -> Path:
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
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    d = tmp_path_factory.mktemp("pki")
    ca_key, rogue_ca_key = _key(), _key()
    ca = _cert(ca_key, "xsell test CA", ca_key, "xsell test CA", ca=True)
    rogue_ca = _cert(rogue_ca_key, "rogue CA", rogue_ca_key, "rogue CA", ca=True)
    server_key, client_key, rogue_key = _key(), _key(), _key()
    sans = (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    server = _cert(server_key, "xsell server", ca_key, "xsell test CA", ca=False, sans=sans,
                   usage=ExtendedKeyUsageOID.SERVER_AUTH)  # fmt: skip
    client = _cert(client_key, "checkout", ca_key, "xsell test CA", ca=False,
                   usage=ExtendedKeyUsageOID.CLIENT_AUTH)  # fmt: skip
    # Same subject name and CA name as the real ones: only the signature differs.
    rogue = _cert(rogue_key, "checkout", rogue_ca_key, "xsell test CA", ca=False,
                  usage=ExtendedKeyUsageOID.CLIENT_AUTH)  # fmt: skip
    return Pki(
        ca=_write(d / "ca.pem", ca),
        server_cert=_write(d / "server.pem", server),
        server_key=_write(d / "server.key", key=server_key),
        client_cert=_write(d / "client.pem", client),
        client_key=_write(d / "client.key", key=client_key),
        rogue_ca=_write(d / "rogue-ca.pem", rogue_ca),
        rogue_cert=_write(d / "rogue.pem", rogue),
        rogue_key=_write(d / "rogue.key", key=rogue_key),
    )


# `serve_cli` (real `xsell serve` subprocesses) comes from tests/conftest.py.


@pytest.fixture(scope="session")
def copy_bundle_to(bundle_dir):
    """copy_bundle_to(dst, version=None) -> dst: a copy of the session bundle; with
    `version` its manifest says that version (still valid: the manifest hashes the
    other files, not itself)."""
    import json
    import shutil

    def copy(dst: Path, version: str | None = None) -> Path:
        shutil.copytree(bundle_dir, dst)
        if version is not None:
            manifest = json.loads((dst / "manifest.json").read_text())
            manifest["version"] = version
            (dst / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        return dst

    return copy
