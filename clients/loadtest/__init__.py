"""Load testing of a running xsell server (`xsell loadtest`).

runner   LoadConfig, run_load: client processes, closed / open loop, raw samples
report   build_report, format_table, write_json, plot: the figures of a run
stats    pure statistics: nearest-rank percentiles, timelines, arrival schedules
scrape   the server's Prometheus metrics: stage timings of the measured window
mix      request files: replayed baskets, the fixed synthetic mix
"""

from __future__ import annotations

from .mix import read_requests, replay_requests, synthetic_requests, write_requests
from .report import build_report, format_table, plot, write_json
from .runner import LoadConfig, RawRun, encode_requests, health_body, run_load
from .stats import arrival_offsets, percentiles

__all__ = [
    "LoadConfig", "RawRun", "arrival_offsets", "build_report", "encode_requests", "format_table",
    "health_body", "percentiles", "plot", "read_requests", "replay_requests", "run_load",
    "synthetic_requests", "write_json", "write_requests",
]  # fmt: skip
