"""Shared driver of the fuzz scripts: atheris (coverage-guided, libFuzzer) when it is
installed, else a seeded random-mutation loop over the same seed corpus. Either way
the target runs for `--minutes`, unexpected exceptions are saved as findings (the
input bytes plus the traceback) and fuzzing goes on; a summary JSON (inputs tried,
findings, outcome counts) is rewritten every few seconds, so it survives libFuzzer's
hard exit at the time limit. A crash of native code (SIGSEGV) ends the run: libFuzzer
then writes the input as `crash-*` in the findings directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path


class Expected(Exception):
    """Raised by a target for an outcome that is fine (a refusal with a clear error)."""


class Run:
    def __init__(self, name: str, out_dir: Path, minutes: float, seed: int) -> None:
        self.name, self.out_dir, self.minutes, self.seed = name, out_dir, minutes, seed
        self.findings_dir = out_dir / f"{name}-findings"
        self.findings_dir.mkdir(parents=True, exist_ok=True)
        self.summary_path = out_dir / f"{name}-summary.json"
        self.started = time.time()
        self.inputs = 0
        self.outcomes: Counter[str] = Counter()
        self.findings: dict[str, str] = {}  # signature -> first finding file
        self._last_write = 0.0
        self.engine = "?"

    def record(self, data: bytes, outcome: str) -> None:
        self.inputs += 1
        self.outcomes[outcome] += 1
        now = time.time()
        if now - self._last_write > 5:
            self.write()

    def finding(self, data: bytes, exc: BaseException) -> None:
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        # one finding per (exception type, innermost frame): the same bug is not saved a million times
        frame = exc.__traceback__
        while frame is not None and frame.tb_next is not None:
            frame = frame.tb_next
        where = f"{frame.tb_frame.f_code.co_filename}:{frame.tb_lineno}" if frame else "?"
        signature = f"{type(exc).__name__} at {where}"
        self.record(data, f"FINDING {type(exc).__name__}")
        if signature in self.findings:
            return
        digest = hashlib.sha1(data).hexdigest()[:12]
        path = self.findings_dir / f"finding-{digest}.bin"
        path.write_bytes(data)
        path.with_suffix(".txt").write_text("".join(tb))
        self.findings[signature] = str(path)
        print(
            f"\n[{self.name}] FINDING {signature}: {exc!r} -> {path}", file=sys.stderr, flush=True
        )
        self.write()

    def write(self) -> None:
        self._last_write = time.time()
        elapsed = self._last_write - self.started
        summary = {
            "target": self.name, "engine": self.engine, "seed": self.seed, "minutes_planned": self.minutes,
            "seconds_run": round(elapsed, 1), "inputs": self.inputs,
            "inputs_per_second": round(self.inputs / elapsed, 1) if elapsed else 0.0,
            "outcomes": dict(self.outcomes.most_common()), "findings": self.findings,
        }  # fmt: skip
        self.summary_path.write_text(json.dumps(summary, indent=2))


def mutate(data: bytes, rng: random.Random) -> bytes:
    """Byte-level mutations in the style of libFuzzer's default mutators (fallback engine)."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(7)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(i, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 2 and b:
            del b[i : i + rng.randint(1, 16)]
        elif op == 3 and b:
            j = rng.randrange(len(b))
            b[i:i] = b[j : j + rng.randint(1, 64)]  # duplicate a chunk
        elif op == 4:
            b[i:i] = rng.choice(
                [b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff\xff\xff\x0f", b"\n", b",", b'"']
            )
        elif op == 5 and b:
            del b[i:]
        elif op == 6 and b:
            b[min(i, len(b) - 1)] = rng.randrange(256)
    return bytes(b)


def parse_args(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--minutes", type=float, default=5.0, help="how long to fuzz (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", type=Path, default=Path("fuzz-out"), help="findings and summary go here"
    )
    p.add_argument("--engine", choices=["auto", "atheris", "random"], default="auto")
    if extra is not None:
        extra(p)
    return p.parse_args()


def fuzz(
    run: Run, target: Callable[[bytes], str], corpus: list[bytes], engine: str = "auto"
) -> None:
    """Run `target(data) -> outcome` until the time is up; exceptions other than
    `Expected` are findings. `corpus`: seed inputs (valid ones help both engines)."""
    use_atheris = engine == "atheris"
    if engine == "auto":
        try:
            import atheris

            use_atheris = True
        except ImportError:
            use_atheris = False

    def one(data: bytes) -> None:
        try:
            outcome = target(data)
        except Expected as exc:
            outcome = str(exc) or "expected"
        except Exception as exc:  # noqa: BLE001 - that is what we are looking for
            run.finding(data, exc)
            return
        run.record(data, outcome)

    corpus_dir = run.out_dir / f"{run.name}-corpus"
    corpus_dir.mkdir(parents=True, exist_ok=True)
    for k, data in enumerate(corpus):
        (corpus_dir / f"seed-{k:03d}").write_bytes(data)

    if use_atheris:
        import atheris

        run.engine = f"atheris {getattr(atheris, '__version__', '')}".strip()
        run.write()
        argv = [sys.argv[0], str(corpus_dir), f"-max_total_time={int(run.minutes * 60)}",
                f"-seed={run.seed or 1}", f"-artifact_prefix={run.findings_dir}/", "-print_final_stats=1",
                "-rss_limit_mb=4096", "-timeout=30"]  # fmt: skip
        # Coverage of the Python code under test (loaded by now): without it libFuzzer is
        # blind and keeps mutating its seeds. Only xsell's own modules: instrumenting
        # numpy / pandas / protobuf too slows every input for little gain.
        import types

        for module in list(sys.modules.values()):
            if isinstance(module, types.ModuleType) and module.__name__.startswith("xsell"):
                for obj in list(vars(module).values()):
                    if isinstance(obj, types.FunctionType) and obj.__module__ == module.__name__:
                        atheris.instrument_func(obj)
                    elif isinstance(obj, type) and obj.__module__ == module.__name__:
                        for attr in list(vars(obj).values()):
                            func = getattr(attr, "__func__", attr)
                            if isinstance(func, types.FunctionType):
                                atheris.instrument_func(func)
        atheris.Setup(argv, one)
        atheris.Fuzz()  # exits the process at the time limit
        return
    run.engine = "random-mutation"
    rng = random.Random(run.seed)
    deadline = time.time() + run.minutes * 60
    pool = list(corpus) or [b""]
    while time.time() < deadline:
        if rng.random() < 0.1:
            data = rng.randbytes(rng.randint(0, 512))
        else:
            data = mutate(rng.choice(pool), rng)
        one(data)
        if rng.random() < 0.01 and len(pool) < 1000:
            pool.append(data)
    run.write()
    print(json.dumps(json.loads(run.summary_path.read_text()), indent=2))


def env_quiet() -> None:
    """Keep native libraries single-threaded and quiet while fuzzing."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
