"""`xsell serve`: one server process, or a supervisor and N worker processes.

Why processes: a sync gRPC server in CPython is GIL-bound, so one process uses
about one core. N workers each bind the same port with SO_REUSEPORT (the kernel
spreads *connections* across them), each pinned to its own core with
`os.sched_setaffinity` (measured in issue 4: pinned sync workers spend ~300 us of
CPU per trivial call against 450-700 us unpinned), each loading the bundle itself
(the Annoy index is mmap-loaded, so its pages are shared through the page cache).

Start method: `spawn`, deliberately. gRPC's core keeps threads and polling state
that do not survive fork(), and LightGBM / OpenMP thread pools hang in a forked
child; a spawned worker is a fresh interpreter that inherits nothing but the
environment. The supervisor creates no gRPC object at all. The cost is ~1-2 s of
imports per worker start, paid at startup and restarts only.

Supervisor duties: reserve the port when `--port 0`, start the workers, print one
"listening" line on stdout once all have loaded the bundle and started, restart a
worker that dies (with back-off when it dies young; a worker that cannot load the
bundle or bind the port at first start stops the whole command), forward SIGTERM /
SIGINT to the workers as SIGTERM (each drains gracefully; workers ignore SIGINT so
Ctrl-C in a terminal does not hit them twice), serve the summed metrics on
`--metrics-port` (prometheus multiprocess mode, see xsell.server.metrics), and own
the reload state file (see xsell.server.service). It exits 0 when every worker
drained and exited 0.

`--workers 1` serves in-process: no supervisor, no pinning, no state file.

CPU policy (`--cpu-policy`, default batch): every serving process runs under Linux's
SCHED_BATCH (see `apply_cpu_policy`).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import wait as wait_for
from pathlib import Path

log = logging.getLogger("xsell.server")

EXIT_BUNDLE = 3  # the worker could not load the bundle
EXIT_BIND = 4  # the worker could not listen on the address
READY_TIMEOUT = 180.0  # seconds the supervisor waits for the first start of all workers
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


@dataclass(frozen=True)
class ServeConfig:
    bundle: str
    host: str = "127.0.0.1"
    port: int = 50051
    workers: int = 1
    threads: int = 1
    max_in_flight: int | None = None  # None = max(64, 2 x threads)
    metrics_port: int = 0  # 0 = no metrics endpoint
    metrics_host: str | None = None  # None = host
    bundle_root: str | None = None  # None = the bundle's parent directory
    grace: float = 10.0
    drain_delay: float = 0.0
    access_log: bool = True
    pin: bool = True
    log_level: int = logging.INFO
    tls_cert: str | None = None  # PEM; with tls_key: serve TLS
    tls_key: str | None = None
    tls_client_ca: str | None = None  # PEM; clients must present a certificate it signed
    auth_tokens: str | None = None  # token file (`NAME TOKEN [admin]`); None = auth off
    allow_unauthenticated_reload: bool = False  # auth off: ReloadModel from any peer
    cpu_policy: str = "batch"  # see apply_cpu_policy

    def security(self):
        """(TlsFiles | None, TokenTable | None), files read and checked now.

        Raises SecurityConfigError naming a bad file, ValueError for bad flag combinations.
        """
        from xsell.server.security import load_tokens, server_credentials

        tls = self.tls_files()
        if tls is not None:
            server_credentials(tls)  # reads every file: a bad one fails here, not in a worker
        tokens = load_tokens(self.auth_tokens) if self.auth_tokens else None
        return tls, tokens

    def tls_files(self):
        """TlsFiles | None from the flags, files not read; ValueError for bad combinations."""
        from xsell.server.security import TlsFiles

        if self.tls_cert or self.tls_key:
            if not (self.tls_cert and self.tls_key):
                raise ValueError("--tls-cert and --tls-key go together")
            return TlsFiles(self.tls_cert, self.tls_key, self.tls_client_ca)
        if self.tls_client_ca:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None


CPU_POLICIES = ("batch", "normal")


def apply_cpu_policy(policy: str) -> str:
    """Put this process under `policy` before it starts threads (they inherit it); returns
    the policy in force ("normal" where SCHED_BATCH does not exist, "inherited" where
    the kernel refuses).

    "batch" = SCHED_BATCH. A worker is ~40 threads on one core sharing one GIL, and each
    call wakes several of them (gRPC's poller, the pool thread that admits the call, the
    waiting thread handed the work slot). Under the normal policy a woken thread
    preempts the running one at once, mostly to find the GIL held and sleep again: two
    context switches and a cold cache in the middle of a ranking. SCHED_BATCH threads
    do not preempt on wake-up (the tick or the running thread blocking hands the core
    over), at the same priority otherwise. Measured with
    2 workers and the load generator sharing the 2 cores (bench_load.py, same rate):
    open-loop p50 / p99 5.4 / 28.9 ms against 8.9 / 64.7 ms, context switches per call
    halved; one worker with a core to itself gains less (bench_sched.py). Figures in
    server/README.md.
    """
    if policy not in CPU_POLICIES:
        raise ValueError(f"--cpu-policy must be one of {', '.join(CPU_POLICIES)}, got {policy!r}")
    if not hasattr(os, "SCHED_BATCH"):
        return "normal"
    # "normal" is set too: a process started from a batch parent would inherit batch
    wanted = os.SCHED_BATCH if policy == "batch" else os.SCHED_OTHER
    try:
        # the threads imports already started (numpy's, an allocator's background thread)
        # and, this thread first, every thread started from now on
        me = threading.get_native_id()
        for tid in sorted(map(int, os.listdir("/proc/self/task")), key=lambda t: t != me):
            try:
                os.sched_setscheduler(tid, wanted, os.sched_param(0))
            except ProcessLookupError:  # ended meanwhile
                pass
    except OSError as exc:  # a sandbox that forbids it: serve anyway, say so
        log.warning(
            "could not set the %s CPU policy (%s); serving under the inherited one", policy, exc
        )
        return "inherited"
    return policy


def default_workers() -> int:
    return (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )


def _ready_line(config: ServeConfig, port: int, pids: list[int], version: str) -> str:
    return (
        f"xsell serve: listening on {config.host}:{port} "
        f"workers={len(pids)} pids={','.join(map(str, pids))} version={version}"
    )


def serve(config: ServeConfig) -> int:
    if config.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {config.workers}")
    # here, not only in create_server: in a spawned worker the error is a traceback
    if config.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {config.threads}")
    if config.max_in_flight is not None and config.max_in_flight < 1:
        raise ValueError(f"--max-in-flight must be >= 1, got {config.max_in_flight}")
    # Before any thread or worker starts: threads and spawned workers inherit the policy.
    policy = apply_cpu_policy(config.cpu_policy)
    log.info("CPU policy: %s", policy)
    # Read once, here: before any worker starts (fail fast), and its warnings logged once.
    # Workers get the table, not the path: a restarted one checks the tokens its siblings do.
    tls, tokens = config.security()
    if tokens is not None:
        log.info("bearer-token auth on: %d callers (%s)", len(tokens), ", ".join(tokens.names))
    elif config.allow_unauthenticated_reload:
        log.warning("auth is off and ReloadModel is open to every peer")
    if config.workers == 1:
        return _serve_in_process(config, tls, tokens)
    return Supervisor(config, tokens).run()


def _serve_in_process(config: ServeConfig, tls, tokens) -> int:
    from xsell.server.app import configure_access_log, create_server, run_until_signalled
    from xsell.server.metrics import serve_metrics

    configure_access_log(config.access_log)
    server, port = create_server(
        config.bundle,
        host=config.host,
        port=config.port,
        threads=config.threads,
        max_in_flight=config.max_in_flight,
        bundle_root=config.bundle_root,
        access_log=config.access_log,
        tls=tls,
        tokens=tokens,
        allow_unauthenticated_reload=config.allow_unauthenticated_reload,
    )
    if config.metrics_port:
        serve_metrics(
            config.metrics_port, config.metrics_host or config.host, server.metrics.registry
        )
    server.start()
    print(_ready_line(config, port, [os.getpid()], server.holder.current().version), flush=True)
    run_until_signalled(server, grace=config.grace, drain_delay=config.drain_delay)
    return 0


# ---------------------------------------------------------------- worker side


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker if the supervisor dies (no orphans on the port)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the supervisor's own cleanup has to do
        pass


def worker_main(
    config: ServeConfig, slot: int, cpu: int | None, state_file: str, ready, tokens=None
) -> None:
    """Entry point of one spawned worker process; `tokens`: the TokenTable `serve` read."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor forwards SIGTERM
    _die_with_parent()
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # before gRPC starts its threads: they inherit it
    # (the CPU policy is inherited from the supervisor: see apply_cpu_policy)
    logging.basicConfig(level=config.log_level, format=LOG_FORMAT)

    from xsell.server.app import BindError, configure_access_log, create_server, run_until_signalled
    from xsell.server.service import read_reload_state

    from xsell.errors import BundleError

    configure_access_log(config.access_log)
    tls = config.tls_files()  # create_server reads them (the supervisor checked them)
    # A restarted worker comes back on the bundle the group switched to last.
    published = read_reload_state(state_file)
    candidates = [published["bundle_path"]] if published is not None else []
    candidates.append(config.bundle)  # the command line's bundle, if the published one fails
    server = port = None
    for bundle in candidates:
        try:
            server, port = create_server(
                bundle,
                host=config.host,
                port=config.port,
                threads=config.threads,
                max_in_flight=config.max_in_flight,
                bundle_root=config.bundle_root,
                reuse_port=True,
                access_log=config.access_log,
                reload_state_file=state_file,
                tls=tls,
                tokens=tokens,
                allow_unauthenticated_reload=config.allow_unauthenticated_reload,
            )
            break
        except BundleError as exc:
            log.error("worker %d: cannot load the bundle: %s", slot, exc)
        except BindError as exc:
            log.error("worker %d: %s", slot, exc)
            sys.exit(EXIT_BIND)
    if server is None:
        sys.exit(EXIT_BUNDLE)
    if published is not None and server.broadcast is not None:
        server.broadcast.mark_applied(published["token"])
    server.start()
    ready.put(
        {"slot": slot, "pid": os.getpid(), "port": port, "version": server.holder.current().version}
    )
    log.info("worker %d ready on port %d (cpu %s)", slot, port, cpu if cpu is not None else "any")
    run_until_signalled(
        server,
        grace=config.grace,
        drain_delay=config.drain_delay,
        signals=(signal.SIGTERM,),
        force_on_repeat=False,
    )
    # Interpreter shutdown resets Python-level handlers to the default (die on SIGTERM),
    # but keeps SIG_IGN: a SIGTERM forwarded while exiting must not turn exit 0 into -15.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# ------------------------------------------------------------ supervisor side


def _reserve_port(host: str) -> tuple[socket.socket, int]:
    """Bind (never listen) a SO_REUSEPORT socket on a free port the workers then share.

    Holding it keeps the port ours for the supervisor's lifetime; a socket that does
    not listen receives no connections.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host.strip("[]"), 0))
    return sock, sock.getsockname()[1]


@dataclass
class _Slot:
    index: int
    cpu: int | None
    process: mp.process.BaseProcess | None = None
    started: float = 0.0
    fast_deaths: int = 0  # consecutive deaths within YOUNG seconds of start
    restart_at: float | None = None
    ready: bool = False


class Supervisor:
    YOUNG = 10.0  # a worker dying younger than this counts towards back-off
    MAX_BACKOFF = 10.0

    def __init__(self, config: ServeConfig, tokens=None) -> None:
        self.config = config
        self.tokens = tokens  # TokenTable (digests only) for every worker; None = auth off
        self._stop_signal: int | None = None

    def _on_signal(self, signum: int, _frame) -> None:
        self._stop_signal = signum

    def run(self) -> int:
        config = self.config
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        run_dir = Path(tempfile.mkdtemp(prefix="xsell-serve-"))
        state_file = str(run_dir / "reload.json")
        metrics_dir = run_dir / "metrics"
        metrics_dir.mkdir()
        # Set before any worker starts: workers read these when they import.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")  # one pinned core per worker: more threads only contend

        reservation = None
        if config.port == 0:
            reservation, port = _reserve_port(config.host)
            config = replace(config, port=port)
        if config.bundle_root is None:
            config = replace(config, bundle_root=str(Path(os.path.realpath(config.bundle)).parent))
        self.config = config

        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        ctx = mp.get_context("spawn")
        ready = ctx.Queue()
        slots = [
            _Slot(i, cpus[i % len(cpus)] if (cpus and config.pin) else None)
            for i in range(config.workers)
        ]
        code = 1
        clean = False
        try:
            if config.metrics_port:
                from xsell.server.metrics import multiprocess_registry, serve_metrics

                serve_metrics(
                    config.metrics_port, config.metrics_host or config.host, multiprocess_registry()
                )
            for slot in slots:
                self._start(ctx, slot, state_file, ready)
            code = self._await_ready(slots, ready)
            if code is None:
                code = self._supervise(ctx, slots, state_file, ready)
        finally:
            clean = self._shutdown(slots)
            for s, h in previous.items():
                signal.signal(s, h)
            if reservation is not None:
                reservation.close()
            shutil.rmtree(run_dir, ignore_errors=True)
        return code if (clean or code) else 1

    def _start(self, ctx, slot: _Slot, state_file: str, ready) -> None:
        process = ctx.Process(
            target=worker_main,
            args=(self.config, slot.index, slot.cpu, state_file, ready, self.tokens),
            name=f"xsell-worker-{slot.index}",
        )
        process.start()
        slot.process, slot.started, slot.restart_at, slot.ready = (
            process,
            time.monotonic(),
            None,
            False,
        )
        log.info("worker %d started (pid %d, cpu %s)", slot.index, process.pid, slot.cpu)

    def _drain_ready(self, slots: list[_Slot], ready, timeout: float) -> dict | None:
        try:
            message = ready.get(timeout=timeout)
        except queue.Empty:
            return None
        for slot in slots:
            if slot.process is not None and slot.process.pid == message["pid"]:
                slot.ready = True
        return message

    def _await_ready(self, slots: list[_Slot], ready) -> int | None:
        """None once every worker is serving; else the exit code to stop with."""
        deadline = time.monotonic() + READY_TIMEOUT
        version = "?"
        while not all(s.ready for s in slots):
            if self._stop_signal is not None:
                return 0
            if time.monotonic() > deadline:
                log.error("workers not ready after %.0fs", READY_TIMEOUT)
                return 1
            for slot in slots:
                if slot.process is not None and not slot.process.is_alive():
                    log.error(
                        "worker %d exited with code %s during startup",
                        slot.index,
                        slot.process.exitcode,
                    )
                    return 2 if slot.process.exitcode in (EXIT_BUNDLE, EXIT_BIND) else 1
            message = self._drain_ready(slots, ready, 0.1)
            if message is not None:
                version = message["version"]
        pids = [s.process.pid for s in slots if s.process is not None]
        print(_ready_line(self.config, self.config.port, pids, version), flush=True)
        return None

    def _supervise(self, ctx, slots: list[_Slot], state_file: str, ready) -> int:
        from prometheus_client import multiprocess

        while self._stop_signal is None:
            sentinels = [s.process.sentinel for s in slots if s.process is not None]
            wait_for(sentinels, timeout=0.2)
            self._drain_ready(slots, ready, 0.0)
            now = time.monotonic()
            for slot in slots:
                p = slot.process
                if p is not None and not p.is_alive():
                    p.join()
                    multiprocess.mark_process_dead(p.pid, os.environ["PROMETHEUS_MULTIPROC_DIR"])
                    slot.fast_deaths = (
                        slot.fast_deaths + 1 if now - slot.started < self.YOUNG else 0
                    )
                    delay = (
                        0.0
                        if slot.fast_deaths == 0
                        else min(0.5 * 2 ** (slot.fast_deaths - 1), self.MAX_BACKOFF)
                    )
                    log.error(
                        "worker %d (pid %d) died with code %s; restarting in %.1fs",
                        slot.index,
                        p.pid,
                        p.exitcode,
                        delay,
                    )
                    slot.process, slot.restart_at = None, now + delay
                if slot.process is None and slot.restart_at is not None and now >= slot.restart_at:
                    self._start(ctx, slot, state_file, ready)
        log.info("%s: draining %d workers", signal.Signals(self._stop_signal).name, len(slots))
        return 0

    def _shutdown(self, slots: list[_Slot]) -> bool:
        """SIGTERM every live worker, wait for the drain, SIGKILL stragglers; True if all exited 0."""
        alive = [s.process for s in slots if s.process is not None]
        for p in alive:
            if p.is_alive():
                p.terminate()  # SIGTERM: the worker drains (a repeat is harmless)
        deadline = time.monotonic() + self.config.drain_delay + self.config.grace + 5.0
        for p in alive:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                log.error("worker pid %d did not drain in time; killing it", p.pid)
                p.kill()
                p.join()
        bad = [p.exitcode for p in alive if p.exitcode != 0]
        if bad:
            log.error("workers exited with codes %s", bad)
        return not bad
