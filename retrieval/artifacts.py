"""Everything retrieval and the features read, built from events + catalog.

`build_artifacts` is the one offline computation (used for the served bundle and,
on an earlier cut of the data, for the training queries of the ranker);
`Artifacts.save` / `Artifacts.load` are its storage. Item arrays are indexed by
the item vocabulary (the catalog order); user arrays by the user vocabulary.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from xsell.data.contract import EVENT_GRADES, Dataset

from .ann import AnnIndex, build_index
from .cooccurrence import ComplementTable, category_complements, copurchase_counts
from .item_neighbours import annoy_neighbours, exact_neighbours
from .mf import normalize_rows, train_als
from .pairs import by_value_within_rows
from .segments import FILE as SEGMENTS_FILE
from .segments import SegmentTable, build_segments
from .shopper import (
    decayed_vectors,
    neighbour_scores,
    recent_mean,
    repeat_rates,
    switch_counts,
    user_category_mean,
)
from .vocab import Vocabulary

DAY = 86_400
USER_ITEM_TABLES = ("user_counts", "user_last_day", "user_first_day", "user_decay")


@dataclass(frozen=True)
class RetrievalConfig:
    """Offline settings of the retrieval stage."""

    factors: int = 64  # ALS embedding size
    iterations: int = 15  # ALS sweeps
    regularization: float = 0.05
    alpha: float = 2.0  # ALS confidence: 1 + alpha * log1p(count)
    basket_rows: bool = True  # also factorise basket x item rows (complements, not only taste)
    n_trees: int = 20  # Annoy trees: more = better recall, bigger file
    search_k: int = 4000  # Annoy nodes inspected per query (-1 = n_trees * k)
    item_neighbours_k: int = 100  # per-item neighbour table width (see item_neighbours.py)
    exact_neighbours_max_items: int = 100_000  # exact table up to here, else from Annoy
    copurchase_top_n: int = 100  # co-purchase partners kept per item
    complement_prior: float = 20.0  # pseudo-baskets shrinking category lift to 1
    recent_days: int = 28  # window for "recent popularity"
    # similar shoppers behind the TIFU-KNN neighbourhood score; 0 = off (the default): on
    # Ta-Feng's validation window it moved no ranking metric (2 seeds) and costs ~30 s per
    # artifact build and ~20 MB of bundle
    knn_neighbours: int = 0
    knn_items: int = 100  # neighbourhood items kept per shopper
    seed: int = 0


@dataclass
class Artifacts:
    items: Vocabulary
    users: Vocabulary
    categories: Vocabulary
    item_category: np.ndarray  # int32 (n_items,)
    price: np.ndarray  # float32: median paid unit price, else catalog price
    catalog_price: np.ndarray  # float32: current catalog price (shown to callers)
    price_pct: np.ndarray  # float32: price percentile within category, 0..1
    margin: np.ndarray  # float32: (price - cost) / price, NaN = unknown cost
    in_stock: np.ndarray  # bool
    popularity: np.ndarray  # float32: baskets holding the item
    recent_popularity: np.ndarray  # float32: ... in the last recent_days
    days_since_sale: np.ndarray  # float32: days from last sale to the cut-off (NaN = never)
    pop_rank_in_cat: np.ndarray  # float32: 0 = most popular of its category, 1 = least
    item_factors: np.ndarray  # float32 (n_items, f), unit length (cosine)
    user_factors: np.ndarray  # float32 (n_users, f)
    item_bias_factors: np.ndarray  # float32 (n_items, f) raw ALS factors for user scores
    user_counts: sp.csr_matrix  # (n_users, n_items) purchase lines
    user_last_day: sp.csr_matrix  # (n_users, n_items) day index of last purchase + 1
    user_cat_counts: sp.csr_matrix  # (n_users, n_cat)
    user_price_level: np.ndarray  # float32 (n_users,) mean price_pct of purchases, NaN = none
    user_baskets: np.ndarray  # float32 (n_users,)
    copurchase: sp.csr_matrix  # (n_items, n_items) baskets with both
    user_first_day: sp.csr_matrix  # (n_users, n_items) day index of first purchase + 1
    user_decay: sp.csr_matrix  # (n_users, n_items) basket-decayed purchase counts
    user_knn: sp.csr_matrix  # (n_users, n_items) neighbourhood score, top items per shopper
    switches: sp.csr_matrix  # (n_items, n_items) next purchase in the category was b after a
    user_cat_price: sp.csr_matrix  # (n_users, n_cat) mean price_pct of purchases there + 1
    item_repeat_rate: np.ndarray  # float32 (n_items,) share of buyers who bought it again
    user_repeat_rate: np.ndarray  # float32 (n_users,) share of the shopper's items bought again
    complements: ComplementTable
    popular_items: np.ndarray  # int64, in-stock items by popularity desc
    popular_by_category: list[np.ndarray]  # per category, in-stock items by popularity desc
    cut_day: int  # day index (epoch days) of the data cut-off
    ann: AnnIndex | None = None
    item_neighbours: np.ndarray | None = None  # int32 (n_items, k) nearest items, best first; -1 pads
    segments: SegmentTable | None = None  # the users table's segments; None = no users table
    # float32 (n_users,) basket-decayed mean price_pct of purchases, NaN = none; None: a bundle from before it
    user_recent_price_level: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    complement_cache: dict = field(default_factory=dict)  # per-category results (see candidates.py)

    # --- derived lookup structures (built on first use; `warm_lookups` at load) ---
    @cached_property
    def copurchase_ranked(self) -> np.ndarray:
        """Each item's co-purchase partners, most co-bought first (rows as in `copurchase.indptr`)."""
        return by_value_within_rows(self.copurchase)

    @cached_property
    def user_item_twins(self) -> frozenset[str]:
        """The (user x item) tables stored with exactly `user_counts`' sparsity pattern (the
        build writes them so): one search in a shopper's row serves them all."""
        base = self.user_counts
        return frozenset(
            name for name in USER_ITEM_TABLES
            if np.array_equal(getattr(self, name).indptr, base.indptr)
            and np.array_equal(getattr(self, name).indices, base.indices)
        )  # fmt: skip

    def warm_lookups(self) -> None:
        """Build the derived lookups now, so no request pays for them."""
        for name in ("copurchase_ranked", "user_item_twins"):
            getattr(self, name)

    # --- storage -------------------------------------------------------------
    ARRAYS = (
        "item_category", "price", "catalog_price", "price_pct", "margin", "in_stock", "popularity",
        "recent_popularity", "days_since_sale", "pop_rank_in_cat", "user_price_level", "user_baskets",
        "item_repeat_rate", "user_repeat_rate",
    )  # fmt: skip

    OPTIONAL_ARRAYS = ("user_recent_price_level",)  # in stats.npz when built; older bundles lack them

    SPARSE = ("user_counts", "user_last_day", "user_cat_counts", "copurchase", "user_first_day", "user_decay", "user_knn",
              "switches", "user_cat_price")

    def save(self, out: Path) -> list[str]:
        """Write every artifact into directory `out`; return the file names written."""
        out = Path(out)
        self.items.save(out / "items.json")
        self.users.save(out / "users.json")
        self.categories.save(out / "categories.json")
        optional = {k: getattr(self, k) for k in self.OPTIONAL_ARRAYS if getattr(self, k) is not None}
        np.savez(out / "stats.npz", **{k: getattr(self, k) for k in self.ARRAYS}, **optional)
        np.save(out / "item_factors.npy", self.item_factors)
        np.save(out / "item_bias_factors.npy", self.item_bias_factors)
        np.save(out / "user_factors.npy", self.user_factors)
        for name in self.SPARSE:
            sp.save_npz(out / f"{name}.npz", getattr(self, name), compressed=False)
        c = self.complements
        np.savez(out / "complements.npz", cond_prob=c.cond_prob, lift=c.lift, basket_share=c.basket_share)
        (out / "retrieval_meta.json").write_text(
            json.dumps({"cut_day": self.cut_day, "n_baskets": c.n_baskets, **self.meta}, indent=2)
        )
        written = [
            "items.json", "users.json", "categories.json", "stats.npz", "item_factors.npy",
            "item_bias_factors.npy", "user_factors.npy", "user_counts.npz", "user_last_day.npz",
            "user_cat_counts.npz", "copurchase.npz", "user_first_day.npz", "user_decay.npz", "user_knn.npz",
            "switches.npz", "user_cat_price.npz",
            "complements.npz", "retrieval_meta.json",
        ]  # fmt: skip
        if self.item_neighbours is not None:
            np.save(out / "item_neighbours.npy", self.item_neighbours)
            written.append("item_neighbours.npy")
        if self.segments is not None:
            self.segments.save(out / SEGMENTS_FILE)
            written.append(SEGMENTS_FILE)
        return written

    @classmethod
    def load(cls, out: Path, *, ann_file: str | None = "ann.idx", search_k: int = 4000, warm: bool = True):
        out = Path(out)
        stats = np.load(out / "stats.npz", allow_pickle=False)
        comp = np.load(out / "complements.npz", allow_pickle=False)
        meta = json.loads((out / "retrieval_meta.json").read_text())
        item_factors = np.load(out / "item_factors.npy", allow_pickle=False)
        categories = Vocabulary.load(out / "categories.json")
        item_category = stats["item_category"]
        popularity = stats["popularity"]
        in_stock = stats["in_stock"]
        arts = cls(
            items=Vocabulary.load(out / "items.json"),
            users=Vocabulary.load(out / "users.json"),
            categories=categories,
            item_factors=item_factors,
            item_bias_factors=np.load(out / "item_bias_factors.npy", allow_pickle=False),
            user_factors=np.load(out / "user_factors.npy", allow_pickle=False),
            **{name: sp.load_npz(out / f"{name}.npz").tocsr() for name in cls.SPARSE},
            complements=ComplementTable(
                cond_prob=comp["cond_prob"], lift=comp["lift"], basket_share=comp["basket_share"],
                n_baskets=int(meta["n_baskets"]),
            ),
            popular_items=_popular(popularity, in_stock),
            popular_by_category=_popular_by_category(popularity, in_stock, item_category, len(categories)),
            cut_day=int(meta["cut_day"]),
            meta={k: v for k, v in meta.items() if k not in ("cut_day", "n_baskets")},
            **{k: stats[k] for k in cls.ARRAYS},
            **{k: stats[k] for k in cls.OPTIONAL_ARRAYS if k in stats},
        )
        if (out / "item_neighbours.npy").is_file():  # bundles before the table use Annoy per request
            arts.item_neighbours = np.load(out / "item_neighbours.npy", allow_pickle=False)
            if arts.item_neighbours.shape[0] != len(arts.items) or arts.item_neighbours.dtype != np.int32:
                raise ValueError(f"item_neighbours.npy has shape {arts.item_neighbours.shape} {arts.item_neighbours.dtype}, "
                                 f"expected ({len(arts.items)}, k) int32")  # fmt: skip
        if (out / SEGMENTS_FILE).is_file():  # trained with a users table
            arts.segments = SegmentTable.load(out / SEGMENTS_FILE)
            if arts.segments.user_rows.shape[0] != len(arts.users) or arts.segments.item_baskets.shape[1] != len(arts.items):
                raise ValueError(f"{SEGMENTS_FILE} does not match the user and item vocabularies")
        if ann_file is not None:
            arts.ann = AnnIndex(out / ann_file, item_factors.shape[1], search_k=search_k, warm=warm)
        if warm:
            arts.warm_lookups()
        return arts


def _popular(popularity: np.ndarray, in_stock: np.ndarray) -> np.ndarray:
    order = np.argsort(-popularity, kind="stable")
    return order[in_stock[order]]


def _popular_by_category(popularity, in_stock, item_category, n_categories) -> list[np.ndarray]:
    order = _popular(popularity, in_stock)
    cats = item_category[order]
    # stable sort by category keeps popularity order inside each category
    by_cat = order[np.argsort(cats, kind="stable")]
    bounds = np.searchsorted(np.sort(cats, kind="stable"), np.arange(n_categories + 1))
    return [by_cat[bounds[c] : bounds[c + 1]] for c in range(n_categories)]


def _percentile_within(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Rank percentile (0..1, ties averaged) of each value within its group."""
    df = pd.DataFrame({"v": values, "g": groups})
    pct = df.groupby("g")["v"].rank(method="average", pct=True).to_numpy()
    # a single-item category sits in the middle
    return np.nan_to_num(pct, nan=0.5).astype(np.float32)


def build_artifacts(
    data: Dataset,
    *,
    until: int | None = None,
    config: RetrievalConfig = RetrievalConfig(),
    ann_path: Path | None = None,
    log=print,
) -> Artifacts:
    """Compute all retrieval artifacts from events with timestamp < `until` (default: all).

    The item vocabulary is the whole catalog (so a bundle knows every sellable
    item); the user vocabulary is the users seen before `until`.
    """
    t0 = time.perf_counter()
    catalog = data.catalog
    events = data.events
    if until is not None:
        events = events[events["timestamp"].to_numpy() < until]
    items = Vocabulary(catalog["item_id"].tolist())
    categories = Vocabulary(sorted(set(catalog["category"].tolist())))
    item_category = categories.encode(catalog["category"].tolist()).astype(np.int32)
    n_items, n_cat = len(items), len(categories)

    item_code = items.encode(events["item_id"].to_numpy())
    known = item_code >= 0  # the loader guarantees this; guard for direct callers
    events, item_code = events[known], item_code[known]
    users = Vocabulary(pd.unique(events["user_id"].to_numpy()).tolist())
    user_code = users.encode(events["user_id"].to_numpy())
    basket_code = pd.factorize(events["basket_id"].to_numpy())[0].astype(np.int64)
    day = (events["timestamp"].to_numpy() // DAY).astype(np.int64)
    cut_day = int(until // DAY) if until is not None else int(day.max()) + 1 if len(day) else 0
    grade = events["event_type"].map(EVENT_GRADES).to_numpy(dtype=np.float32)
    is_purchase = events["event_type"].to_numpy() == "purchase"
    log(f"  retrieval: {len(events):,} events, {len(users):,} users, {n_items:,} items, {n_cat:,} categories")

    # Prices: median paid unit price (what shoppers actually pay), else catalog price.
    catalog_price = catalog["price"].to_numpy(dtype=np.float32)
    price = catalog_price.copy()
    paid = pd.Series(events["unit_price"].to_numpy()[is_purchase]).groupby(item_code[is_purchase]).median()
    price[paid.index.to_numpy()] = paid.to_numpy(dtype=np.float32)
    price_pct = _percentile_within(price, item_category)
    cost = catalog["cost"].to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        margin = np.where(price > 0, (price - cost) / price, np.nan).astype(np.float32)
    in_stock = catalog["in_stock"].to_numpy(dtype=bool)

    # Popularity and recency, counted in baskets (a 12-pack is one decision).
    pb = pd.DataFrame({"i": item_code, "b": basket_code, "d": day, "u": user_code}).drop_duplicates(["i", "b"])
    popularity = np.bincount(pb["i"], minlength=n_items).astype(np.float32)
    recent = pb[pb["d"].to_numpy() >= cut_day - config.recent_days]
    recent_popularity = np.bincount(recent["i"], minlength=n_items).astype(np.float32)
    last_day = np.full(n_items, np.nan, dtype=np.float32)
    ld = pb.groupby("i")["d"].max()
    last_day[ld.index.to_numpy()] = ld.to_numpy()
    days_since_sale = (cut_day - last_day).astype(np.float32)
    pop_rank_in_cat = 1.0 - _percentile_within(popularity, item_category)

    # Shopper history (purchases only: what they bought, when, at which price level).
    pu, pi, pd_ = user_code[is_purchase], item_code[is_purchase], day[is_purchase]
    n_users = len(users)
    user_counts = sp.csr_matrix((np.ones(len(pu), np.float32), (pu, pi)), shape=(n_users, n_items))
    user_counts.sum_duplicates()
    last = pd.DataFrame({"u": pu, "i": pi, "d": pd_}).groupby(["u", "i"])["d"].max().reset_index()
    # +1 so that day 0 is not an implicit zero of the sparse matrix
    user_last_day = sp.csr_matrix(
        ((last["d"].to_numpy() + 1).astype(np.float32), (last["u"].to_numpy(), last["i"].to_numpy())),
        shape=(n_users, n_items),
    )
    user_last_day.sort_indices()
    user_counts.sort_indices()
    first = pd.DataFrame({"u": pu, "i": pi, "d": pd_}).groupby(["u", "i"])["d"].min().reset_index()
    user_first_day = sp.csr_matrix(
        ((first["d"].to_numpy() + 1).astype(np.float32), (first["u"].to_numpy(), first["i"].to_numpy())),
        shape=(n_users, n_items),
    )
    user_first_day.sort_indices()
    user_decay = decayed_vectors(pu, pi, basket_code[is_purchase], pd_, n_users, n_items)
    item_repeat_rate, user_repeat_rate = repeat_rates(user_counts)
    switches = switch_counts(pu, pi, item_category[pi], pd_, n_items)
    user_cat_price = user_category_mean(pu, item_category[pi], price_pct[pi], n_users, n_cat)
    user_cat_counts = sp.csr_matrix(
        (np.ones(len(pu), np.float32), (pu, item_category[pi])), shape=(n_users, n_cat)
    )
    user_cat_counts.sum_duplicates()
    user_cat_counts.sort_indices()
    lvl = pd.Series(price_pct[pi]).groupby(pu).mean()
    user_price_level = np.full(n_users, np.nan, dtype=np.float32)
    user_price_level[lvl.index.to_numpy()] = lvl.to_numpy(dtype=np.float32)
    user_recent_price_level = recent_mean(pu, basket_code[is_purchase], pd_, price_pct[pi].astype(np.float64), n_users)
    ub = pd.DataFrame({"u": user_code, "b": basket_code}).drop_duplicates()
    user_baskets = np.bincount(ub["u"], minlength=n_users).astype(np.float32)
    segments = None if data.users is None else build_segments(
        data.users, users.ids.tolist(), pb.assign(c=item_category[pb["i"].to_numpy()]),
        pd.DataFrame({"u": pu, "c": item_category[pi], "pct": price_pct[pi]}), n_items, n_cat, log=log,
    )  # fmt: skip
    log(f"  retrieval: item and shopper statistics ({time.perf_counter() - t0:.1f}s)")

    copurchase = copurchase_counts(basket_code, item_code, n_items, top_n=config.copurchase_top_n)
    complements = category_complements(basket_code, item_category[item_code], n_cat, prior=config.complement_prior)
    user_knn = neighbour_scores(user_decay, k=config.knn_neighbours, keep=config.knn_items)
    log(f"  retrieval: shopper neighbourhoods ({time.perf_counter() - t0:.1f}s)")
    log(f"  retrieval: co-purchase ({copurchase.nnz:,} pairs) and category complements ({time.perf_counter() - t0:.1f}s)")

    # ALS on shopper rows (taste) stacked with basket rows (what goes together).
    user_item = sp.csr_matrix((grade, (user_code, item_code)), shape=(n_users, n_items))
    user_item.sum_duplicates()
    rows = [user_item]
    if config.basket_rows:
        n_b = int(basket_code.max()) + 1 if len(basket_code) else 0
        basket_item = sp.csr_matrix((grade, (basket_code, item_code)), shape=(n_b, n_items))
        basket_item.sum_duplicates()
        rows.append(basket_item)
    matrix = sp.vstack(rows).tocsr()
    row_factors, raw_item_factors = train_als(
        matrix, factors=config.factors, iterations=config.iterations,
        regularization=config.regularization, alpha=config.alpha, seed=config.seed,
    )  # fmt: skip
    user_factors = row_factors[:n_users]
    log(f"  retrieval: ALS {config.factors} factors on {matrix.shape[0]:,} rows ({time.perf_counter() - t0:.1f}s)")

    arts = Artifacts(
        items=items, users=users, categories=categories, item_category=item_category, price=price,
        catalog_price=catalog_price, price_pct=price_pct, margin=margin, in_stock=in_stock,
        popularity=popularity, recent_popularity=recent_popularity, days_since_sale=days_since_sale,
        pop_rank_in_cat=pop_rank_in_cat.astype(np.float32), item_factors=normalize_rows(raw_item_factors),
        user_factors=user_factors, item_bias_factors=raw_item_factors, user_counts=user_counts,
        user_last_day=user_last_day, user_cat_counts=user_cat_counts, user_price_level=user_price_level,
        user_baskets=user_baskets, copurchase=copurchase, complements=complements,
        user_first_day=user_first_day, user_decay=user_decay, user_knn=user_knn,
        item_repeat_rate=item_repeat_rate, user_repeat_rate=user_repeat_rate,
        switches=switches, user_cat_price=user_cat_price,
        popular_items=_popular(popularity, in_stock),
        popular_by_category=_popular_by_category(popularity, in_stock, item_category, n_cat),
        cut_day=cut_day, meta={"config": config.__dict__}, segments=segments,
        user_recent_price_level=user_recent_price_level,
    )  # fmt: skip
    if ann_path is not None:
        build_index(arts.item_factors, ann_path, n_trees=config.n_trees, seed=config.seed)
        arts.ann = AnnIndex(ann_path, config.factors, search_k=config.search_k)
        log(f"  retrieval: Annoy index, {config.n_trees} trees ({time.perf_counter() - t0:.1f}s)")
    if config.item_neighbours_k > 0:
        if n_items <= config.exact_neighbours_max_items or arts.ann is None:
            arts.item_neighbours, how = exact_neighbours(arts.item_factors, config.item_neighbours_k), "exact"
        else:
            arts.item_neighbours = annoy_neighbours(arts.ann.index, n_items, config.item_neighbours_k, search_k=config.search_k)
            how = "from Annoy"
        log(f"  retrieval: neighbour table {n_items:,} x {config.item_neighbours_k}, {how} ({time.perf_counter() - t0:.1f}s)")
    return arts
