"""Candidate sources for each strategy, fused by reciprocal rank.

Cross-sell pulls complements of the anchors from the Annoy index, item
co-purchase, the popular items of complement categories, and the shopper's own
history; up-sell pulls pricier items of the anchor's category (popular ones, Annoy
neighbours, and ones the shopper bought). Each source lists items best first;
reciprocal-rank fusion (Cormack et al., SIGIR 2009) merges them into one
retrieval score that also ranks the "retrieval only" ablation and caps the list.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .artifacts import Artifacts
from .item_neighbours import neighbour_row

SOURCES = ("ann", "copurchase", "complement", "history", "category", "popular", "taste", "neighbours")
SOURCE_BIT = {name: np.uint8(1 << i) for i, name in enumerate(SOURCES)}
RRF_K = 20.0
# names of the sources in each possible bit mask (a lookup, not a loop, per ranked item)
_SOURCE_NAMES = [tuple(name for i, name in enumerate(SOURCES) if mask & (1 << i)) for mask in range(256)]


@dataclass(frozen=True)
class CandidateConfig:
    """How many items each source may propose (per anchor where it is per anchor)."""

    ann_k: int = 80  # Annoy neighbours per anchor
    copurchase_k: int = 80  # co-purchase partners per anchor
    complement_categories: int = 8  # complement categories per anchor
    complement_items: int = 10  # popular items per complement category
    history_k: int = 100  # shopper's own purchases
    taste_k: int = 0  # Annoy neighbours of the shopper's ALS vector; off: on Ta-Feng's
    # validation window it displaced better candidates (recall@250 0.261 -> 0.258)
    neighbours_k: int = 0  # top items of similar shoppers (TIFU-KNN; needs RetrievalConfig.knn_neighbours)
    popular_k: int = 60  # global popular items
    upsell_category_k: int = 150  # pricier items of the anchor's category, by popularity
    # Annoy neighbours inspected for up-sell; off: the category source already reaches
    # 99.6% of accepted up-sells on Ta-Feng, and most neighbours fail the same-category rule
    upsell_ann_k: int = 0
    max_candidates: int = 250  # cap after fusion: what the ranker scores


@dataclass
class Candidates:
    items: np.ndarray  # int64 item indices
    anchors: np.ndarray  # int64 anchor item index per candidate (-1 = none)
    sources: np.ndarray  # uint8 bit mask over SOURCES
    score: np.ndarray  # float32 fused retrieval score

    def __len__(self) -> int:
        return len(self.items)

    def take(self, keep: np.ndarray) -> Candidates:
        return Candidates(self.items[keep], self.anchors[keep], self.sources[keep], self.score[keep])

    def source_names(self, i: int) -> tuple[str, ...]:
        return _SOURCE_NAMES[self.sources[i]]


_RRF_WEIGHTS = 1.0 / (RRF_K + np.arange(1, 1025, dtype=np.float32))


def _rrf_weights(n: int) -> np.ndarray:
    """1 / (K + rank) for ranks 1..n (a read-only slice of a table up to rank 1024)."""
    if n <= len(_RRF_WEIGHTS):
        return _RRF_WEIGHTS[:n]
    return 1.0 / (RRF_K + np.arange(1, n + 1, dtype=np.float32))


class _Fuser:
    """Accumulates ranked lists into per-item RRF score, source bits and first (eligible) anchor."""

    def __init__(self) -> None:
        self.lists: list[np.ndarray] = []
        self.bits: list[int] = []
        self.anchors: list[int] = []
        self.eligible: list[np.ndarray | None] = []

    def add(self, items: np.ndarray, source: str, anchor: int = -1, eligible: np.ndarray | None = None) -> None:
        """`eligible` (default all): which entries may give the item their anchor."""
        if len(items):
            self.lists.append(items)
            self.bits.append(int(SOURCE_BIT[source]))
            self.anchors.append(int(anchor))
            self.eligible.append(eligible)

    def result(self) -> Candidates:
        if not self.lists:
            e = np.empty(0, dtype=np.int64)
            return Candidates(e, e.copy(), np.empty(0, np.uint8), np.empty(0, np.float32))
        lengths = [len(x) for x in self.lists]
        items = np.concatenate(self.lists).astype(np.int64, copy=False)
        # One stable sort groups each item's entries in the order they were added, so
        # the first entry of a group is the item's first appearance, and sums run in
        # the order `np.bincount` would add them.
        order = np.argsort(items, kind="stable")
        ranked = items[order]
        starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
        weights = np.concatenate([_rrf_weights(n) for n in lengths])[order]
        bits = np.repeat(np.array(self.bits, dtype=np.uint8), lengths)[order]
        anchors = np.repeat(np.array(self.anchors, dtype=np.int64), lengths)
        first = starts
        if any(e is not None for e in self.eligible):
            # the anchor of the item's first eligible entry, else of its first entry
            ok = np.concatenate([np.ones(n, bool) if e is None else e for n, e in zip(lengths, self.eligible)])[order]
            pos = np.where(ok, np.arange(len(order)), len(order))
            first_ok = np.minimum.reduceat(pos, starts)
            first = np.where(first_ok < len(order), first_ok, starts)
        return Candidates(
            ranked[starts],
            anchors[order[first]],
            np.bitwise_or.reduceat(bits, starts),
            np.add.reduceat(weights.astype(np.float64), starts).astype(np.float32),
        )


def history_items(arts: Artifacts, user: int, k: int) -> np.ndarray:
    """The shopper's purchased items, most bought first (ties: most recent first)."""
    if user < 0:
        return np.empty(0, dtype=np.int64)
    lo, hi = arts.user_counts.indptr[user], arts.user_counts.indptr[user + 1]
    items = arts.user_counts.indices[lo:hi]
    counts = arts.user_counts.data[lo:hi]
    last = arts.user_last_day.data[lo:hi]  # same sparsity pattern, same order
    order = np.lexsort((-last, -counts))[:k]
    return items[order].astype(np.int64)


def neighbour_items(arts: Artifacts, user: int, k: int) -> np.ndarray:
    """The top items of the shopper's neighbourhood score, best first."""
    if user < 0 or k <= 0:
        return np.empty(0, dtype=np.int64)
    lo, hi = arts.user_knn.indptr[user], arts.user_knn.indptr[user + 1]
    order = np.argsort(-arts.user_knn.data[lo:hi], kind="stable")[:k]
    return arts.user_knn.indices[lo:hi][order].astype(np.int64)


def copurchase_partners(arts: Artifacts, item: int, k: int) -> np.ndarray:
    """The item's k most co-bought partners, best first (ties: lower index first)."""
    lo, hi = arts.copurchase.indptr[item], arts.copurchase.indptr[item + 1]
    return arts.copurchase_ranked[lo : min(hi, lo + k)].astype(np.int64)


def ann_neighbours(arts: Artifacts, item: int, k: int, cache: dict | None = None, fetch: int = 0) -> np.ndarray:
    """Up to k nearest items of `item` by ALS cosine (itself excluded), best first.

    Read from the offline neighbour table when the bundle has one that is wide
    enough; else searched in Annoy, where `cache` (one per request) keeps the
    longest list fetched per item so the cross-sell and up-sell sources of one
    request pay for one search, and `fetch` asks for that many up front.
    """
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if arts.item_neighbours is not None and k <= arts.item_neighbours.shape[1]:
        return neighbour_row(arts.item_neighbours, item, k)
    if arts.ann is None:
        return np.empty(0, dtype=np.int64)
    asked, ids = cache.get(item, (0, None)) if cache is not None else (0, None)
    if asked < k:
        want = max(k, fetch if cache is not None else 0)
        found, _ = arts.ann.query_item(int(item), want + 1)
        ids = found[found != item]
        if cache is not None:
            cache[item] = (want, ids)
    return ids[:k]


def cross_sell_candidates(
    arts: Artifacts, anchors: np.ndarray, user: int, cfg: CandidateConfig, cache: dict | None = None
) -> Candidates:
    """Complements of the anchors from other categories (the caller filters categories)."""
    fuse = _Fuser()
    per_anchor = max(1, len(anchors))
    for a in anchors:
        fuse.add(copurchase_partners(arts, a, cfg.copurchase_k // per_anchor + 1), "copurchase", a)
        fuse.add(ann_neighbours(arts, a, cfg.ann_k // per_anchor + 1, cache, cfg.upsell_ann_k), "ann", a)
        fuse.add(_complement_picks(arts, a, cfg.complement_categories, cfg.complement_items), "complement", a)
    fuse.add(history_items(arts, user, cfg.history_k), "history")
    fuse.add(taste_items(arts, user, cfg.taste_k), "taste")
    fuse.add(neighbour_items(arts, user, cfg.neighbours_k), "neighbours")
    fuse.add(arts.popular_items[: cfg.popular_k], "popular")
    return fuse.result()


def up_sell_candidates(
    arts: Artifacts, anchors: np.ndarray, user: int, cfg: CandidateConfig, cache: dict | None = None,
    uplift_min: float | None = None, uplift_max: float | None = None,
) -> Candidates:
    """Items of each anchor's category priced above it. The caller's rules check the
    uplift band against the one anchor a candidate keeps, so it keeps the first anchor
    whose band it meets (not merely the first that proposed it); the band does not
    change the lists, so the retrieval scores stay those training saw."""
    fuse = _Fuser()
    hist = history_items(arts, user, cfg.history_k)
    hist_cat, hist_price = arts.item_category[hist], arts.price[hist]
    banded = uplift_min is not None or uplift_max is not None

    def add(items: np.ndarray, source: str, a: int) -> None:
        band = upsell_band(arts.price[items], arts.price[a], uplift_min, uplift_max) if banded else None
        fuse.add(items, source, a, band)

    for a in anchors:
        cat = arts.item_category[a]
        pricier_than = arts.price[a]
        same = arts.popular_by_category[cat]
        add(same[arts.price[same] > pricier_than][: cfg.upsell_category_k], "category", a)
        if cfg.upsell_ann_k > 0:
            near = ann_neighbours(arts, a, cfg.upsell_ann_k, cache)
            add(near[(arts.item_category[near] == cat) & (arts.price[near] > pricier_than)], "ann", a)
        add(hist[(hist_cat == cat) & (hist_price > pricier_than)], "history", a)
    return fuse.result()


DEFAULT_UPLIFT_MIN = 1.0  # up-sell default band: strictly pricier than the anchor


def upsell_band(prices: np.ndarray, anchor_prices, uplift_min: float | None = None,
                uplift_max: float | None = None) -> np.ndarray:
    """Mask of the up-sell band: price / anchor price (float32) >= uplift_min, or > 1
    (strictly pricier) without one, and <= uplift_max. The one definition for retrieval
    and for `ranking.rules.hard_filter`. An anchor priced 0 has no band: nothing is a
    trade-up from a free item (every ratio would be infinite)."""
    anchor_prices = np.asarray(anchor_prices)
    uplift = prices / np.maximum(anchor_prices, np.float32(1e-9))
    keep = uplift >= uplift_min if uplift_min is not None else uplift > DEFAULT_UPLIFT_MIN
    if uplift_max is not None:
        keep &= uplift <= uplift_max
    return keep & (anchor_prices > 0)


def taste_items(arts: Artifacts, user: int, k: int) -> np.ndarray:
    """Items nearest the shopper's ALS vector (by angle: the index is over unit vectors)."""
    if user < 0 or arts.ann is None or k <= 0:
        return np.empty(0, dtype=np.int64)
    ids, _ = arts.ann.query_vector(arts.user_factors[user], k)
    return ids


def _top_complement_categories(arts: Artifacts, item: int, n: int) -> np.ndarray:
    """Categories most often in the anchor category's baskets, among those with lift > 1.

    Ranked by P(B | A) rather than by lift: with thousands of small categories the
    highest lifts belong to rare ones that almost never reach a basket.
    """
    a = int(arts.item_category[item])
    key = (a, n)
    hit = arts.complement_cache.get(key)
    if hit is not None:
        return hit
    cond = np.where(arts.complements.lift[a] > 1.0, arts.complements.cond_prob[a], 0.0)
    top = np.argpartition(-cond, min(n, len(cond) - 1))[:n] if len(cond) > n else np.arange(len(cond))
    top = top[np.argsort(-cond[top], kind="stable")]
    top = top[cond[top] > 0]
    arts.complement_cache[key] = top  # depends on the category only; a dict set is atomic
    return top


def _complement_picks(arts: Artifacts, item: int, n_categories: int, per_category: int) -> np.ndarray:
    """The popular items of the anchor category's top complement categories, interleaved
    so that the first category does not take every top rank. Depends on the category
    only, so it is computed once per category (read-only, shared by requests)."""
    key = ("picks", int(arts.item_category[item]), n_categories, per_category)
    picks = arts.complement_cache.get(key)
    if picks is None:
        cats = _top_complement_categories(arts, item, n_categories)
        picks = _interleave([arts.popular_by_category[c][:per_category] for c in cats])
        picks.setflags(write=False)
        arts.complement_cache[key] = picks  # a dict set is atomic
    return picks


def _interleave(lists: list[np.ndarray]) -> np.ndarray:
    width = max((len(x) for x in lists), default=0)
    if width == 0:
        return np.empty(0, dtype=np.int64)
    grid = np.full((len(lists), width), -1, dtype=np.int64)
    for r, x in enumerate(lists):
        grid[r, : len(x)] = x
    flat = grid.T.ravel()
    return flat[flat >= 0]


def cap(c: Candidates, n: int, *, always: np.uint8 = SOURCE_BIT["history"]) -> Candidates:
    """Keep the n best by fused retrieval score (stable for ties), plus every candidate
    from an `always` source: the shopper's own purchases are the strongest single
    signal on real data, and fusion would rank a rarely bought one below the cut."""
    if len(c) <= n:
        return c
    best = np.zeros(len(c), dtype=bool)
    best[np.argsort(-c.score, kind="stable")[:n]] = True
    return c.take(best | ((c.sources & always) > 0))
