"""Prometheus metrics of the server.

One `ServerMetrics` per server, each with its own registry (tests run several
servers in one process). Names:

    xsell_requests_total{method,code}            counter, RecommendService calls by status
    xsell_request_latency_seconds{method}        histogram, handler time
    xsell_stage_latency_seconds{stage}           histogram, retrieval / features / model / rules
    xsell_in_flight_requests                     gauge, RecommendService calls admitted now (queued for a work slot or running)
    xsell_model_info{version}                    gauge, 1 for the version serving, 0 once replaced
    xsell_reloads_total{outcome}                 counter, ok / refused
    xsell_overloaded                             gauge, worker processes in the overload state now
    xsell_overloads_total{trigger}               counter, entries into it: bound / slow_queue
    xsell_shed_total{reason}                     counter, calls admission refused: at_arrival / waited

Several worker processes (`xsell serve --workers N`): prometheus_client's
multiprocess mode. The supervisor sets PROMETHEUS_MULTIPROC_DIR to a fresh
directory before it starts the workers; each worker writes its samples there
(mmap files), and the supervisor alone serves `--metrics-port` with a
MultiProcessCollector that sums them (gauges: in-flight is summed over live
workers, model info is reported per worker pid). RecommendService calls refused by
the in-flight bound and by the auth interceptor are counted (RESOURCE_EXHAUSTED,
UNAUTHENTICATED, PERMISSION_DENIED); only calls gRPC refuses itself past
`maximum_concurrent_rpcs` (the last-resort bound) are not: it answers them in its
polling thread. Refused calls of other services (reflection) or of methods that do not
exist are not RecommendService calls: not counted (they get an access line).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# 0.25 ms .. 2.5 s: a cached call is sub-millisecond, a 64-request batch may take seconds.
LATENCY_BUCKETS = (
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.004,
    0.008,
    0.016,
    0.032,
    0.064,
    0.128,
    0.256,
    0.5,
    1.0,
    2.5,
)
STAGES = ("retrieval", "features", "model", "rules")


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "xsell_requests",
            "RecommendService calls by method and status code",
            ["method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "xsell_request_latency_seconds",
            "Handler latency by method",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "xsell_stage_latency_seconds",
            "Ranking stage latency",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "xsell_in_flight_requests",
            "RecommendService calls admitted now (queued for a work slot or running)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_info = Gauge(
            "xsell_model_info",
            "1 for the bundle version serving",
            ["version"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.reloads = Counter("xsell_reloads", "Bundle loads by outcome", ["outcome"], registry=r)
        # admission (server/interceptor.py, Admission): when and why calls are refused
        self.overloaded = Gauge(
            "xsell_overloaded",
            "Worker processes in the overload state now",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.overloads = Counter(
            "xsell_overloads",
            "Entries into the overload state by trigger: bound (max in flight reached) or "
            "slow_queue (waits over the target for standing_after of CPU time)",
            ["trigger"],
            registry=r,
        )
        self.shed = Counter(
            "xsell_shed",
            "Calls admission refused (RESOURCE_EXHAUSTED): at_arrival (past the in-flight "
            "bound) or waited (overloaded, waited longer than overload_wait)",
            ["reason"],
            registry=r,
        )
        # children resolved once: labels() costs a dict lookup and a lock per call
        self._stage_children = {s: self.stage.labels(s) for s in STAGES}
        self.overloads_by = {t: self.overloads.labels(t) for t in ("bound", "slow_queue")}
        self.shed_by = {r: self.shed.labels(r) for r in ("at_arrival", "waited")}

    def observe_stages(self, timings: Mapping[str, float]) -> None:
        for stage, seconds in timings.items():
            child = self._stage_children.get(stage)
            if child is not None:
                child.observe(seconds)

    def model_swapped(self, previous: str | None, current: str) -> None:
        if previous is not None and previous != current:
            self.model_info.labels(previous).set(0)
        self.model_info.labels(current).set(1)
        self.reloads.labels("ok").inc()

    def sample(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """Current value of one sample (0.0 if absent); for tests and the benchmark."""
        value = self.registry.get_sample_value(name, dict(labels or {}))
        return 0.0 if value is None else value


def multiprocess_registry() -> CollectorRegistry:
    """A registry that sums the samples all worker processes wrote (supervisor side)."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def serve_metrics(port: int, host: str, registry: CollectorRegistry):
    """Expose `registry` over HTTP (/metrics) on a daemon thread; returns the http server."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
