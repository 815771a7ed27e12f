"""Request mixes for the load generator.

A request file is JSON Lines: one `xsell.v1.RecommendRequest` per line in the
canonical protobuf JSON mapping (`{"userId": "u1", "cart": [{"itemId": "a",
"quantity": 1}], "strategy": "STRATEGY_BOTH"}`), so any field of the API can appear
and other tools (grpcurl, ghz) read the same lines.

Two sources:
  * `replay_requests`: real baskets of an events table (data contract), by default
    the test period (the last 28 days, as in the evaluation protocol): the shopper,
    the basket's items as the cart, a strategy drawn from a weighted mix;
  * `synthetic_requests`: a fixed mix of request shapes over a bundle's vocabulary
    (popular-weighted items), covering the cheap and the expensive paths.
Both are pure given their inputs and seed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from google.protobuf import json_format

from xsell.errors import DataError
from xsell.v1 import xsell_pb2 as pb

DAY = 86_400
STRATEGY_NAMES = {
    "both": "STRATEGY_BOTH",
    "cross_sell": "STRATEGY_CROSS_SELL",
    "up_sell": "STRATEGY_UP_SELL",
}


def parse_weights(text: str) -> dict[str, float]:
    """'both=0.6,cross_sell=0.3,up_sell=0.1' -> normalised weights (names checked)."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in STRATEGY_NAMES:
            raise ValueError(f"unknown strategy {name!r}; use {', '.join(STRATEGY_NAMES)}")
        try:
            w = float(value) if value else 1.0
        except ValueError:
            raise ValueError(f"weight of {name!r} is not a number: {value!r}") from None
        if not w >= 0:
            raise ValueError(f"weight of {name!r} must be >= 0, got {w}")
        out[name] = out.get(name, 0.0) + w
    total = sum(out.values())
    if total <= 0:
        raise ValueError(f"no positive strategy weight in {text!r}")
    return {k: v / total for k, v in out.items()}


def last_days(events: pd.DataFrame, days: int) -> pd.DataFrame:
    """Rows of the last `days` days (timestamp > t_max - days), as the evaluation splits."""
    ts = events["timestamp"].to_numpy(dtype=np.int64)
    return events.loc[ts > ts.max() - days * DAY]


def replay_requests(
    events: pd.DataFrame,
    *,
    n: int,
    seed: int,
    cart_size: int | None = None,
    max_cart: int = 10,
    strategies: Mapping[str, float] = {"both": 1.0},
    period_days: int | None = 28,
    limit: int = 0,
) -> list[dict]:
    """Requests (proto-JSON dicts) replayed from the baskets of `events`.

    Baskets are purchase/cart lines grouped by basket_id (user + day when the data has
    no ids). `cart_size` = k keeps only baskets with >= k distinct items and takes k of
    them (a seeded choice); None takes the whole basket up to `max_cart` items, in the
    order they were added. Quantities are the basket's. Baskets are sampled uniformly,
    without replacement while there are enough.
    """
    if n <= 0:
        raise ValueError("n must be >= 1")
    ev = events if period_days is None else last_days(events, period_days)
    if "event_type" in ev.columns:
        ev = ev[ev["event_type"].isin(["purchase", "cart"])]
    if ev.empty:
        raise DataError("no purchase or cart events in the chosen period", column="timestamp")
    ev = ev.sort_values(["basket_id", "timestamp"], kind="stable")
    qty = ev["quantity"] if "quantity" in ev.columns else pd.Series(1.0, index=ev.index)
    lines = (
        pd.DataFrame(
            {
                "basket_id": ev["basket_id"],
                "user_id": ev["user_id"],
                "item_id": ev["item_id"],
                "q": qty,
            }
        )
        .groupby(["basket_id", "item_id"], sort=False)
        .agg(user_id=("user_id", "first"), q=("q", "sum"))
        .reset_index()
    )
    sizes = lines.groupby("basket_id", sort=False)["item_id"].transform("size").to_numpy()
    if cart_size is not None:
        lines = lines[sizes >= cart_size]
    if lines.empty:
        raise DataError(
            f"no basket with {cart_size} or more distinct items in the chosen period",
            column="basket_id",
        )
    rng = np.random.default_rng(seed)
    _, starts = np.unique(lines["basket_id"].to_numpy(), return_index=True)
    order = np.argsort(starts)
    starts = starts[order]
    ends = np.append(starts[1:], len(lines))
    picks = rng.choice(len(starts), size=n, replace=len(starts) < n)
    names = list(strategies)
    probs = np.array([strategies[k] for k in names], dtype=np.float64)
    drawn = rng.choice(len(names), size=n, p=probs / probs.sum())
    users = lines["user_id"].to_numpy()
    items = lines["item_id"].to_numpy()
    quantities = lines["q"].to_numpy(dtype=np.float64)
    out = []
    for b, s in zip(picks, drawn):
        rows = np.arange(starts[b], ends[b])
        if cart_size is not None:
            rows = np.sort(rng.choice(rows, size=cart_size, replace=False))
        else:
            rows = rows[:max_cart]
        req = {
            "userId": str(users[rows[0]]),
            "cart": [{"itemId": str(items[r]), "quantity": float(quantities[r])} for r in rows],
            "strategy": STRATEGY_NAMES[names[s]],
        }
        if limit:
            req["limit"] = limit
        out.append(req)
    return out


# Request shapes of the synthetic mix: (share, name). Fixed so runs compare.
SYNTHETIC_SHAPES: tuple[tuple[float, str], ...] = (
    (0.40, "cart3_both"),  # 3-item cart, known shopper, both lists
    (0.20, "view_cross"),  # one viewed item, anonymous, cross-sell
    (0.15, "item_up"),  # one item, known shopper, up-sell
    (0.10, "cart10_filtered"),  # 10-item cart, filters: exclude purchased, 2 per category
    (0.10, "history_only"),  # known shopper, empty cart: anchors from history
    (0.05, "unknown"),  # unknown shopper and item: the popular fallback
)


def synthetic_requests(
    item_ids: Sequence[str],
    user_ids: Sequence[str],
    popularity: np.ndarray | None,
    *,
    n: int,
    seed: int,
) -> list[dict]:
    """The fixed synthetic mix (`SYNTHETIC_SHAPES`) over a bundle's vocabulary.

    Items are drawn in proportion to popularity + 1 (None = uniformly), so carts look
    like real ones rather than a random walk through the long tail."""
    if n <= 0:
        raise ValueError("n must be >= 1")
    if not len(item_ids) or not len(user_ids):
        raise ValueError("the vocabulary has no items or no users")
    rng = np.random.default_rng(seed)
    w = None
    if popularity is not None:
        w = np.asarray(popularity, dtype=np.float64) + 1.0
        w = w / w.sum()
    shares = np.array([s for s, _ in SYNTHETIC_SHAPES])
    kinds = rng.choice(len(SYNTHETIC_SHAPES), size=n, p=shares / shares.sum())

    def items(k: int) -> list[dict]:
        picks = rng.choice(len(item_ids), size=min(k, len(item_ids)), replace=False, p=w)
        return [{"itemId": str(item_ids[i]), "quantity": 1.0} for i in picks]

    def user() -> str:
        return str(user_ids[rng.integers(len(user_ids))])

    out = []
    for i, k in enumerate(kinds):
        name = SYNTHETIC_SHAPES[k][1]
        if name == "cart3_both":
            req = {"userId": user(), "cart": items(3), "strategy": "STRATEGY_BOTH"}
        elif name == "view_cross":
            req = {"cart": items(1), "strategy": "STRATEGY_CROSS_SELL"}
        elif name == "item_up":
            req = {"userId": user(), "cart": items(1), "strategy": "STRATEGY_UP_SELL"}
        elif name == "cart10_filtered":
            req = {"userId": user(), "cart": items(10), "strategy": "STRATEGY_BOTH",
                   "filters": {"excludePurchased": True, "maxPerCategory": 2}}  # fmt: skip
        elif name == "history_only":
            req = {"userId": user(), "strategy": "STRATEGY_BOTH"}
        else:
            req = {"userId": f"loadtest-unknown-{i}", "cart": [{"itemId": f"loadtest-unknown-{i}", "quantity": 1.0}],
                   "strategy": "STRATEGY_BOTH"}  # fmt: skip
        out.append(req)
    return out


def write_requests(requests: Sequence[dict], path: str | Path) -> Path:
    """Write proto-JSON dicts as JSON Lines; each line is checked to parse first."""
    path = Path(path)
    for i, r in enumerate(requests):
        json_format.ParseDict(r, pb.RecommendRequest())  # refuse what the reader would refuse
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in requests:
                f.write(json.dumps(r, separators=(",", ":"), sort_keys=True) + "\n")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-written file beside the one asked for
        raise
    return path


def read_requests(path: str | Path) -> list[pb.RecommendRequest]:
    """Read a request file; a bad line raises DataError naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the request file: {exc}", file=str(path)) from exc
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            out.append(json_format.Parse(line, pb.RecommendRequest()))
        except json_format.ParseError as exc:
            raise DataError(
                f"not a RecommendRequest in protobuf JSON: {exc}", file=str(path), row=lineno
            ) from exc
    if not out:
        raise DataError("no request in the file", file=str(path))
    return out


def describe(requests: Sequence[pb.RecommendRequest]) -> dict:
    """Shape of a mix: count, strategies, cart sizes (for the report)."""
    strategies: dict[str, int] = {}
    for r in requests:
        # a number this code has no name for stays a number, as in the proto3 JSON mapping
        known = r.strategy in pb.Strategy.values()
        name = pb.Strategy.Name(r.strategy) if known else str(r.strategy)
        strategies[name] = strategies.get(name, 0) + 1
    carts = np.array([len(r.cart) for r in requests])
    return {
        "requests": len(requests),
        "strategies": dict(sorted(strategies.items())),
        "cart_lines_mean": float(carts.mean()),
        "cart_lines_max": int(carts.max()),
        "with_user": int(sum(bool(r.user_id) for r in requests)),
    }
