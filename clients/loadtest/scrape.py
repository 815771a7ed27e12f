"""Server-side figures from the Prometheus endpoint of `xsell serve --metrics-port`.

`scrape(url)` reads the text format once; `server_delta(before, after)` turns two
scrapes (window start and end) into per-stage and per-method latency figures and
the calls counted by status code, for the calls of the window only.
"""

from __future__ import annotations

import math
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from .stats import histogram_quantile

STAGE_METRIC = "xsell_stage_latency_seconds"
HANDLER_METRIC = "xsell_request_latency_seconds"
REQUESTS_METRIC = "xsell_requests"  # counter: samples are xsell_requests_total


@dataclass
class Scrape:
    # histogram name -> label value -> {"buckets": {le: cumulative}, "sum": s, "count": n}
    histograms: dict[str, dict[str, dict]] = field(default_factory=dict)
    # (method, code) -> calls
    requests: dict[tuple[str, str], float] = field(default_factory=dict)


_HISTOGRAM_LABEL = {STAGE_METRIC: "stage", HANDLER_METRIC: "method"}


def parse(text: str) -> Scrape:
    """Parse Prometheus text exposition; keeps only the metrics the report uses."""
    out = Scrape()
    for family in text_string_to_metric_families(text):
        if family.name in _HISTOGRAM_LABEL:
            key = _HISTOGRAM_LABEL[family.name]
            hist: dict[str, dict] = defaultdict(lambda: {"buckets": {}, "sum": 0.0, "count": 0.0})
            for s in family.samples:
                label = s.labels.get(key, "")
                if s.name.endswith("_bucket"):
                    le = float(s.labels["le"])
                    hist[label]["buckets"][le] = hist[label]["buckets"].get(le, 0.0) + s.value
                elif s.name.endswith("_sum"):
                    hist[label]["sum"] += s.value
                elif s.name.endswith("_count"):
                    hist[label]["count"] += s.value
            out.histograms[family.name] = dict(hist)
        elif family.name == REQUESTS_METRIC:
            for s in family.samples:
                if s.name.endswith("_total"):
                    k = (s.labels.get("method", ""), s.labels.get("code", ""))
                    out.requests[k] = out.requests.get(k, 0.0) + s.value
    return out


def scrape(url: str, timeout: float = 5.0) -> Scrape:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return parse(resp.read().decode("utf-8", errors="replace"))


def _hist_figures(before: dict | None, after: dict) -> dict:
    b_buckets = before["buckets"] if before else {}
    buckets = sorted((le, c - b_buckets.get(le, 0.0)) for le, c in after["buckets"].items())
    count = after["count"] - (before["count"] if before else 0.0)
    total = after["sum"] - (before["sum"] if before else 0.0)
    return {
        "count": round(count),
        "mean_ms": total / count * 1e3 if count > 0 else math.nan,
        "p50_ms": histogram_quantile(0.5, buckets) * 1e3,
        "p99_ms": histogram_quantile(0.99, buckets) * 1e3,
    }


def server_delta(before: Scrape, after: Scrape) -> dict:
    """Figures of the calls made between two scrapes.

    p50/p99 are interpolated inside the server's histogram buckets (0.25 ms .. 2.5 s,
    doubling), so they are coarse: within a factor of two at worst. The mean is exact.
    """
    out: dict = {"stages": {}, "handlers": {}, "requests": {}}
    for metric, dest in ((STAGE_METRIC, "stages"), (HANDLER_METRIC, "handlers")):
        for label, hist in after.histograms.get(metric, {}).items():
            fig = _hist_figures(before.histograms.get(metric, {}).get(label), hist)
            if fig["count"] > 0:
                out[dest][label] = fig
    for (method, code), value in sorted(after.requests.items()):
        delta = round(value - before.requests.get((method, code), 0.0))
        if delta:
            out["requests"].setdefault(method, {})[code] = delta
    return out
