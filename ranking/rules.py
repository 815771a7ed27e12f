"""Business rules: hard filters before scoring, and the diversity cap after it.

Hard filters run on the candidates (a few hundred), never on the catalog, so
their cost does not grow with the number of items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from xsell.retrieval.artifacts import Artifacts
from xsell.retrieval.candidates import Candidates, upsell_band

from .types import Filters, Strategy


@dataclass(frozen=True)
class RequestScope:
    """Per-request sets the filters need, resolved to indices once."""

    cart_items: np.ndarray  # int64 indices of known cart items
    cart_categories: np.ndarray  # int32
    excluded_items: np.ndarray  # int64 (explicit exclusions that the bundle knows)
    allowed_categories: np.ndarray | None  # int32, None = all
    denied_categories: np.ndarray  # int32
    user: int


def _isin(values: np.ndarray, members: np.ndarray) -> np.ndarray:
    """np.isin, without its set-up cost for the usual handful of members (a cart's items
    or categories): one comparison per member."""
    if len(members) > 16:
        return np.isin(values, members)
    hit = np.zeros(len(values), dtype=bool)
    for m in members:
        hit |= values == m
    return hit


def hard_filter(arts: Artifacts, c: Candidates, strategy: Strategy, scope: RequestScope, f: Filters) -> Candidates:
    items = c.items
    keep = arts.in_stock[items]  # fancy indexing: a fresh array, safe to update
    if len(scope.cart_items):
        keep &= ~_isin(items, scope.cart_items)
    if len(scope.excluded_items):
        keep &= ~_isin(items, scope.excluded_items)
    cats = arts.item_category[items]
    if scope.allowed_categories is not None:
        keep &= _isin(cats, scope.allowed_categories)
    if len(scope.denied_categories):
        keep &= ~_isin(cats, scope.denied_categories)
    # price_min / price_max bound the price the caller shows (the catalog price);
    # the up-sell band compares reference prices, like the price_uplift it returns.
    shown = arts.catalog_price[items]
    if f.price_min is not None:
        keep &= shown >= f.price_min
    if f.price_max is not None:
        keep &= shown <= f.price_max
    price = arts.price[items]
    if f.exclude_purchased and scope.user >= 0:
        lo, hi = arts.user_counts.indptr[scope.user], arts.user_counts.indptr[scope.user + 1]
        keep &= ~_isin(items, arts.user_counts.indices[lo:hi])
    if strategy is Strategy.CROSS_SELL:
        keep &= ~_isin(cats, scope.cart_categories)
    else:
        anchors = c.anchors
        has = anchors >= 0
        # never the anchor itself: history anchors are not cart items, and a band
        # with uplift_min <= 1 admits its price
        keep &= has & (items != anchors)
        anchor_safe = np.where(has, anchors, 0)
        keep &= cats == arts.item_category[anchor_safe]
        keep &= upsell_band(price, arts.price[anchor_safe], f.uplift_min, f.uplift_max)
    return c.take(keep)


def apply_diversity(order: np.ndarray, categories: np.ndarray, max_per_category: int, limit: int) -> np.ndarray:
    """Walk `order` (best first) keeping at most max_per_category per category; first `limit`."""
    if max_per_category <= 0:
        return order[:limit]
    taken: dict[int, int] = {}
    out: list[int] = []
    for i in order:
        if len(out) >= limit:  # checked first: a limit of 0 takes nothing
            break
        cat = int(categories[i])
        if taken.get(cat, 0) < max_per_category:
            taken[cat] = taken.get(cat, 0) + 1
            out.append(i)
    return np.asarray(out, dtype=np.int64)
