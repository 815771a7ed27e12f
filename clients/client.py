"""Python client of `xsell.v1.RecommendService` (protos/xsell/v1/xsell.proto).

    from xsell.clients import XsellClient, Filters

    with XsellClient("127.0.0.1:50051") as client:
        recs = client.recommend(user_id="u1", cart=["A", "B"], strategy="up_sell", limit=5)
        for item in recs.up_sell:
            print(item.item_id, item.price, item.price_uplift)

Behaviour shared with the asyncio client (`xsell.clients.aio`):

* **Deadlines always.** `timeout` (default 1 s) bounds a whole method call,
  retries and back-off included, like gRPC's own retry policy: each attempt gets
  the time that is left. A per-call `timeout=` overrides it.
* **Retries only on UNAVAILABLE** (server down, restarting, not serving a bundle
  yet, draining): at most `retries` more attempts, exponential back-off with
  jitter (`Backoff`), and never past the deadline. Every other code is raised at
  once: INVALID_ARGUMENT will not get better, DEADLINE_EXCEEDED means the budget
  is spent, and RESOURCE_EXHAUSTED is left to the caller's own load shedding.
* **Errors** are `XsellRpcError` with `.code` (grpc.StatusCode), `.details` (the
  server's message) and, for INVALID_ARGUMENT, `.field` (the server's
  `xsell-error-field` trailing metadata, e.g. "filters.price_min").
  A request this module cannot even encode raises `InvalidRequest` naming the field.
* **Typed results** (`xsell.clients.results`); `raw=True` returns the protobuf.
* **TLS / tokens**: `tls=TlsOptions(...)` makes a secure channel (mTLS with a client
  certificate and key); `token=` is sent as `authorization: Bearer <token>` on
  every call.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from xsell.clients.results import (
    ModelInfo,
    Recommendations,
    ReloadResult,
    model_info_from_pb,
    recommendations_from_pb,
    reload_from_pb,
)

from xsell.errors import InvalidRequest, XsellError
from xsell.v1 import xsell_pb2 as pb
from xsell.v1 import xsell_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger("xsell.clients")

DEFAULT_TIMEOUT = 1.0  # seconds for a whole call, retries included
DEFAULT_RETRIES = 3
# `xsell serve --workers N` shares one port between N processes (SO_REUSEPORT): the
# kernel gives each *connection* to one worker, so one connection reaches one worker.
# Calls rotate over this many connections (each opened at its first call).
DEFAULT_CONNECTIONS = 4
MAX_CONNECTIONS = 64
RELOAD_TIMEOUT = 60.0  # ReloadModel loads a bundle (seconds, not milliseconds)
MAX_RECEIVE_BYTES = 16 * 1024 * 1024  # the server may send up to 16 MiB (batch answers)
MIN_ATTEMPT_SECONDS = 0.01  # less time than this left: another attempt cannot succeed
# Trailing metadata naming the bad field of an INVALID_ARGUMENT (server/errors.py sends it;
# repeated here because a client must not need the server package).
FIELD_METADATA_KEY = "xsell-error-field"
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})

_STRATEGIES = {
    "cross_sell": pb.STRATEGY_CROSS_SELL,
    "up_sell": pb.STRATEGY_UP_SELL,
    "both": pb.STRATEGY_BOTH,
}


# ------------------------------------------------------------------ errors


class ClientConfigError(XsellError, ValueError):
    """The client was configured wrongly (address, TLS files, timeout, token)."""

    status = "INVALID_ARGUMENT"


class XsellRpcError(XsellError):
    """A call failed with a gRPC status.

    `code`: grpc.StatusCode; `details`: the server's message; `field`: the request
    field the server named (INVALID_ARGUMENT only, else None); `method`: the RPC
    name; `attempts`: calls made (more than 1 when UNAVAILABLE was retried).
    """

    def __init__(
        self,
        method: str,
        code: grpc.StatusCode,
        details: str,
        *,
        field: str | None = None,
        attempts: int = 1,
    ) -> None:
        self.method, self.code, self.details, self.field, self.attempts = (
            method,
            code,
            details,
            field,
            attempts,
        )
        self.status = code.name  # XsellError's contract: the status code's name
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        super().__init__(f"{method}: {code.name}: {details}{tries}")

    @classmethod
    def from_grpc(cls, method: str, exc: grpc.RpcError, *, attempts: int = 1) -> XsellRpcError:
        """From a sync `grpc.RpcError` or a `grpc.aio.AioRpcError` (same accessors)."""
        code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
        details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
        field = None
        trailing = (
            exc.trailing_metadata() if callable(getattr(exc, "trailing_metadata", None)) else None
        )
        for key, value in trailing or ():
            if key == FIELD_METADATA_KEY:
                field = value.decode() if isinstance(value, bytes) else value
        return cls(method, code, details or "", field=field, attempts=attempts)


# ------------------------------------------------------------------ channel settings


def _read(path: str | os.PathLike | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ClientConfigError(
            f"tls {what}: cannot read {os.fspath(path)!r}: {exc.strerror}"
        ) from None


@dataclass(frozen=True)
class TlsOptions:
    """TLS for the channel; PEM files are read when the client is created.

    ca_cert: CA bundle that signed the server's certificate (None = system roots).
    client_cert / client_key: the client's certificate chain and key for mTLS (both or neither).
    server_name: the name to verify in the server's certificate when it differs from
    the address's host (e.g. connecting by IP); also sent as SNI.
    """

    ca_cert: str | os.PathLike | None = None
    client_cert: str | os.PathLike | None = None
    client_key: str | os.PathLike | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ClientConfigError("tls: client_cert and client_key go together (mTLS needs both)")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_cert, "ca_cert"),
            private_key=_read(self.client_key, "client_key"),
            certificate_chain=_read(self.client_cert, "client_cert"),
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


@dataclass(frozen=True)
class Backoff:
    """Waits between retries: min(maximum, initial * multiplier**n), scaled by a
    random factor in [1 - jitter, 1 + jitter] (callers must not retry in lockstep),
    never above `maximum`."""

    initial: float = 0.05
    maximum: float = 1.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum and math.isfinite(self.maximum)):
            raise ClientConfigError(
                f"backoff: need 0 < initial <= maximum, got initial={self.initial} maximum={self.maximum}"
            )
        if self.multiplier < 1:
            raise ClientConfigError(f"backoff: multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter < 1:
            raise ClientConfigError(f"backoff: jitter must be in [0, 1), got {self.jitter}")

    def delay(self, retry: int, u: float) -> float:
        """Seconds before retry number `retry` (0 = the first retry); `u` in [0, 1)."""
        # cap the exponent: multiplier**1000 overflows a float long after the cap bites
        base = min(self.maximum, self.initial * self.multiplier ** min(retry, 64))
        return min(self.maximum, base * (1.0 - self.jitter + 2.0 * self.jitter * u))


def next_delay(
    code: grpc.StatusCode,
    *,
    retry: int,
    retries: int,
    backoff: Backoff,
    u: float,
    time_left: float,
) -> float | None:
    """Seconds to wait before retry number `retry`, or None to give up now.

    Only RETRYABLE_CODES are retried, at most `retries` times, and only while a
    retry can still start with MIN_ATTEMPT_SECONDS before the deadline.
    """
    if code not in RETRYABLE_CODES or retry >= retries:
        return None
    delay = backoff.delay(retry, u)
    if delay + MIN_ATTEMPT_SECONDS > time_left:
        return None
    return delay


def channel_options(
    backoff: Backoff, tls: TlsOptions | None, extra: Sequence[tuple[str, Any]] = ()
) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        # After a failed connect the channel answers UNAVAILABLE at once until its own
        # reconnect back-off (default 1 s, up to 120 s) expires; a retry during that
        # window cannot succeed. Align it with ours, so a retry is a real attempt.
        ("grpc.initial_reconnect_backoff_ms", max(1, int(backoff.initial * 1000))),
        ("grpc.max_reconnect_backoff_ms", max(1, int(backoff.maximum * 1000))),
        *(tls.channel_options() if tls is not None else ()),
        *extra,
    ]


def call_metadata(
    token: str | None, extra: Sequence[tuple[str, str]] = ()
) -> tuple[tuple[str, str], ...]:
    out = []
    if token:
        token = token.strip()
        if not token.isprintable() or not token.isascii() or " " in token:
            raise ClientConfigError("token: must be printable ASCII without spaces")
        out.append(("authorization", f"Bearer {token}"))
    out.extend(extra)
    return tuple(out)


def check_timeout(timeout: float, what: str = "timeout") -> float:
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise ClientConfigError(f"{what}: must be a finite number of seconds > 0, got {timeout!r}")
    return float(timeout)


# ------------------------------------------------------------------ requests


@dataclass(frozen=True)
class CartLine:
    item_id: str
    quantity: float = 1.0


CartEntry = str | CartLine | tuple[str, float]


@dataclass(frozen=True)
class Filters:
    """Business rules applied after ranking; every field optional (see the .proto)."""

    exclude_item_ids: Sequence[str] = ()
    allowed_categories: Sequence[str] = ()
    denied_categories: Sequence[str] = ()
    price_min: float | None = None
    price_max: float | None = None
    uplift_min: float | None = None  # up-sell only; None = strictly pricier than the anchor
    uplift_max: float | None = None
    exclude_purchased: bool = False
    max_per_category: int = 0  # 0 = no cap

    def to_pb(self) -> pb.Filters:
        msg = pb.Filters()
        for name in ("exclude_item_ids", "allowed_categories", "denied_categories"):
            values = getattr(self, name)
            if isinstance(values, str):
                raise InvalidRequest(f"filters.{name}", "give a list of strings, not one string")
            _set(msg, name, list(values), f"filters.{name}", extend=True)
        for name in ("price_min", "price_max", "uplift_min", "uplift_max"):
            value = getattr(self, name)
            if value is not None:  # unset stays unset: proto3 `optional` presence
                _set(msg, name, value, f"filters.{name}")
        _set(msg, "exclude_purchased", self.exclude_purchased, "filters.exclude_purchased")
        _set(msg, "max_per_category", self.max_per_category, "filters.max_per_category")
        return msg


@dataclass(frozen=True)
class RecommendRequest:
    """One shopper context (the client-side twin of the protobuf RecommendRequest).

    cart: item ids, `(item_id, quantity)` pairs or CartLine. strategy: "cross_sell",
    "up_sell" or "both". limit: items per list, 0 = the server default (10).
    cross_sell_limit / up_sell_limit: list sizes for "both" (0 = limit).
    """

    user_id: str = ""
    cart: Sequence[CartEntry] = ()
    strategy: str = "both"
    limit: int = 0
    cross_sell_limit: int = 0
    up_sell_limit: int = 0
    filters: Filters | None = None
    explain: bool = False
    variant: str = ""
    request_id: str = ""

    def to_pb(self) -> pb.RecommendRequest:
        """The protobuf request; raises InvalidRequest naming a field it cannot encode.

        Value ranges (limits, cart size, prices) are the server's to check, so every
        client gets the same messages."""
        msg = pb.RecommendRequest()
        strategy = getattr(self.strategy, "value", self.strategy)  # also a str Enum
        if strategy not in _STRATEGIES:
            raise InvalidRequest(
                "strategy", f"{self.strategy!r} is not one of {', '.join(_STRATEGIES)}"
            )
        msg.strategy = _STRATEGIES[strategy]
        for name in (
            "user_id",
            "limit",
            "cross_sell_limit",
            "up_sell_limit",
            "explain",
            "variant",
            "request_id",
        ):
            _set(msg, name, getattr(self, name), name)
        if isinstance(self.cart, (str, bytes)):
            raise InvalidRequest("cart", "give a list of item ids, not one string")
        for i, entry in enumerate(self.cart):
            if isinstance(entry, str):
                item_id, quantity = entry, 1.0
            elif isinstance(entry, CartLine):
                item_id, quantity = entry.item_id, entry.quantity
            elif isinstance(entry, tuple) and len(entry) == 2:
                item_id, quantity = entry
            else:
                raise InvalidRequest(
                    f"cart[{i}]",
                    f"expected an item id, (item_id, quantity) or CartLine, got {entry!r}",
                )
            line = msg.cart.add()
            _set(line, "item_id", item_id, f"cart[{i}].item_id")
            _set(line, "quantity", quantity, f"cart[{i}].quantity")
        if self.filters is not None:
            msg.filters.CopyFrom(self.filters.to_pb())
        return msg


def _set(msg: Any, name: str, value: Any, field_path: str, *, extend: bool = False) -> None:
    """Assign a protobuf field, turning protobuf's TypeError/ValueError into one naming it."""
    try:
        if extend:
            getattr(msg, name).extend(value)
        else:
            setattr(msg, name, value)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(field_path, f"cannot encode {value!r}: {exc}") from None


def request_to_pb(
    request: RecommendRequest | Mapping[str, Any] | pb.RecommendRequest,
) -> pb.RecommendRequest:
    if isinstance(request, pb.RecommendRequest):
        return request
    if isinstance(request, Mapping):
        try:
            request = RecommendRequest(**request)
        except TypeError as exc:
            raise InvalidRequest("request", str(exc)) from None
    if not isinstance(request, RecommendRequest):
        raise InvalidRequest("request", f"expected a RecommendRequest or a dict, got {request!r}")
    return request.to_pb()


def batch_to_pb(
    requests: Iterable[RecommendRequest | Mapping[str, Any] | pb.RecommendRequest],
) -> pb.RecommendBatchRequest:
    msg = pb.RecommendBatchRequest()
    for i, request in enumerate(requests):
        try:
            msg.requests.append(request_to_pb(request))
        except InvalidRequest as exc:
            message = str(exc).removeprefix(f"{exc.field}: ")
            raise InvalidRequest(f"requests[{i}].{exc.field}", message) from None
    return msg


# ------------------------------------------------------------------ the client


@dataclass
class _Settings:
    """What the sync and asyncio clients share (validated once)."""

    address: str
    timeout: float
    retries: int
    tls: TlsOptions | None
    metadata: tuple[tuple[str, str], ...]
    backoff: Backoff
    options: list[tuple[str, Any]]
    connections: int = 1
    rng: random.Random = field(repr=False, default_factory=random.Random)

    @classmethod
    def build(
        cls,
        address: str,
        *,
        timeout: float,
        retries: int,
        tls: TlsOptions | None,
        token: str | None,
        backoff: Backoff | None,
        metadata: Sequence[tuple[str, str]],
        options: Sequence[tuple[str, Any]],
        seed: int | None,
        connections: int = DEFAULT_CONNECTIONS,
    ) -> _Settings:
        if not isinstance(address, str) or not address.strip():
            raise ClientConfigError(f"address: expected HOST:PORT, got {address!r}")
        if not isinstance(retries, int) or retries < 0:
            raise ClientConfigError(f"retries: must be an int >= 0, got {retries!r}")
        if (
            not isinstance(connections, int)
            or isinstance(connections, bool)
            or not 1 <= connections <= MAX_CONNECTIONS
        ):
            raise ClientConfigError(
                f"connections: must be an int from 1 to {MAX_CONNECTIONS}, got {connections!r}"
            )
        backoff = backoff if backoff is not None else Backoff()
        return cls(
            address=address.strip(),
            timeout=check_timeout(timeout),
            retries=retries,
            tls=tls,
            metadata=call_metadata(token, metadata),
            backoff=backoff,
            options=channel_options(backoff, tls, options),
            connections=connections,
            rng=random.Random(seed),
        )

    def open_channels(self, insecure: Callable[..., Any], secure: Callable[..., Any]) -> list[Any]:
        """`connections` channels to the address (grpc or grpc.aio factories). With
        several, each gets its own subchannel pool: gRPC otherwise shares one connection
        between channels with the same arguments."""
        options = self.options
        if self.connections > 1:
            options = [*options, ("grpc.use_local_subchannel_pool", 1)]
        if self.tls is None:
            return [insecure(self.address, options=options) for _ in range(self.connections)]
        return [
            secure(self.address, self.tls.credentials(), options=options)
            for _ in range(self.connections)
        ]

    def plan_retry(self, exc: grpc.RpcError, retry: int, deadline: float) -> float | None:
        return next_delay(
            exc.code(),
            retry=retry,
            retries=self.retries,
            backoff=self.backoff,
            u=self.rng.random(),
            time_left=deadline - time.monotonic(),
        )


class XsellClient:
    """Blocking client, thread-safe. Close it (or use `with`).

    address: "HOST:PORT". timeout: seconds per method call, retries included
    (> 0; per-call `timeout=` overrides). retries: extra attempts on UNAVAILABLE.
    tls: None = plaintext. token: bearer token for every call. backoff: retry
    waits. metadata: extra (key, value) pairs for every call. options: extra gRPC
    channel options. seed: seeds the back-off jitter (reproducible waits).
    connections: calls (and each retry) rotate over this many connections, each
    opened at its first call, so they reach every worker of a multi-process server.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        tls: TlsOptions | None = None,
        token: str | None = None,
        backoff: Backoff | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        options: Sequence[tuple[str, Any]] = (),
        seed: int | None = None,
        connections: int = DEFAULT_CONNECTIONS,
    ) -> None:
        self._s = _Settings.build(
            address,
            timeout=timeout,
            retries=retries,
            tls=tls,
            token=token,
            backoff=backoff,
            metadata=metadata,
            options=options,
            seed=seed,
            connections=connections,
        )
        self._channels = self._s.open_channels(grpc.insecure_channel, grpc.secure_channel)
        self._stubs = [pb_grpc.RecommendServiceStub(c) for c in self._channels]
        self._turn = itertools.count()  # next() is atomic under the GIL: thread-safe
        self._closed = False

    @property
    def address(self) -> str:
        return self._s.address

    # -- RPCs

    def recommend(
        self,
        *,
        user_id: str = "",
        cart: Sequence[CartEntry] = (),
        strategy: str = "both",
        limit: int = 0,
        cross_sell_limit: int = 0,
        up_sell_limit: int = 0,
        filters: Filters | None = None,
        explain: bool = False,
        variant: str = "",
        request_id: str = "",
        timeout: float | None = None,
        raw: bool = False,
    ) -> Recommendations | pb.RecommendResponse:
        """Rank items for one shopper context (see RecommendRequest)."""
        request = RecommendRequest(
            user_id=user_id,
            cart=cart,
            strategy=strategy,
            limit=limit,
            cross_sell_limit=cross_sell_limit,
            up_sell_limit=up_sell_limit,
            filters=filters,
            explain=explain,
            variant=variant,
            request_id=request_id,
        ).to_pb()
        response = self._call("Recommend", request, timeout)
        return response if raw else recommendations_from_pb(response)

    def recommend_batch(
        self,
        requests: Iterable[RecommendRequest | Mapping[str, Any] | pb.RecommendRequest],
        *,
        timeout: float | None = None,
        raw: bool = False,
    ) -> list[Recommendations] | pb.RecommendBatchResponse:
        """Rank up to 64 contexts in one call; answers in request order. Each request
        is a RecommendRequest, a dict of its fields, or a protobuf RecommendRequest."""
        response = self._call("RecommendBatch", batch_to_pb(requests), timeout)
        return response if raw else [recommendations_from_pb(r) for r in response.responses]

    def model_info(
        self, *, timeout: float | None = None, raw: bool = False
    ) -> ModelInfo | pb.GetModelInfoResponse:
        """Describe the bundle that is serving."""
        response = self._call("GetModelInfo", pb.GetModelInfoRequest(), timeout)
        return response if raw else model_info_from_pb(response)

    def reload(
        self,
        bundle_path: str | os.PathLike = "",
        *,
        timeout: float = RELOAD_TIMEOUT,
        raw: bool = False,
    ) -> ReloadResult | pb.ReloadModelResponse:
        """Admin: load a bundle (below the server's bundle root; "" = the startup one)
        and swap it in. Refused bundles raise XsellRpcError FAILED_PRECONDITION."""
        request = pb.ReloadModelRequest(bundle_path=os.fspath(bundle_path))
        response = self._call("ReloadModel", request, timeout)
        return response if raw else reload_from_pb(response)

    # -- plumbing

    def _call(self, method: str, request: Any, timeout: float | None) -> Any:
        if self._closed:
            raise ClientConfigError(f"{method}: the client is closed")
        budget = self._s.timeout if timeout is None else check_timeout(timeout)
        deadline = time.monotonic() + budget
        retry = 0
        while True:
            rpc = getattr(self._stubs[next(self._turn) % len(self._stubs)], method)
            try:
                return rpc(
                    request,
                    timeout=max(deadline - time.monotonic(), 0.0),
                    metadata=self._s.metadata,
                )
            except grpc.RpcError as exc:
                delay = self._s.plan_retry(exc, retry, deadline)
                if delay is None:
                    raise XsellRpcError.from_grpc(method, exc, attempts=retry + 1) from None
                log.debug("%s: %s; retry %d in %.3fs", method, exc.code().name, retry + 1, delay)
                time.sleep(delay)
                retry += 1

    def close(self) -> None:
        self._closed = True
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"XsellClient({self._s.address!r}, timeout={self._s.timeout}, retries={self._s.retries}, tls={self._s.tls is not None}, connections={self._s.connections})"
