"""TLS, mutual TLS, bearer tokens, the admin credential for ReloadModel, the bundle-root
confinement, and what the logs may contain. Real servers, real TLS handshakes."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from xsell.server.security import (
    SecurityConfigError,
    TlsFiles,
    is_loopback_peer,
    load_tokens,
    parse_tokens,
    reload_allowed,
)

from xsell.v1 import xsell_pb2 as pb
from xsell.v1 import xsell_pb2_grpc as pb_grpc

from ..conftest import serve_command
from .conftest import good_request, stub_for, wait_until
from .test_faults import heavy_batch

SERVING = health_pb2.HealthCheckResponse.SERVING


def rpc_code(fn, *args, **kwargs) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value.code()


def tls_stub(pki, port: int, **credentials):
    """(channel, stub) over TLS with `pki.channel_credentials(**credentials)`, verifying
    the server certificate for the one name it carries (`pki.server_name`)."""
    return stub_for(port, pki.channel_credentials(**credentials), server_name=pki.server_name)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """A token file with one plain caller and one admin; returns (path, {name: token})."""
    named = {"checkout": secrets.token_urlsafe(24), "ops": secrets.token_urlsafe(24)}
    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text(
        "# calling services\n"
        f"checkout {named['checkout']}\n"
        "\n"
        f"ops  {named['ops']}   admin   # may reload\n"
    )
    path.chmod(0o600)
    return path, named


# ------------------------------------------------------------------ TLS / mTLS


def test_tls_serves_only_clients_that_trust_its_ca(make_server, pki, known_items):
    srv = make_server(tls=TlsFiles(str(pki.server_cert), str(pki.server_key)))
    channel, stub = tls_stub(pki, srv.port, client=None)
    with channel:
        assert stub.Recommend(good_request(known_items), timeout=10).cross_sell
    plain, stub = stub_for(srv.port)  # plaintext against a TLS port: no HTTP/2 session
    with plain:
        assert (
            rpc_code(stub.Recommend, good_request(known_items), timeout=5)
            == grpc.StatusCode.UNAVAILABLE
        )
    wrong, stub = tls_stub(pki, srv.port, client=None, ca="other_ca")
    with wrong:  # the client does not trust the server's certificate
        assert (
            rpc_code(stub.Recommend, good_request(known_items), timeout=5)
            == grpc.StatusCode.UNAVAILABLE
        )


def test_mutual_tls_refuses_clients_without_a_valid_certificate(make_server, pki, known_items):
    srv = make_server(tls=TlsFiles(str(pki.server_cert), str(pki.server_key), str(pki.ca)))
    for client in (None, "rogue"):  # no certificate; one signed by another CA (same names)
        channel, stub = tls_stub(pki, srv.port, client=client)
        with channel:
            code = rpc_code(stub.Recommend, good_request(known_items), timeout=5)
            assert code == grpc.StatusCode.UNAVAILABLE, client
            health = health_pb2_grpc.HealthStub(channel)
            assert rpc_code(health.Check, health_pb2.HealthCheckRequest(), timeout=5) == code
    channel, stub = tls_stub(pki, srv.port, client="client")
    with channel:
        assert stub.Recommend(good_request(known_items), timeout=10).cross_sell
    assert srv.metrics.sample("xsell_requests_total", {"method": "Recommend", "code": "OK"}) == 1


def test_unreadable_tls_files_are_named(make_server, pki, tmp_path):
    not_pem = tmp_path / "cert.pem"
    not_pem.write_text("hello")
    for files, named in (
        (TlsFiles(str(tmp_path / "missing.pem"), str(pki.server_key)), "missing.pem"),
        (TlsFiles(str(not_pem), str(pki.server_key)), "cert.pem"),
        (TlsFiles(str(pki.server_cert), str(pki.server_key), str(tmp_path / "ca.pem")), "ca.pem"),
    ):
        with pytest.raises(SecurityConfigError) as info:
            make_server(tls=files)
        assert named in str(info.value)


def test_tls_files_grpc_cannot_use_are_named_not_a_bind_error(make_server, pki, tmp_path):
    # PEM armour around garbage, or a key of another certificate: gRPC fails at bind time
    # ("cannot listen on 127.0.0.1:0"), naming neither the file nor the problem.
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    for files, named, words in (
        (TlsFiles(str(pki.server_cert), str(pki.rogue_key)), pki.rogue_key, "does not match"),
        (TlsFiles(str(garbage), str(pki.server_key)), garbage, "TLS certificate"),
        (TlsFiles(str(pki.server_cert), str(garbage)), garbage, "TLS private key"),
        (TlsFiles(str(pki.server_cert), str(pki.server_key), str(garbage)), garbage, "client CA"),
    ):
        with pytest.raises(SecurityConfigError) as info:
            make_server(tls=files)
        assert str(info.value).startswith(f"{named}: "), str(info.value)
        assert words in str(info.value), str(info.value)


# ------------------------------------------------------------------ bearer tokens


def test_tokens_authenticate_every_call_but_health(make_server, tokens, known_items, caplog):
    path, named = tokens
    srv = make_server(tokens=load_tokens(path), access_log=True)
    channel, stub = stub_for(srv.port)
    request = good_request(known_items)
    with channel, caplog.at_level(logging.INFO):
        assert rpc_code(stub.Recommend, request, timeout=5) == grpc.StatusCode.UNAUTHENTICATED
        for bad in ("Bearer " + named["checkout"][:-1] + "x", "Bearer", named["checkout"],
                    "Basic " + named["checkout"], "Bearer " + named["checkout"] + "x"):  # fmt: skip
            code = rpc_code(stub.Recommend, request, metadata=(("authorization", bad),), timeout=5)
            assert code == grpc.StatusCode.UNAUTHENTICATED, bad
        assert stub.Recommend(request, metadata=bearer(named["checkout"]), timeout=10).cross_sell
        assert stub.Recommend(request, metadata=bearer(named["ops"]), timeout=10).cross_sell
        # the scheme is case-insensitive (RFC 6750), the token is not
        ok = stub.Recommend(request, metadata=(("authorization", f"bearer {named['checkout']}"),))
        assert ok.cross_sell

        # health: load balancers probe without credentials
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
        # reflection describes the API: callers only
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)

        def list_services(metadata=()):
            req = reflection_pb2.ServerReflectionRequest(list_services="")
            return list(refl.ServerReflectionInfo(iter([req]), metadata=metadata, timeout=5))

        assert rpc_code(list_services) == grpc.StatusCode.UNAUTHENTICATED
        assert list_services(bearer(named["checkout"]))[0].list_services_response.service

    unauth = srv.metrics.sample(
        "xsell_requests_total", {"method": "Recommend", "code": "UNAUTHENTICATED"}
    )
    assert unauth == 6
    # Access lines name the caller, never a token.
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert '"caller": "checkout"' in logged and '"caller": "ops"' in logged
    for token in named.values():
        assert token not in logged and token[:12] not in logged
    # ... and ids only: the cart's item id is not in any access line
    assert known_items[0] not in logged


def requests_counted(srv) -> dict[tuple[str, str], float]:
    """Every xsell_requests_total sample: {(method, code): count}."""
    return {
        (s.labels["method"], s.labels["code"]): s.value
        for family in srv.metrics.registry.collect()
        if family.name == "xsell_requests"
        for s in family.samples
        if s.name == "xsell_requests_total"
    }


def test_a_call_refused_by_auth_never_reaches_admission(make_server, tokens, known_items):
    """The auth check comes before admission: an unauthenticated (or non-admin) call
    neither takes nor is refused an admission ticket, nor shows in the overload counters.
    (It asked the serving interceptor, which admits, for the handler first: at the bound an
    unauthenticated call was counted in xsell_shed_total{at_arrival} and put the server in
    the overload state, while answered UNAUTHENTICATED.)"""
    path, named = tokens
    srv = make_server(tokens=load_tokens(path), threads=1, max_in_flight=1)
    m = srv.metrics
    channel, stub = stub_for(srv.port)
    with channel, ThreadPoolExecutor(1) as pool:
        # below the bound: a refused call takes no ticket (held stays 0)
        assert rpc_code(stub.Recommend, good_request(known_items), timeout=5) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        # the one admitted call holds the bound
        slow = pool.submit(stub.RecommendBatch, heavy_batch(known_items),
                           metadata=bearer(named["checkout"]), timeout=60)  # fmt: skip
        assert wait_until(lambda: srv.admission.held == 1)
        for metadata, code in (
            ((), grpc.StatusCode.UNAUTHENTICATED),
            (bearer("not-a-known-token-at-all"), grpc.StatusCode.UNAUTHENTICATED),
        ):
            got = rpc_code(stub.Recommend, good_request(known_items), metadata=metadata, timeout=5)
            assert got == code
        got = rpc_code(stub.ReloadModel, pb.ReloadModelRequest(bundle_path="x"),
                       metadata=bearer(named["checkout"]), timeout=5)  # fmt: skip
        assert got == grpc.StatusCode.PERMISSION_DENIED
        assert not slow.done(), "the slow call ended first: the bound was never tested"
        assert m.sample("xsell_shed_total", {"reason": "at_arrival"}) == 0
        assert m.sample("xsell_overloads_total", {"trigger": "bound"}) == 0
        assert m.sample("xsell_overloaded") == 0 and not srv.admission.overloaded
        # an authenticated call at the bound is still refused by admission
        got = rpc_code(stub.Recommend, good_request(known_items),
                       metadata=bearer(named["checkout"]), timeout=5)  # fmt: skip
        assert got == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert m.sample("xsell_shed_total", {"reason": "at_arrival"}) == 1
        assert len(slow.result().responses) == 64
    assert wait_until(lambda: srv.admission.held == 0)
    counted = requests_counted(srv)
    assert counted == {
        ("Recommend", "UNAUTHENTICATED"): 3,
        ("ReloadModel", "PERMISSION_DENIED"): 1,
        ("Recommend", "RESOURCE_EXHAUSTED"): 1,
        ("RecommendBatch", "OK"): 1,
    }, counted


def test_auth_refusals_count_only_recommend_service_calls(make_server, tokens, caplog):
    """xsell_requests_total counts RecommendService calls (server/metrics.py): a refused
    reflection call is not one (it was counted under its full method name), nor is a call
    to a method that does not exist (a label per made-up name would grow without bound).
    Both still get an access line: a failed authentication is worth a trace."""
    path, named = tokens
    srv = make_server(tokens=load_tokens(path), access_log=True)
    channel, _stub = stub_for(srv.port)
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    req = reflection_pb2.ServerReflectionRequest(list_services="")
    made_up = channel.unary_unary("/xsell.v1.RecommendService/NoSuchMethod")
    with channel, caplog.at_level(logging.INFO, logger="xsell.access"):
        for _ in range(2):
            code = rpc_code(lambda: list(refl.ServerReflectionInfo(iter([req]), timeout=5)))
            assert code == grpc.StatusCode.UNAUTHENTICATED
        # an unauthenticated caller learns nothing, not even which methods exist
        assert rpc_code(made_up, b"", timeout=5) == grpc.StatusCode.UNAUTHENTICATED
        # with a token, gRPC answers an unknown method as before
        code = rpc_code(made_up, b"", metadata=bearer(named["checkout"]), timeout=5)
        assert code == grpc.StatusCode.UNIMPLEMENTED
    assert requests_counted(srv) == {}
    logged = [r.getMessage() for r in caplog.records if r.name == "xsell.access"]
    assert sum('"UNAUTHENTICATED"' in line for line in logged) == 3, logged
    assert sum("ServerReflectionInfo" in line for line in logged) == 2, logged


def test_reload_needs_an_admin_token(
    make_server, tokens, bundle_dir, bundle_root, copy_bundle, ranker
):
    path, named = tokens
    srv = make_server(tokens=load_tokens(path))
    version = f"admin-{uuid.uuid4().hex[:8]}"
    target = copy_bundle(bundle_dir, bundle_root / version, version=version)
    channel, stub = stub_for(srv.port)
    request = pb.ReloadModelRequest(bundle_path=target.name)
    with channel:
        assert rpc_code(stub.ReloadModel, request, timeout=10) == grpc.StatusCode.UNAUTHENTICATED
        code = rpc_code(stub.ReloadModel, request, metadata=bearer(named["checkout"]), timeout=10)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=bearer(named["checkout"]))
        assert info.model_version == ranker.version  # nothing changed
        reply = stub.ReloadModel(request, metadata=bearer(named["ops"]), timeout=30)
        assert (reply.model_version, reply.previous_version) == (version, ranker.version)
        # auth on: an admin token may reload from any peer, and nothing else may
    assert reload_allowed(auth_on=True, allow_unauthenticated=False, peer="ipv4:10.1.2.3:5555")


def test_without_auth_reload_is_for_local_callers_unless_opened():
    for peer in ("ipv4:127.0.0.1:41234", "ipv6:[::1]:5000", "unix:/run/xsell.sock",
                 "ipv6:[::ffff:127.0.0.1]:80",
                 # what gRPC really reports: the brackets URI-encoded
                 "ipv6:%5B::1%5D:5000", "ipv6:%5B::ffff:127.0.0.1%5D:80"):  # fmt: skip
        assert is_loopback_peer(peer) and reload_allowed(
            auth_on=False, allow_unauthenticated=False, peer=peer
        )
    for peer in ("ipv4:10.0.0.7:5000", "ipv6:[2001:db8::1]:80", "ipv4:128.0.0.1:1", "ipv6:[::2]:1",
                 "ipv6:%5B::2%5D:1", "ipv6:%5B2001:db8::1%5D:80"):  # fmt: skip
        assert not is_loopback_peer(peer)
        assert not reload_allowed(auth_on=False, allow_unauthenticated=False, peer=peer)
        assert reload_allowed(auth_on=False, allow_unauthenticated=True, peer=peer)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this host")
def test_without_auth_a_local_ipv6_caller_may_reload(make_server):
    # gRPC reports such a peer as "ipv6:%5B::1%5D:port": it was refused as remote.
    srv = make_server(host="::1")
    with grpc.insecure_channel(f"[::1]:{srv.port}") as channel:
        stub = pb_grpc.RecommendServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ReloadModel(pb.ReloadModelRequest(bundle_path="no-such-bundle"), timeout=10)
    # past the peer check: the path is looked at (and is not there)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert info.value.details().startswith("bundle_path: 'no-such-bundle' is not a directory")


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("a 0123456789abcdef\nb\n", 2, "expected `NAME TOKEN [admin]`"),
        ("a 0123456789abcdef root\n", 1, "expected `NAME TOKEN [admin]`"),
        ("a short\n", 1, "at least 16"),
        ("a 0123456789abcdef\na 0123456789abcdeg\n", 2, "listed twice"),
        ("a 0123456789abcdef\n# x\nb 0123456789abcdef admin\n", 3, "reuses the token"),
        ("# only comments\n\n", None, "no caller"),
    ],
)
def test_token_file_errors_name_the_line(text, line, words):
    with pytest.raises(SecurityConfigError) as info:
        parse_tokens(text, file="tokens.txt")
    assert words in str(info.value)
    assert info.value.file == "tokens.txt" and info.value.line == line
    assert str(info.value).startswith("tokens.txt" + (f", line {line}" if line else ""))


def test_token_lookup_is_exact():
    table = parse_tokens("a 0123456789abcdef\nb 0123456789abcdeX admin\n", file="t")
    assert table.lookup("0123456789abcdef").name == "a"
    assert table.lookup("0123456789abcdeX").admin
    for wrong in (
        "0123456789abcde",
        "0123456789abcdefX",
        "",
        "0123456789ABCDEF",
        "0123456789abcdef\x00",
    ):
        assert table.lookup(wrong) is None


# ------------------------------------------------------------------ bundle root


def test_reload_confinement_follows_symlinks(
    make_server, bundle_dir, bundle_root, tmp_path, copy_bundle
):
    srv = make_server()
    # loadable if it were allowed
    outside = copy_bundle(bundle_dir, tmp_path / "outside", version="outside")
    inside = copy_bundle(bundle_dir, bundle_root / f"in-{uuid.uuid4().hex[:6]}", version="inside")
    tag = uuid.uuid4().hex[:6]
    escape_dir = bundle_root / f"escape-{tag}"  # a directory symlink in the root, pointing out
    os.symlink(tmp_path, escape_dir)
    chain = bundle_root / f"chain-{tag}"  # link -> link -> outside
    os.symlink(escape_dir / "outside", chain)
    good_link = bundle_root / f"good-{tag}"  # a link that stays inside is fine
    os.symlink(inside, good_link)
    channel, stub = stub_for(srv.port)
    try:
        with channel:
            for path in (str(outside), f"escape-{tag}/outside", chain.name, f"{inside.name}/../../outside",
                         "/", "..", str(bundle_root) + "/../" + tmp_path.name + "/outside"):  # fmt: skip
                with pytest.raises(grpc.RpcError) as info:
                    stub.ReloadModel(pb.ReloadModelRequest(bundle_path=path), timeout=10)
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, path
                assert info.value.details().startswith("bundle_path")
            with pytest.raises(grpc.RpcError) as info:
                stub.ReloadModel(pb.ReloadModelRequest(bundle_path="a\x00b"), timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert stub.GetModelInfo(pb.GetModelInfoRequest()).model_version != "outside"
            assert (
                stub.ReloadModel(pb.ReloadModelRequest(bundle_path=good_link.name)).model_version
                == "inside"
            )
    finally:
        for link in (escape_dir, chain, good_link):
            link.unlink()
        shutil.rmtree(inside)


def test_reload_of_a_path_too_long_names_the_field(make_server, bundle_root):
    # ENAMETOOLONG from the directory check was INTERNAL, and a long path echoed whole in
    # PERMISSION_DENIED overflowed the status header: the client saw RESOURCE_EXHAUSTED.
    srv = make_server()
    channel, stub = stub_for(srv.port)
    with channel:
        for path, code in (
            ("x" * 300, grpc.StatusCode.INVALID_ARGUMENT),  # one name over NAME_MAX
            ("a/" * 3000, grpc.StatusCode.INVALID_ARGUMENT),  # a path over PATH_MAX
            ("/etc" + "/x" * 20_000, grpc.StatusCode.PERMISSION_DENIED),
            ("x" * 20_000, grpc.StatusCode.INVALID_ARGUMENT),
        ):
            with pytest.raises(grpc.RpcError) as info:
                stub.ReloadModel(pb.ReloadModelRequest(bundle_path=path), timeout=10)
            assert info.value.code() == code, (len(path), info.value.details()[:300])
            assert info.value.details().startswith("bundle_path"), info.value.details()[:300]
            assert len(info.value.details()) < 1000
        assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).model_version


# ------------------------------------------------------------------ the CLI


def test_serve_cli_with_mutual_tls_and_tokens_from_env(
    serve_cli, bundle_dir, pki, tokens, known_items
):
    path, named = tokens
    proc = serve_cli(
        bundle_dir, "--workers", "1",
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca),
        env={"XSELL_AUTH_TOKENS_FILE": str(path)},
    )  # fmt: skip
    channel, stub = tls_stub(pki, proc.port, client="client")
    with channel:
        assert (
            rpc_code(stub.Recommend, good_request(known_items), timeout=10)
            == grpc.StatusCode.UNAUTHENTICATED
        )
        assert stub.Recommend(
            good_request(known_items), metadata=bearer(named["checkout"]), timeout=10
        ).cross_sell
        code = rpc_code(
            stub.ReloadModel,
            pb.ReloadModelRequest(),
            metadata=bearer(named["checkout"]),
            timeout=10,
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert stub.ReloadModel(
            pb.ReloadModelRequest(), metadata=bearer(named["ops"]), timeout=30
        ).model_version
    channel, stub = tls_stub(pki, proc.port, client=None)
    with channel:
        code = rpc_code(
            stub.Recommend, good_request(known_items), metadata=bearer(named["checkout"]), timeout=5
        )
        assert code == grpc.StatusCode.UNAVAILABLE
    proc.process.terminate()
    assert proc.process.wait(30) == 0
    log = proc.log()
    assert "bearer-token auth on: 2 callers (checkout, ops)" in log
    assert all(token not in log for token in named.values())


def test_serve_cli_refuses_bad_security_flags(bundle_dir, pki, tmp_path):
    import subprocess

    bad_tokens = tmp_path / "tokens"
    bad_tokens.write_text("checkout tooshort\n")
    cases = [
        (["--tls-cert", str(pki.server_cert)], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", str(pki.ca)], "--tls-client-ca needs"),
        (["--auth-tokens", str(bad_tokens)], f"{bad_tokens}, line 1: token of 'checkout'"),
    ]
    for args, words in cases:
        out = subprocess.run(serve_command(bundle_dir, "--workers", "1", *args),
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert out.returncode != 0 and words in out.stderr, (args, out.stderr[-2000:])
        assert "Traceback" not in out.stderr
