"""The load generator: client processes driving a real gRPC server, and the run's raw samples.

Each client process runs one asyncio loop with `grpc.aio` (measured here: ~120 µs of
client CPU per call, the cheapest of sync threads, futures and aio) over several
connections of its own (`grpc.use_local_subchannel_pool`), since the server's kernel
spreads connections, not calls, across its worker processes; it learns the worker
behind each connection and gives every worker the same share of the calls (`balance`).
Requests are encoded
once up front and responses are not decoded (except one in `check_every`, to check
they are sane), so the client spends its time in gRPC, not protobuf.

Closed loop: `concurrency` callers, each sends its next call when the last returns.
Open loop: calls are sent at scheduled times (Poisson or uniform arrivals) whatever
the server does, and latency is measured from the *scheduled* time, so a server (or a
client) that falls behind shows up as latency rather than as a lower send rate.

Security: `tls` (a `TlsOptions`, mutual TLS with a client certificate) and `token` (sent
as `authorization: Bearer ...` with every call) travel to the spawned processes as file
*paths* and the token string, not file contents: `TlsOptions` is what every Python client
takes, the paths were checked before the run, and no key material goes through the
pipes or into the report. Each process reads the files once, when it builds its channels.

Clocks: every process reads CLOCK_MONOTONIC (`time.monotonic`, also the asyncio loop
clock), which is one clock for the whole host on Linux, so the parent can hand all
processes one start time.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import multiprocessing.connection
import re
import resource
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from xsell.clients.client import TlsOptions, call_metadata

from . import scrape as scrape_mod
from . import sysinfo
from .stats import arrival_offsets, split_count, split_rate

RECOMMEND_METHOD = "/xsell.v1.RecommendService/Recommend"
HEALTH_METHOD = "/grpc.health.v1.Health/Check"
TARGETS = ("recommend", "health")
BACKLOG = "CLIENT_BACKLOG"  # open loop: too many calls outstanding, the call was not sent
# The server's workers share the port and the kernel gives each connection to one of
# them: with 4 per process an open loop's calls landed mostly on one worker of 2 at
# times, more than its capacity (bench_load, session 3: every overload episode on one
# worker). 16 make an empty worker unlikely, not an even split: 10:6 or worse in 45% of
# connection sets (binomial), which at 70% load doubles the p99 (queue_model.py
# --shares). So by default calls are balanced over the workers (`balance`).
OPEN_LOOP_CONNECTIONS = 16
MODEL_INFO_METHOD = "/xsell.v1.RecommendService/GetModelInfo"
WORKER_TRAILER = "xsell-worker-pid"  # server/service.py: which worker process answered
START_MARGIN_S = 0.5  # between "every process is connected" and the first call
# gRPC core's words for a TCP connection that was never made (nothing listens yet, no
# route, no name): worth waiting for. Any other failure came after the connection was
# made (a TLS handshake refused, a plaintext client at a TLS port) and waiting would not
# change it. Matched on gRPC 1.85's messages; should they change, such a failure is
# reported at once, with gRPC's own message, instead of after connect_timeout.
NOT_CONNECTED = re.compile(
    r"connection refused|failed to connect to remote host|no route to host|"
    r"network is unreachable|errors resolving|dns resolution failed|name not found",
    re.IGNORECASE,
)
# Refusals the run counts (the report shows them by code) instead of stopping at the
# first call: a server that checks tokens answers them, and that is worth measuring too.
AUTH_CODES = ("UNAUTHENTICATED", "PERMISSION_DENIED")


@dataclass(frozen=True)
class LoadConfig:
    """One load run. Exactly one of `concurrency` (closed loop) or `rate` (open loop)."""

    address: str = "127.0.0.1:50051"
    target: str = "recommend"  # recommend | health (the standard health Check, a bare call)
    concurrency: int | None = 16  # closed loop: callers in flight, over all processes
    rate: float | None = None  # open loop: calls per second, over all processes
    duration: float = 10.0  # measured window, seconds
    warmup: float = 2.0  # load before the window, not measured
    procs: int = 1  # client processes
    connections: int = 0  # per process; 0 = one per caller (closed) or OPEN_LOOP_CONNECTIONS (open)
    timeout: float = 10.0  # per-call deadline, seconds
    connect_timeout: float = 10.0  # for each connection, before the run starts
    arrival: str = "poisson"  # open loop: poisson | uniform
    seed: int = 0
    check_every: int = 20  # decode and check one response in this many; 0 = never
    max_outstanding: int = 10_000  # open loop, per process: beyond it calls count as CLIENT_BACKLOG
    metrics_url: str | None = None  # server's Prometheus endpoint, scraped at window start / end
    server_pids: tuple[int, ...] = ()  # their CPU and RSS (children included) are reported
    tls: TlsOptions | None = None  # None = plaintext; see the module's "Security"
    token: str | None = None  # bearer token, sent with every call
    # ask each connection's worker (GetModelInfo's trailer) and give every worker the same
    # share of the calls (closed loop: of the callers); off, or for a server that does not
    # say, calls take the connections in turn
    balance: bool = True

    def validated(self) -> LoadConfig:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("give exactly one of concurrency (closed loop) or rate (open loop)")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")
        if not self.duration > 0 or self.warmup < 0 or not self.timeout > 0:
            raise ValueError("duration and timeout must be > 0 and warmup >= 0")
        if self.procs < 1:
            raise ValueError(f"procs must be >= 1, got {self.procs}")
        if self.connections < 0:
            raise ValueError(f"connections must be >= 0, got {self.connections}")
        if self.concurrency is not None and self.concurrency < self.procs:
            raise ValueError(
                f"concurrency {self.concurrency} < procs {self.procs}: a process would be idle"
            )
        if self.arrival not in ("poisson", "uniform"):
            raise ValueError(f"arrival must be poisson or uniform, got {self.arrival!r}")
        if self.tls is not None and not isinstance(self.tls, TlsOptions):
            raise ValueError(f"tls must be a TlsOptions or None, got {type(self.tls).__name__}")
        call_metadata(self.token)  # ClientConfigError (a ValueError) for a malformed token
        return self

    @property
    def mode(self) -> str:
        return "closed" if self.concurrency is not None else "open"


@dataclass
class ProcResult:
    """Raw samples of one client process. Times are CLOCK_MONOTONIC seconds."""

    sched: np.ndarray  # when the call was due (closed loop: when it was sent)
    sent: np.ndarray  # when it was handed to gRPC (NaN: never sent, CLIENT_BACKLOG)
    done: np.ndarray  # when it completed (NaN: never)
    code: np.ndarray  # int index into `code_names`
    code_names: list[str]
    cpu_window_s: float  # this process's CPU seconds within the measured window
    checked: dict = field(default_factory=dict)
    workers: list[str] = field(default_factory=list)  # the worker behind each connection ([]: unknown)


# ------------------------------------------------------------------ client process


class _Recorder:
    def __init__(self) -> None:
        self.sched: list[float] = []
        self.sent: list[float] = []
        self.done: list[float] = []
        self.code: list[int] = []
        self.names: dict[str, int] = {"OK": 0}
        self.progress_from = 0  # index of the first record not yet reported as progress

    def add(self, sched: float, sent: float, done: float, code: str) -> None:
        k = self.names.get(code)
        if k is None:
            k = self.names[code] = len(self.names)
        self.sched.append(sched)
        self.sent.append(sent)
        self.done.append(done)
        self.code.append(k)


class _Checker:
    """Decodes one response in `every` and keeps counts that make a report sane."""

    def __init__(self, target: str, every: int) -> None:
        self.every, self.k = every, 0
        self.target = target
        self.counts = {"decoded": 0, "empty": 0, "fallback": 0, "items": 0, "not_serving": 0}

    def __call__(self, response: bytes) -> None:
        if not self.every:
            return
        self.k += 1
        if self.k % self.every:
            return
        c = self.counts
        c["decoded"] += 1
        if self.target == "health":
            from grpc_health.v1 import health_pb2

            r = health_pb2.HealthCheckResponse.FromString(response)
            c["not_serving"] += r.status != health_pb2.HealthCheckResponse.SERVING
            return
        from xsell.v1 import xsell_pb2 as pb

        r = pb.RecommendResponse.FromString(response)
        n = len(r.cross_sell) + len(r.up_sell)
        c["items"] += n
        c["empty"] += n == 0
        c["fallback"] += bool(r.fallback)


def _client_main(cfg: LoadConfig, index: int, bodies: list[bytes], share: float, conn) -> None:
    """Entry point of one client process (spawned). `share` is its callers or its rate."""
    try:
        result = asyncio.run(_client(cfg, index, bodies, share, conn))
        conn.send(("done", result))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
        what = str(exc) if isinstance(exc, RuntimeError) else f"{type(exc).__name__}: {exc}"
        conn.send(("failed", f"client process {index}: {what}"))
    finally:
        conn.close()


async def _client(
    cfg: LoadConfig, index: int, bodies: list[bytes], share: float, conn
) -> ProcResult:
    import grpc

    closed = cfg.mode == "closed"
    callers = int(share) if closed else 0
    n_conn = cfg.connections or (callers if closed else OPEN_LOOP_CONNECTIONS)
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 16 << 20)]
    if cfg.tls is None:
        channels = [grpc.aio.insecure_channel(cfg.address, options=options) for _ in range(n_conn)]
    else:
        creds, tls_options = cfg.tls.credentials(), options + cfg.tls.channel_options()
        channels = [grpc.aio.secure_channel(cfg.address, creds, tls_options) for _ in range(n_conn)]
    metadata = call_metadata(cfg.token) or None
    method = HEALTH_METHOD if cfg.target == "health" else RECOMMEND_METHOD
    calls = [ch.unary_unary(method) for ch in channels]  # bytes in, bytes out: no (de)serialiser
    rng = np.random.default_rng([cfg.seed, index])
    order = rng.permutation(len(bodies))
    seq = [bodies[i] for i in order]  # this process's own order through the mix
    loop = asyncio.get_running_loop()
    rec, check = _Recorder(), _Checker(cfg.target, cfg.check_every)

    # connect every channel, and fail early and clearly if the server is not there
    for ch in channels:
        await _connect(ch, cfg)
    for c in calls:  # one real call each: a wrong method or a refusing server shows here
        try:
            await c(seq[0], timeout=cfg.timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code().name not in AUTH_CODES:
                raise RuntimeError(
                    f"first call {method}: {exc.code().name}: {exc.details()}"
                ) from None
    owners = await _workers_of(channels, cfg, metadata)  # reported either way
    pick = balanced_pick(owners) if cfg.balance and owners else (lambda i: i % len(calls))
    conn.send(("ready", index))
    start = conn.recv()  # the parent's common start time (CLOCK_MONOTONIC)
    w0, w1 = start + cfg.warmup, start + cfg.warmup + cfg.duration
    cpu_marks: dict[str, float] = {}

    def mark(name: str) -> None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        cpu_marks[name] = r.ru_utime + r.ru_stime

    loop.call_at(w0, mark, "w0")
    loop.call_at(w1, mark, "w1")
    progress = loop.create_task(_report_progress(rec, conn))

    async def one(call, body: bytes, sched: float) -> None:
        sent = loop.time()
        try:
            response = await call(body, timeout=cfg.timeout, metadata=metadata)
            done = loop.time()
            check(response)
            rec.add(sched, sent, done, "OK")
        except grpc.aio.AioRpcError as exc:
            rec.add(sched, sent, loop.time(), exc.code().name)
        except Exception as exc:  # noqa: BLE001 - a client-side failure is an error of the run
            rec.add(sched, sent, loop.time(), f"CLIENT_{type(exc).__name__}")

    await asyncio.sleep(max(0.0, start - loop.time()))
    if closed:
        # caller k keeps to connection k: its calls always reach the same worker process
        await closed_loop(callers, w1, lambda k, j, due: one(calls[pick(k)], seq[j % len(seq)], due))
    else:
        horizon = cfg.warmup + cfg.duration
        offsets = arrival_offsets(share, horizon, seed=cfg.seed * 1009 + index, arrival=cfg.arrival)
        if cfg.arrival == "uniform":  # process i starts i/rate later: the processes interleave
            offsets = offsets + index / cfg.rate  # instead of sending `procs` calls at once
            offsets = offsets[offsets < horizon]
        await open_loop(start + offsets, lambda j, due: one(calls[pick(j)], seq[j % len(seq)], due),
                        cfg.max_outstanding, lambda due: rec.add(due, math.nan, math.nan, BACKLOG))  # fmt: skip
    progress.cancel()
    if "w1" not in cpu_marks:  # the window ended before the loop got to the mark
        mark("w1")
    cpu = cpu_marks["w1"] - cpu_marks.get("w0", cpu_marks["w1"])
    for ch in channels:
        await ch.close()
    names = [n for n, _ in sorted(rec.names.items(), key=lambda kv: kv[1])]
    return ProcResult(
        np.array(rec.sched), np.array(rec.sent), np.array(rec.done), np.array(rec.code, dtype=np.int16),
        names, cpu, dict(check.counts), owners,
    )  # fmt: skip


async def _workers_of(channels, cfg: LoadConfig, metadata) -> list[str]:
    """The worker process behind each connection, from GetModelInfo's trailing metadata;
    [] when the server does not say (another server, or the call is refused)."""
    import grpc

    owners = []
    for ch in channels:
        call = ch.unary_unary(MODEL_INFO_METHOD)(b"", timeout=cfg.timeout, metadata=metadata)
        try:
            await call
            trailer = dict(await call.trailing_metadata() or ())
        except grpc.aio.AioRpcError:
            return []
        if WORKER_TRAILER not in trailer:
            return []
        owners.append(str(trailer[WORKER_TRAILER]))
    return owners


def balanced_pick(owners: Sequence[Hashable]) -> Callable[[int], int]:
    """pick(i) -> connection index: consecutive i go to the workers in turn, and each
    worker's turns to its connections in turn, so every worker gets the same share
    whatever number of connections the kernel gave it."""
    workers = sorted(set(owners))
    mine = [[k for k, o in enumerate(owners) if o == w] for w in workers]

    def pick(i: int) -> int:
        conns = mine[i % len(mine)]
        return conns[(i // len(mine)) % len(conns)]

    return pick


async def _connect(channel, cfg: LoadConfig) -> None:
    """Wait until `channel` is connected (TLS handshake included), or raise RuntimeError
    saying why not. A TCP connection not made (NOT_CONNECTED) is tried again until
    `connect_timeout`, as the server may be starting; any other failure is raised at once
    with gRPC's reason: gRPC itself would retry a refused handshake forever, silently."""
    import grpc

    loop = asyncio.get_running_loop()
    deadline = loop.time() + cfg.connect_timeout
    reason = ""
    state = channel.get_state(try_to_connect=True)
    while state != grpc.ChannelConnectivity.READY:
        if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            reason = await _failure_reason(channel, min(5.0, cfg.connect_timeout)) or reason
            if reason and not NOT_CONNECTED.search(reason):
                raise RuntimeError(f"cannot connect to {cfg.address}: {reason}{_hint(cfg, reason)}")
        left = deadline - loop.time()
        try:
            await asyncio.wait_for(channel.wait_for_state_change(state), max(left, 0.0))
        except asyncio.TimeoutError:
            last = f"; last error: {reason}" if reason else ""
            raise RuntimeError(f"no gRPC server reachable at {cfg.address} "
                               f"(waited {cfg.connect_timeout:g} s{last})") from None  # fmt: skip
        state = channel.get_state(try_to_connect=True)


async def _failure_reason(channel, timeout: float) -> str:
    """Why a channel in TRANSIENT_FAILURE could not connect: gRPC tells only a call, and
    a call that does not wait for the channel to be ready fails at once with the reason.
    "" when the channel connected meanwhile (any answer but UNAVAILABLE) or no word came."""
    import grpc

    try:
        await channel.unary_unary(HEALTH_METHOD)(health_body(), timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            return re.sub(
                r"^failed to connect to all addresses; last error: ", "", exc.details() or ""
            )
    return ""


def _hint(cfg: LoadConfig, reason: str) -> str:
    """What to try; the plaintext and mTLS hints in the words of the Node and Go clients.
    With TLS 1.3 a refused client certificate shows only as a closed connection ("Socket
    closed"): the server checks it after the client has finished its handshake."""
    if cfg.tls is None:
        return " (plaintext channel: if the server uses TLS, give --tls-ca or --tls)"
    if cfg.tls.server_name is None and "hostname" in reason.lower():
        return " (if the server's certificate names another host, give --tls-server-name)"
    if cfg.tls.client_cert is None:
        return " (if the server requires mutual TLS, give --tls-cert and --tls-key)"
    if "closed" in reason.lower():
        return " (does the server trust the CA that signed the client certificate?)"
    return ""


# ------------------------------------------------------------------ the two drivers

Fire = Callable[[int, float], Awaitable[None]]  # (call number, due time) -> one call, recorded
CallerFire = Callable[[int, int, float], Awaitable[None]]  # (caller, call number, due time)


async def closed_loop(callers: int, until: float, fire: CallerFire) -> None:
    """`callers` coroutines, each sending its next call as soon as the last one returned,
    until the loop clock passes `until`. `fire(k, j, due)` gets the caller k (so a caller
    can keep to one connection, as h2load's clients do: which worker process serves a
    connection is fixed, so callers that hopped between connections would pile onto one
    worker at random moments) and a call number j, spread so that callers start at
    different requests of the mix."""
    loop = asyncio.get_running_loop()

    async def caller(k: int) -> None:
        j = k * 7919
        while loop.time() < until:
            await fire(k, j, loop.time())
            j += 1

    await asyncio.gather(*(caller(k) for k in range(callers)))


async def open_loop(
    due_times: np.ndarray, fire: Fire, max_outstanding: int, drop: Callable[[float], None]
) -> None:
    """Start call j at `due_times[j]` (loop clock) whatever happened to the calls before.

    The call is handed its due time, not the time it actually started: when this loop
    falls behind (a busy client, a stalled event loop) the delay counts in the call's
    latency instead of silently lowering the offered rate ("coordinated omission").
    Past `max_outstanding` calls in flight a call is not sent and `drop(due)` records it.
    Returns when every call sent has completed."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task] = set()
    for j, due in enumerate(due_times.tolist()):
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif j % 64 == 0:
            await asyncio.sleep(0)  # behind schedule: still let completions run
        if len(pending) >= max_outstanding:
            drop(due)
            continue
        task = loop.create_task(fire(j, due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending)


async def _report_progress(rec: _Recorder, conn, every: float = 1.0) -> None:
    """Send the parent the calls completed since the last report: (latencies, errors)."""
    while True:
        await asyncio.sleep(every)
        k0, k1 = rec.progress_from, len(rec.code)
        rec.progress_from = k1
        codes = np.array(rec.code[k0:k1], dtype=np.int16)
        lat = np.array(rec.done[k0:k1]) - np.array(rec.sched[k0:k1])
        conn.send(("progress", (lat[codes == 0].astype(np.float32), int((codes != 0).sum()))))


# ------------------------------------------------------------------ parent


@dataclass
class RawRun:
    """What a run produced, before any statistics: the report is built from this."""

    config: LoadConfig
    start: float  # monotonic time of the first scheduled call
    procs: list[ProcResult]
    server_before: object | None = None  # scrape.Scrape
    server_after: object | None = None
    server_procs: list[dict] = field(default_factory=list)
    loadavg_start: list[float] = field(default_factory=list)
    loadavg_end: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    parent_cpu_s: float = 0.0
    scrape_error: str = ""

    def config_dict(self) -> dict:
        """The configuration for the report, a file to share: TLS file paths, but never
        the bearer token."""
        out = asdict(self.config)
        if self.config.tls is not None:
            out["tls"] = {k: None if v is None else str(v) for k, v in out["tls"].items()}
        out["token"] = "(given)" if self.config.token else None
        return out


ProgressFn = Callable[
    [float, int, int, np.ndarray], None
]  # (elapsed s, calls, errors, latencies s)


def run_load(cfg: LoadConfig, bodies: list[bytes], *, progress: ProgressFn | None = None) -> RawRun:
    """Run the load described by `cfg` with the encoded request `bodies` (cycled).

    Spawns `cfg.procs` client processes, waits until each has connected, starts them
    together, scrapes the server's metrics at the window's start and end, and returns
    every process's raw samples. Raises RuntimeError when a client process fails.
    """
    cfg = cfg.validated()
    if not bodies:
        raise ValueError("no request to send")
    if cfg.tls is not None:
        cfg.tls.credentials()  # an unreadable file: ClientConfigError now, not in every process
    ctx = mp.get_context("spawn")  # gRPC core state does not survive fork
    shares = (
        [float(c) for c in split_count(cfg.concurrency, cfg.procs)]
        if cfg.mode == "closed"
        else split_rate(float(cfg.rate), cfg.procs)
    )
    pipes, procs = [], []
    finished = False  # set on the way out of a complete run; otherwise stop the others now
    cpu0 = _self_cpu()
    for i, share in enumerate(shares):
        parent_end, child_end = ctx.Pipe()
        p = ctx.Process(target=_client_main, args=(cfg, i, bodies, share, child_end), daemon=True)
        p.start()
        child_end.close()
        pipes.append(parent_end)
        procs.append(p)
    try:
        for i, c in enumerate(pipes):
            # 60 s to start the process and import gRPC on a busy host, then the
            # connect timeout it may spend waiting for the server
            kind, payload = _recv(c, procs[i], timeout=60.0 + cfg.connect_timeout)
            if kind != "ready":
                raise RuntimeError(payload)
        start = time.monotonic() + START_MARGIN_S
        for c in pipes:
            c.send(start)
        raw = RawRun(cfg, start, [])
        server_pids = sysinfo.with_children(list(cfg.server_pids))
        w0, w1 = start + cfg.warmup, start + cfg.warmup + cfg.duration
        before_procs: dict = {}
        done: dict[int, ProcResult] = {}
        stage = "warmup"
        # until every process reported and the window was sampled: the processes end at
        # the window's end too, so their "done" may arrive before this loop's own check
        while len(done) < len(pipes) or stage != "drain":
            now = time.monotonic()
            if stage == "warmup" and now >= w0:
                raw.loadavg_start = sysinfo.loadavg()
                before_procs = {p: sysinfo.proc_sample(p) for p in server_pids}
                raw.server_before, raw.scrape_error = _scrape(cfg.metrics_url)
                stage = "window"
            elif stage == "window" and now >= w1:
                raw.loadavg_end = sysinfo.loadavg()
                after_procs = {p: sysinfo.proc_sample(p) for p in server_pids}
                raw.server_procs = sysinfo.proc_delta(before_procs, after_procs, now - w0)
                raw.server_after, err = _scrape(cfg.metrics_url)
                raw.scrape_error = raw.scrape_error or err
                stage = "drain"
            wake = w0 if stage == "warmup" else w1 if stage == "window" else now + 0.5
            ready = multiprocessing.connection.wait([c for i, c in enumerate(pipes) if i not in done],
                                       timeout=max(0.0, min(wake - now, 0.5)))  # fmt: skip
            for c in ready:
                i = pipes.index(c)
                try:
                    kind, payload = c.recv()
                except EOFError:
                    raise RuntimeError(
                        f"client process {i} died (exit code {procs[i].exitcode})"
                    ) from None
                if kind == "progress" and progress is not None:
                    lat, errors = payload
                    progress(time.monotonic() - start, i, errors, lat)
                elif kind == "done":
                    done[i] = payload
                elif kind == "failed":
                    raise RuntimeError(payload)
        raw.procs = [done[i] for i in range(len(pipes))]
        raw.wall_s = time.monotonic() - start
        raw.parent_cpu_s = _self_cpu() - cpu0
        finished = True
        return raw
    finally:
        # after a failure the others may wait for a start time or run on for the whole
        # window: stop them at once rather than wait up to 5 s for each
        for p in procs:
            if finished:
                p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)


def _recv(conn, proc, timeout: float):
    if not conn.poll(timeout):
        raise RuntimeError(
            f"client process did not connect within {timeout:.0f} s (exit code {proc.exitcode})"
        )
    try:
        return conn.recv()
    except EOFError:
        raise RuntimeError(
            f"client process died while connecting (exit code {proc.exitcode})"
        ) from None


def _scrape(url: str | None):
    if not url:
        return None, ""
    try:
        return scrape_mod.scrape(url), ""
    except Exception as exc:  # noqa: BLE001 - the load figures stand without the server's view
        return None, f"{url}: {type(exc).__name__}: {exc}"


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def encode_requests(requests) -> list[bytes]:
    """Encode protobuf messages once, before the clock starts."""
    return [r.SerializeToString() for r in requests]


def health_body(service: str = "") -> bytes:
    from grpc_health.v1 import health_pb2

    return health_pb2.HealthCheckRequest(service=service).SerializeToString()


__all__ = [
    "BACKLOG", "HEALTH_METHOD", "RECOMMEND_METHOD", "LoadConfig", "ProcResult", "RawRun",
    "encode_requests", "health_body", "run_load",
]  # fmt: skip
