"""Ask the trained two-stage model (a `Ranker`) the evaluation queries.

The model is queried exactly as a shop would query the server (a RankRequest with the
anchor as the only cart line), so the hard rules, the fallback and the retrieval stage
are all part of what is measured. Its answers are mapped back to the History's item
codes (-1 for an item the history does not know: it can never be relevant).

A Ranker answers one request at a time on one thread (~100-300 requests/s on Ta-Feng), so
with `workers > 1` the requests are spread over processes that each load the bundle
themselves (spawned, not forked: LightGBM's OpenMP runtime does not survive a fork).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xsell.ranking.types import CartLine, Filters, RankRequest, Strategy

from .queries import History, QuerySet

CHUNK = 250  # requests per task sent to a worker process


@dataclass(frozen=True)
class RankerSpec:
    """How to load a Ranker: what a worker process needs (a Ranker itself is not pickled)."""

    bundle_dir: str
    retrieval_only: bool = False

    def load(self):
        from xsell.ranking.ranker import Ranker

        return Ranker.load(Path(self.bundle_dir), retrieval_only=self.retrieval_only)


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


# --- running requests, in this process or in a pool -----------------------------------------

_worker_rankers: dict[RankerSpec, object] = {}


def _answer(ranker, mode: str, batch: list[RankRequest]) -> list[list[str]]:
    out = []
    for request in batch:
        if mode == "rank":
            result = ranker.rank(request)
            items = result.cross_sell if request.strategy is Strategy.CROSS_SELL else result.up_sell
            out.append([item.item_id for item in items])
        else:
            cross, up = ranker.candidate_ids(request)
            out.append(cross if request.strategy is Strategy.CROSS_SELL else up)
    return out


def _worker(spec: RankerSpec, mode: str, batch: list[RankRequest]) -> list[list[str]]:
    if spec not in _worker_rankers:
        _worker_rankers[spec] = spec.load()
    return _answer(_worker_rankers[spec], mode, batch)


class ModelClient:
    """Answers lists of requests with the Rankers named by `RankerSpec`s; in this process
    (`workers <= 1`) or in a pool of spawned processes (use as a context manager)."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self._local: dict[RankerSpec, object] = {}
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> ModelClient:  # noqa: PYI034
        if self.workers > 1:
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn")
            )
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def answers(self, spec: RankerSpec, mode: str, reqs: list[RankRequest]) -> Iterator[list[str]]:
        """Item id lists in request order; `mode` "rank" (the answer) or "candidates"."""
        chunks = [reqs[i : i + CHUNK] for i in range(0, len(reqs), CHUNK)]
        if self._pool is None:
            if spec not in self._local:
                self._local[spec] = spec.load()
            batches = (_answer(self._local[spec], mode, c) for c in chunks)
        else:
            batches = self._pool.map(_worker, [spec] * len(chunks), [mode] * len(chunks), chunks)
        for batch in batches:
            yield from batch


def _encoder(history: History) -> Callable[[list[str]], np.ndarray]:
    index = {item: i for i, item in enumerate(history.items.to_numpy(dtype=object))}

    def encode(ids: list[str]) -> np.ndarray:
        return np.fromiter((index.get(i, -1) for i in ids), dtype=np.int64, count=len(ids))

    return encode


def model_rankings(
    client: ModelClient,
    spec: RankerSpec,
    queries: QuerySet,
    history: History,
    *,
    k: int = 10,
    uplift_min: float | None = None,
    on_query: Callable[[int], None] | None = None,
) -> np.ndarray:
    """(n_queries, k) item codes the model returns, best first; -1 pads short lists."""
    encode = _encoder(history)
    out = np.full((len(queries), k), -1, dtype=np.int64)
    reqs = requests(queries, history, k=k, uplift_min=uplift_min)
    for q, ids in enumerate(client.answers(spec, "rank", reqs)):
        codes = encode(ids[:k])
        out[q, : len(codes)] = codes
        if on_query:
            on_query(q + 1)
    return out


def candidate_recall(
    client: ModelClient,
    spec: RankerSpec,
    queries: QuerySet,
    history: History,
    *,
    on_query: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: (share of the relevant items the retrieval stage hands to the ranker,
    number of candidates). The ranker can never place an item that is not a candidate."""
    encode = _encoder(history)
    recall = np.zeros(len(queries))
    n_cand = np.zeros(len(queries), dtype=np.int64)
    for q, ids in enumerate(client.answers(spec, "candidates", requests(queries, history))):
        rel = queries.relevant(q)
        recall[q] = np.isin(rel, encode(ids)).mean() if len(rel) else np.nan
        n_cand[q] = len(ids)
        if on_query:
            on_query(q + 1)
    return recall, n_cand
