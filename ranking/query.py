"""From (shopper, anchors, strategy, rules) to the filtered, capped candidate list.

Shared by training (to build LambdaRank query groups) and serving, so the ranker
learns on exactly the candidate distribution it will score.
"""

from __future__ import annotations

import numpy as np
from xsell.retrieval.artifacts import Artifacts
from xsell.retrieval.candidates import (
    CandidateConfig,
    Candidates,
    cap,
    cross_sell_candidates,
    up_sell_candidates,
)
from xsell.retrieval.cooccurrence import ComplementTable
from xsell.retrieval.pairs import pair_lookup

from .rules import RequestScope, hard_filter
from .types import Filters, Strategy

NO_FILTERS = Filters()


def scope_for(arts: Artifacts, anchors: np.ndarray, user: int, cart_items: np.ndarray | None = None) -> RequestScope:
    """A scope with no request filters: what training and evaluation use."""
    return RequestScope(
        cart_items=anchors if cart_items is None else cart_items,
        cart_categories=np.unique(arts.item_category[anchors]),
        excluded_items=np.empty(0, dtype=np.int64),
        allowed_categories=None,
        denied_categories=np.empty(0, dtype=np.int32),
        user=user,
    )


def retrieve(
    arts: Artifacts,
    strategy: Strategy,
    anchors: np.ndarray,
    user: int,
    scope: RequestScope,
    filters: Filters,
    cfg: CandidateConfig,
    ann_cache: dict | None = None,
) -> Candidates:
    if strategy is Strategy.CROSS_SELL:
        c = cross_sell_candidates(arts, anchors, user, cfg, ann_cache)
    else:
        c = up_sell_candidates(arts, anchors, user, cfg, ann_cache, filters.uplift_min, filters.uplift_max)
    c = cap(hard_filter(arts, c, strategy, scope, filters), cfg.max_candidates)
    if strategy is Strategy.CROSS_SELL and len(anchors) and len(c):
        # every cross-sell candidate relates to one cart item (history/popular ones too)
        c.anchors = best_cross_anchor(arts, c.items, anchors)
    return c


def best_cross_anchor(arts: Artifacts, items: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """For each candidate, the cart item it complements most: co-purchase first, then category lift."""
    comp: ComplementTable = arts.complements
    cats = arts.item_category[items]
    if len(anchors) == 1:
        return np.full(len(items), anchors[0], dtype=np.int64)
    # (anchors x items); anchors are sorted and distinct
    copurchase = pair_lookup(arts.copurchase, anchors[:, None], items[None, :], anchors)
    lift = comp.lift[arts.item_category[anchors][:, None], cats[None, :]]
    strength = np.log1p(copurchase) + np.log(np.maximum(lift, 1e-4))
    return anchors[np.argmax(strength, axis=0)]
