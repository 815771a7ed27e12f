"""The clients against a server with mutual TLS and bearer tokens (xsell.server.security).

Certificates are made here with `cryptography`: a CA, a server certificate valid only
for the name "xsell.internal" (so the client must set `server_name` when dialling
127.0.0.1), and a client certificate signed by the CA.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from xsell.clients import AsyncXsellClient, TlsOptions, XsellClient, XsellRpcError

from xsell.cli import main

SERVER_NAME = "xsell.internal"
CHECKOUT_TOKEN = "checkout-token-0123456789abcdef"
OPS_TOKEN = "ops-admin-token-0123456789abcdef"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    crypto = pytest.importorskip("cryptography", reason="certificates are made with cryptography")
    del crypto
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.timezone.utc)

    def cert(key, subject: str, issuer_key, issuer: str, *, ca: bool, extensions=()):
        b = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        for ext in extensions:
            b = b.add_extension(ext, critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    d = tmp_path_factory.mktemp("client-pki")
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = cert(ca_key, "xsell client-test CA", ca_key, "xsell client-test CA", ca=True)
    server = cert(
        server_key, "xsell server", ca_key, "xsell client-test CA", ca=False,
        extensions=[x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]),
                    x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])],
    )  # fmt: skip
    client = cert(
        client_key, "checkout", ca_key, "xsell client-test CA", ca=False,
        extensions=[x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])],
    )  # fmt: skip

    def write_cert(path: Path, c) -> Path:
        path.write_bytes(c.public_bytes(serialization.Encoding.PEM))
        return path

    def write_key(path: Path, k) -> Path:
        path.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        return path

    return Pki(
        ca=write_cert(d / "ca.pem", ca),
        server_cert=write_cert(d / "server.pem", server),
        server_key=write_key(d / "server.key", server_key),
        client_cert=write_cert(d / "client.pem", client),
        client_key=write_key(d / "client.key", client_key),
    )


@pytest.fixture(scope="module")
def secure_server(ranker, bundle_root, pki):
    security = pytest.importorskip("xsell.server.security", reason="server TLS/auth not built")
    from xsell.server.app import create_server

    tokens = security.parse_tokens(
        f"checkout {CHECKOUT_TOKEN}\nops {OPS_TOKEN} admin\n", file="<test tokens>"
    )
    tls = security.TlsFiles(
        cert=str(pki.server_cert), key=str(pki.server_key), client_ca=str(pki.ca)
    )
    srv, _port = create_server(
        ranker, bundle_root=bundle_root, access_log=False, tls=tls, tokens=tokens
    )
    srv.start()
    yield srv
    srv.stop(None)


@pytest.fixture(scope="module")
def secure_address(secure_server) -> str:
    return f"127.0.0.1:{secure_server.port}"


@pytest.fixture(scope="module")
def mtls(pki) -> TlsOptions:
    return TlsOptions(
        ca_cert=pki.ca,
        client_cert=pki.client_cert,
        client_key=pki.client_key,
        server_name=SERVER_NAME,
    )


def test_mtls_and_token_serve_every_method(secure_address, mtls, shop, ranker, bundle_dir):
    with XsellClient(secure_address, tls=mtls, token=CHECKOUT_TOKEN, timeout=10) as client:
        recs = client.recommend(cart=shop.by_popularity[:2], limit=3)
        assert recs.items and recs.model_version == ranker.version
        assert client.model_info().model_version == ranker.version
        assert len(client.recommend_batch([{"cart": shop.by_popularity[:1]}] * 2)) == 2
    with XsellClient(secure_address, tls=mtls, token=OPS_TOKEN, timeout=30) as admin:
        assert admin.reload().model_version == ranker.version


def test_async_client_over_mtls(secure_address, mtls, shop):
    async def run():
        async with AsyncXsellClient(secure_address, tls=mtls, token=CHECKOUT_TOKEN) as client:
            return await client.recommend(cart=shop.by_popularity[:1], limit=2)

    assert asyncio.run(run()).items


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (None, grpc.StatusCode.UNAUTHENTICATED),
        ("not-a-known-token-at-all", grpc.StatusCode.UNAUTHENTICATED),
    ],
)
def test_bad_tokens_are_refused_and_not_retried(secure_address, mtls, token, code):
    with (
        XsellClient(secure_address, tls=mtls, token=token, retries=3) as client,
        pytest.raises(XsellRpcError) as info,
    ):
        client.model_info()
    assert info.value.code == code and info.value.attempts == 1
    assert "bearer token" in info.value.details


def test_reload_needs_an_admin_token(secure_address, mtls):
    with (
        XsellClient(secure_address, tls=mtls, token=CHECKOUT_TOKEN) as client,
        pytest.raises(XsellRpcError) as info,
    ):
        client.reload()
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    "change",
    [
        {"server_name": None},  # the certificate names xsell.internal, not 127.0.0.1
        {"client_cert": None, "client_key": None},  # mutual TLS: no certificate, no handshake
        {"ca_cert": None},  # system roots do not know the test CA
    ],
)
def test_tls_failures_surface_as_unavailable(secure_address, pki, change):
    options = {
        "ca_cert": pki.ca,
        "client_cert": pki.client_cert,
        "client_key": pki.client_key,
        "server_name": SERVER_NAME,
        **change,
    }
    with (
        XsellClient(
            secure_address, tls=TlsOptions(**options), token=CHECKOUT_TOKEN, retries=0, timeout=5
        ) as client,
        pytest.raises(XsellRpcError) as info,
    ):
        client.model_info()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_cli_over_mtls_with_the_token_from_the_environment(
    secure_address, pki, shop, capsys, monkeypatch
):
    tls_args = [
        "--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key",
        str(pki.client_key), "--tls-server-name", SERVER_NAME,
    ]  # fmt: skip
    args = ["recommend", "--address", secure_address, "--cart", shop.by_popularity[0], "--json"]
    monkeypatch.setenv("XSELL_TOKEN", CHECKOUT_TOKEN)  # read when the parser is built
    assert main([*args, *tls_args]) == 0
    assert json.loads(capsys.readouterr().out)["cross_sell"]
    monkeypatch.delenv("XSELL_TOKEN")
    assert main([*args, *tls_args]) == 2
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert main([*args, *tls_args, "--token", CHECKOUT_TOKEN]) == 0
