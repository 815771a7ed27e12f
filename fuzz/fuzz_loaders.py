"""Fuzz the data loaders for N minutes: bytes -> a file (CSV, gzip CSV or Parquet, chosen
by the first byte) -> load_catalog / load_events / load_users, strict or lenient.

Allowed outcomes: a frame, or a DataError whose message starts with the file path.
Anything else (a pyarrow / pandas / numpy exception, a DataError without the file) is
a finding. Seeds are small valid tables of each kind in each format.

    python fuzz/fuzz_loaders.py --minutes 10 [--out fuzz-out]
"""

from __future__ import annotations

import gzip
import io
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Expected, Run, env_quiet, fuzz, parse_args

TABLES = {
    "catalog": "item_id,category,price,cost,brand,in_stock\na,x/y,1.5,1.0,acme,true\nb,z,2,,,no\n",
    "events": "user_id,item_id,timestamp,event_type,quantity,unit_price,basket_id\n"
              "u1,a,2020-01-01T10:00:00,purchase,1,1.5,b1\nu2,b,1577872800,view,2,,\n",
    "users": "user_id,age_group,region\nu1,30-34,A\nu2,,B\n",
}  # fmt: skip
KINDS = sorted(TABLES)
SUFFIXES = (".csv", ".csv.gz", ".parquet")


def to_parquet(csv_text: str) -> bytes:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pacsv.read_csv(io.BytesIO(csv_text.encode())), buf)
    return buf.getvalue()


def seeds() -> list[bytes]:
    out = []
    for k, kind in enumerate(KINDS):
        for s, suffix in enumerate(SUFFIXES):
            header = bytes([k * len(SUFFIXES) + s])  # selects kind and format, strict off
            body = to_parquet(TABLES[kind]) if suffix == ".parquet" else TABLES[kind].encode()
            out.append(header + body)
    return out


def make_target(workdir: Path):
    from xsell.data.loaders import load_catalog, load_events, load_users
    from xsell.errors import DataError

    loaders = {"catalog": load_catalog, "events": load_events, "users": load_users}

    def target(data: bytes) -> str:
        if not data:
            raise Expected("empty input")
        sel = data[0]
        kind = KINDS[(sel // len(SUFFIXES)) % len(KINDS)]
        suffix = SUFFIXES[sel % len(SUFFIXES)]
        strict = bool(sel & 0x80)
        body = data[1:]
        path = workdir / f"{kind}{suffix}"
        path.write_bytes(gzip.compress(body, mtime=0) if suffix == ".csv.gz" else body)
        try:
            frame = loaders[kind](path, strict=strict)
        except DataError as exc:
            if not str(exc).startswith(str(path)):
                raise AssertionError(f"DataError does not name the file: {exc}") from exc
            where = "row+column" if exc.row is not None and exc.column else ("row" if exc.row else
                    ("column" if exc.column else "file"))  # fmt: skip
            raise Expected(f"DataError ({where})") from None
        return f"loaded ({'empty' if len(frame) == 0 else 'rows'})"

    return target


def main() -> int:
    args = parse_args(__doc__)
    env_quiet()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="xsell-fuzz-") as tmp:
        run = Run("loaders", args.out, args.minutes, args.seed)
        fuzz(run, make_target(Path(tmp)), seeds(), args.engine)
    return 1 if run.findings else 0


if __name__ == "__main__":
    sys.exit(main())
