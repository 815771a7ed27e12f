"""`xsell train` and `xsell rank` (the core, without gRPC)."""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from xsell.cli import non_negative_int, positive_int
from xsell.errors import DataError, InvalidRequest


def _timestamp(text: str) -> int:
    """Epoch seconds from epoch digits or an ISO-8601 date/time (UTC if no zone)."""
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time or epoch seconds: {text!r}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp())


def add_parser(sub) -> None:
    from .features import GROUPS
    from .train import TrainConfig

    p = sub.add_parser("train", help="train a model bundle from events + catalog",
                       description="Train retrieval artifacts and LambdaRank models; write one versioned bundle.")
    p.add_argument("--events", required=True, type=Path, help="events file (.csv or .parquet)")
    p.add_argument("--catalog", required=True, type=Path, help="catalog file (.csv or .parquet)")
    p.add_argument("--users", type=Path,
                   help="optional users file: its columns feed the segment features (off unless "
                        "--disable-feature-groups leaves segment on)")  # fmt: skip
    p.add_argument("--out", required=True, type=Path, help="bundle directory to write")
    p.add_argument("--until", type=_timestamp, help="train on events before this time (ISO-8601 or epoch s)")
    p.add_argument("--strict", action="store_true", help="any dropped input row is an error")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing bundle (a directory with a manifest.json; other directories are refused)")
    p.add_argument("--label-days", type=positive_int, default=TrainConfig.label_days,
                   help=f"days at the end that label the ranker's queries (default {TrainConfig.label_days})")
    p.add_argument("--label-windows", type=positive_int, default=None,
                   help="consecutive label windows of --label-days, latest first, each with the history before it "
                        "(default 2; an earlier window needs --label-days of history before it, else it is skipped)")
    p.add_argument("--disable-feature-groups", nargs="*", choices=GROUPS, default=None, metavar="GROUP",
                   help=f"feature groups the model leaves out, any of {', '.join(GROUPS)} (default "
                        f"{' '.join(TrainConfig.disabled_feature_groups)}; none given: every group)")
    p.add_argument("--seed", type=non_negative_int, default=TrainConfig.seed,
                   help=f"seed of every random choice (default {TrainConfig.seed})")
    p.set_defaults(func=_train)

    r = sub.add_parser("rank", help="rank for one context with a local bundle (no server)")
    r.add_argument("--bundle", required=True, type=Path)
    r.add_argument("--user", default="")
    r.add_argument("--cart", default="", help="comma-separated item ids")
    r.add_argument("--strategy", choices=["cross_sell", "up_sell", "both"], default="both")
    r.add_argument("--limit", type=int, default=10)
    r.add_argument("--explain", action="store_true")
    r.set_defaults(func=_rank)


def _train(args) -> int:
    from xsell.data.loaders import load_dataset

    from .features import feature_names
    from .train import TrainConfig, train_bundle

    if args.disable_feature_groups is not None and not feature_names(tuple(args.disable_feature_groups)):
        raise InvalidRequest("--disable-feature-groups", "every feature group is disabled: leave at least one on")
    for flag, path in (("--events", args.events), ("--catalog", args.catalog), ("--users", args.users)):
        if path is not None and not path.is_file():
            raise DataError(f"{flag}: {'is a directory, not a file' if path.is_dir() else 'no such file'}",
                            file=str(path))  # fmt: skip
    t0 = time.perf_counter()
    data = load_dataset(args.events, args.catalog, args.users, strict=args.strict)
    dropped = data.report.total_dropped()
    print(f"[{time.perf_counter() - t0:6.1f}s] loaded {len(data.events):,} events, {len(data.catalog):,} items"
          + (f" ({dropped:,} rows dropped: see cleaning_report.json in the bundle)" if dropped else ""))  # fmt: skip
    cfg = replace(TrainConfig(), label_days=args.label_days, seed=args.seed)
    if args.label_windows is not None:
        cfg = replace(cfg, label_windows=args.label_windows)
    if args.disable_feature_groups is not None:
        cfg = replace(cfg, disabled_feature_groups=tuple(args.disable_feature_groups))
    try:
        out = train_bundle(data, args.out, cfg, until=args.until, overwrite=args.overwrite)
    except DataError as exc:
        if exc.file is not None:
            raise
        # too little data, periods outside it: about the events as a whole, so name their file
        raise DataError(exc.reason, file=str(args.events), row=exc.row, column=exc.column) from exc
    size = sum(p.stat().st_size for p in out.iterdir())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"wrote {out} ({size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f}s, peak RSS {peak:.0f} MiB")
    return 0


def _rank(args) -> int:
    from .ranker import Ranker
    from .types import CartLine, RankRequest, Strategy

    ranker = Ranker.load(args.bundle)
    cart = tuple(CartLine(i) for i in args.cart.split(",") if i)
    res = ranker.rank(RankRequest(user_id=args.user, cart=cart, strategy=Strategy(args.strategy),
                                  limit=args.limit, explain=args.explain))  # fmt: skip
    out = {
        "model_version": res.model_version, "fallback": res.fallback, "fallback_reason": res.fallback_reason,
        "unknown_item_ids": res.unknown_item_ids,
        "cross_sell": [_item(i) for i in res.cross_sell], "up_sell": [_item(i) for i in res.up_sell],
    }  # fmt: skip
    print(json.dumps(out, indent=2))
    return 0


def _item(it) -> dict:
    d = {"item_id": it.item_id, "score": round(it.score, 4), "anchor": it.anchor_item_id, "price": it.price,
         "category": it.category, "price_uplift": round(it.price_uplift, 3), "sources": list(it.sources)}  # fmt: skip
    if it.reasons:
        d["reasons"] = [r.text for r in it.reasons]
    return d
