"""`xsell evaluate`: the offline protocol (DESIGN.md section 3) from files to a report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xsell.cli import non_negative_int, positive_int

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="time-split evaluation of the model against baselines; writes report.md/.json/.png",
        description=__doc__,
    )
    p.add_argument("--events", required=True, type=Path, help="events table (CSV or Parquet)")
    p.add_argument("--catalog", required=True, type=Path, help="catalog table (CSV or Parquet)")
    p.add_argument("--users", type=Path, default=None, help="optional users table")
    p.add_argument(
        "--test-days", type=positive_int, default=28, help="last N days = test period (default 28)"
    )
    p.add_argument("--valid-days", type=positive_int, default=28,
                   help="the N days before the test period: validation window for tuning, and the "
                        "model's label window (default 28)")  # fmt: skip
    p.add_argument("--max-queries", type=positive_int, default=20_000, help="per task (default 20000)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="default 0")
    p.add_argument(
        "--no-ablations", action="store_true", help="skip the ablations (2 fewer bundles to train)"
    )
    p.add_argument("--no-model", action="store_true", help="baselines only (no training)")
    p.add_argument(
        "--strict", action="store_true", help="a bad input row is an error, not a dropped row"
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="processes answering the model's requests (default 1)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--out", required=True, type=Path, help="report directory")
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from xsell.errors import XsellError

    # a report already in --out must not pass for the result of a run that failed
    try:
        report = _run(args)
    except XsellError as exc:
        raise XsellError(f"{exc}; {_not_written(args.out)}") from exc
    except BaseException:  # a bug or Ctrl-C: the traceback (or exit 130) stays
        print(f"xsell evaluate: {_not_written(args.out)}", file=sys.stderr)
        raise
    missed = [name for name, t in report.get("targets", {}).items() if not t["met"]]
    print(f"report: {args.out / 'report.md'}")
    for name in missed:
        print(f"target not met: {name}")
    return 0


def _not_written(out: Path) -> str:
    from .report import REPORT_FILES

    try:
        earlier = any((out / name).is_file() for name in REPORT_FILES)
    except OSError:  # e.g. --out not searchable: say nothing about what it holds
        earlier = False
    if earlier:  # a failed run leaves an earlier report as it was
        return f"no new report was written; the report in {out} is from an earlier run"
    return f"no report was written to {out}"


def _run(args: argparse.Namespace) -> dict:
    from xsell.data.loaders import load_dataset
    from xsell.errors import DataError

    from .runner import evaluate

    dataset = load_dataset(args.events, args.catalog, args.users, strict=args.strict)
    try:
        report = evaluate(
            dataset,
            args.out,
            test_days=args.test_days,
            valid_days=args.valid_days,
            max_queries=args.max_queries,
            seed=args.seed,
            ablations=not args.no_ablations,
            progress=not args.quiet,
            model=not args.no_model,
            workers=args.workers,
        )
    except DataError as exc:
        if exc.file is not None:
            raise
        # about the events as a whole (their time span, too little data): name their file
        raise DataError(exc.reason, file=str(args.events), row=exc.row, column=exc.column) from exc
    return report
