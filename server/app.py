"""Build and run one gRPC server process.

`create_server` wires the RecommendService (xsell.server.service), the standard
health service, server reflection, the serving interceptor (errors, metrics, access
log, deadlines), message-size limits, keepalive and the in-flight bound into one
`grpc.Server`. It does not start it; `XsellServer.start()` does.

Overload (see xsell.server.interceptor): at most `max_in_flight` RecommendService
calls are held (default 64; 2 x threads while overloaded, i.e. once that bound was
reached or calls waited over 50 ms for a slot for 0.5 s of CPU time, when calls that
waited over 20 ms for a slot are refused too), at most `threads` (default 1) run ranking code
at once, the others wait for a slot; past the bound a call is answered
RESOURCE_EXHAUSTED at once. Ranking holds the GIL and each worker has one core, so a
second ranking thread adds no throughput, only contention: under 5 x overload, with
2 a ranking call took 12-13 ms at p50 (5.7 ms unloaded) and the accepted p99 was 115 ms
against 48 ms with 1 (issue 7 figures in server/README.md; with 8 the gRPC polling
thread starved). The
pool has `SPARE_THREADS` more threads than that bound, so refusals and health checks
never wait behind ranking; gRPC's `maximum_concurrent_rpcs` (the same total) is the
last-resort bound that also counts health checks.

Security (see xsell.server.security): TLS / mutual TLS from PEM files, bearer tokens
per calling service (AuthInterceptor, outermost), ReloadModel reserved for admin
tokens, or for loopback peers when auth is off.

Health: "" and "xsell.v1.RecommendService" are NOT_SERVING until a bundle is
loaded, SERVING after, and NOT_SERVING for good once a graceful stop begins.

Shutdown (`run_until_signalled`): on SIGTERM or SIGINT health turns NOT_SERVING,
then (after an optional drain delay, so load balancers notice) the server stops
accepting calls and gives the ones in flight `grace` seconds to finish. A second
signal cancels what is left.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from xsell.server.interceptor import (
    ACCESS_LOGGER,
    DEFAULT_MAX_IN_FLIGHT,
    SERVICE_NAME,
    SPARE_THREADS,
    Admission,
    ServingInterceptor,
)
from xsell.server.metrics import ServerMetrics
from xsell.server.security import AuthInterceptor, TlsFiles, TokenTable, server_credentials
from xsell.server.service import ModelHolder, RecommendServicer, ReloadBroadcast

from xsell.errors import XsellError
from xsell.v1 import xsell_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from xsell.ranking.ranker import Ranker

log = logging.getLogger("xsell.server")

DEFAULT_THREADS = 1  # running calls per process; see the module doc
MAX_RECEIVE_BYTES = 4 * 1024 * 1024  # a request: 100 cart lines + 3 x 1000 filter ids fit easily
MAX_SEND_BYTES = 16 * 1024 * 1024  # a 64-request batch of 2 x 100 explained items can pass 4 MiB
HEALTH_SERVICES = ("", SERVICE_NAME)


class BindError(XsellError):
    """The server could not listen on the address."""

    status = "UNAVAILABLE"


def server_options(*, reuse_port: bool) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        # gRPC sets SO_REUSEPORT by default on Linux; off unless asked, so a second
        # server started by mistake on a busy port fails instead of sharing it.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        # Ping idle connections every 60 s and drop them 20 s after an unanswered
        # ping, so dead clients do not pin resources.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Let clients ping every 10 s (the default 5 min closes such clients with GOAWAY).
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        # Clients reconnect every ~5 min, so with SO_REUSEPORT a restarted worker gets
        # its share of connections back instead of its peers keeping them forever.
        ("grpc.max_connection_age_ms", 300_000),
        ("grpc.max_connection_age_grace_ms", 30_000),
    ]


class XsellServer(grpc.Server):
    """A grpc.Server plus the parts tests and the CLI need to reach."""

    def __init__(
        self,
        server: grpc.Server,
        *,
        port: int,
        holder: ModelHolder,
        health_servicer: health.HealthServicer,
        metrics: ServerMetrics,
        broadcast: ReloadBroadcast | None,
        admission: Admission | None = None,
    ) -> None:
        self._server = server
        self.admission = admission
        self.port = port
        self.holder = holder
        self.health = health_servicer
        self.metrics = metrics
        self.broadcast = broadcast

    # grpc.Server interface, delegated
    def add_generic_rpc_handlers(self, generic_rpc_handlers):
        self._server.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name, method_handlers):
        self._server.add_registered_method_handlers(service_name, method_handlers)

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    def start(self) -> None:
        self._server.start()
        if self.broadcast is not None:
            self.broadcast.start()

    def stop(self, grace: float | None) -> threading.Event:
        self.health.enter_graceful_shutdown()
        if self.broadcast is not None:
            self.broadcast.stop()
        return self._server.stop(grace)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout)

    def graceful_stop(self, grace: float = 10.0, *, drain_delay: float = 0.0) -> threading.Event:
        """Health NOT_SERVING, wait `drain_delay`, stop accepting, drain for `grace` s."""
        self.health.enter_graceful_shutdown()
        if drain_delay > 0:
            time.sleep(drain_delay)
        return self.stop(grace)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def create_server(
    ranker_or_bundle_dir: Ranker | str | os.PathLike | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    threads: int = DEFAULT_THREADS,
    max_in_flight: int | None = None,
    bundle_root: str | os.PathLike | None = None,
    reuse_port: bool = False,
    access_log: bool = True,
    metrics: ServerMetrics | None = None,
    reload_state_file: str | os.PathLike | None = None,
    reload_poll_seconds: float = 1.0,
    tls: TlsFiles | None = None,
    tokens: TokenTable | None = None,
    allow_unauthenticated_reload: bool = False,
    overload_in_flight: int | None = None,
    standing_after: float = 0.5,
    target_wait: float = 0.050,
    overload_wait: float = 0.020,
) -> tuple[XsellServer, int]:
    """A configured, unstarted server and the port it bound (port 0 = a free one).

    `ranker_or_bundle_dir`: a loaded Ranker, a bundle directory (loaded now; raises
    BundleError), or None to start NOT_SERVING until a ReloadModel call loads one.
    `bundle_root`: ReloadModel only loads bundles below it; default the parent of
    the startup bundle. `reload_state_file`: shared with sibling worker processes
    (see xsell.server.service). `tls`: serve TLS (mutual TLS when it has a client
    CA). `tokens`: demand a bearer token on every call but health (auth off when
    None). `allow_unauthenticated_reload`: with auth off, let any peer (not only
    loopback ones) call ReloadModel. Raises BindError when the address is taken,
    SecurityConfigError for an unusable TLS file. `overload_in_flight`,
    `standing_after`, `target_wait`, `overload_wait`: the overload rules (see `Admission`).
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if max_in_flight is None:
        max_in_flight = max(DEFAULT_MAX_IN_FLIGHT, 2 * threads)
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    metrics = metrics if metrics is not None else ServerMetrics()
    health_servicer = health.HealthServicer()
    for name in HEALTH_SERVICES:
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    holder = ModelHolder()

    def swapped(old: Ranker | None, new: Ranker) -> None:
        metrics.model_swapped(old.version if old is not None else None, new.version)
        for name in HEALTH_SERVICES:  # ignored by the servicer once shutdown began
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    holder.on_swap(swapped)
    holder.on_refusal(lambda _error: metrics.reloads.labels("refused").inc())

    startup_bundle: Path | None = None
    if isinstance(ranker_or_bundle_dir, (str, os.PathLike)):
        startup_bundle = Path(os.path.realpath(ranker_or_bundle_dir))
        holder.load(startup_bundle)  # before binding: a worker never accepts calls it cannot serve
    elif ranker_or_bundle_dir is not None:
        startup_bundle = Path(os.path.realpath(ranker_or_bundle_dir.bundle_dir))
        holder.set(ranker_or_bundle_dir)
    root = (
        Path(bundle_root)
        if bundle_root is not None
        else (startup_bundle.parent if startup_bundle else None)
    )

    broadcast = None
    if reload_state_file is not None:
        broadcast = ReloadBroadcast(reload_state_file, holder, poll_seconds=reload_poll_seconds)
    servicer = RecommendServicer(
        holder,
        metrics,
        bundle_root=root,
        startup_bundle=startup_bundle,
        broadcast=broadcast,
        auth_on=tokens is not None,
        allow_unauthenticated_reload=allow_unauthenticated_reload,
    )
    credentials = server_credentials(tls) if tls is not None else None  # files read before binding
    admission = Admission(
        max_in_flight,
        threads,
        overload_in_flight=overload_in_flight,
        standing_after=standing_after,
        target_wait=target_wait,
        overload_wait=overload_wait,
        metrics=metrics,
    )
    serving = ServingInterceptor(metrics, access_log=access_log, admission=admission)
    interceptors: list[grpc.ServerInterceptor] = [serving]
    if tokens is not None:
        interceptors.insert(0, AuthInterceptor(tokens, on_refusal=serving.record_refusal))
    held = max_in_flight + SPARE_THREADS
    pool = ThreadPoolExecutor(max_workers=held, thread_name_prefix="xsell-rpc")
    server = grpc.server(
        pool,
        interceptors=interceptors,
        options=server_options(reuse_port=reuse_port),
        maximum_concurrent_rpcs=held,
    )
    pb_grpc.add_RecommendServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = _address(host, port)
    why = ""
    try:
        if credentials is not None:
            bound = server.add_secure_port(address, credentials)
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc >= 1.5x raises instead of returning 0
        bound, why = 0, f": {exc}"
    if bound == 0:
        # Release them now, not when the garbage collector gets to them: the BindError's
        # traceback holds this frame (hence `del`, and no `from exc`: gRPC's frames in that
        # traceback hold the server too). stop() of a never-started server is a no-op in
        # grpc 1.85 (already in its STOPPED stage); called for a gRPC that holds more.
        server.stop(None)
        pool.shutdown(wait=False, cancel_futures=True)
        del server, pool
        raise BindError(f"cannot listen on {address}{why}")
    wrapped = XsellServer(
        server,
        port=bound,
        holder=holder,
        health_servicer=health_servicer,
        metrics=metrics,
        broadcast=broadcast,
        admission=admission,
    )
    return wrapped, bound


def configure_access_log(enabled: bool = True) -> None:
    """Access lines are bare JSON on stderr, one per call, apart from the text logs."""
    access = logging.getLogger(ACCESS_LOGGER)
    access.propagate = False
    access.handlers.clear()
    if enabled:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
    else:
        access.setLevel(logging.WARNING)


def run_until_signalled(
    server: XsellServer,
    *,
    grace: float = 10.0,
    drain_delay: float = 0.0,
    signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
    force_on_repeat: bool = True,
) -> None:
    """Serve until a signal, then drain gracefully. Call from the main thread.

    `force_on_repeat`: a second signal cancels the calls still running. Workers under
    the supervisor pass False: systemd and `kill -- -PGID` signal every process of the
    group, so a worker may get SIGTERM twice (direct and forwarded) and must keep
    draining; the supervisor escalates with SIGKILL after the grace period instead.
    """
    stopping = threading.Event()

    def handle(signum: int, _frame) -> None:
        if stopping.is_set():
            if force_on_repeat:
                log.warning(
                    "%s again: cancelling the calls still running", signal.Signals(signum).name
                )
                threading.Thread(target=server.stop, args=(0,), daemon=True).start()
            return
        stopping.set()
        log.info(
            "%s: draining (health NOT_SERVING, grace %.1fs)", signal.Signals(signum).name, grace
        )
        threading.Thread(
            target=server.graceful_stop,
            args=(grace,),
            kwargs={"drain_delay": drain_delay},
            daemon=True,
        ).start()

    previous = {s: signal.signal(s, handle) for s in signals}
    try:
        server.wait_for_termination()
    finally:
        if force_on_repeat:  # else keep ignoring repeats until the process exits
            for s, h in previous.items():
                signal.signal(s, h)
    log.info("server stopped (pid %d)", os.getpid())
