"""The report of a load run: a dict (written as JSON), a terminal table and a PNG."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from . import scrape as scrape_mod
from . import sysinfo
from .runner import BACKLOG, RawRun
from .stats import OK, count_codes, errors_only, percentiles, summarize_latency, timeline

STAGES = ("retrieval", "features", "model", "rules")


def window_samples(raw: RawRun) -> dict[str, np.ndarray]:
    """Calls due inside the measured window, over every process.

    t: due time from the window start (s); latency: completion - due time (s, NaN when
    the call never completed); lag: sent - due time (s); code: status names.
    """
    w0 = raw.start + raw.config.warmup
    w1 = w0 + raw.config.duration
    parts = {"t": [], "latency": [], "lag": [], "code": []}
    for p in raw.procs:
        sel = (p.sched >= w0) & (p.sched < w1)
        parts["t"].append(p.sched[sel] - w0)
        parts["latency"].append(p.done[sel] - p.sched[sel])
        parts["lag"].append(p.sent[sel] - p.sched[sel])
        names = np.array(p.code_names, dtype=object)
        parts["code"].append(names[p.code[sel]])
    out = {k: np.concatenate(v) if v else np.empty(0) for k, v in parts.items()}
    order = np.argsort(out["t"], kind="stable")
    return {k: v[order] for k, v in out.items()}


def worker_split(raw: RawRun) -> dict:
    """How the connections fell on the server's workers, and whether calls were balanced
    over them (every process knew the worker behind each of its connections)."""
    known = [p.workers for p in raw.procs]
    conns: dict[str, int] = {}
    for owners in known:
        for w in owners:
            conns[w] = conns.get(w, 0) + 1
    return {"balanced": bool(raw.config.balance and known and all(known)),
            "connections_per_worker": dict(sorted(conns.items()))}  # fmt: skip


def build_report(raw: RawRun, *, mix: dict | None = None) -> dict:
    cfg = raw.config
    s = window_samples(raw)
    codes = count_codes(s["code"]) if len(s["code"]) else {}
    ok = s["code"] == OK
    completed = ~np.isnan(s["latency"])
    sent = ~np.isnan(s["lag"])  # NaN: an open loop's CLIENT_BACKLOG call, due but never sent
    lat_ok = summarize_latency(s["latency"][ok])
    lat_all = summarize_latency(s["latency"][completed])
    client_cpu = sum(p.cpu_window_s for p in raw.procs)
    checked: dict[str, int] = {}
    for p in raw.procs:
        for k, v in p.checked.items():
            checked[k] = checked.get(k, 0) + v
    rep: dict = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": raw.config_dict(),
        "mode": cfg.mode,
        "host": sysinfo.host(),
        "loadavg": {"start": raw.loadavg_start, "end": raw.loadavg_end},
        "window_s": cfg.duration,
        "calls": len(s["code"]),
        "completed": int(completed.sum()),
        "ok": int(ok.sum()),
        "codes": codes,
        "errors": errors_only(codes),
        "achieved_rps": float(completed.sum() / cfg.duration),
        "ok_rps": float(ok.sum() / cfg.duration),
        "offered_rps": float(cfg.rate) if cfg.rate is not None else None,
        "latency_ms": lat_ok.as_dict() if lat_ok else None,
        "latency_all_ms": lat_all.as_dict() if lat_all else None,
        "client": {
            "procs": cfg.procs,
            "cpu_cores": client_cpu / cfg.duration,
            "cpu_share_of_host": client_cpu / cfg.duration / (sysinfo.host()["cores"]),
            "parent_cpu_s": raw.parent_cpu_s,
            "checked_responses": checked,
        },
        "timeline": timeline(s["t"], s["latency"], ok, duration=cfg.duration, sent=sent),
        "workers": worker_split(raw),
    }
    if cfg.mode == "open":
        lag = s["lag"][sent] * 1e3
        rep["send_lag_ms"] = (
            {f"p{q:g}": v for q, v in percentiles(lag, (50.0, 99.0)).items()}
            | {"max": float(lag.max())}
            if len(lag)
            else None
        )
        rep["not_sent_backlog"] = int((s["code"] == BACKLOG).sum())
    if mix is not None:
        rep["mix"] = mix
    if raw.server_before is not None and raw.server_after is not None:
        rep["server"] = scrape_mod.server_delta(raw.server_before, raw.server_after)
    elif cfg.metrics_url:
        rep["server"] = {"error": raw.scrape_error or "no scrape"}
    if raw.server_procs:
        srv = rep.setdefault("server", {})
        srv["processes"] = raw.server_procs
        # CPU per call: unlike the rate, it hardly moves when other jobs share the host
        cores = sum(p["cpu_cores"] or 0.0 for p in raw.server_procs)
        srv["cpu_cores"] = cores
        srv["cpu_ms_per_call"] = cores * 1e3 / rep["achieved_rps"] if rep["achieved_rps"] else None
    return rep


def latencies_ok_s(raw: RawRun) -> np.ndarray:
    s = window_samples(raw)
    return s["latency"][s["code"] == OK]


def _f(x, nd=2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{nd}f}"


def format_table(rep: dict) -> str:
    cfg = rep["config"]
    load = (
        f"{cfg['concurrency']} concurrent"
        if rep["mode"] == "closed"
        else f"{cfg['rate']:g}/s offered ({cfg['arrival']})"
    )
    lines = [
        (
            f"xsell loadtest: {cfg['target']} on {cfg['address']}, {rep['mode']} loop, {load}, "
            f"{cfg['procs']} client process(es), {rep['window_s']:g} s measured after "
            f"{cfg['warmup']:g} s warm-up"
        ),
        f"host: {rep['host']['cpu']}, {rep['host']['cores']} cores; load average {rep['loadavg']['start']} -> {rep['loadavg']['end']}",
        "",
        f"  calls        {rep['calls']:>10,}   ok {rep['ok']:,}",
        f"  achieved     {_f(rep['achieved_rps'], 1):>10} calls/s   (ok {_f(rep['ok_rps'], 1)}/s)",
    ]
    lat = rep["latency_ms"]
    if lat:
        lines.append("")
        lines.append(
            "  latency ms   "
            + "  ".join(f"{k:>8}" for k in ("p50", "p90", "p99", "p99.9", "max", "mean"))
        )
        lines.append(
            "  (ok calls)   "
            + "  ".join(f"{_f(lat[k]):>8}" for k in ("p50", "p90", "p99", "p99.9", "max", "mean"))
        )
    if rep["mode"] == "open" and rep.get("send_lag_ms"):
        lag = rep["send_lag_ms"]
        lines.append(f"  send lag ms  p50 {_f(lag['p50'])}  p99 {_f(lag['p99'])}  max {_f(lag['max'])}   "
                     f"(client behind schedule; counted in latency)")  # fmt: skip
    errs = rep["errors"]
    lines.append("")
    lines.append(
        "  errors       " + (", ".join(f"{k} {v:,}" for k, v in errs.items()) if errs else "none")
    )
    c = rep["client"]
    lines.append(f"  client CPU   {c['cpu_cores']:.2f} cores ({100 * c['cpu_share_of_host']:.0f}% of the host) "
                 f"over {c['procs']} process(es)")  # fmt: skip
    w = rep.get("workers") or {}
    if w.get("connections_per_worker"):
        split = " / ".join(str(n) for n in w["connections_per_worker"].values())
        lines.append(f"  workers      {len(w['connections_per_worker'])} seen, connections {split}; calls "
                     + ("balanced over them" if w["balanced"] else "over the connections in turn"))  # fmt: skip
    elif cfg.get("balance"):
        lines.append("  workers      not known (the server does not say): calls over the connections in turn")
    chk = c["checked_responses"]
    if chk.get("decoded"):
        if cfg["target"] == "recommend":
            lines.append(f"  responses    {chk['decoded']:,} decoded: {chk['items'] / chk['decoded']:.1f} items each, "
                         f"{chk['empty']} empty, {100 * chk['fallback'] / chk['decoded']:.1f}% fallback")  # fmt: skip
        else:
            lines.append(
                f"  responses    {chk['decoded']:,} decoded, {chk['not_serving']} not SERVING"
            )
    srv = rep.get("server")
    if srv:
        lines.append("")
        if "error" in srv:
            lines.append(f"  server metrics: {srv['error']}")
        if srv.get("stages"):
            lines.append("  server stage (histogram)   calls    mean ms   ~p50 ms   ~p99 ms")
            for name in [*STAGES, *sorted(set(srv["stages"]) - set(STAGES))]:
                st = srv["stages"].get(name)
                if st:
                    lines.append(
                        f"    {name:<22} {st['count']:>8,} {_f(st['mean_ms'], 3):>10} {_f(st['p50_ms'], 3):>9} {_f(st['p99_ms'], 3):>9}"
                    )
        for method, st in sorted(srv.get("handlers", {}).items()):
            lines.append(
                f"    handler {method:<14} {st['count']:>8,} {_f(st['mean_ms'], 3):>10} {_f(st['p50_ms'], 3):>9} {_f(st['p99_ms'], 3):>9}"
            )
        for method, by_code in sorted(srv.get("requests", {}).items()):
            lines.append(
                f"    server counted {method}: "
                + ", ".join(f"{k} {v:,}" for k, v in by_code.items())
            )
        for p in srv.get("processes", []):
            lines.append(
                f"    pid {p['pid']:<8} CPU {_f(p['cpu_cores'])} cores   RSS {_f(p['rss_start_mib'], 1)} -> {_f(p['rss_end_mib'], 1)} MiB"
            )
        if srv.get("cpu_ms_per_call") is not None:
            lines.append(
                f"    server CPU {_f(srv['cpu_cores'])} cores: {_f(srv['cpu_ms_per_call'], 3)} ms per call"
            )
    return "\n".join(lines)


def write_json(rep: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rep, indent=2, default=_json_default, allow_nan=True) + "\n")
    return path


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def plot(rep: dict, latencies_s: np.ndarray, path: str | Path) -> Path:
    """PNG: latency over time (p50/p99/max per second, calls/s) and the latency distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 8), constrained_layout=True)
    tl = rep["timeline"]
    t = [r["t"] for r in tl]
    for key, style in (("max_ms", ":"), ("p99_ms", "-"), ("p50_ms", "-")):
        ax1.plot(t, [r[key] for r in tl], style, label=key.replace("_ms", ""))
    ax1.set_yscale("log")
    ax1.set_xlabel("seconds into the measured window")
    ax1.set_ylabel("latency, ms (ok calls)")
    ax1b = ax1.twinx()
    ax1b.plot(t, [r["rate"] for r in tl], color="grey", alpha=0.5, label="calls/s sent")
    errs = [r["errors"] for r in tl]
    if any(errs):
        ax1b.bar(t, errs, width=0.8, align="edge", color="red", alpha=0.4, label="errors")
    ax1b.set_ylabel("calls/s")
    ax1b.set_ylim(bottom=0)
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax1b.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, loc="upper left", fontsize="small")
    cfg = rep["config"]
    load = (
        f"{cfg['concurrency']} concurrent"
        if rep["mode"] == "closed"
        else f"{cfg['rate']:g}/s offered"
    )
    ax1.set_title(f"{cfg['target']}, {rep['mode']} loop, {load}: {rep['achieved_rps']:.0f} calls/s achieved, "
                  f"errors {sum(rep['errors'].values())}")  # fmt: skip
    ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    if len(ms):
        lo, hi = max(ms.min(), 1e-3), max(ms.max(), 1e-3) * 1.01
        bins = np.geomspace(lo, hi, 80) if hi > lo else 10
        ax2.hist(ms, bins=bins, color="tab:blue", alpha=0.7)
        ax2.set_xscale("log")
        lat = rep["latency_ms"] or {}
        for k, color in (("p50", "green"), ("p99", "orange"), ("p99.9", "red")):
            if k in lat:
                ax2.axvline(lat[k], color=color, linestyle="--", label=f"{k} {lat[k]:.2f} ms")
        ax2.legend(fontsize="small")
    ax2.set_xlabel("latency, ms (log)")
    ax2.set_ylabel("calls")
    ax2.set_title("latency distribution (ok calls)")
    fig.savefig(path, dpi=100, format="png")  # else a path without ".png" gets one appended
    plt.close(fig)
    return path


class Progress:
    """Prints one line per second while a run goes: elapsed, calls/s, p99, errors."""

    def __init__(self, cfg, stream=None) -> None:
        self.total = cfg.warmup + cfg.duration
        self.warmup = cfg.warmup
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.buf: list[np.ndarray] = []
        self.errors = 0
        self.calls = 0
        self.last = 0.0  # elapsed at the last line: the first line comes 1 s into the run

    def __call__(self, elapsed: float, proc: int, errors: int, latencies: np.ndarray) -> None:
        self.buf.append(latencies)
        self.errors += errors
        self.calls += len(latencies) + errors
        if elapsed - self.last < 1.0:
            return
        lat = np.concatenate(self.buf) if self.buf else np.empty(0)
        span = elapsed - self.last
        p99 = percentiles(lat * 1e3, (99.0,))[99.0] if len(lat) else math.nan
        phase = "warm-up" if elapsed < self.warmup else "measuring"
        line = (f"[{min(elapsed, self.total):5.1f}/{self.total:.0f} s {phase:>9}] {len(lat) / span:8.1f} ok/s  "
                f"p99 {p99:7.2f} ms  calls {self.calls:,}  errors {self.errors:,}")  # fmt: skip
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()
        self.buf, self.last = [], elapsed

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
