"""How far can the ranker go with its features and candidates? An oracle ceiling.

The model of `xsell evaluate` learns from label windows before the test period (on
Ta-Feng: January, the Lunar New Year rush) and is scored on February. Is the gap to issue
3's targets (1.25x / 1.25x / 1.2x the best baseline) a matter of how it is trained (the
windows, the labels, the settings), or of what its features and candidates can tell?

This script answers that by cheating in the one place that separates the two: it trains
the ranker with **the test period itself as its latest label window**, so the ranker
learns February's own mood. To stay a measurement of features and not of memory it is
cross-fitted: shoppers are split in two halves (by a hash of their id); the ranker that
learns from half A's test-period baskets answers half B's queries, and the other way
round. Everything else is the evaluation's own: its bundle's serving artifacts (built
before the test period; only the model files are swapped in), its queries, its metrics.

    python benchmarks/bench_quality.py --data DATA --no-ablations --max-queries 5000 --out REPORT
    python benchmarks/bench_ceiling.py --data DATA --report REPORT --out OUT

If even this oracle stays well below the targets, no choice of training windows, labels
or LambdaRank settings can reach them: that takes information the features do not hold.
It is a diagnostic, never a way to build a model (it reads the test period's labels).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from xsell.ranking.bundle import COMPILED_FILES, MANIFEST, MODEL_FILES, write_manifest
from xsell.ranking.compiled import sidecar_path
from xsell.ranking.train import TrainConfig, train_bundle

from xsell.data.contract import Dataset
from xsell.data.loaders import load_dataset
from xsell.evaluation.baselines import _as_items, query_batches, top_k
from xsell.evaluation.metrics import mean_ci, paired_difference
from xsell.evaluation.model import ModelClient, RankerSpec, model_rankings
from xsell.evaluation.queries import build_history
from xsell.evaluation.runner import MODEL, VIEWS, build_views, per_query_metrics
from xsell.evaluation.split import time_split


def shopper_half(user_ids: np.ndarray) -> np.ndarray:
    """0 or 1 per shopper id, from a hash (stable across runs and processes)."""
    return np.fromiter((hashlib.md5(str(u).encode()).digest()[0] & 1 for u in user_ids), dtype=np.int8,
                       count=len(user_ids))  # fmt: skip


def test_period_popularity(test: pd.DataFrame, history, half: np.ndarray) -> np.ndarray:
    """(2, n_items): baskets of each shopper half in the test period holding each warm item,
    plus a training-popularity tie-break far below one basket."""
    is_buy = (test["event_type"] == "purchase").to_numpy()
    buys, half = test[is_buy], half[is_buy]
    item = history.items.get_indexer(buys["item_id"])
    pop = np.zeros((2, history.n_items))
    for h in (0, 1):
        keep = (half == h) & (item >= 0)
        lines = pd.DataFrame({"b": buys["basket_id"].to_numpy()[keep], "i": item[keep]}).drop_duplicates()
        np.add.at(pop[h], lines["i"].to_numpy(), 1.0)
    train_pop = np.asarray(history.user_items.sum(axis=0)).ravel()
    return pop + 1e-6 * train_pop / max(train_pop.max(), 1)


def popularity_rankings(queries, history, pop: np.ndarray, query_half: np.ndarray, k: int = 10) -> np.ndarray:
    """Top k of the view's candidates by the *other* half's test-period popularity."""
    out = np.full((len(queries), k), -1, dtype=np.int64)
    for rows, cols, mask in query_batches(queries, history, 256):
        scores = pop[1 - query_half[rows]][:, cols]
        out[rows] = _as_items(top_k(scores, mask, k), cols)
    return out


def swap_models(serving_bundle: Path, model_bundle: Path, out: Path) -> Path:
    """A copy of `serving_bundle` (its retrieval artifacts) with `model_bundle`'s rankers."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(serving_bundle, out)
    names = [*MODEL_FILES.values(), *COMPILED_FILES.values()]
    names += [sidecar_path(Path(n)).name for n in COMPILED_FILES.values()]
    for name in names:
        (out / name).unlink(missing_ok=True)
        if (model_bundle / name).exists():
            shutil.copy2(model_bundle / name, out / name)
    serving = json.loads((serving_bundle / MANIFEST).read_text())
    trained = json.loads((model_bundle / MANIFEST).read_text())
    if serving["feature_names"] != trained["feature_names"]:
        raise SystemExit(f"{model_bundle}: its features differ from {serving_bundle}'s")
    manifest = {k: v for k, v in serving.items() if k not in ("format", "files")}
    manifest.update(metrics=trained["metrics"], untrained_models=trained["untrained_models"],
                    oracle_models_from=str(model_bundle))  # fmt: skip
    write_manifest(out, manifest)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="directory with events/catalog[/users].parquet")
    ap.add_argument("--report", type=Path, required=True,
                    help="a bench_quality / evaluate report on the real test period (its bundle and per-query NDCG)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--label-windows", type=int, default=TrainConfig.label_windows,
                    help="the oracle's label windows: the test period, then the ones before it")
    ap.add_argument("--model-seed", type=int, default=None,
                    help="the trainer's seed, as in bench_quality.py (give the one --report was trained with)")
    args = ap.parse_args(argv)

    report = json.loads((args.report / "report.json").read_text())
    proto = report["protocol"]
    stored = np.load(args.report / "per_query_ndcg.npz")
    find = {n: next((args.data / f"{n}.{e}" for e in ("parquet", "csv") if (args.data / f"{n}.{e}").exists()), None)
            for n in ("events", "catalog", "users")}  # fmt: skip
    ds = load_dataset(find["events"], find["catalog"], find["users"])
    split = time_split(ds.events, test_days=proto["test_days"], valid_days=proto["valid_days"])
    train_events = split.train
    history = build_history(train_events, ds.catalog)
    views = build_views(split.test, train_events, history, max_queries=proto["max_queries"], seed=proto["seed"])
    for view in VIEWS:
        n = len(stored[f"{view}/{MODEL}/ndcg"])
        if n != len(views[view]):
            raise SystemExit(f"{args.report}: {n} {view} queries, this split gives {len(views[view])}")

    args.out.mkdir(parents=True, exist_ok=True)
    test = split.test
    test_half = shopper_half(test["user_id"].to_numpy())
    feb_pop = test_period_popularity(test, history, test_half)
    cfg = TrainConfig(seed=proto["seed"], label_days=proto["test_days"], label_windows=args.label_windows)
    if args.model_seed is not None:
        m = args.model_seed
        cfg = replace(cfg, seed=m, model=replace(cfg.model, seed=m), retrieval=replace(cfg.retrieval, seed=m))
    serving = Path(report["bundles"][MODEL])
    hybrids = {}
    for h in (0, 1):
        events = pd.concat([train_events, test[test_half == h]], ignore_index=True)
        full = args.out / f"oracle_half{h}_trained"
        if not (full / MANIFEST).exists():
            print(f"training the oracle on the test-period baskets of shopper half {h} "
                  f"({int((test_half == h).sum()):,} test events)", flush=True)  # fmt: skip
            train_bundle(Dataset(events, ds.catalog, ds.users, ds.report), full, cfg, overwrite=True,
                         log=lambda *a: None)  # fmt: skip
        start = json.loads((full / MANIFEST).read_text())["data"]["label_start"]
        if abs(start - split.test_start) > 86_400:
            raise SystemExit(f"the oracle's label window starts at {start}, the test period at {split.test_start}")
        hybrids[h] = swap_models(serving, full, args.out / f"oracle_half{h}")

    rows = []
    with ModelClient(args.workers) as client:
        for view in VIEWS:
            qs = views[view]
            half = shopper_half(history.users.to_numpy(dtype=object)[qs.user])
            # each query answered by the oracle that never saw its shopper's test baskets
            ranked = {h: model_rankings(client, RankerSpec(str(hybrids[h])), qs, history) for h in (0, 1)}
            oracle = np.where((half == 0)[:, None], ranked[1], ranked[0])
            nd = per_query_metrics(oracle, qs, history)["ndcg"]
            # what knowing February's demand alone is worth: the other half's popularity
            fp = per_query_metrics(popularity_rankings(qs, history, feb_pop, half), qs, history)["ndcg"]
            best = report["views"][view]["best_baseline"]
            base, model = stored[f"{view}/{best}/ndcg"], stored[f"{view}/{MODEL}/ndcg"]
            b, m, o, p = (mean_ci(v).mean for v in (base, model, nd, fp))
            d = paired_difference(nd, model)
            rows.append((view, best, b, m, o, d, p))
            print(f"{view}: best baseline ({best}) {b:.4f} | model {m:.4f} ({m / b:.2f}x) | "
                  f"oracle {o:.4f} ({o / b:.2f}x), oracle - model {d.mean:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}] | "
                  f"test-period popularity {p:.4f} ({p / b:.2f}x)", flush=True)  # fmt: skip

    print("\n| view | best baseline | model | oracle ranker (test-period labels, cross-fitted) | oracle - model "
          "| popularity in the test period (cross-fitted) |")
    print("|---|---|---|---|---|---|")
    for view, best, b, m, o, d, p in rows:
        print(f"| {view} | {best} {b:.4f} | {m:.4f} ({m / b:.2f}x) | {o:.4f} ({o / b:.2f}x) | "
              f"{d.mean:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}] | {p:.4f} ({p / b:.2f}x) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
