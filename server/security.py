"""Transport security and caller authentication for the gRPC server.

TLS: `server_credentials(TlsFiles)` reads PEM files; with a client CA the server
requires and verifies a client certificate (mutual TLS), so a client without a
certificate signed by that CA never completes the handshake.

Bearer tokens: a token file names the services allowed to call, one per line:

    # NAME  TOKEN                              [admin]
    checkout  3f9a...long random string...
    ops       9c1e...another one...            admin

Blank lines and `#` comments are ignored. Names and tokens must be unique; tokens
need at least `MIN_TOKEN_CHARS` characters. A call carries the header
`authorization: Bearer <token>`. Tokens are compared in constant time: each
presented token is hashed (sha256) and compared with `hmac.compare_digest`
against *every* known digest, so neither the length nor the position of a known
token shows in the timing. Tokens never reach a log; the caller's NAME does.

`AuthInterceptor` (the outermost interceptor) answers UNAUTHENTICATED for a missing
or unknown token (whatever the method, even one that does not exist) and
PERMISSION_DENIED for a non-admin caller of an admin method, before admission and
before the request is even received. Health checks are exempt (load
balancers probe without credentials). Without a token file auth is off; then the
admin method (ReloadModel) is allowed only from a loopback peer unless
`allow_unauthenticated_reload` is set (see `reload_allowed`).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import os
import ssl
import stat
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from xsell.errors import XsellError

log = logging.getLogger("xsell.server")

TOKENS_ENV = "XSELL_AUTH_TOKENS_FILE"
MIN_TOKEN_CHARS = 16
AUTH_HEADER = "authorization"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
ADMIN_METHODS = frozenset({"/xsell.v1.RecommendService/ReloadModel"})

# The authenticated caller of the current call ("" when auth is off). gRPC runs the
# interceptors and the handler of one call in the same contextvars.Context, so the
# value set in `intercept_service` is visible in the handler (and its access line).
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("xsell_caller", default="")


class SecurityConfigError(XsellError):
    """A TLS or token file is missing or malformed; names the file (and line)."""

    status = "FAILED_PRECONDITION"

    def __init__(self, message: str, *, file: str, line: int | None = None) -> None:
        self.file, self.line = file, line
        where = f"{file}, line {line}" if line is not None else file
        super().__init__(f"{where}: {message}")


# ------------------------------------------------------------------------ TLS


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of the server's TLS identity; `client_ca` turns on mutual TLS."""

    cert: str
    key: str
    client_ca: str | None = None


def _read_pem(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"cannot read the {what}: {exc.strerror}", file=path) from exc
    if b"-----BEGIN " not in data:
        raise SecurityConfigError(f"the {what} is not a PEM file", file=path)
    return data


def _check_with_openssl(tls: TlsFiles) -> None:
    """Parse the files as TLS will, so that PEM armour around garbage or a key of another
    certificate is refused naming the file: gRPC only fails at bind time, naming neither."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for path, what in ((tls.cert, "TLS certificate"), (tls.client_ca, "client CA certificate")):
        if path:
            try:
                context.load_verify_locations(cafile=path)
            except ssl.SSLError as exc:
                raise SecurityConfigError(f"the {what} cannot be parsed ({exc})", file=path) from None
    try:  # a password callback: an encrypted key fails here instead of prompting
        context.load_cert_chain(tls.cert, tls.key, password=lambda: b"")
    except ssl.SSLError as exc:
        why = "does not match" if "KEY_VALUES_MISMATCH" in str(exc) else "cannot be used with"
        raise SecurityConfigError(
            f"the TLS private key {why} the certificate {tls.cert} ({exc})", file=tls.key
        ) from None


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """gRPC credentials for `tls`; raises SecurityConfigError naming a bad file."""
    cert = _read_pem(tls.cert, "TLS certificate")
    key = _read_pem(tls.key, "TLS private key")
    ca = _read_pem(tls.client_ca, "client CA certificate") if tls.client_ca else None
    _check_with_openssl(tls)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


# --------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class Caller:
    name: str
    admin: bool


def _digest(token: str | bytes) -> bytes:
    raw = token.encode("utf-8", "surrogatepass") if isinstance(token, str) else token
    return hashlib.sha256(raw).digest()


class TokenTable:
    """Known callers by token digest; `lookup` runs in constant time per table."""

    def __init__(self, callers: dict[str, Caller]) -> None:
        # token -> caller is kept only as digests: the plain tokens are dropped here
        self._entries = [(_digest(token), caller) for token, caller in callers.items()]

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def names(self) -> list[str]:
        return [caller.name for _, caller in self._entries]

    def lookup(self, token: str) -> Caller | None:
        presented = _digest(token)
        found = None
        for digest, caller in self._entries:  # no early exit: every entry is compared
            if hmac.compare_digest(presented, digest):
                found = caller
        return found


def parse_tokens(text: str, *, file: str) -> TokenTable:
    """Parse token-file text (`NAME TOKEN [admin]` per line); errors name the line."""
    callers: dict[str, Caller] = {}
    names: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) not in (2, 3) or (len(fields) == 3 and fields[2] != "admin"):
            raise SecurityConfigError(
                f"expected `NAME TOKEN [admin]`, found {len(fields)} fields", file=file, line=number
            )
        name, token = fields[0], fields[1]
        if len(token) < MIN_TOKEN_CHARS:
            raise SecurityConfigError(
                f"token of {name!r} is {len(token)} characters, at least {MIN_TOKEN_CHARS} needed",
                file=file,
                line=number,
            )
        if name in names:
            raise SecurityConfigError(f"caller {name!r} is listed twice", file=file, line=number)
        if token in callers:
            raise SecurityConfigError(
                f"caller {name!r} reuses the token of {callers[token].name!r}",
                file=file,
                line=number,
            )
        names.add(name)
        callers[token] = Caller(name, admin=len(fields) == 3)
    if not callers:
        raise SecurityConfigError(
            "no caller listed (expected `NAME TOKEN [admin]` lines)", file=file
        )
    return TokenTable(callers)


def load_tokens(path: str | os.PathLike) -> TokenTable:
    """Read a token file; warns when other users may read it."""
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
        mode = os.stat(path).st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise SecurityConfigError(f"cannot read the token file: {exc}", file=path) from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("token file %s is readable by group or others (chmod 600 it)", path)
    return parse_tokens(text, file=path)


def tokens_path(flag: str | None) -> str | None:
    """The token file to use: the flag, else $XSELL_AUTH_TOKENS_FILE, else None (auth off)."""
    return flag or os.environ.get(TOKENS_ENV) or None


def bearer_token(metadata) -> str | None:
    """The token of an `authorization: Bearer <token>` header, or None."""
    for key, value in metadata or ():
        if key == AUTH_HEADER:
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def is_loopback_peer(peer: str) -> bool:
    """True for a gRPC peer string of a local caller (`ipv4:127.x`, `ipv6:[::1]`, `unix:`)."""
    # gRPC reports IPv6 peers URI-encoded: "ipv6:%5B::1%5D:41234"
    peer = urllib.parse.unquote(peer)
    return peer.startswith(("ipv4:127.", "ipv6:[::1]", "ipv6:[::ffff:127.", "unix:"))


def reload_allowed(*, auth_on: bool, allow_unauthenticated: bool, peer: str) -> bool:
    """Whether ReloadModel may run when the auth interceptor let the call through.

    With auth on the interceptor already demanded an admin token. With auth off,
    anyone who can reach the port could swap the model, so by default only local
    callers may (an operator on the host, a sidecar); `--allow-unauthenticated-reload`
    opens it to every peer.
    """
    return auth_on or allow_unauthenticated or is_loopback_peer(peer)


# ----------------------------------------------------------------- interceptor


def _refusal_handler(code: grpc.StatusCode, details: str, on_call) -> grpc.RpcMethodHandler:
    """A handler that answers `code` without receiving or parsing the request.

    It does not need the method's arity (which only the handler lookup, admission
    included, could tell): declared request-streaming, gRPC runs it without waiting for a
    request, and setting the status and returning no message ends a call of any arity
    on the wire (the serving interceptor's admission refusal does the same)."""

    def refuse(_requests, context):
        on_call()
        context.set_code(code)
        context.set_details(details)

    return grpc.stream_unary_rpc_method_handler(refuse)


class AuthInterceptor(grpc.ServerInterceptor):
    """Bearer-token check for every method but health; admin check for ADMIN_METHODS.

    `on_refusal(full_method, code_name, caller)` is called (on a pool thread) for each
    refused call, of any method, for metrics and the access log.
    """

    def __init__(
        self,
        tokens: TokenTable,
        *,
        on_refusal: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self._tokens = tokens
        self._on_refusal = on_refusal or (lambda *_: None)

    def intercept_service(self, continuation, details):
        method = details.method
        if method.startswith(HEALTH_PREFIX):
            return continuation(details)
        # Checked before `continuation`: the handler lookup runs the inner interceptors, and
        # the serving one admits RecommendService calls there (takes a ticket, or counts a
        # shed and may enter the overload state), which a refused call must not touch. So
        # a call to a method that does not exist is UNAUTHENTICATED too, not UNIMPLEMENTED:
        # an unauthenticated caller learns nothing about the API.
        token = bearer_token(details.invocation_metadata)
        caller = self._tokens.lookup(token) if token is not None else None
        if caller is None:
            reason = "missing" if token is None else "unknown"
            return _refusal_handler(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{reason} bearer token (send `authorization: Bearer <token>`)",
                lambda: self._on_refusal(method, "UNAUTHENTICATED", ""),
            )
        if method in ADMIN_METHODS and not caller.admin:
            return _refusal_handler(
                grpc.StatusCode.PERMISSION_DENIED,
                f"caller {caller.name!r} is not an admin; {method.rsplit('/', 1)[-1]} needs an "
                "admin token",
                lambda: self._on_refusal(method, "PERMISSION_DENIED", caller.name),
            )
        CALLER.set(caller.name)
        return continuation(details)
