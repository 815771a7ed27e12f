"""Evaluation queries (DESIGN.md section 3): who asked, about which anchor, what was right.

Everything here works on purchases only (event_type == "purchase") and is vectorised
with pandas/numpy: the Ta-Feng test period alone has ~150k purchase lines.

Items and users are addressed by integer codes of a `History` (the training period):
an item is *warm* when it has at least one training purchase (so it has a price, the
median unit price of its training lines), a user when they made at least one training
purchase. Only warm users and items are scored; everything dropped is counted in
`QuerySet.stats`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

PURCHASE = "purchase"
Task = Literal["cross_sell", "up_sell"]


@dataclass(frozen=True)
class History:
    """The training period as integer-coded arrays (codes = positions in `items`/`users`)."""

    items: pd.Index  # warm item ids
    users: pd.Index  # warm user ids
    category: np.ndarray  # int64 (n_items,) category code
    categories: pd.Index  # category code -> name
    price: np.ndarray  # float64 (n_items,) median unit price of the training purchase lines
    user_items: sp.csr_matrix  # (n_users, n_items) number of training baskets holding the item
    baskets: sp.csr_matrix  # (n_baskets, n_items) binary
    popularity: np.ndarray  # float64 (n_items,) number of training baskets holding the item
    item_category: pd.Series  # item id -> category, for every catalog item (cold ones too)

    @property
    def n_items(self) -> int:
        return len(self.items)


def purchases(events: pd.DataFrame) -> pd.DataFrame:
    """Purchase lines only (a missing event_type column means every line is a purchase)."""
    if "event_type" not in events.columns:
        return events
    return events.loc[events["event_type"] == PURCHASE]


def build_history(train: pd.DataFrame, catalog: pd.DataFrame) -> History:
    """Index the training period's purchases. `train`/`catalog` follow the data contract."""
    buys = purchases(train)
    item_category = pd.Series(
        catalog["category"].to_numpy(dtype=object), index=catalog["item_id"].to_numpy(dtype=object)
    )
    prices = buys.groupby("item_id", sort=True)["unit_price"].median()
    items = pd.Index(prices.index.to_numpy(dtype=object), name="item_id")
    users = pd.Index(np.sort(buys["user_id"].unique().astype(object)), name="user_id")
    cat_names = item_category.reindex(items).to_numpy(dtype=object)
    if pd.isna(cat_names).any():
        missing = items[pd.isna(cat_names)][:3].tolist()
        raise ValueError(f"purchased items missing from the catalog: {missing}")
    cat_codes, categories = pd.factorize(cat_names, sort=True)

    lines = pd.DataFrame(
        {
            "u": users.get_indexer(buys["user_id"]),
            "i": items.get_indexer(buys["item_id"]),
            # basket ids are only unique per user in the contract's fallback (user, day)
            "b": pd.MultiIndex.from_arrays([buys["user_id"], buys["basket_id"]]).factorize()[0]
            if len(buys)
            else np.zeros(0, dtype=np.int64),
        }
    ).drop_duplicates(["b", "i"])
    n_items, n_users = len(items), len(users)
    n_baskets = int(lines["b"].max()) + 1 if len(lines) else 0
    ones = np.ones(len(lines), dtype=np.float32)
    baskets = sp.csr_matrix((ones, (lines["b"], lines["i"])), shape=(n_baskets, n_items))
    user_items = sp.csr_matrix((ones, (lines["u"], lines["i"])), shape=(n_users, n_items))
    user_items.sum_duplicates()
    return History(
        items=items,
        users=users,
        category=cat_codes.astype(np.int64),
        categories=pd.Index(categories),
        price=prices.to_numpy(dtype=np.float64),
        user_items=user_items,
        baskets=baskets,
        popularity=np.asarray(baskets.sum(axis=0)).ravel().astype(np.float64),
        item_category=item_category,
    )


@dataclass(frozen=True)
class QuerySet:
    """One view of one task: parallel arrays, one entry per query.

    The candidate rule is part of the query set so every method (baseline or model) is
    scored on exactly the same candidates; see `candidate_mask`.
    """

    name: str
    task: Task
    user: np.ndarray  # int64 user codes
    anchor: np.ndarray  # int64 item codes
    rel_indptr: np.ndarray  # CSR over queries: relevant item codes
    rel_items: np.ndarray
    exclude_bought: bool = False  # candidates exclude the user's training purchases
    min_uplift: float | None = None  # up-sell: price >= min_uplift * anchor price (None: > anchor)
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.anchor)

    @property
    def n_relevant(self) -> np.ndarray:
        return np.diff(self.rel_indptr)

    def relevant(self, q: int) -> np.ndarray:
        return self.rel_items[self.rel_indptr[q] : self.rel_indptr[q + 1]]

    def relevant_codes(self, n_items: int) -> np.ndarray:
        """Sorted int64 codes query * n_items + item, for vectorised membership tests."""
        q = np.repeat(np.arange(len(self), dtype=np.int64), self.n_relevant)
        return np.sort(q * n_items + self.rel_items)

    def with_rule(self, name: str, **changes) -> QuerySet:
        return replace(self, name=name, **changes)


def _csr_from_pairs(
    n_queries: int, q: np.ndarray, items: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((items, q))
    counts = np.bincount(q, minlength=n_queries)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, items[order].astype(np.int64)


def _sample(rng: np.random.Generator, n: int, max_n: int) -> np.ndarray:
    """Sorted positions of a seeded sample of min(n, max_n) out of n."""
    if n <= max_n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=max_n, replace=False))


def cross_sell_queries(
    target: pd.DataFrame,
    history: History,
    *,
    max_queries: int = 20_000,
    anchors_per_basket: int = 3,
    seed: int = 0,
    name: str = "cross_sell",
) -> QuerySet:
    """Cross-sell queries from the target period's purchases.

    For each basket with >= 2 distinct items, up to `anchors_per_basket` anchors are drawn
    (seeded) among its eligible items: a warm item of a warm user with at least one warm
    item of another category in the same basket. Relevant = those other-category items.
    At most `max_queries` queries are kept (seeded sample).
    """
    rng = np.random.default_rng(seed)
    buys = purchases(target)
    lines = pd.DataFrame(
        {
            "user": buys["user_id"].to_numpy(dtype=object),
            "item": buys["item_id"].to_numpy(dtype=object),
            "b": pd.MultiIndex.from_arrays([buys["user_id"], buys["basket_id"]]).factorize()[0]
            if len(buys)
            else np.zeros(0, dtype=np.int64),
        }
    ).drop_duplicates(["b", "item"])
    stats: dict[str, int] = {"baskets": int(lines["b"].nunique())}
    size = lines.groupby("b")["item"].transform("size")
    lines = lines.loc[size >= 2].reset_index(drop=True)
    stats["baskets_2plus_items"] = int(lines["b"].nunique())
    stats["basket_lines"] = len(lines)

    lines["u"] = history.users.get_indexer(lines["user"])
    lines["i"] = history.items.get_indexer(lines["item"])
    lines["cat"] = history.item_category.reindex(lines["item"]).to_numpy(dtype=object)
    warm = (lines["i"] >= 0).to_numpy()
    # warm items per basket, and per (basket, category): other-category warm = difference
    n_warm_basket = pd.Series(warm).groupby(lines["b"]).transform("sum").to_numpy()
    n_warm_same = pd.Series(warm).groupby([lines["b"], lines["cat"]]).transform("sum").to_numpy()
    has_relevant = (n_warm_basket - n_warm_same) >= 1

    cold_user = (lines["u"] < 0).to_numpy()
    stats["anchors_dropped_cold_user"] = int(cold_user.sum())
    stats["users_dropped_cold"] = int(lines.loc[cold_user, "user"].nunique())
    stats["anchors_dropped_cold_item"] = int((~cold_user & ~warm).sum())
    stats["anchors_dropped_no_other_category"] = int((~cold_user & warm & ~has_relevant).sum())
    eligible = lines.loc[~cold_user & warm & has_relevant, ["b", "u", "i", "cat"]].reset_index(
        drop=True
    )
    stats["eligible_anchors"] = len(eligible)

    # up to k anchors per basket: order by a seeded random key within each basket
    eligible["key"] = rng.random(len(eligible))
    eligible = eligible.sort_values(["b", "key"], kind="stable")
    eligible = eligible.loc[eligible.groupby("b").cumcount() < anchors_per_basket]
    stats["anchors_after_per_basket_cap"] = len(eligible)
    chosen = eligible.iloc[_sample(rng, len(eligible), max_queries)].reset_index(drop=True)
    chosen["q"] = np.arange(len(chosen))

    # relevant: the other items of the basket with a different category
    pairs = chosen[["q", "b", "cat"]].merge(
        lines[["b", "i", "cat"]].rename(columns={"cat": "rcat"}), on="b", how="inner"
    )
    pairs = pairs.loc[pairs["rcat"] != pairs["cat"]]
    stats["relevant_dropped_cold_item"] = int((pairs["i"] < 0).sum())
    pairs = pairs.loc[pairs["i"] >= 0]
    indptr, rel = _csr_from_pairs(len(chosen), pairs["q"].to_numpy(), pairs["i"].to_numpy())
    stats["queries"] = len(chosen)
    return QuerySet(
        name=name,
        task="cross_sell",
        user=chosen["u"].to_numpy(dtype=np.int64),
        anchor=chosen["i"].to_numpy(dtype=np.int64),
        rel_indptr=indptr,
        rel_items=rel,
        stats=stats,
    )


def new_to_shopper(queries: QuerySet, history: History, *, name: str | None = None) -> QuerySet:
    """The same queries, with everything the shopper bought in training removed from the
    relevant items and from the candidates; queries left without a relevant item are dropped."""
    q = np.repeat(np.arange(len(queries)), queries.n_relevant)
    bought = (
        np.asarray(history.user_items[queries.user[q], queries.rel_items]).ravel() > 0
        if len(q)
        else np.zeros(0, dtype=bool)
    )
    keep_pair = ~bought
    counts = np.bincount(q[keep_pair], minlength=len(queries))
    keep_q = counts > 0
    new_index = np.cumsum(keep_q) - 1
    indptr, rel = _csr_from_pairs(
        int(keep_q.sum()), new_index[q[keep_pair]], queries.rel_items[keep_pair]
    )
    stats = dict(queries.stats)
    stats.update(
        relevant_dropped_bought_before=int(bought.sum()),
        queries_dropped_nothing_new=int((~keep_q).sum()),
        queries=int(keep_q.sum()),
    )
    return QuerySet(
        name=name or f"{queries.name}_new",
        task=queries.task,
        user=queries.user[keep_q],
        anchor=queries.anchor[keep_q],
        rel_indptr=indptr,
        rel_items=rel,
        exclude_bought=True,
        min_uplift=queries.min_uplift,
        stats=stats,
    )


def up_sell_queries(
    target: pd.DataFrame,
    train: pd.DataFrame,
    history: History,
    *,
    min_uplift: float = 1.15,
    max_queries: int = 20_000,
    seed: int = 0,
    name: str = "up_sell",
) -> QuerySet:
    """Up-sell queries: one per (user, category) bought in the target period.

    The anchor a is the user's most recent training purchase in that category (ties on the
    timestamp: the later line); the query is kept when the user bought, in the target
    period, a warm item b of that category with price(b) >= min_uplift * price(a).
    Relevant = those b. Candidates (see `candidate_mask`) = the category's items priced
    strictly above a.
    """
    rng = np.random.default_rng(seed)
    buys = purchases(target)
    tgt = pd.DataFrame(
        {
            "user": buys["user_id"].to_numpy(dtype=object),
            "item": buys["item_id"].to_numpy(dtype=object),
        }
    ).drop_duplicates()
    tgt["cat"] = history.item_category.reindex(tgt["item"]).to_numpy(dtype=object)
    tgt["u"] = history.users.get_indexer(tgt["user"])
    stats: dict[str, int] = {"user_categories": len(tgt.drop_duplicates(["user", "cat"]))}
    cold = tgt["u"] < 0
    stats["user_categories_dropped_cold_user"] = len(tgt.loc[cold].drop_duplicates(["user", "cat"]))
    stats["users_dropped_cold"] = int(tgt.loc[cold, "user"].nunique())
    tgt = tgt.loc[~cold]

    hist = purchases(train)
    hist = pd.DataFrame(
        {
            "user": hist["user_id"].to_numpy(dtype=object),
            "anchor": hist["item_id"].to_numpy(dtype=object),
            "ts": hist["timestamp"].to_numpy(dtype=np.int64),
        }
    )
    hist["cat"] = history.item_category.reindex(hist["anchor"]).to_numpy(dtype=object)
    last = hist.sort_values("ts", kind="stable").groupby(["user", "cat"], sort=False).tail(1)
    pairs = tgt.merge(last[["user", "cat", "anchor"]], on=["user", "cat"], how="left")
    no_anchor = pairs["anchor"].isna()
    stats["user_categories_no_training_purchase"] = len(
        pairs.loc[no_anchor].drop_duplicates(["user", "cat"])
    )
    pairs = pairs.loc[~no_anchor].copy()
    pairs["a"] = history.items.get_indexer(pairs["anchor"])  # always warm: bought in training
    pairs["i"] = history.items.get_indexer(pairs["item"])
    stats["relevant_dropped_cold_item"] = int((pairs["i"] < 0).sum())
    pairs = pairs.loc[pairs["i"] >= 0]
    pa = history.price[pairs["a"].to_numpy()]
    pb = history.price[pairs["i"].to_numpy()]
    # a free anchor makes every uplift infinite: not an up-sell question
    ok = (pa > 0) & (pb >= min_uplift * pa) & (pb > pa) & (pairs["i"] != pairs["a"]).to_numpy()
    stats["user_categories_with_anchor"] = len(pairs.drop_duplicates(["user", "cat"]))
    pairs = pairs.loc[ok]

    keys = (
        pairs[["u", "a", "cat"]]
        .drop_duplicates(["u", "cat"])
        .sort_values(["u", "a"], kind="stable")
    )
    keys = keys.iloc[_sample(rng, len(keys), max_queries)].reset_index(drop=True)
    keys["q"] = np.arange(len(keys))
    rel = pairs.merge(keys, on=["u", "a", "cat"], how="inner")
    indptr, rel_items = _csr_from_pairs(len(keys), rel["q"].to_numpy(), rel["i"].to_numpy())
    stats["queries"] = len(keys)
    return QuerySet(
        name=name,
        task="up_sell",
        user=keys["u"].to_numpy(dtype=np.int64),
        anchor=keys["a"].to_numpy(dtype=np.int64),
        rel_indptr=indptr,
        rel_items=rel_items,
        stats=stats,
    )


def candidate_mask(queries: QuerySet, history: History, rows: np.ndarray) -> np.ndarray:
    """bool (len(rows), n_items): which items may be recommended for each query in `rows`.

    cross-sell: every warm item outside the anchor's category (so never the anchor);
    up-sell: warm items of the anchor's category priced above the anchor
    (>= min_uplift x when set). `exclude_bought` removes the user's training purchases.
    """
    anchor = queries.anchor[rows]
    cat = history.category
    same = cat[None, :] == cat[anchor][:, None]
    if queries.task == "cross_sell":
        mask = ~same
    else:
        price = history.price
        floor = price[anchor][:, None]
        if queries.min_uplift is None:
            mask = same & (price[None, :] > floor)
        else:
            mask = same & (price[None, :] >= queries.min_uplift * floor) & (price[None, :] > floor)
    mask[np.arange(len(rows)), anchor] = False
    if queries.exclude_bought:
        ui = history.user_items[queries.user[rows]]
        r = np.repeat(np.arange(len(rows)), np.diff(ui.indptr))
        mask[r, ui.indices] = False
    return mask
