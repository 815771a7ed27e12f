"""Cross-cutting concerns of every RecommendService call, in one server interceptor.

For each call: admission against the in-flight bound, deadline / cancellation
check before any work, the error-to-status mapping (`xsell.server.errors.to_status`),
request counters and latency, the in-flight gauge, and one JSON access-log line with
ids only (never payloads, never credentials). Health and reflection calls pass
through untouched: they must stay cheap.

Overload (`Admission`): at most `threads` RecommendService calls run ranking code at
once (a FIFO semaphore); the others wait for a slot. At most `max_in_flight` calls
are held (running + waiting), or `overload_in_flight` (2 x threads) while a queue is
standing; a call past the bound is answered RESOURCE_EXHAUSTED at once, without being
deserialised. The gRPC thread pool has `max_in_flight + SPARE_THREADS` threads, so a
refusal or a health check never waits behind ranking work; gRPC's own
`maximum_concurrent_rpcs` (same number) is only the last-resort bound on calls held
by the process (it counts health checks too).

A request that is not a valid protobuf message is answered INVALID_ARGUMENT (field
`request`) instead of gRPC's INTERNAL "Exception deserializing request!": the
deserializer returns an `Undecodable` marker that the handler wrapper turns into
InvalidRequest.

gRPC runs `intercept_service` on its polling thread, so it only looks up a wrapped
handler and takes an admission ticket; the wrapper runs on the worker pool.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import grpc
from xsell.server.errors import DeadlineExpired, check_time_left, to_status
from xsell.server.metrics import ServerMetrics
from xsell.server.security import CALLER

from xsell.errors import InvalidRequest
from xsell.v1 import xsell_pb2 as pb

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RecommendService"].full_name
ACCESS_LOGGER = "xsell.access"
_MAX_LOGGED_ID = 128  # ids are logged, truncated: a 1 MB "user id" must not fill the log
SPARE_THREADS = 32  # pool threads beyond max_in_flight: refusals and health never queue
DEFAULT_MAX_IN_FLIGHT = 32


def _short(value: str) -> str:
    return value if len(value) <= _MAX_LOGGED_ID else value[:_MAX_LOGGED_ID] + "..."


def access_fields(request: Any, response: Any) -> dict[str, Any]:
    """Ids and counts worth logging for one call; never item lists or filters."""
    fields: dict[str, Any] = {}
    if isinstance(request, pb.RecommendRequest):
        fields.update(
            request_id=_short(request.request_id),
            variant=_short(request.variant),
            user_id=_short(request.user_id),
            cart_lines=len(request.cart),
        )
    elif isinstance(request, pb.RecommendBatchRequest):
        fields["requests"] = len(request.requests)
    elif isinstance(request, pb.ReloadModelRequest):
        fields["bundle_path"] = _short(request.bundle_path)
    if isinstance(response, pb.RecommendResponse):
        fields.update(
            n=len(response.cross_sell) + len(response.up_sell), model_version=response.model_version
        )
        if response.fallback:
            fields["fallback"] = True
    elif isinstance(response, pb.RecommendBatchResponse):
        fields["n"] = sum(len(r.cross_sell) + len(r.up_sell) for r in response.responses)
    elif isinstance(response, (pb.GetModelInfoResponse, pb.ReloadModelResponse)):
        fields["model_version"] = response.model_version
    return fields


class Undecodable:
    """What the deserializer hands the handler for bytes that are not a valid message."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def tolerant_deserializer(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """`parse`, but bad bytes give an `Undecodable` instead of gRPC's INTERNAL abort."""

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the caller's bad input
            return Undecodable(exc)

    return deserialize


class Ticket:
    """One admitted call's hold on the in-flight bound; released exactly once."""

    __slots__ = ("__weakref__", "_admission", "_released")

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._released = False

    def release(self) -> None:
        if not self._released:  # the handler's finally and the GC finalizer may both call
            self._released = True
            self._admission._release()


class Admission:
    """The in-flight bounds (admitted calls) and the work slots (calls running).

    Two bounds, chosen by whether the server is overloaded, after "adaptive controlled
    delay" (Facebook, "Fail at Scale", 2015). Normally it holds up to `max_in_flight`
    calls, so the bursts of a busy but healthy server are queued, not refused. When no
    arriving call has found the server idle (no queue, a free slot) for `standing_after`
    (250 ms), a queue is standing: overload. Then it holds at most `overload_in_flight`
    (2 x threads) calls; the excess is answered RESOURCE_EXHAUSTED at once by the cheap
    refusal path, and what it accepts waits behind a few calls only. It leaves that
    state when idle arrivals are common again (an average over the last ~50 arrivals,
    refused ones included, above 20%): a single lucky arrival during an overload must
    not reopen the gates to a backlog that gRPC core holds. A queued call waits for a
    slot until its deadline.
    """

    EXIT_IDLE_SHARE = 0.2
    _DECAY = 0.98  # per arrival: an average over ~50 arrivals

    def __init__(
        self,
        max_in_flight: int,
        threads: int,
        *,
        overload_in_flight: int | None = None,
        standing_after: float = 0.250,
    ) -> None:
        if max_in_flight < 1 or threads < 1:
            raise ValueError(
                f"max_in_flight and threads must be >= 1, got {max_in_flight}, {threads}"
            )
        self.max_in_flight = max_in_flight
        self.overload_in_flight = min(max_in_flight, overload_in_flight or 2 * threads)
        self.standing_after = standing_after
        self._lock = threading.Lock()
        self._held = 0
        self._waiting = 0
        self._last_idle = time.monotonic()  # last arrival that found no queue and a free slot
        self._idle_share = 1.0  # moving average of "this arrival found the server idle"
        self.overloaded = False
        self.slots = threading.Semaphore(threads)  # FIFO: waiters wake in arrival order

    @property
    def held(self) -> int:
        return self._held

    def _arrival(self, idle: bool, now: float) -> None:
        """Update the overload state for one arrival (call with the lock held)."""
        self._idle_share = self._idle_share * self._DECAY + (1 - self._DECAY) * idle
        if idle:
            self._last_idle = now
        if self.overloaded:
            if self._idle_share > self.EXIT_IDLE_SHARE:
                self.overloaded = False
        elif now - self._last_idle > self.standing_after:
            self.overloaded = True
            self._idle_share = 0.0  # no idle arrival for standing_after: start from there

    def try_acquire(self) -> Ticket | None:
        with self._lock:
            bound = self.overload_in_flight if self.overloaded else self.max_in_flight
            if self._held >= bound:
                self._arrival(False, time.monotonic())  # refused: certainly not idle
                return None
            self._held += 1
        return Ticket(self)

    def _release(self) -> None:
        with self._lock:
            self._held -= 1

    def take_slot(self, context: grpc.ServicerContext) -> None:
        """Wait for a work slot; raise DeadlineExpired when the caller's deadline comes first."""
        with self._lock:
            now = time.monotonic()
            idle = self._waiting == 0 and self.slots.acquire(blocking=False)
            self._arrival(idle, now)
            if idle:
                return
            self._waiting += 1
        remaining = context.time_remaining()
        try:
            # one blocking wait, no polling: queued threads waking every few ms would fight
            # the running calls for the GIL. A cancelled caller's call leaves at its deadline.
            got = self.slots.acquire(timeout=remaining if remaining is not None else None)
        finally:
            with self._lock:
                self._waiting -= 1
        if not got:
            raise DeadlineExpired("deadline expired while waiting for a work slot")


class ServingInterceptor(grpc.ServerInterceptor):
    def __init__(
        self,
        metrics: ServerMetrics,
        *,
        access_log: bool = True,
        service: str = SERVICE_NAME,
        admission: Admission | None = None,
    ) -> None:
        self._metrics = metrics
        self._prefix = f"/{service}/"
        self._log = logging.getLogger(ACCESS_LOGGER) if access_log else None
        self._admission = admission
        # method -> (handler it wraps, wrapped behavior(request, context, ticket), refusal handler)
        self._wrapped: dict[
            str, tuple[grpc.RpcMethodHandler, Callable, grpc.RpcMethodHandler, Callable]
        ] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if (
            handler is None
            or handler.unary_unary is None
            or not details.method.startswith(self._prefix)
        ):
            return handler
        cached = self._wrapped.get(details.method)
        if cached is None or cached[0] is not handler:
            method = details.method[len(self._prefix) :]
            deserializer = tolerant_deserializer(handler.request_deserializer)
            cached = (
                handler,
                self._wrap(method, handler.unary_unary),
                grpc.unary_unary_rpc_method_handler(
                    self._refuse(method),  # no deserializer: a refusal never parses the request
                    response_serializer=handler.response_serializer,
                ),
                deserializer,
            )
            self._wrapped[details.method] = cached  # a benign race: both copies are equal
        _, behavior, refusal, deserializer = cached
        if self._admission is None:
            return grpc.unary_unary_rpc_method_handler(
                lambda request, context: behavior(request, context, None),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        ticket = self._admission.try_acquire()
        if ticket is None:
            return refusal

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            return behavior(request, context, ticket)

        # gRPC skips the handler of a call cancelled before it ran (and of one it refuses
        # itself); the ticket is then freed when gRPC drops the handler.
        weakref.finalize(call, ticket.release)
        return grpc.unary_unary_rpc_method_handler(
            call, request_deserializer=deserializer, response_serializer=handler.response_serializer
        )

    def _record(
        self, method: str, code: grpc.StatusCode, elapsed: float, request, response
    ) -> None:
        self._metrics.requests.labels(method, code.name).inc()
        access = self._log
        if access is not None and access.isEnabledFor(logging.INFO):
            line = {"method": method, "code": code.name, "latency_ms": round(elapsed * 1e3, 3)}
            caller = CALLER.get()
            if caller:
                line["caller"] = caller
            line.update(access_fields(request, response))
            access.info(json.dumps(line, ensure_ascii=False))

    def record_refusal(self, full_method: str, code: str, caller: str) -> None:
        """Count and log a call the auth interceptor refused (it never reaches `_wrap`)."""
        method = full_method.removeprefix(self._prefix)
        token = CALLER.set(caller)
        try:
            self._record(method, grpc.StatusCode[code], 0.0, None, None)
        finally:
            CALLER.reset(token)

    def _refuse(self, method: str):
        def refuse(_request: bytes, context: grpc.ServicerContext) -> None:
            self._record(method, grpc.StatusCode.RESOURCE_EXHAUSTED, 0.0, None, None)
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"overloaded: {self._admission.max_in_flight} calls in flight; back off and retry",
            )

        return refuse

    def _wrap(self, method: str, behavior: Callable[[Any, grpc.ServicerContext], Any]):
        metrics = self._metrics
        in_flight = metrics.in_flight
        latency = metrics.latency.labels(method)
        admission = self._admission
        message = f"xsell.v1.{method}Request"

        def call(request: Any, context: grpc.ServicerContext, ticket: Ticket | None) -> Any:
            start = time.perf_counter()
            response, status, slot = None, None, False
            try:
                if isinstance(request, Undecodable):
                    raise InvalidRequest(
                        "request", f"not a valid {message} protobuf message ({request.error})"
                    )
                check_time_left(context, before=f"{method} started")
                in_flight.inc()  # admitted: queued for a work slot or running
                try:
                    if admission is not None:
                        admission.take_slot(context)
                        slot = True
                        check_time_left(context, before=f"{method} started")
                    response = behavior(request, context)
                finally:
                    in_flight.dec()
            except Exception as exc:  # noqa: BLE001 - to_status is the one mapping; it logs the unexpected
                status = to_status(exc)
            finally:
                if slot:
                    admission.slots.release()
                if ticket is not None:
                    ticket.release()
            elapsed = time.perf_counter() - start
            code = grpc.StatusCode.OK if status is None else status.code
            latency.observe(elapsed)
            self._record(
                method,
                code,
                elapsed,
                None if isinstance(request, Undecodable) else request,
                response,
            )
            if status is not None:
                if status.trailing_metadata:
                    context.set_trailing_metadata(status.trailing_metadata)
                context.abort(status.code, status.details)  # raises; gRPC sends the status
            return response

        return call
