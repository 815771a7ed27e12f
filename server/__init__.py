"""xsell.server: the gRPC adapter over the ranking core.

Public surface (imported lazily, so `xsell --help` does not load gRPC):

    create_server(ranker_or_bundle_dir, *, host, port, ...) -> (XsellServer, port)   app
    run_until_signalled(server, *, grace, drain_delay)                              app
    ModelHolder, RecommendServicer, resolve_bundle_path                            service
    ServeConfig, serve(config) -> exit code                                        workers

Modules: convert (protobuf <-> ranking types), errors (the one error -> status
mapping), interceptor (admission, deadlines, errors, metrics, access log), security
(TLS, bearer tokens, reload policy), metrics, service, app, workers (`xsell serve`
supervisor), cli. See server/README.md.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "create_server": "xsell.server.app",
    "run_until_signalled": "xsell.server.app",
    "XsellServer": "xsell.server.app",
    "ModelHolder": "xsell.server.service",
    "RecommendServicer": "xsell.server.service",
    "resolve_bundle_path": "xsell.server.service",
    "ServeConfig": "xsell.server.workers",
    "serve": "xsell.server.workers",
}

__all__ = [
    "ModelHolder",
    "RecommendServicer",
    "ServeConfig",
    "XsellServer",
    "create_server",
    "resolve_bundle_path",
    "run_until_signalled",
    "serve",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'xsell.server' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
