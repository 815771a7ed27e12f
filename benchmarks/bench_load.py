"""Serving throughput and latency of `xsell serve` under load (issue 6 figures).

Starts `xsell serve --workers 2` (the default layout) on a bundle, then with the
`xsell loadtest` engine (`xsell.clients.loadtest`):

 (a) closed loop, `--concurrency` callers (default 16) over 2 client processes:
     Recommend, then the standard health Check against the same server right after
     (a bare gRPC call): QPS, p50 / p99, errors, and Recommend QPS / health QPS;
 (b) open loop at `--open-share` (default 70%) of the median Recommend QPS of (a) for
     `--open-seconds` (default 60): p99, errors, server RSS at start and end;
 (c) once, a cross-check with an independent generator, h2load (Debian nghttp2-client),
     on one pre-encoded request: both closed loops at the same concurrency on one
     connection per caller; the QPS figures must agree within 15%.

Every figure of (a) and (b) is the median of `--runs` runs (default 3), each with the
load average at its start. The generator shares the host with the server, so on a
small machine the gRPC figures are a lower bound (client CPU is reported).

`--canned`: the same server, but each worker answers every request with the result of
the first one it ranked (benchmarks/canned_serve.py): what a Recommend costs without
the ranking, i.e. the best Recommend / health ratio any ranking code could reach here.

Usage:
    python benchmarks/bench_load.py --bundle DIR --requests FILE [--runs 3] [--canned]
        [--seconds 15] [--open-seconds 60] [--skip-h2load] [--skip-closed --open-rate R]
        [--server-arg=--cpu-policy=normal ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from bench_overload import die_with_parent  # this directory: the shared server-process helper

READY = re.compile(r"listening on [^ ]+:(?P<port>\d+) workers=\d+ pids=(?P<pids>[\d,]+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, bundle: str, workers: int = 2, python: str = sys.executable,
                 extra: list[str] | None = None, canned: bool = False):  # fmt: skip
        self.metrics_port = free_port()
        # canned: the same server with a ranking that costs nothing (canned_serve.py)
        entry = [str(Path(__file__).with_name("canned_serve.py"))] if canned else ["-m", "xsell.cli"]
        cmd = [python, *entry, "serve", "--bundle", bundle, "--port", "0", "--workers",
               str(workers), "--metrics-port", str(self.metrics_port), "--no-access-log",
               *(extra or [])]  # fmt: skip
        self.log = (
            Path(os.environ.get("TMPDIR", "/tmp")) / f"xsell-bench-load-serve-{os.getpid()}.log"
        )
        with open(self.log, "wb") as err:  # the server's own log, for when a run fails
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=err, start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - a prctl, no locks
            )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        m = READY.search(line)
        if not m:
            self.stop()
            raise SystemExit(f"xsell serve did not start: {line!r}")
        self.port = int(m["port"])
        self.address = f"127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.pids = [int(p) for p in m["pids"].split(",")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(60)


def run(cfg, bodies, mix=None) -> dict:
    from xsell.clients.loadtest import build_report, run_load

    rep = build_report(run_load(cfg, bodies), mix=mix)
    lat = rep["latency_ms"] or {}
    row = {
        "qps": rep["ok_rps"], "p50_ms": lat.get("p50"), "p99_ms": lat.get("p99"), "p999_ms": lat.get("p99.9"),
        "max_ms": lat.get("max"), "errors": sum(rep["errors"].values()), "error_codes": rep["errors"],
        "client_cpu_cores": rep["client"]["cpu_cores"], "loadavg_start": rep["loadavg"]["start"],
        "loadavg_end": rep["loadavg"]["end"],
    }  # fmt: skip
    srv = rep.get("server", {})
    row["server_stage_mean_ms"] = {k: v["mean_ms"] for k, v in srv.get("stages", {}).items()}
    procs = srv.get("processes", [])
    workers = [
        p for p in procs if p["rss_start_mib"] and p["rss_start_mib"] > 50
    ]  # not the small helpers
    row["server_rss_mib"] = {str(p["pid"]): [p["rss_start_mib"], p["rss_end_mib"]] for p in workers}
    row["server_cpu_cores"] = sum(p["cpu_cores"] or 0 for p in procs)
    row["server_cpu_ms_per_call"] = srv.get("cpu_ms_per_call")
    row["achieved"] = rep["achieved_rps"]  # every completed call, whatever its status
    row["workers"] = rep.get("workers")  # connections per worker, balanced or not
    if cfg.mode == "open":
        row["offered"] = cfg.rate
        row["send_lag_p99_ms"] = (rep.get("send_lag_ms") or {}).get("p99")
    return row


def med(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def h2load(
    address: str, method: str, body: bytes, concurrency: int, seconds: float, warmup: float
) -> dict:
    """h2load on one pre-encoded gRPC message: 5-byte prefix (not compressed, big-endian
    length) + the protobuf bytes; content-type application/grpc and te: trailers."""
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"xsell-h2load-{os.getpid()}.bin"
    path.write_bytes(b"\x00" + struct.pack(">I", len(body)) + body)
    cmd = ["h2load", "-c", str(concurrency), "-m", "1", "-D", str(max(1, round(seconds))), "--warm-up-time", str(max(1, round(warmup))),
           "-d", str(path), "-H", "content-type: application/grpc", "-H", "te: trailers",
           f"http://{address}{method}"]  # fmt: skip
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=seconds + warmup + 60, check=True
    ).stdout
    path.unlink(missing_ok=True)
    m = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    r = re.search(
        r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out
    )
    t = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if not m or not r:
        raise RuntimeError(f"cannot read h2load's output:\n{out}")
    return {"qps": float(m[1]), "done": int(r[2]), "succeeded": int(r[3]), "failed": int(r[4]),
            "mean_latency": t[3] if t else None, "loadavg": list(os.getloadavg())}  # fmt: skip


def grpc_codes(metrics_url: str, method: str) -> dict[str, int]:
    from xsell.clients.loadtest.scrape import scrape

    return {code: int(n) for (m, code), n in scrape(metrics_url).requests.items() if m == method}


def cross_check(server: Server, base, body: bytes, args) -> dict:
    """xsell loadtest vs h2load on one request, closed loop at the same concurrency, in
    alternating order for `args.runs` rounds (the host's load drifts); median ratio."""
    from xsell.clients.loadtest import health_body
    from xsell.clients.loadtest.runner import HEALTH_METHOD, RECOMMEND_METHOD

    res: dict = {}
    for name, method, payload in (
        ("recommend", RECOMMEND_METHOD, body),
        ("health", HEALTH_METHOD, health_body()),
    ):
        rounds = []
        for k in range(args.runs):
            pair = {}
            for who in ("ours", "h2load") if k % 2 == 0 else ("h2load", "ours"):
                if who == "ours":
                    pair["ours"] = run(replace(base, target=name), [payload])
                else:
                    before = grpc_codes(server.metrics_url, "Recommend")
                    pair["h2load"] = h2load(
                        server.address, method, payload, args.concurrency, args.seconds, args.warmup
                    )
                    after = grpc_codes(server.metrics_url, "Recommend")
                    # h2load counts HTTP 200s; gRPC errors travel in trailers: ask the server
                    pair["h2load"]["grpc_codes"] = {
                        c: n - before.get(c, 0) for c, n in after.items() if n - before.get(c, 0)
                    }
            # h2load's req/s counts every answered call (a gRPC error is an HTTP 200 too): compare
            # with every call this harness saw answered, not only the OK ones
            pair["ratio"] = pair["ours"]["achieved"] / pair["h2load"]["qps"]
            rounds.append(pair)
            print(f"cross-check {name} round {k + 1}: xsell loadtest {pair['ours']['achieved']:.0f}/s "
                  f"(client CPU {pair['ours']['client_cpu_cores']:.2f} cores), h2load {pair['h2load']['qps']:.0f}/s, "
                  f"ratio {pair['ratio']:.3f}, load {pair['ours']['loadavg_start']}", flush=True)  # fmt: skip
        res[name] = {"rounds": rounds, "median_ratio": statistics.median(r["ratio"] for r in rounds),
                     "ours_qps": statistics.median(r["ours"]["achieved"] for r in rounds),
                     "h2load_qps": statistics.median(r["h2load"]["qps"] for r in rounds)}  # fmt: skip
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bundle", required=True)
    p.add_argument("--requests", required=True, help="request file (xsell loadtest requests)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--procs", type=int, default=2, help="client processes")
    p.add_argument("--seconds", type=float, default=15.0, help="closed-loop measured seconds")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--open-seconds", type=float, default=60.0)
    p.add_argument("--open-share", type=float, default=0.7)
    p.add_argument("--skip-h2load", action="store_true")
    p.add_argument("--skip-open", action="store_true")
    p.add_argument("--no-balance", action="store_true",
                   help="calls over the connections in turn, not balanced over the workers (as before session 9)")
    p.add_argument(
        "--skip-closed", action="store_true", help="with the open loop, needs --open-rate"
    )
    p.add_argument(
        "--open-rate",
        type=float,
        default=None,
        help="open-loop rate (default: share of closed QPS)",
    )
    p.add_argument("--server-python", default=sys.executable,
                   help="python that runs `xsell serve` (e.g. a venv holding another checkout)")  # fmt: skip
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="one more `xsell serve` argument, e.g. --server-arg=--cpu-policy=normal")  # fmt: skip
    p.add_argument("--canned", action="store_true",
                   help="serve every request the answer of the first one (benchmarks/canned_serve.py): "
                   "the ceiling of Recommend without ranking cost")  # fmt: skip
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.skip_closed and not args.open_rate and not args.skip_open:
        p.error("--skip-closed needs --open-rate")

    from xsell.clients.loadtest import LoadConfig, encode_requests, health_body, read_requests
    from xsell.clients.loadtest.mix import describe
    from xsell.clients.loadtest.sysinfo import host

    reqs = read_requests(args.requests)
    bodies = encode_requests(reqs)
    mix = {"file": str(args.requests), **describe(reqs)}
    server = Server(args.bundle, python=args.server_python, extra=args.server_arg, canned=args.canned)
    out: dict = {
        "canned": args.canned,
        "host": host(),
        "mix": mix,
        "bundle": args.bundle,
        "server_python": args.server_python,
        "server_args": args.server_arg,
        "closed": {"recommend": [], "health": []},
    }
    try:
        base = LoadConfig(address=server.address, concurrency=args.concurrency, duration=args.seconds,
                          warmup=args.warmup, procs=args.procs, metrics_url=server.metrics_url,
                          server_pids=(server.proc.pid,), balance=not args.no_balance)  # fmt: skip
        # one unmeasured run first: the first seconds of a fresh server were slow in every
        # session here (page cache, allocator, branch caches), and they are not the steady state
        run(replace(base, duration=5.0, warmup=0.0), bodies)
        for k in range(0 if args.skip_closed else args.runs):
            rec = run(base, bodies, mix)
            hc = run(replace(base, target="health"), [health_body()])
            rec["ratio_to_health"] = rec["qps"] / hc["qps"]
            out["closed"]["recommend"].append(rec)
            out["closed"]["health"].append(hc)
            print(f"closed run {k + 1}: recommend {rec['qps']:.0f}/s p50 {rec['p50_ms']:.1f} p99 {rec['p99_ms']:.1f} ms, "
                  f"health {hc['qps']:.0f}/s, ratio {rec['ratio_to_health']:.3f}, errors {rec['errors']}+{hc['errors']}, "
                  f"load {rec['loadavg_start']}", flush=True)  # fmt: skip
        r, h = out["closed"]["recommend"], out["closed"]["health"]
        out["closed"]["median"] = {} if args.skip_closed else {
            "recommend_qps": med(r, "qps"), "recommend_p50_ms": med(r, "p50_ms"), "recommend_p99_ms": med(r, "p99_ms"),
            "health_qps": med(h, "qps"), "health_p99_ms": med(h, "p99_ms"), "ratio": med(r, "ratio_to_health"),
            "errors": sum(x["errors"] for x in r + h),
            "recommend_cpu_ms_per_call": med(r, "server_cpu_ms_per_call"),
            "health_cpu_ms_per_call": med(h, "server_cpu_ms_per_call"),
        }  # fmt: skip
        if not args.skip_open:
            rate = args.open_rate or args.open_share * out["closed"]["median"]["recommend_qps"]
            out["open"] = {"rate": rate, "runs": []}
            for k in range(args.runs):
                o = run(
                    replace(base, concurrency=None, rate=rate, duration=args.open_seconds),
                    bodies,
                    mix,
                )
                out["open"]["runs"].append(o)
                rss = "; ".join(
                    f"{a:.0f}->{b:.0f}"
                    for pid, (a, b) in o["server_rss_mib"].items()
                    if int(pid) in server.pids
                )
                print(f"open run {k + 1}: {rate:.0f}/s offered, {o['achieved']:.0f}/s achieved, p50 {o['p50_ms']:.1f} "
                      f"p99 {o['p99_ms']:.1f} ms, errors {o['errors']}, worker RSS MiB {rss}, "
                      f"load {o['loadavg_start']}", flush=True)  # fmt: skip
            runs = out["open"]["runs"]
            out["open"]["median"] = {"p50_ms": med(runs, "p50_ms"), "p99_ms": med(runs, "p99_ms"),
                                     "achieved": med(runs, "achieved"), "errors": sum(x["errors"] for x in runs)}  # fmt: skip
        if not args.skip_h2load and shutil.which("h2load"):
            out["h2load"] = cross_check(server, base, bodies[0], args)
    except BaseException:
        print(f"server log: {server.log}", file=sys.stderr)
        raise
    finally:
        server.stop()
        if args.json:  # also what was measured before a failure
            args.json.write_text(json.dumps(out, indent=2, default=str))
    print(summary(out))
    return 0


def summary(out: dict) -> str:
    c = out["closed"]["median"]
    lines = [] if not c else [f"host: {out['host']['cpu']}, {out['host']['cores']} cores, Python {out['host']['python']}", "",
             "| figure (median of runs) | value |", "|---|---:|",
             f"| Recommend QPS, closed loop | {c['recommend_qps']:.0f} |",
             f"| Recommend p50 / p99 ms | {c['recommend_p50_ms']:.1f} / {c['recommend_p99_ms']:.1f} |",
             f"| health Check QPS, same server | {c['health_qps']:.0f} |",
             f"| Recommend / health QPS | {c['ratio']:.3f} |",
             f"| errors | {c['errors']} |",
             f"| server CPU ms per call: Recommend / health | {c['recommend_cpu_ms_per_call']:.2f} / {c['health_cpu_ms_per_call']:.3f} |"]  # fmt: skip
    if "open" in out:
        o = out["open"]["median"]
        lines = lines or ["| figure (median of runs) | value |", "|---|---:|"]
        lines += [f"| open loop {out['open']['rate']:.0f}/s: p50 / p99 ms | {o['p50_ms']:.1f} / {o['p99_ms']:.1f} |",
                  f"| open loop errors | {o['errors']} |"]  # fmt: skip
    if "h2load" in out:
        for name, x in out["h2load"].items():
            lines.append(f"| cross-check {name}: xsell loadtest / h2load QPS | {x['ours_qps']:.0f} / {x['h2load_qps']:.0f} "
                         f"= {x['median_ratio']:.2f} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
