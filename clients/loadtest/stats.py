"""Pure statistics of a load run: percentiles, summaries, timelines, arrival schedules.

No I/O and no clocks here: the runner records raw per-call samples and these
functions turn them into the figures of the report, so they can be tested on
known samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

REPORTED_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0, 99.9)
OK = "OK"


def _level(q: float) -> Fraction:
    """q percent as an exact fraction of 1, read from its decimal text.

    99.9 must mean 999/1000 exactly: in binary floating point 0.999 * 1000 lands just
    above 999, and numpy's "inverted_cdf" then returns the 1000th smallest of 1000
    values instead of the 999th (the unit tests show it)."""
    if not 0.0 <= q <= 100.0 or math.isnan(q):
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    return Fraction(repr(float(q))) / 100


def percentile_rank(n: int, q: float) -> int:
    """0-based index into the sorted sample of the nearest-rank q-th percentile.

    Nearest rank: the smallest sample value v such that at least q% of the samples are
    <= v. It is always an observed latency (no interpolation between two calls)."""
    if n <= 0:
        raise ValueError("percentile of an empty sample")
    return max(math.ceil(_level(q) * n) - 1, 0)


def percentiles(
    values: Sequence[float] | np.ndarray, qs: Iterable[float] = REPORTED_PERCENTILES
) -> dict[float, float]:
    """Nearest-rank percentiles of `values` (NaNs are not allowed: filter them first)."""
    a = np.sort(np.asarray(values, dtype=np.float64), kind="stable")
    if len(a) and np.isnan(a[-1]):
        raise ValueError("NaN in the sample")
    return {float(q): float(a[percentile_rank(len(a), q)]) for q in qs}


@dataclass(frozen=True)
class LatencySummary:
    """Latency figures of one sample, in milliseconds."""

    count: int
    mean: float
    min: float
    max: float
    p: dict[float, float]  # percentile -> ms

    def as_dict(self) -> dict:
        out = {"count": self.count, "mean": self.mean, "min": self.min, "max": self.max}
        out.update({f"p{q:g}": v for q, v in self.p.items()})
        return out


def summarize_latency(
    seconds: np.ndarray, qs: Iterable[float] = REPORTED_PERCENTILES
) -> LatencySummary | None:
    """Summary of latencies given in seconds; None for an empty sample."""
    a = np.asarray(seconds, dtype=np.float64)
    if len(a) == 0:
        return None
    ms = a * 1e3
    return LatencySummary(
        len(ms), float(ms.mean()), float(ms.min()), float(ms.max()), percentiles(ms, qs)
    )


def count_codes(codes: Sequence[str] | np.ndarray) -> dict[str, int]:
    """Status code name -> calls, most frequent first (ties by name)."""
    names, counts = np.unique(np.asarray(codes, dtype=object).astype(str), return_counts=True)
    pairs = sorted(zip(names.tolist(), counts.tolist()), key=lambda p: (-p[1], p[0]))
    return dict(pairs)


def errors_only(codes: Mapping[str, int]) -> dict[str, int]:
    return {k: v for k, v in codes.items() if k != OK}


def timeline(
    t: np.ndarray,
    latency: np.ndarray,
    ok: np.ndarray,
    *,
    duration: float,
    step: float = 1.0,
    sent: np.ndarray | None = None,
) -> list[dict]:
    """Per-step figures over the measured window.

    `t` is each call's (scheduled) send time in seconds from the window start, `latency`
    its latency in seconds (NaN for calls that never completed), `ok` whether it
    succeeded, `sent` whether it was sent at all (default: every call; an open loop's
    CLIENT_BACKLOG calls were not). A call belongs to the step it was due in. Returns one
    row per step: start time, calls sent per second, errors (unsent calls included), and
    p50 / p99 / max of the OK calls (ms).
    """
    t = np.asarray(t, dtype=np.float64)
    latency = np.asarray(latency, dtype=np.float64)
    ok = np.asarray(ok, dtype=bool)
    sent = np.ones(len(t), dtype=bool) if sent is None else np.asarray(sent, dtype=bool)
    n_steps = max(1, math.ceil(duration / step - 1e-9))
    idx = np.clip(np.floor(t / step).astype(np.int64), 0, n_steps - 1)
    rows = []
    for k in range(n_steps):
        width = min(step, duration - k * step)
        sel = idx == k
        good = latency[sel & ok] * 1e3
        row = {
            "t": k * step,
            "rate": float((sel & sent).sum() / width) if width > 0 else 0.0,
            "errors": int((sel & ~ok).sum()),
        }
        if len(good):
            p = percentiles(good, (50.0, 99.0))
            row.update(p50_ms=p[50.0], p99_ms=p[99.0], max_ms=float(good.max()))
        else:
            row.update(p50_ms=math.nan, p99_ms=math.nan, max_ms=math.nan)
        rows.append(row)
    return rows


def arrival_offsets(
    rate: float, duration: float, *, seed: int, arrival: str = "poisson"
) -> np.ndarray:
    """Send times (seconds from the start, ascending, within [0, duration)) of an open loop.

    "uniform": one call every 1/rate s exactly. "poisson": exponential gaps with mean
    1/rate (independent arrivals, as from many users), drawn from `seed`.
    """
    if not rate > 0 or not duration > 0:
        raise ValueError(f"rate and duration must be > 0, got {rate}, {duration}")
    if arrival == "uniform":
        n = math.ceil(rate * duration - 1e-9)
        return np.arange(n, dtype=np.float64) / rate
    if arrival == "poisson":
        rng = np.random.default_rng(seed)
        # draw in chunks until the horizon is passed; expected count is rate * duration
        chunks, total, horizon = [], 0.0, duration
        while total < horizon:
            gaps = rng.exponential(1.0 / rate, size=max(16, int(rate * duration * 0.25) + 16))
            times = total + np.cumsum(gaps)
            chunks.append(times)
            total = float(times[-1])
        out = np.concatenate(chunks)
        # the first call at t=0, like the uniform schedule, so warm-up starts at once
        out = np.concatenate([[0.0], out])
        return out[out < duration]
    raise ValueError(f"arrival must be 'poisson' or 'uniform', got {arrival!r}")


def split_rate(rate: float, procs: int) -> list[float]:
    """Share an open-loop rate among `procs` client processes (equal parts)."""
    if procs <= 0:
        raise ValueError("procs must be >= 1")
    return [rate / procs] * procs


def split_count(total: int, parts: int) -> list[int]:
    """Split `total` callers into `parts` near-equal non-negative integers (larger first)."""
    if parts <= 0:
        raise ValueError("parts must be >= 1")
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


# --------------------------------------------------------------- Prometheus histograms


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile: `buckets` are (upper bound, cumulative count)
    ascending, the last bound +Inf. Linear interpolation inside the bucket holding the
    rank; the lowest bucket starts at 0; a rank in the +Inf bucket answers the highest
    finite bound. NaN when there are no observations."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within [0, 1], got {q}")
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    total = buckets[-1][1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank and count > prev_count:
            if math.isinf(bound):
                return prev_bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = (bound if not math.isinf(bound) else prev_bound), count
    return prev_bound
