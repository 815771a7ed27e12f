"""Ask the trained two-stage model (a `Ranker`) the evaluation queries.

The model is queried exactly as a shop would query the server (a RankRequest with the
anchor as the only cart line), so the hard rules, the fallback and the retrieval stage
are all part of what is measured. Its answers are mapped back to the History's item
codes (-1 for an item the history does not know: it can never be relevant).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from xsell.ranking.types import CartLine, Filters, RankRequest, Strategy

from .queries import History, QuerySet


def requests(
    queries: QuerySet, history: History, *, k: int = 10, uplift_min: float | None = None
) -> list[RankRequest]:
    """One RankRequest per query: the anchor as the cart, the view's rules as filters."""
    strategy = Strategy.CROSS_SELL if queries.task == "cross_sell" else Strategy.UP_SELL
    filters = Filters(exclude_purchased=queries.exclude_bought, uplift_min=uplift_min)
    users = history.users.to_numpy(dtype=object)[queries.user]
    anchors = history.items.to_numpy(dtype=object)[queries.anchor]
    return [
        RankRequest(
            user_id=str(u), cart=(CartLine(str(a)),), strategy=strategy, limit=k, filters=filters
        )
        for u, a in zip(users, anchors)
    ]


def _codes(history: History) -> Callable[[list[str]], np.ndarray]:
    index = {item: i for i, item in enumerate(history.items.to_numpy(dtype=object))}

    def encode(ids: list[str]) -> np.ndarray:
        return np.fromiter((index.get(i, -1) for i in ids), dtype=np.int64, count=len(ids))

    return encode


def model_rankings(
    ranker,
    queries: QuerySet,
    history: History,
    *,
    k: int = 10,
    uplift_min: float | None = None,
    on_query: Callable[[int], None] | None = None,
) -> np.ndarray:
    """(n_queries, k) item codes the model returns, best first; -1 pads short lists."""
    encode = _codes(history)
    out = np.full((len(queries), k), -1, dtype=np.int64)
    for q, request in enumerate(requests(queries, history, k=k, uplift_min=uplift_min)):
        result = ranker.rank(request)
        ranked = result.cross_sell if queries.task == "cross_sell" else result.up_sell
        codes = encode([item.item_id for item in ranked[:k]])
        out[q, : len(codes)] = codes
        if on_query:
            on_query(q + 1)
    return out


def candidate_recall(
    ranker, queries: QuerySet, history: History, *, on_query: Callable[[int], None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: (share of the relevant items the retrieval stage hands to the ranker,
    number of candidates). The ranker can never place an item that is not a candidate."""
    encode = _codes(history)
    recall = np.zeros(len(queries))
    n_cand = np.zeros(len(queries), dtype=np.int64)
    for q, request in enumerate(requests(queries, history)):
        cross, up = ranker.candidate_ids(request)
        ids = cross if queries.task == "cross_sell" else up
        rel = queries.relevant(q)
        recall[q] = np.isin(rel, encode(ids)).mean() if len(rel) else np.nan
        n_cand[q] = len(ids)
        if on_query:
            on_query(q + 1)
    return recall, n_cand
