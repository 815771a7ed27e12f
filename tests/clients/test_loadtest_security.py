"""`xsell loadtest` over mutual TLS with bearer tokens, against `secure_server` (a real
gRPC server on a real socket: client certificates signed by `pki.ca`, a token on every
call but health; tests/clients/conftest.py). The load's client processes are real
spawned processes; each run is 1 s, closed loop, 2 callers, 1 process.
"""

from __future__ import annotations

import json
import time

import pytest
from xsell.clients import TlsOptions
from xsell.clients.loadtest.mix import write_requests
from xsell.clients.loadtest.runner import LoadConfig, RawRun

from xsell.cli import main

from ..conftest import unused_port


def tls_flags(pki, *, client: str | None = "client", server_name: bool = True) -> list[str]:
    """The `xsell recommend` flags: CA, the client certificate ("client", "rogue": signed
    by another CA, or None), the name in the server certificate."""
    flags = ["--tls-ca", str(pki.ca)]
    if client is not None:
        flags += ["--tls-cert", str(getattr(pki, f"{client}_cert"))]
        flags += ["--tls-key", str(getattr(pki, f"{client}_key"))]
    if server_name:
        flags += ["--tls-server-name", pki.server_name]
    return flags


@pytest.fixture(scope="module")
def requests_file(shop, tmp_path_factory):
    reqs = [
        {"cart": [{"item_id": item}], "strategy": strategy}
        for item in shop.by_popularity[:5]
        for strategy in ("STRATEGY_CROSS_SELL", "STRATEGY_BOTH")
    ]
    return write_requests(reqs, tmp_path_factory.mktemp("mix") / "mix.jsonl")


def run(address: str, *flags: str, tmp_path, target: str = "recommend", requests=None):
    """`xsell loadtest` in this process (its client processes are spawned); returns the
    exit code and the JSON report."""
    out = tmp_path / f"report-{time.monotonic_ns()}.json"
    args = ["loadtest", "--address", address, "--target", target, "--concurrency", "2",
            "--procs", "1", "--duration", "1", "--warmup", "0.2", "--connect-timeout", "30",
            "--quiet", "--json", str(out), *flags]  # fmt: skip
    if requests is not None:
        args += ["--requests", str(requests)]
    code = main(args)
    return code, json.loads(out.read_text())


def test_closed_loop_over_mtls_with_a_token(
    secure_server, secure_address, pki, auth_tokens, requests_file, server_calls, tmp_path
):
    before = server_calls(secure_server, "Recommend", "OK")
    code, rep = run(secure_address, *tls_flags(pki), "--token", auth_tokens.checkout,
                    tmp_path=tmp_path, requests=requests_file)  # fmt: skip
    assert code == 0, rep["errors"]
    assert rep["errors"] == {} and rep["ok"] == rep["calls"] > 10
    assert rep["client"]["checked_responses"]["items"] > 0  # real answers, decoded
    # the server answered them (and the warm-up's, and one first call per connection)
    assert server_calls(secure_server, "Recommend", "OK") - before >= rep["calls"]
    # the report names the files, never the token
    assert rep["config"]["tls"]["client_cert"] == str(pki.client_cert)
    assert rep["config"]["token"] == "(given)"
    assert auth_tokens.checkout not in json.dumps(rep)


def test_health_target_over_mtls(secure_address, pki, tmp_path):
    """Health needs no token on this server, but the handshake still needs the certificate."""
    code, rep = run(secure_address, *tls_flags(pki), tmp_path=tmp_path, target="health")
    assert code == 0, rep["errors"]
    assert rep["errors"] == {} and rep["ok"] == rep["calls"] > 10
    assert rep["client"]["checked_responses"]["not_serving"] == 0


NAME_HINT = "(if the server's certificate names another host, give --tls-server-name)"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        # TLS 1.3: the server refuses the missing certificate after the client's handshake
        pytest.param({"client": None},
                     "(if the server requires mutual TLS, give --tls-cert and --tls-key)",
                     id="no-client-cert"),
        pytest.param({"client": "rogue"},
                     "(does the server trust the CA that signed the client certificate?)",
                     id="cert-of-another-ca"),
        pytest.param({"server_name": False}, f"Hostname Verification Check failed. {NAME_HINT}",
                     id="no-server-name"),
        pytest.param(None, "(plaintext channel: if the server uses TLS, give --tls-ca or --tls)",
                     id="plaintext"),
    ],
)  # fmt: skip
def test_a_refused_handshake_fails_at_once_and_says_why(
    secure_address, pki, auth_tokens, requests_file, tmp_path, flags, expected
):
    tls = [] if flags is None else tls_flags(pki, **flags)
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as info:
        run(secure_address, *tls, "--token", auth_tokens.checkout, tmp_path=tmp_path,
            requests=requests_file)  # fmt: skip
    # not the 30 s --connect-timeout: gRPC alone would retry the handshake until then
    assert time.monotonic() - t0 < 20
    message = str(info.value.code)
    assert message.startswith(
        f"xsell loadtest: client process 0: cannot connect to {secure_address}: "
    )
    assert expected in message


def test_a_wrong_token_is_counted_not_fatal(
    secure_server, secure_address, pki, requests_file, server_calls, tmp_path
):
    before = server_calls(secure_server, "Recommend", "UNAUTHENTICATED")
    code, rep = run(secure_address, *tls_flags(pki), "--token", "not-a-known-token-at-all",
                    tmp_path=tmp_path, requests=requests_file)  # fmt: skip
    assert code == 1  # errors in the report
    assert rep["ok"] == 0 and rep["errors"] == {"UNAUTHENTICATED": rep["calls"]}
    assert rep["calls"] > 10
    assert server_calls(secure_server, "Recommend", "UNAUTHENTICATED") - before >= rep["calls"]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--tls-key", "{client_key}"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "{client_cert}"], "--tls-cert and --tls-key go together"),
        (["--tls-ca", "{missing}"], "--tls-ca: cannot read "),
        (["--tls-ca", "{not_pem}"], "--tls-ca: "),
        (["--tls-ca", "{ca}", "--tls-cert", "{server_cert}", "--tls-key", "{client_key}"],
         "--tls-cert "),
        (["--tls-server-name", "xsell.internal"], "--tls-server-name needs TLS"),
        (["--token", "two words"], "token: "),
    ],
)  # fmt: skip
def test_bad_flags_exit_2_as_in_xsell_recommend(flags, named, pki, tmp_path, capsys):
    """The same message as `xsell recommend`, before any call: nothing listens there."""
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("not a certificate\n")
    files = {k: getattr(pki, k) for k in ("ca", "client_cert", "client_key", "server_cert")}
    flags = [f.format(missing=tmp_path / "missing.pem", not_pem=not_pem, **files) for f in flags]
    address = ["--address", f"127.0.0.1:{unused_port()}"]
    assert main(["recommend", *address, "--cart", "A", *flags]) == 2
    recommend_err = capsys.readouterr().err
    assert main(["loadtest", *address, "--target", "health", "--quiet", *flags]) == 2
    loadtest_err = capsys.readouterr().err
    assert loadtest_err.startswith(f"xsell loadtest: error: {named}"), loadtest_err
    assert loadtest_err.replace("xsell loadtest", "xsell recommend") == recommend_err


def test_report_config_is_json_and_holds_no_token(pki):
    """Paths may come as Path objects (TlsOptions takes them); the report writes strings."""
    tls = TlsOptions(ca_cert=pki.ca, client_cert=pki.client_cert, client_key=pki.client_key)
    secret = "a-secret-token-0123456789"
    config = json.loads(
        json.dumps(RawRun(LoadConfig(tls=tls, token=secret), 0.0, []).config_dict())
    )
    assert config["tls"]["ca_cert"] == str(pki.ca) and config["token"] == "(given)"
    assert secret not in json.dumps(config)
    assert RawRun(LoadConfig(), 0.0, []).config_dict()["token"] is None
