"""One error hierarchy for xsell.

Each error names what went wrong and where (file/row/column, request field, bundle
file). `status` is the name of the gRPC status code the server answers with; the
mapping to `grpc.StatusCode` happens in one place (`xsell.server.errors`), so the
core packages never import grpc.
"""

from __future__ import annotations


class XsellError(Exception):
    """Base class. `status` names the gRPC code this error maps to."""

    status = "INTERNAL"


class DataError(XsellError):
    """A data file is unreadable or breaks the data contract (DESIGN.md section 1)."""

    status = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        self.file, self.row, self.column, self.reason = file, row, column, message
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class InvalidRequest(XsellError):
    """A request field has a bad value; the message starts with the field name."""

    status = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class BundleError(XsellError):
    """A model bundle is missing, corrupt or incompatible with this code."""

    status = "FAILED_PRECONDITION"

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class NotReady(XsellError):
    """No model bundle is loaded yet (or the server is shutting down)."""

    status = "UNAVAILABLE"


class Overloaded(XsellError):
    """Too many requests in flight; the caller should back off and retry."""

    status = "RESOURCE_EXHAUSTED"


class Unauthenticated(XsellError):
    status = "UNAUTHENTICATED"


class PermissionDenied(XsellError):
    status = "PERMISSION_DENIED"
