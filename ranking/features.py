"""The one feature table, shared by training and serving.

Every ranking feature is declared once here: name, group, what it means, and the
vectorised function that computes it for a batch of (shopper, anchor, candidate)
pairs. Training builds its matrix with `feature_matrix` and the server calls the
same function, so there is no train/serve skew; the bundle stores the ordered
names and `check_feature_names` refuses a bundle whose names this code lacks.

Every feature is a function of its own row (no statistic across the candidates):
serving computes one matrix over both strategies' candidates of a request.

Groups matter for ablations: "price" (uplift and price level) and "complement"
(category complementarity) can be switched off at training time; "neighbours",
"segment" and "trend" are off unless `TrainConfig.disabled_feature_groups` turns them on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
from xsell.retrieval.artifacts import Artifacts
from xsell.retrieval.candidates import SOURCE_BIT
from xsell.retrieval.pairs import pair_lookup
from xsell.retrieval.segments import log_lift

from xsell.errors import BundleError

F32 = np.float32


def row_positions(m: sp.csr_matrix, row: int, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(positions in `m.data` of the `cols` present in row `row`, which `cols` those are),
    or None for a row < 0 or an empty row. Needs sorted indices."""
    if row < 0:
        return None
    lo, hi = m.indptr[row], m.indptr[row + 1]
    if hi == lo:
        return None
    idx = m.indices[lo:hi]
    pos = np.minimum(np.searchsorted(idx, cols), hi - lo - 1)
    hit = idx[pos] == cols
    return lo + pos[hit], hit


def sparse_lookup(m: sp.csr_matrix, row: int, cols: np.ndarray) -> np.ndarray:
    """m[row, cols] as a dense float32 vector (0 where absent). Needs sorted indices."""
    out = np.zeros(len(cols), dtype=F32)
    found = row_positions(m, row, cols)
    if found is not None:
        out[found[1]] = m.data[found[0]]
    return out


@dataclass
class PairBatch:
    """Candidates of one query with their anchors, for one shopper."""

    arts: Artifacts
    items: np.ndarray  # int64 candidate item indices
    anchors: np.ndarray  # int64 anchor per candidate, -1 = none (fallback)
    user: int  # -1 = unknown shopper
    sources: np.ndarray  # uint8 source bits
    retrieval_score: np.ndarray  # float32
    n_anchors: int

    @cached_property
    def has_anchor(self) -> np.ndarray:
        return self.anchors >= 0

    @cached_property
    def anchor_safe(self) -> np.ndarray:
        return np.where(self.has_anchor, self.anchors, 0)

    def per_anchor(self, values: np.ndarray) -> np.ndarray:
        """Blank (NaN) the rows that have no anchor."""
        return np.where(self.has_anchor, values, np.nan).astype(F32)

    @cached_property
    def cand_cat(self) -> np.ndarray:
        return self.arts.item_category[self.items]

    @cached_property
    def anchor_cat(self) -> np.ndarray:
        return self.arts.item_category[self.anchor_safe]

    @cached_property
    def distinct_anchors(self) -> np.ndarray:
        """The sorted distinct anchors (>= 0) of the rows: a cart has a few."""
        distinct = np.unique(self.anchors)
        return distinct[distinct >= 0]

    @cached_property
    def copurchase(self) -> np.ndarray:
        """Baskets holding both anchor and candidate; 0 without anchor."""
        return pair_lookup(self.arts.copurchase, self.anchors, self.items, self.distinct_anchors)

    @cached_property
    def emb_cos_anchor(self) -> np.ndarray:
        f = self.arts.item_factors  # unit rows: the row-wise dot product is the cosine
        return np.einsum("ij,ij->i", f[self.anchor_safe], f[self.items])

    @cached_property
    def switches(self) -> np.ndarray:
        return pair_lookup(self.arts.switches, self.anchors, self.items, self.distinct_anchors)

    @cached_property
    def _user_row(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The candidates' positions in the shopper's row of `user_counts`: shared by
        every table in `user_item_twins` (one search instead of one per table)."""
        return row_positions(self.arts.user_counts, self.user, self.items)

    def user_item(self, table: str) -> np.ndarray:
        """arts.<table>[shopper, candidate] as float32, 0 where absent (a user x item table)."""
        m = getattr(self.arts, table)
        if table not in self.arts.user_item_twins:
            return sparse_lookup(m, self.user, self.items)
        out = np.zeros(len(self.items), dtype=F32)
        if self._user_row is not None:
            out[self._user_row[1]] = m.data[self._user_row[0]]
        return out

    @cached_property
    def user_counts(self) -> np.ndarray:
        return self.user_item("user_counts")

    @cached_property
    def user_last_day(self) -> np.ndarray:
        return self.user_item("user_last_day")

    @cached_property
    def user_cat_counts(self) -> np.ndarray:
        return sparse_lookup(self.arts.user_cat_counts, self.user, self.cand_cat)

    @cached_property
    def segment_rows(self) -> np.ndarray:
        """The shopper's rows in the segment table (empty: no table, unknown shopper or segment)."""
        seg = self.arts.segments
        return seg.rows_of(self.user) if seg is not None else np.empty(0, dtype=np.int64)

    def nan(self) -> np.ndarray:
        return np.full(len(self.items), np.nan, dtype=F32)

    def user_value(self, array: np.ndarray) -> np.ndarray:
        value = array[self.user] if self.user >= 0 else np.nan
        return np.full(len(self.items), value, dtype=F32)


@dataclass(frozen=True)
class Feature:
    name: str
    group: str
    doc: str
    fn: Callable[[PairBatch], np.ndarray]


def _log_ratio(num, den):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.maximum(num, 1e-6) / np.maximum(den, 1e-6))


def _user_item_days_since(b: PairBatch) -> np.ndarray:
    last = b.user_last_day  # day + 1, 0 = never
    return np.where(last > 0, b.arts.cut_day - (last - 1), np.nan).astype(F32)


def _repeat_cycle(b: PairBatch) -> np.ndarray:
    """Days since the shopper last bought the candidate / their mean gap between buys of it:
    ~1 = due again. NaN unless bought at least twice."""
    last = b.user_last_day
    first = b.user_item("user_first_day")
    n = b.user_counts
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = (last - first) / (n - 1)
        since = b.arts.cut_day - (last - 1)
        return np.where((n > 1) & (last > first), since / gap, np.nan).astype(F32)


def _switch_share(b: PairBatch) -> np.ndarray:
    indptr = b.arts.switches.indptr
    # distinct items the anchor's buyers switched to (row length: O(1), no per-row sum)
    out_of_anchor = indptr[b.anchor_safe + 1] - indptr[b.anchor_safe]
    return b.per_anchor(b.switches / np.maximum(out_of_anchor, 1.0))


def _price_pct_vs_user_cat(b: PairBatch) -> np.ndarray:
    level = sparse_lookup(b.arts.user_cat_price, b.user, b.cand_cat)  # mean + 1, 0 = never
    return np.where(level > 0, b.arts.price_pct[b.items] - (level - 1), np.nan).astype(F32)


def _user_cat_share(b: PairBatch) -> np.ndarray:
    if b.user < 0:
        return b.nan()
    lo, hi = b.arts.user_counts.indptr[b.user], b.arts.user_counts.indptr[b.user + 1]
    total = b.arts.user_counts.data[lo:hi].sum()
    return (b.user_cat_counts / max(total, 1.0)).astype(F32)


def _emb_user(b: PairBatch) -> np.ndarray:
    if b.user < 0:
        return b.nan()
    return b.arts.item_bias_factors[b.items] @ b.arts.user_factors[b.user]


def _segment_item_lift(b: PairBatch) -> np.ndarray:
    rows = b.segment_rows
    if not len(rows):
        return b.nan()
    seg = b.arts.segments
    counts = pair_lookup(seg.item_baskets, rows[:, None], b.items[None, :], rows)
    share = b.arts.popularity[b.items] / max(seg.n_baskets, 1.0)
    return log_lift(counts, seg.baskets[rows][:, None], share[None, :]).sum(axis=0).astype(F32)


def _segment_cat_lift(b: PairBatch) -> np.ndarray:
    rows = b.segment_rows
    if not len(rows):
        return b.nan()
    seg = b.arts.segments
    counts = seg.cat_baskets[rows][:, b.cand_cat]
    share = b.arts.complements.basket_share[b.cand_cat]
    return log_lift(counts, seg.baskets[rows][:, None], share[None, :]).sum(axis=0).astype(F32)


def _price_pct_vs_segment_cat(b: PairBatch) -> np.ndarray:
    rows = b.segment_rows
    if not len(rows):
        return b.nan()
    levels = b.arts.segments.cat_price[rows][:, b.cand_cat]  # NaN: too few purchases there
    known = ~np.isnan(levels)
    n = known.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(known, levels, 0.0).sum(axis=0) / n
    return np.where(n > 0, b.arts.price_pct[b.items] - mean, np.nan).astype(F32)


def _source(name: str) -> Callable[[PairBatch], np.ndarray]:
    bit = SOURCE_BIT[name]
    return lambda b: ((b.sources & bit) > 0).astype(F32)


FEATURES: tuple[Feature, ...] = (
    # price: how the candidate's price relates to the anchor and to the shopper
    Feature("price_uplift_log", "price", "log(candidate price / anchor price)",
            lambda b: b.per_anchor(_log_ratio(b.arts.price[b.items], b.arts.price[b.anchor_safe]))),
    Feature("cand_price_pct", "price", "candidate price percentile within its category (0..1)",
            lambda b: b.arts.price_pct[b.items]),
    Feature("anchor_price_pct", "price", "anchor price percentile within its category",
            lambda b: b.per_anchor(b.arts.price_pct[b.anchor_safe])),
    Feature("user_price_level", "price", "shopper's mean price percentile over past purchases",
            lambda b: b.user_value(b.arts.user_price_level)),
    Feature("price_pct_vs_user", "price", "candidate price percentile minus the shopper's price level",
            lambda b: b.arts.price_pct[b.items] - b.user_value(b.arts.user_price_level)),
    Feature("price_pct_vs_user_recent", "trend",
            "candidate price percentile minus the shopper's recent price level (decayed per later basket)",
            lambda b: b.arts.price_pct[b.items] - b.user_value(b.arts.user_recent_price_level)),
    Feature("user_price_trend", "trend", "shopper's recent price level minus their overall one (> 0: trading up)",
            lambda b: b.user_value(b.arts.user_recent_price_level) - b.user_value(b.arts.user_price_level)),
    Feature("log_price", "price", "log(1 + candidate price)",
            lambda b: np.log1p(b.arts.price[b.items]).astype(F32)),
    Feature("price_pct_vs_user_cat", "price",
            "candidate price percentile minus the shopper's mean percentile in its category", _price_pct_vs_user_cat),
    Feature("switch_log", "price", "log(1 + shoppers' next purchases in the category that went anchor -> candidate)",
            lambda b: b.per_anchor(np.log1p(b.switches))),
    Feature("switch_share", "price", "anchor -> candidate switches / distinct items the anchor was switched to", _switch_share),
    # complement: category-level complementarity from basket co-occurrence
    Feature("cat_lift_log", "complement", "log lift P(cand category | anchor category) / P(cand category)",
            lambda b: b.per_anchor(np.log(np.maximum(b.arts.complements.lift[b.anchor_cat, b.cand_cat], 1e-4)))),
    Feature("cat_cond_prob", "complement", "P(candidate category in basket | anchor category in basket)",
            lambda b: b.per_anchor(b.arts.complements.cond_prob[b.anchor_cat, b.cand_cat])),
    Feature("cand_cat_share", "complement", "share of baskets holding the candidate's category",
            lambda b: b.arts.complements.basket_share[b.cand_cat]),
    # copurchase: item-level "bought together"
    Feature("copurchase_log", "copurchase", "log(1 + baskets holding both anchor and candidate)",
            lambda b: b.per_anchor(np.log1p(b.copurchase))),
    Feature("copurchase_conf", "copurchase", "baskets with both / baskets with the anchor",
            lambda b: b.per_anchor(b.copurchase / np.maximum(b.arts.popularity[b.anchor_safe], 1.0))),
    # embedding: ALS similarity
    Feature("emb_cos_anchor", "embedding", "cosine of anchor and candidate ALS item vectors",
            lambda b: b.per_anchor(b.emb_cos_anchor)),
    Feature("emb_user_score", "embedding", "ALS score of the candidate for this shopper", _emb_user),
    # popularity and recency
    Feature("log_popularity", "popularity", "log(1 + baskets holding the candidate)",
            lambda b: np.log1p(b.arts.popularity[b.items])),
    Feature("log_recent_popularity", "popularity", "log(1 + baskets in the last 28 days)",
            lambda b: np.log1p(b.arts.recent_popularity[b.items])),
    Feature("recent_share", "popularity", "recent baskets / all baskets (trend)",
            lambda b: b.arts.recent_popularity[b.items] / np.maximum(b.arts.popularity[b.items], 1.0)),
    Feature("days_since_sale", "popularity", "days from the candidate's last sale to the data cut-off",
            lambda b: b.arts.days_since_sale[b.items]),
    Feature("pop_rank_in_cat", "popularity", "popularity rank within its category (0 = top)",
            lambda b: b.arts.pop_rank_in_cat[b.items]),
    Feature("anchor_log_popularity", "popularity", "log(1 + baskets holding the anchor)",
            lambda b: b.per_anchor(np.log1p(b.arts.popularity[b.anchor_safe]))),
    # the shopper's own history
    Feature("user_item_count_log", "user", "log(1 + times the shopper bought the candidate)",
            lambda b: np.log1p(b.user_counts)),
    Feature("user_item_days_since", "user", "days since the shopper last bought the candidate", _user_item_days_since),
    Feature("user_cat_count_log", "user", "log(1 + shopper's purchases in the candidate's category)",
            lambda b: np.log1p(b.user_cat_counts)),
    Feature("user_cat_share", "user", "share of the shopper's purchases in the candidate's category", _user_cat_share),
    Feature("user_item_decay", "user", "shopper's purchases of the candidate, decayed per later basket",
            lambda b: b.user_item("user_decay")),
    Feature("repeat_cycle", "user", "days since last bought / shopper's mean days between buys of it",
            _repeat_cycle),
    Feature("item_repeat_rate", "user", "share of the candidate's buyers who bought it again",
            lambda b: b.arts.item_repeat_rate[b.items]),
    Feature("user_repeat_rate", "user", "share of the shopper's items bought more than once",
            lambda b: b.user_value(b.arts.user_repeat_rate)),
    Feature("knn_score", "neighbours", "TIFU-KNN: weight of the candidate among similar shoppers' purchases",
            lambda b: sparse_lookup(b.arts.user_knn, b.user, b.items)),
    Feature("user_baskets_log", "user", "log(1 + shopper's baskets)",
            lambda b: np.log1p(b.user_value(b.arts.user_baskets))),
    # segment: who the shopper is (the users table's columns), summed over the columns
    Feature("segment_item_lift", "segment", "log lift of the candidate in the baskets of the shopper's segments",
            _segment_item_lift),
    Feature("segment_cat_lift", "segment", "log lift of the candidate's category in the shopper's segments",
            _segment_cat_lift),
    Feature("price_pct_vs_segment_cat", "segment",
            "candidate price percentile minus the mean percentile the shopper's segments buy in its category",
            _price_pct_vs_segment_cat),
    # margin
    Feature("margin_rate", "margin", "(price - cost) / price of the candidate; NaN = unknown cost",
            lambda b: b.arts.margin[b.items]),
    # retrieval
    Feature("retrieval_score", "retrieval", "fused reciprocal-rank score of the retrieval sources",
            lambda b: b.retrieval_score),
    # training rows are built per single anchor, so this is 1 in every training row and
    # the model cannot split on it: kept for the feature list's stability, no signal yet
    Feature("n_anchors", "retrieval", "number of known anchors in the cart (1 in training rows: unused)",
            lambda b: np.full(len(b.items), b.n_anchors, dtype=F32)),
    *(Feature(f"src_{s}", "retrieval", f"1 if the '{s}' source proposed the candidate", _source(s))
      for s in ("ann", "copurchase", "complement", "history", "category", "taste", "neighbours")),
)  # fmt: skip

FEATURES_BY_NAME = {f.name: f for f in FEATURES}
GROUPS = tuple(dict.fromkeys(f.group for f in FEATURES))


def feature_names(disabled_groups: Sequence[str] = ()) -> list[str]:
    unknown = set(disabled_groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown feature groups {sorted(unknown)}; known: {list(GROUPS)}")
    return [f.name for f in FEATURES if f.group not in disabled_groups]


def check_feature_names(names: Sequence[str]) -> list[Feature]:
    """The Feature objects for a bundle's names, in order; BundleError on an unknown name."""
    missing = [n for n in names if n not in FEATURES_BY_NAME]
    if missing:
        raise BundleError(f"bundle needs features this code does not define: {missing}")
    return [FEATURES_BY_NAME[n] for n in names]


def feature_matrix(batch: PairBatch, features: Sequence[Feature], out: np.ndarray | None = None) -> np.ndarray:
    """(n_candidates x n_features) float32 matrix, NaN = missing (LightGBM handles it)."""
    n = len(batch.items)
    if out is None or out.shape[0] < n or out.shape[1] != len(features):
        out = np.empty((n, len(features)), dtype=F32)
    x = out[:n]
    for j, f in enumerate(features):
        x[:, j] = f.fn(batch)
    return x
