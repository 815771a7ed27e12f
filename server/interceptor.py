"""Cross-cutting concerns of every RecommendService call, in one server interceptor.

For each call: deadline / cancellation check before any work, the error-to-status
mapping (`xsell.server.errors.to_status`), request counters and latency, the
in-flight gauge, and one JSON access-log line with ids only (never payloads).
Health and reflection calls pass through untouched: they must stay cheap.

gRPC runs `intercept_service` on its polling thread, so it only looks up a
wrapped handler (built once per method); the wrapper runs on the worker pool.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from xsell.server.errors import check_time_left, to_status
from xsell.server.metrics import ServerMetrics
from xsell.v1 import xsell_pb2 as pb

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RecommendService"].full_name
ACCESS_LOGGER = "xsell.access"
_MAX_LOGGED_ID = 128  # ids are logged, truncated: a 1 MB "user id" must not fill the log


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


class ServingInterceptor(grpc.ServerInterceptor):
    def __init__(
        self, metrics: ServerMetrics, *, access_log: bool = True, service: str = SERVICE_NAME
    ) -> None:
        self._metrics = metrics
        self._prefix = f"/{service}/"
        self._log = logging.getLogger(ACCESS_LOGGER) if access_log else None
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

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
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = grpc.unary_unary_rpc_method_handler(
            self._wrap(details.method[len(self._prefix) :], handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[details.method] = (handler, wrapped)  # a benign race: both copies are equal
        return wrapped

    def _wrap(self, method: str, behavior: Callable[[Any, grpc.ServicerContext], Any]):
        metrics, access = self._metrics, self._log
        requests, in_flight = metrics.requests, metrics.in_flight
        latency = metrics.latency.labels(method)

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            in_flight.inc()
            response, status = None, None
            try:
                check_time_left(context, before=f"{method} started")
                response = behavior(request, context)
            except Exception as exc:  # noqa: BLE001 - to_status is the one mapping; it logs the unexpected
                status = to_status(exc)
            finally:
                in_flight.dec()
            elapsed = time.perf_counter() - start
            code = grpc.StatusCode.OK if status is None else status.code
            requests.labels(method, code.name).inc()
            latency.observe(elapsed)
            if access is not None and access.isEnabledFor(logging.INFO):
                line = {"method": method, "code": code.name, "latency_ms": round(elapsed * 1e3, 3)}
                line.update(access_fields(request, response))
                access.info(json.dumps(line, ensure_ascii=False))
            if status is not None:
                if status.trailing_metadata:
                    context.set_trailing_metadata(status.trailing_metadata)
                context.abort(status.code, status.details)  # raises; gRPC sends the status
            return response

        return call
