"""Are a worker's latency stalls garbage-collection pauses? Counts the collections of each
generation and their durations in a real server under an open loop.

    python benchmarks/probe_gc.py --bundle BUNDLE --requests carts3.jsonl [--rate 250]
        [--seconds 40] [--freeze]

Serves the bundle in this process (`create_server`, 127.0.0.1, a free port), drives it
with `xsell loadtest --rate` in a child process on CPU 1, and prints per generation: the
number of collections, median and max pause; then the load test's own report.
`--freeze` runs `gc.collect(); gc.freeze()` after loading (the bundle's objects are then
never scanned), for comparison.
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import time

from xsell.ranking.ranker import Ranker
from xsell.server.app import create_server


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True)
    p.add_argument("--requests", required=True)
    p.add_argument("--rate", type=float, default=250.0)
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--freeze", action="store_true")
    args = p.parse_args(argv)

    server, port = create_server(Ranker.load(args.bundle), access_log=False)
    server.start()
    if args.freeze:
        gc.collect()
        gc.freeze()
    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started: list[float] = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses[info["generation"]].append(time.perf_counter() - started[0])

    gc.callbacks.append(on_gc)
    cmd = ["taskset", "-c", "1", sys.executable, "-m", "xsell.cli", "loadtest", "--address", f"127.0.0.1:{port}",
           "--rate", str(args.rate), "--duration", str(args.seconds), "--warmup", "3", "--procs", "1",
           "--requests", args.requests]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)  # its exit code is this script's
    gc.callbacks.remove(on_gc)
    server.stop(0)
    print(f"tracked objects {len(gc.get_objects()):,}, frozen {gc.get_freeze_count():,}")
    for gen, values in pauses.items():
        if values:
            values.sort()
            print(f"gen {gen}: {len(values)} collections, median {values[len(values) // 2] * 1e3:.2f} ms, "
                  f"max {values[-1] * 1e3:.1f} ms")  # fmt: skip
        else:
            print(f"gen {gen}: no collection")
    print(run.stdout[-1500:])
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
