"""The RecommendService servicer, the model holder, and reload across workers.

Handlers are thin: protobuf -> `RankRequest` (xsell.server.convert), one call to the
ranking core, RankResult -> protobuf. They raise xsell errors; the interceptor maps
them to statuses (xsell.server.errors).

Hot reload
----------
`ReloadModel` is an admin call (the file-watch alternative was not built):

1. The path is resolved (realpath, symlinks followed) and must lie inside the
   configured bundle root, else PERMISSION_DENIED naming `bundle_path`.
2. `ModelHolder.load` checks the manifest hashes, loads the bundle once in a
   throw-away subprocess (`probe_bundle`: LightGBM can segfault on a corrupt model
   file), then builds a new `Ranker` on the side (`Ranker.load` checks hashes,
   feature names and compatibility). Failure: BundleError ->
   FAILED_PRECONDITION, one clear log line, the old ranker keeps serving.
3. Success: the holder's reference is replaced in one assignment. A request
   reads the reference once, so calls in flight finish on the old ranker, which
   is freed when the last of them drops it.

Several worker processes (`xsell serve --workers N`): the worker that received
the call publishes its choice to a small JSON state file owned by the supervisor
(`ReloadBroadcast`, written to a temporary name then renamed, so readers never
see half a file). Every worker polls the file's mtime about once a second and,
when it carries a token it has not applied, loads that bundle the same way (a
failure is logged and that worker keeps its old bundle). So the whole group
serves the new version within ~1 s plus the load time; the ReloadModel answer
reports the worker that took the call. A worker the supervisor restarts reads
the state file first, so it comes back on the current bundle, not the one
given on the command line.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from xsell.ranking.bundle import read_manifest
from xsell.server import convert
from xsell.server.errors import check_time_left
from xsell.server.metrics import ServerMetrics
from xsell.server.security import reload_allowed

from xsell.errors import BundleError, InvalidRequest, NotReady, PermissionDenied
from xsell.v1 import xsell_pb2 as pb
from xsell.v1 import xsell_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from xsell.ranking.ranker import Ranker

log = logging.getLogger("xsell.server")

WORKER_METADATA_KEY = "xsell-worker-pid"  # GetModelInfo trailing metadata: which process answered


def _load_ranker(path: Path) -> Ranker:
    from xsell.ranking.ranker import Ranker

    return Ranker.load(path)


PROBE_TIMEOUT = 300.0  # s: a probe load of a large bundle (hashing included) may take a while
_PROBE = "import sys; from xsell.ranking.ranker import Ranker; Ranker.load(sys.argv[1], warm=False)"


def probe_bundle(path: Path, *, timeout: float = PROBE_TIMEOUT) -> None:
    """Load `path` once in a throw-away subprocess; raise BundleError if that crashed.

    Why: native loaders are not safe against every corrupt file. LightGBM 4.7 dies
    with SIGSEGV / abort() on a truncated model file (found by tests/reliability/
    test_faults.py), which would take the whole server down. A probe that dies
    costs a subprocess; the server keeps serving its current bundle. A probe that
    fails with a Python error is not judged here: the in-process load that follows
    raises the same BundleError with its full message.
    """
    import signal
    import subprocess
    import sys

    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, str(path)],
            capture_output=True,
            check=False,
            timeout=timeout,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    except subprocess.TimeoutExpired:
        raise BundleError(f"probe load did not finish in {timeout:.0f}s", path=str(path)) from None
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise BundleError(
            f"loading it crashed a probe process ({name}): a native library could not read one "
            f"of its files ({tail[0][:200]})",
            path=str(path),
        )


class ModelHolder:
    """The Ranker serving now. Reads are lock-free; loads are serialised."""

    def __init__(
        self,
        *,
        loader: Callable[[Path], Ranker] = _load_ranker,
        probe: Callable[[Path], None] = probe_bundle,
    ) -> None:
        self._loader = loader
        self._probe = probe
        self._ranker: Ranker | None = None
        self._load_lock = threading.Lock()
        self._listeners: list[Callable[[Ranker | None, Ranker], None]] = []
        self._refusal_listeners: list[Callable[[BundleError], None]] = []

    def on_swap(self, listener: Callable[[Ranker | None, Ranker], None]) -> None:
        """Call `listener(old, new)` after every successful swap (health, metrics)."""
        self._listeners.append(listener)

    def on_refusal(self, listener: Callable[[BundleError], None]) -> None:
        """Call `listener(error)` after every refused load (metrics)."""
        self._refusal_listeners.append(listener)

    @property
    def ranker(self) -> Ranker | None:
        return self._ranker

    def current(self) -> Ranker:
        ranker = self._ranker  # one read: the caller keeps this reference for the whole call
        if ranker is None:
            raise NotReady("no model bundle is loaded yet")
        return ranker

    def set(self, ranker: Ranker) -> None:
        with self._load_lock:
            self._swap(ranker)

    def load(
        self, bundle_dir: str | os.PathLike, *, isolate: bool = False
    ) -> tuple[str | None, str]:
        """Load `bundle_dir` on the side and swap it in: (previous version, new version).

        `isolate`: first load it in a subprocess (`probe_bundle`), so a file that
        crashes a native loader costs that process, not this one. Raises BundleError
        (and logs one line) when the bundle is refused; the current ranker is
        untouched then.
        """
        path = Path(bundle_dir)
        with self._load_lock:
            old = self._ranker
            serving = old.version if old is not None else "nothing"
            start = time.perf_counter()
            try:
                if isolate:
                    # hashes and format first: refuses most corrupt bundles without a subprocess
                    read_manifest(path, verify=True)
                    self._probe(path)
                new = self._loader(path)
            except Exception as exc:
                if isinstance(exc, BundleError):
                    refusal = exc
                else:  # a library choking on garbage is still a refusal, not a crash
                    refusal = BundleError(
                        f"could not be loaded: {type(exc).__name__}: {exc}", path=str(path)
                    )
                log.error("bundle refused: %s; still serving %s", refusal, serving)
                for listener in self._refusal_listeners:
                    listener(refusal)
                if refusal is exc:
                    raise
                raise refusal from exc
            self._swap(new)
            log.info(
                "bundle loaded: %s version %s in %.2fs (was %s)",
                path,
                new.version,
                time.perf_counter() - start,
                serving,
            )
            return (old.version if old is not None else None), new.version

    def _swap(self, new: Ranker) -> None:
        old, self._ranker = self._ranker, new
        for listener in self._listeners:
            listener(old, new)


def resolve_bundle_path(requested: str, *, root: Path | None, default: Path | None) -> Path:
    """The real bundle directory for a ReloadModel request, confined to `root`."""
    if "\x00" in requested:
        raise InvalidRequest("bundle_path", "contains a NUL byte")
    if not requested:
        if default is None:
            raise InvalidRequest(
                "bundle_path", "empty, and the server was started without a bundle"
            )
        requested = str(default)
    if root is None:
        raise PermissionDenied("bundle_path: reload is disabled (no bundle root configured)")
    real_root = Path(os.path.realpath(root))
    candidate = Path(requested)
    real = Path(os.path.realpath(candidate if candidate.is_absolute() else real_root / candidate))
    # shown shortened: a status whose details pass 16 KiB reaches the client as
    # RESOURCE_EXHAUSTED "metadata size exceeds hard limit" instead
    shown = repr(requested if len(requested) <= 200 else requested[:200] + "...")
    if os.path.commonpath([real_root, real]) != str(real_root):
        raise PermissionDenied(f"bundle_path: {shown} is outside the server's bundle root")
    try:
        is_dir = real.is_dir()
    except OSError as exc:  # ENAMETOOLONG, EACCES: Path.is_dir ignores only "not found"
        raise InvalidRequest("bundle_path", f"{shown} cannot be read: {exc.strerror}") from None
    if not is_dir:
        raise InvalidRequest("bundle_path", f"{shown} is not a directory")
    return real


def read_reload_state(path: str | os.PathLike) -> dict | None:
    """The published reload state {token, bundle_path, version, pid}, or None."""
    try:
        state = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.error("reload state file %s unreadable: %s", path, exc)
        return None
    return (
        state if isinstance(state, dict) and "token" in state and "bundle_path" in state else None
    )


class ReloadBroadcast:
    """Spreads a reload to every worker process through one polled state file."""

    def __init__(
        self, state_file: str | os.PathLike, holder: ModelHolder, *, poll_seconds: float = 1.0
    ) -> None:
        self.path = Path(state_file)
        self._holder = holder
        self._poll = poll_seconds
        self._applied: str | None = None  # token of the last state this process acted on
        # a poll's read + load and a ReloadModel's load + publish never interleave: a poll
        # that read another worker's state, then loaded it after this process loaded and
        # published its own, left this process on a bundle the state file no longer named
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> dict | None:
        return read_reload_state(self.path)

    def mark_applied(self, token: str | None) -> None:
        """Record that this process already serves the state with `token`."""
        self._applied = token

    def load_and_publish(self, bundle_dir: Path) -> tuple[str | None, str]:
        """`ModelHolder.load(isolate=True)`, then `publish` what it loaded."""
        with self._lock:
            previous, version = self._holder.load(bundle_dir, isolate=True)
            self.publish(bundle_dir, version)
        return previous, version

    def publish(self, bundle_dir: Path, version: str) -> None:
        token = uuid.uuid4().hex
        self._applied = token  # this process already serves it
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(
            json.dumps(
                {
                    "token": token,
                    "bundle_path": str(bundle_dir),
                    "version": version,
                    "pid": os.getpid(),
                }
            )
        )
        os.replace(tmp, self.path)

    def poll_once(self) -> bool:
        """Apply the state file if it names a reload this process has not applied."""
        with self._lock:
            state = self.read()
            if state is None or state["token"] == self._applied:
                return False
            self._applied = state["token"]  # applied or refused: do not retry every second
            try:
                self._holder.load(state["bundle_path"])
            except BundleError:
                log.error(
                    "reload from %s not applied in pid %d: this worker keeps its bundle",
                    self.path,
                    os.getpid(),
                )
                return False
            return True

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="xsell-reload-watch", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        last = None
        while not self._stop.wait(self._poll):
            try:
                st = self.path.stat()
            except FileNotFoundError:
                continue
            # each publish renames a new file into place: a new inode even when two
            # publishes land within one mtime tick
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            if key != last:
                last = key
                self.poll_once()


class RecommendServicer(pb_grpc.RecommendServiceServicer):
    def __init__(
        self,
        holder: ModelHolder,
        metrics: ServerMetrics,
        *,
        bundle_root: Path | None = None,
        startup_bundle: Path | None = None,
        broadcast: ReloadBroadcast | None = None,
        auth_on: bool = False,
        allow_unauthenticated_reload: bool = False,
    ) -> None:
        self._auth_on = auth_on
        self._allow_unauthenticated_reload = allow_unauthenticated_reload
        self._holder = holder
        self._metrics = metrics
        self._root = bundle_root
        self._startup_bundle = startup_bundle
        self._broadcast = broadcast

    def Recommend(
        self, request: pb.RecommendRequest, context: grpc.ServicerContext
    ) -> pb.RecommendResponse:
        rank_request = convert.request_from_pb(request)
        result = self._holder.current().rank(rank_request)
        self._metrics.observe_stages(result.timings)
        return convert.response_to_pb(
            result, request_id=request.request_id, variant=request.variant
        )

    def RecommendBatch(
        self, request: pb.RecommendBatchRequest, context: grpc.ServicerContext
    ) -> pb.RecommendBatchResponse:
        rank_requests = convert.batch_from_pb(request)
        ranker = self._holder.current()  # one version for the whole batch
        responses = []
        for i, (msg, rank_request) in enumerate(zip(request.requests, rank_requests)):
            if i:
                check_time_left(context, before=f"requests[{i}] of {len(rank_requests)}")
            try:
                result = ranker.rank(rank_request)
            except InvalidRequest as exc:
                raise convert.prefixed(exc, f"requests[{i}].") from None
            self._metrics.observe_stages(result.timings)
            responses.append(
                convert.response_to_pb(result, request_id=msg.request_id, variant=msg.variant)
            )
        return pb.RecommendBatchResponse(responses=responses)

    def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetModelInfoResponse:
        response = convert.model_info_to_pb(self._holder.current())
        context.set_trailing_metadata(((WORKER_METADATA_KEY, str(os.getpid())),))
        return response

    def ReloadModel(
        self, request: pb.ReloadModelRequest, context: grpc.ServicerContext
    ) -> pb.ReloadModelResponse:
        # With auth on, the AuthInterceptor already demanded an admin token.
        if not reload_allowed(
            auth_on=self._auth_on,
            allow_unauthenticated=self._allow_unauthenticated_reload,
            peer=context.peer(),
        ):
            raise PermissionDenied(
                "ReloadModel: auth is off, so only local callers may reload; start the server "
                "with --auth-tokens (and call with an admin token) or --allow-unauthenticated-reload"
            )
        path = resolve_bundle_path(
            request.bundle_path, root=self._root, default=self._startup_bundle
        )
        if self._broadcast is not None:
            previous, version = self._broadcast.load_and_publish(path)
        else:
            previous, version = self._holder.load(path, isolate=True)
        return pb.ReloadModelResponse(model_version=version, previous_version=previous or "")
