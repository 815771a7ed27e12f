"""The clients against a server with mutual TLS and bearer tokens (xsell.server.security).

Certificates come from the shared `pki` fixture (tests/conftest.py, made with
`cryptography`): a CA, a server certificate valid only for the name "xsell.internal"
(so the client must set `server_name` when dialling 127.0.0.1), and a client
certificate signed by the CA.
"""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from xsell.clients import AsyncXsellClient, TlsOptions, XsellClient, XsellRpcError

from xsell.cli import main

from ..conftest import Pki
from .conftest import AuthTokens

# The certificates (`pki`) are a fixture of tests/conftest.py; tokens (`auth_tokens`) and
# the mTLS + token server (`secure_server`, `secure_address`) of tests/clients/conftest.py.
SERVER_NAME = Pki.server_name  # the only name in the server certificate
CHECKOUT_TOKEN = AuthTokens.checkout
OPS_TOKEN = AuthTokens.ops


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
