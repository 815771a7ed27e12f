"""lleaves compile flags against predict time on real requests' feature matrices.

Compiles a bundle's two LightGBM models with each set of lleaves flags (block size, code
model, inlining), checks that every variant scores like the default (< 1e-9), then
predicts every request's matrices with each variant, one thread, `--runs` rounds
alternating the variants, and prints the median model CPU per request and its ratio to
lleaves' defaults (the flags `ranking/compiled.py` uses).

Usage:
    python benchmarks/probe_lleaves_flags.py --bundle DIR --requests FILE [--n 2000] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import lleaves
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from bench_rank import load_requests
from xsell.ranking.ranker import Ranker
from xsell.ranking.types import Strategy

CONFIGS = {"default34": {}, "bs8": {"fblocksize": 8}, "bs16": {"fblocksize": 16}, "bs64": {"fblocksize": 64},
           "small": {"fcodemodel": "small"}, "noinline": {"finline": False}}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True)
    p.add_argument("--requests", required=True)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    B = args.bundle
    r = Ranker.load(B)
    reqs = load_requests(args.requests, args.n)
    xs = {Strategy.CROSS_SELL: [], Strategy.UP_SELL: []}
    for q in reqs:
        q.validated()
        ctx = r._context(q)
        cands = {s: r._candidates(q, s, ctx) for s in xs}
        for s, x in r._feature_matrices(cands, ctx).items():
            xs[s].append(np.ascontiguousarray(x, dtype=np.float64))
    models = {}
    tmp = tempfile.mkdtemp(prefix="lleaves-flags-")
    for name, kw in CONFIGS.items():
        for s in xs:
            m = lleaves.Model(model_file=f"{B}/model_{s.value}.txt")
            t0 = time.perf_counter()
            m.compile(cache=f"{tmp}/{name}_{s.value}.so", **kw)
            models[name, s] = m
            print(f"{name} {s.value}: compile {time.perf_counter() - t0:.1f}s", flush=True)
    ref = {s: [models["default34", s].predict(x, n_jobs=1) for x in xs[s][:200]] for s in xs}
    for name in CONFIGS:
        for s, mats in xs.items():
            d = max(float(np.abs(models[name, s].predict(x, n_jobs=1) - y).max()) for x, y in zip(mats, ref[s]))
            assert d < 1e-9, (name, s, d)
    res = {n: [] for n in CONFIGS}
    for _ in range(args.runs):
        for name in CONFIGS:
            t0 = time.thread_time()
            for s, mats in xs.items():
                for x in mats:
                    models[name, s].predict(x, n_jobs=1)
            res[name].append((time.thread_time() - t0) / len(reqs) * 1e3)
    base = statistics.median(res["default34"])
    for name, v in res.items():
        print(f"{name:10s} model CPU per request: median {statistics.median(v):.3f} ms, runs "
              f"{[round(x, 3) for x in v]}, ratio {statistics.median(v) / base:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
