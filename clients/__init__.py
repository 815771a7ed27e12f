"""Clients of the xsell gRPC API (protos/xsell/v1/xsell.proto).

The public surface is `__all__`; see clients/README.md. Other languages live
beside this package: clients/node (Node.js), clients/go (Go).
"""

from xsell.clients.aio import AsyncXsellClient
from xsell.clients.client import (
    Backoff,
    CartLine,
    ClientConfigError,
    Filters,
    RecommendRequest,
    TlsOptions,
    XsellClient,
    XsellRpcError,
)
from xsell.clients.results import (
    ModelInfo,
    Reason,
    Recommendations,
    RecommendedItem,
    ReloadResult,
)

__all__ = [
    "AsyncXsellClient",
    "Backoff",
    "CartLine",
    "ClientConfigError",
    "Filters",
    "ModelInfo",
    "Reason",
    "RecommendRequest",
    "Recommendations",
    "RecommendedItem",
    "ReloadResult",
    "TlsOptions",
    "XsellClient",
    "XsellRpcError",
]
