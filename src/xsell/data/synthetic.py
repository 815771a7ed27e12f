"""A seeded synthetic shop with planted structure that a good ranker can find.

What is planted (and returned in `PlantedTruth` so tests can check a model finds it):

(a) complementary categories: c000<->c001, c002<->c003, ... (`complement_of`). Each item a
    basket gets "for itself" pulls in an item of the partner category with probability
    `P_COMPLEMENT`; otherwise categories meet at chance.
(b) price tiers: every category has items in 4 tiers (basic, standard, plus, premium) at
    x1, x1.6, x2.6, x4.2 a category base price; brand is mostly "private" for the lower
    two tiers and "national" for the upper two.
(c) shoppers' price levels: each user has a level 0..3 and mostly buys that tier. A share
    of users ("upgraders", level < 3) move up one level on a given day: their later
    purchases in a category are pricier than earlier ones (what up-sell learns).
(d) popularity: Zipf within each category (a random item order per category).
(e) baskets = (user, day) sessions: several purchases plus some views and carts.
(f) ~3% of items out of stock; a users table with `segment` (mostly = price level) and
    `region` (noise).

Everything is vectorised numpy: 1M events take about a second in memory (2 cores).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from xsell.data.loaders import cannot_write, write_table
from xsell.errors import DataError

__all__ = [
    "TIER_NAMES",
    "TIER_PRICE",
    "PlantedTruth",
    "SyntheticData",
    "category_name",
    "complement_of",
    "generate",
    "generate_frames",
]

TIER_NAMES = ("basic", "standard", "plus", "premium")
TIER_PRICE = np.array([1.0, 1.6, 2.6, 4.2])  # price multiplier of each tier
SEGMENTS = ("budget", "value", "mainstream", "premium")  # segment name of each price level
REGIONS = ("north", "south", "east", "west", "central")
LEVEL_SHARE = np.array([0.35, 0.30, 0.20, 0.15])
P_COMPLEMENT = 0.75  # chance an anchor category pulls in its partner
P_TIER_MATCH = 0.80  # chance a purchase is of the user's own tier
P_TIER_NEAR = 0.15  # ... one tier off; the rest is any tier
P_FAVOURITE = 0.60  # a basket's own categories come from the user's favourites
N_FAVOURITES = 4
UPGRADER_SHARE = 0.30  # of users below the top level
OUT_OF_STOCK_SHARE = 0.03
ZIPF_S = 1.1
START = 1_704_067_200  # 2024-01-01T00:00:00Z
ANCHORS_MEAN = 1.2  # anchors per basket = 1 + Poisson(this): the basket size knob
_VIEWS_MEAN = 1.5  # views per basket
_P_CART = 0.3  # chance a bought line was first put in the cart as its own event


def _events_per_basket(anchors_mean: float) -> float:
    """Expected events per basket, to turn events_per_user into baskets per user."""
    return (1 + anchors_mean) * (1 + P_COMPLEMENT) * (1 + _P_CART) + _VIEWS_MEAN


def category_name(index: int) -> str:
    """Leaf name of category `index` (c000, c001, ...)."""
    return f"c{index:03d}"


def complement_of(category: str) -> str | None:
    """The planted partner of a synthetic leaf category (c004 -> c005, c005 -> c004).

    Holds for any `n_categories`, except that with an odd count the last category
    has no partner in the data (the name returned then does not exist there).
    """
    try:
        index = int(category.rsplit("/", 1)[-1].lstrip("c"))
    except ValueError:
        return None
    return category_name(index ^ 1)


@dataclass
class PlantedTruth:
    complement_of: dict[str, str]  # leaf category -> partner (both directions)
    item_tier: dict[str, int]  # item_id -> 0..3 (index into TIER_NAMES)
    user_level: dict[str, int]  # user_id -> price level at the start
    upgrade_day: dict[str, int]  # upgrader user_id -> day index from which level + 1
    start: int = START  # epoch seconds of day 0

    def to_dict(self) -> dict:
        return {
            "complement_of": self.complement_of,
            "item_tier": self.item_tier,
            "user_level": self.user_level,
            "upgrade_day": self.upgrade_day,
            "start": self.start,
            "tier_names": list(TIER_NAMES),
        }


@dataclass
class SyntheticData:
    events: pd.DataFrame
    catalog: pd.DataFrame
    users: pd.DataFrame
    truth: PlantedTruth
    params: dict = field(default_factory=dict)


def _ids(prefix: str, n: int) -> np.ndarray:
    width = max(5, len(str(n)))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(n)], dtype=object)


def _zipf_picker(group: np.ndarray, weight: np.ndarray, n_groups: int):
    """Vectorised weighted choice within groups: pick(g, u) -> item index.

    Items are sorted by group; within a group the normalised cumulative weight lies
    in (0, 1], so `group + cumweight` is increasing overall and one searchsorted on
    `g + u` picks from group g with probability proportional to weight.
    """
    order = np.lexsort((np.arange(len(group)), group))
    g, w = group[order], weight[order]
    totals = np.bincount(g, weights=w, minlength=n_groups)
    cum = np.cumsum(w)
    before = np.concatenate(([0.0], np.cumsum(totals)))[g]
    key = g + (cum - before) / totals[g]
    key[np.r_[g[1:] != g[:-1], True]] = g[np.r_[g[1:] != g[:-1], True]] + 1.0  # exact top

    def pick(gq: np.ndarray, u: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(key, gq + u, side="right")
        return order[np.minimum(pos, len(order) - 1)]

    return pick


def generate_frames(
    *,
    n_users: int = 2000,
    n_items: int = 1000,
    n_categories: int = 40,
    days: int = 120,
    seed: int = 0,
    events_per_user: float = 40.0,
    anchors_mean: float = ANCHORS_MEAN,
) -> SyntheticData:
    """Generate events, catalog, users (contract dtypes) and the planted truth, in memory.

    `events_per_user` is the mean number of events (all types) per user; the total is
    about n_users * events_per_user. `anchors_mean` sets the basket size: a basket is
    for 1 + Poisson(anchors_mean) categories, each pulling in its complement with
    probability P_COMPLEMENT. Same arguments -> identical frames.
    """
    if (
        n_categories < 2
        or n_items < n_categories
        or n_users < 1
        or days < 1
        or not 0 < events_per_user < np.inf  # also refuses NaN
        or not 0 <= anchors_mean < np.inf
    ):
        raise DataError(
            "need n_categories >= 2, n_items >= n_categories, n_users >= 1, days >= 1, "
            f"events_per_user > 0, anchors_mean >= 0; got {n_categories=}, {n_items=}, "
            f"{n_users=}, {days=}, {events_per_user=}, {anchors_mean=}"
        )
    rng = np.random.default_rng(seed)
    n_tiers = len(TIER_NAMES)

    # ---- items: category, tier, price, popularity
    cat = np.concatenate(
        [np.arange(n_categories), rng.integers(0, n_categories, n_items - n_categories)]
    )
    rng.shuffle(cat)
    # rank of each item within its category, in a random order -> tiers cover 0..3 first
    rank = (
        pd.Series(rng.random(n_items)).groupby(cat).rank(method="first").to_numpy(dtype=np.int64)
        - 1
    )
    tier = np.where(rank < n_tiers, rank, rng.integers(0, n_tiers, n_items))
    base = np.exp(rng.uniform(np.log(2.0), np.log(40.0), n_categories))
    price = np.round(base[cat] * TIER_PRICE[tier] * np.exp(rng.normal(0, 0.07, n_items)), 2)
    cost = np.round(price * rng.uniform(0.55, 0.8, n_items), 2)
    national = np.where(tier >= 2, rng.random(n_items) < 0.85, rng.random(n_items) < 0.15)
    # popularity order is drawn apart from the tier order, so popularity does not imply tier
    pop_rank = pd.Series(rng.random(n_items)).groupby(cat).rank(method="first").to_numpy() - 1
    popularity = 1.0 / (pop_rank + 1.0) ** ZIPF_S
    in_stock = rng.random(n_items) >= OUT_OF_STOCK_SHARE

    # a category missing a tier (only when it has < 4 items) borrows the nearest one
    has = np.zeros((n_categories, n_tiers), dtype=bool)
    has[cat, tier] = True
    dist = np.abs(np.arange(n_tiers)[:, None] - np.arange(n_tiers)[None, :])  # [want, have]
    nearest = np.argmin(np.where(has[:, None, :], dist[None], 99), axis=2)  # [cat, want]
    pick_item = _zipf_picker(cat * n_tiers + tier, popularity, n_categories * n_tiers)

    # ---- users: level, upgrade day, activity, favourite categories
    level = rng.choice(n_tiers, size=n_users, p=LEVEL_SHARE)
    upgrader = (level < n_tiers - 1) & (rng.random(n_users) < UPGRADER_SHARE)
    # Upgrades land in the second half, so a time split sees pre- and post-upgrade buys.
    up_day = np.where(
        upgrader,
        rng.integers(int(days * 0.5), max(int(days * 0.85), int(days * 0.5) + 1), n_users),
        days + 1,
    )
    activity = rng.lognormal(0.0, 0.7, n_users)
    activity /= activity.mean()
    favs = rng.integers(0, n_categories, (n_users, N_FAVOURITES))
    segment = np.where(rng.random(n_users) < 0.85, level, rng.integers(0, n_tiers, n_users))

    # ---- baskets
    n_baskets_u = np.maximum(
        1, rng.poisson(events_per_user / _events_per_basket(anchors_mean) * activity)
    )
    b_user = np.repeat(np.arange(n_users), n_baskets_u)
    n_b = len(b_user)
    b_day = rng.integers(0, days, n_b)
    b_start = START + b_day * 86_400 + rng.integers(8 * 3600, 21 * 3600, n_b)

    # anchor lines: categories a basket is "for"; each may pull in its complement
    k = 1 + rng.poisson(anchors_mean, n_b)
    a_b = np.repeat(np.arange(n_b), k)
    fav_pick = favs[b_user[a_b], rng.integers(0, N_FAVOURITES, len(a_b))]
    a_cat = np.where(
        rng.random(len(a_b)) < P_FAVOURITE, fav_pick, rng.integers(0, n_categories, len(a_b))
    )
    partner = a_cat ^ 1
    pulls = (rng.random(len(a_b)) < P_COMPLEMENT) & (partner < n_categories)
    l_b = np.concatenate([a_b, a_b[pulls]])
    l_cat = np.concatenate([a_cat, partner[pulls]])

    def choose(line_b: np.ndarray, line_cat: np.ndarray, shift: np.ndarray | int = 0) -> np.ndarray:
        u = b_user[line_b]
        lvl = np.minimum(level[u] + (b_day[line_b] >= up_day[u]), n_tiers - 1)
        r = rng.random(len(line_b))
        step = np.where(rng.random(len(line_b)) < 0.5, -1, 1)
        want = np.where(
            r < P_TIER_MATCH,
            lvl,
            np.where(
                r < P_TIER_MATCH + P_TIER_NEAR, lvl + step, rng.integers(0, n_tiers, len(line_b))
            ),
        )
        want = np.clip(want + shift, 0, n_tiers - 1)
        g = line_cat * n_tiers + nearest[line_cat, want]
        return pick_item(g, rng.random(len(line_b)))

    l_item = choose(l_b, l_cat)
    # one line per (basket, item): a repeat pick just raises the quantity
    key = l_b.astype(np.int64) * n_items + l_item
    _, first, reps = np.unique(key, return_index=True, return_counts=True)
    l_b, l_item = l_b[first], l_item[first]
    n_l = len(l_b)
    qty = reps + rng.poisson(0.25, n_l)
    promo = rng.random(n_l) < 0.1
    paid = np.round(price[l_item] * np.where(promo, 0.9, 1.0), 2)
    t_buy = b_start[l_b] + 1200 + rng.integers(0, 60, n_l)

    carted = rng.random(n_l) < _P_CART
    c_b, c_item = l_b[carted], l_item[carted]
    t_cart = b_start[c_b] + 600 + rng.integers(0, 600, len(c_b))

    # views: browse the basket's categories, leaning to a tier above (up-sell interest)
    n_v = rng.poisson(_VIEWS_MEAN, n_b)
    v_b = np.repeat(np.arange(n_b), n_v)
    first_line = np.searchsorted(l_b, np.arange(n_b))  # l_b is sorted (np.unique on key)
    lines_in_b = np.bincount(l_b, minlength=n_b)
    v_line = first_line[v_b] + (rng.random(len(v_b)) * lines_in_b[v_b]).astype(np.int64)
    v_cat = cat[l_item[v_line]]
    v_item = choose(v_b, v_cat, shift=(rng.random(len(v_b)) < 0.4).astype(np.int64))
    t_view = b_start[v_b] + rng.integers(0, 600, len(v_b))

    # ---- assemble
    user_ids, item_ids = _ids("u", n_users), _ids("i", n_items)
    basket_ids = _ids("b", n_b)
    ev_b = np.concatenate([v_b, c_b, l_b])
    ev_item = np.concatenate([v_item, c_item, l_item])
    ev_type = np.repeat(
        np.array(["view", "cart", "purchase"], dtype=object), [len(v_b), len(c_b), n_l]
    )
    ev_ts = np.concatenate([t_view, t_cart, t_buy]).astype(np.int64)
    ev_qty = np.concatenate([np.ones(len(v_b) + len(c_b)), qty]).astype(np.float64)
    ev_price = np.concatenate([price[v_item], price[c_item], paid]).astype(np.float64)
    order = np.lexsort((ev_item, ev_ts))
    events = pd.DataFrame(
        {
            "user_id": pd.Series(user_ids[b_user[ev_b[order]]], dtype=object),
            "item_id": pd.Series(item_ids[ev_item[order]], dtype=object),
            "timestamp": ev_ts[order],
            "event_type": pd.Series(ev_type[order], dtype=object),
            "quantity": ev_qty[order],
            "unit_price": ev_price[order],
            "basket_id": pd.Series(basket_ids[ev_b[order]], dtype=object),
        }
    )
    leaf = np.array([category_name(c) for c in range(n_categories)], dtype=object)
    path = np.array(
        [f"dept{c // 4:02d}/{category_name(c)}" for c in range(n_categories)], dtype=object
    )
    tier_names = np.array(TIER_NAMES, dtype=object)
    catalog = pd.DataFrame(
        {
            "item_id": pd.Series(item_ids, dtype=object),
            "category": pd.Series(leaf[cat], dtype=object),
            "category_path": pd.Series(path[cat], dtype=object),
            "price": price,
            "cost": cost,
            "brand": pd.Series(
                np.where(national, "national", "private").astype(object), dtype=object
            ),
            "title": pd.Series(tier_names[tier] + " " + leaf[cat] + " #" + item_ids, dtype=object),
            "in_stock": in_stock,
        }
    )
    users = pd.DataFrame(
        {
            "user_id": pd.Series(user_ids, dtype=object),
            "segment": pd.Series(np.array(SEGMENTS, dtype=object)[segment], dtype=object),
            "region": pd.Series(
                np.array(REGIONS, dtype=object)[rng.integers(0, len(REGIONS), n_users)],
                dtype=object,
            ),
        }
    )
    truth = PlantedTruth(
        complement_of={leaf[c]: leaf[c ^ 1] for c in range(n_categories) if (c ^ 1) < n_categories},
        item_tier=dict(zip(item_ids.tolist(), tier.tolist(), strict=True)),
        user_level=dict(zip(user_ids.tolist(), level.tolist(), strict=True)),
        upgrade_day={user_ids[u]: int(up_day[u]) for u in np.flatnonzero(upgrader)},
    )
    params = dict(
        n_users=n_users,
        n_items=n_items,
        n_categories=n_categories,
        days=days,
        seed=seed,
        events_per_user=events_per_user,
        anchors_mean=anchors_mean,
    )
    return SyntheticData(events, catalog, users, truth, params)


def generate(
    out_dir: str | Path,
    *,
    n_users: int = 2000,
    n_items: int = 1000,
    n_categories: int = 40,
    days: int = 120,
    seed: int = 0,
    events_per_user: float = 40.0,
    fmt: str = "csv",
) -> dict[str, Path]:
    """Write events/catalog/users (`fmt` "csv" or "parquet") and truth.json to `out_dir`.

    The catalog is written with `category` = the full path ("dept01/c005"), as a shop
    would export it; the loader turns it into leaf + path. Returns table -> path,
    plus "truth".
    """
    if fmt not in ("csv", "parquet"):
        raise DataError(f"unknown format {fmt!r}; use 'csv' or 'parquet'")
    data = generate_frames(
        n_users=n_users,
        n_items=n_items,
        n_categories=n_categories,
        days=days,
        seed=seed,
        events_per_user=events_per_user,
    )
    out = Path(out_dir)
    catalog = data.catalog.drop(columns=["category_path"]).assign(
        category=data.catalog["category_path"]
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "events": write_table(data.events, out / f"events.{fmt}"),
            "catalog": write_table(catalog, out / f"catalog.{fmt}"),
            "users": write_table(data.users, out / f"users.{fmt}"),
            "truth": out / "truth.json",
        }
        truth = json.dumps({"params": data.params, **data.truth.to_dict()}, indent=1)
        paths["truth"].write_text(truth)
    except OSError as exc:
        raise cannot_write(exc, out, "the synthetic shop (--out)") from exc
    return paths
