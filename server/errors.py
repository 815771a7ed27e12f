"""The one place that turns exceptions into gRPC statuses.

Every xsell error carries the *name* of its status code (`XsellError.status`, see
src/xsell/errors.py); `to_status` maps it to `grpc.StatusCode`. Anything else is a
bug: the caller gets INTERNAL with a generic message and an error id, and the
traceback goes to the log under the same id, so nothing internal leaks.

`xsell.server.interceptor.ServingInterceptor` calls `to_status` for every
RecommendService handler; handlers just raise.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import grpc

from xsell.errors import InvalidRequest, XsellError

log = logging.getLogger("xsell.server")

# Trailing-metadata key naming the bad request field of an INVALID_ARGUMENT, so a
# client need not parse the message (which also starts with the field name).
FIELD_METADATA_KEY = "xsell-error-field"


class DeadlineExpired(XsellError):
    """The caller's deadline passed before (or while) the server did the work."""

    status = "DEADLINE_EXCEEDED"


class Cancelled(XsellError):
    """The caller went away; the server stops working on the request."""

    status = "CANCELLED"


@dataclass(frozen=True)
class Status:
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str], ...] = ()


def to_status(exc: BaseException) -> Status:
    """The status to answer for `exc`; logs unexpected errors with a traceback."""
    if isinstance(exc, XsellError):
        code = getattr(grpc.StatusCode, exc.status, None)
        if code is not None and code is not grpc.StatusCode.INTERNAL:
            metadata = ((FIELD_METADATA_KEY, exc.field),) if isinstance(exc, InvalidRequest) else ()
            return Status(code, str(exc), metadata)
    error_id = uuid.uuid4().hex[:12]
    log.error("internal error %s: %s", error_id, type(exc).__name__, exc_info=exc)
    return Status(grpc.StatusCode.INTERNAL, f"internal error (id {error_id}; see the server log)")


def check_time_left(
    context: grpc.ServicerContext, *, before: str, min_seconds: float = 0.001
) -> None:
    """Raise DeadlineExpired / Cancelled instead of starting work nobody will read.

    `min_seconds`: less than this is not enough for any useful work, so stop now.
    """
    remaining = context.time_remaining()
    if remaining is not None and remaining < min_seconds:
        raise DeadlineExpired(f"deadline expired before {before}")
    if not context.is_active():  # checked second: an expired call is inactive too
        raise Cancelled(f"the caller cancelled the call before {before}")
