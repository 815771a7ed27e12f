"""`xsell serve`: the gRPC ranking server (see xsell.server.workers)."""

from __future__ import annotations

import argparse
import logging
import sys


def add_parser(subparsers) -> None:
    from xsell.server.workers import CPU_POLICIES, default_workers

    p = subparsers.add_parser(
        "serve",
        help="serve a model bundle over gRPC",
        description="Serve cross-sell / up-sell rankings from a model bundle over gRPC "
        "(RecommendService, health, reflection). SIGTERM drains gracefully.",
    )
    p.add_argument(
        "--bundle", required=True, help="model bundle directory (written by `xsell train`)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument(
        "--port", type=int, default=50051, help="port; 0 = pick a free one (default %(default)s)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="worker processes sharing the port, each pinned to a core; 1 = in-process (default: cores, %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="calls a worker ranks at once; ranking holds the GIL, so more only adds contention "
        "(default %(default)s)",
    )
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="calls a worker holds (ranking + queued) before answering RESOURCE_EXHAUSTED "
        "(default max(64, 2 x threads))",
    )
    p.add_argument(
        "--metrics-port", type=int, default=0, help="Prometheus /metrics port; 0 = off (default)"
    )
    p.add_argument("--metrics-host", default=None, help="address for /metrics (default: --host)")
    p.add_argument(
        "--bundle-root",
        default=None,
        help="ReloadModel loads bundles only below this directory (default: the bundle's parent)",
    )
    p.add_argument(
        "--grace", type=float, default=10.0, help="seconds calls in flight get at shutdown"
    )
    p.add_argument(
        "--drain-delay",
        type=float,
        default=0.0,
        help="seconds between health NOT_SERVING and refusing new calls at shutdown (default 0)",
    )
    p.add_argument(
        "--no-access-log", dest="access_log", action="store_false", help="no JSON line per call"
    )
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin workers to cores")
    p.add_argument(
        "--cpu-policy",
        choices=CPU_POLICIES,
        default="batch",
        help="Linux scheduling policy of the serving processes: batch (SCHED_BATCH: a woken "
        "thread does not preempt the ranking one; see server/README.md) or normal "
        "(default %(default)s)",
    )
    sec = p.add_argument_group("security (see server/README.md)")
    sec.add_argument(
        "--tls-cert", default=None, help="PEM certificate (chain) of the server: serve TLS"
    )
    sec.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    sec.add_argument(
        "--tls-client-ca",
        default=None,
        help="PEM CA certificate(s): mutual TLS, clients need a certificate signed by it",
    )
    sec.add_argument(
        "--auth-tokens",
        default=None,
        help="token file, one `NAME TOKEN [admin]` line per calling service: every call but "
        "health needs `authorization: Bearer TOKEN`, ReloadModel an admin token "
        "(default: $XSELL_AUTH_TOKENS_FILE; neither = auth off)",
    )
    sec.add_argument(
        "--allow-unauthenticated-reload",
        action="store_true",
        help="with auth off, let any peer call ReloadModel (default: only loopback peers)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from xsell.server.security import tokens_path
    from xsell.server.workers import ServeConfig, serve

    config = ServeConfig(
        bundle=args.bundle,
        host=args.host,
        port=args.port,
        workers=args.workers,
        threads=args.threads,
        max_in_flight=args.max_in_flight,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        bundle_root=args.bundle_root,
        grace=args.grace,
        drain_delay=args.drain_delay,
        access_log=args.access_log,
        pin=args.pin,
        cpu_policy=args.cpu_policy,
        log_level=logging.getLogger().getEffectiveLevel(),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        auth_tokens=tokens_path(args.auth_tokens),
        allow_unauthenticated_reload=args.allow_unauthenticated_reload,
    )
    try:
        return serve(config)
    except ValueError as exc:  # a bad flag combination: a usage error, as every other
        print(f"xsell serve: error: {exc}", file=sys.stderr)
        return 2
