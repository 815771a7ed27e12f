"""Turn LightGBM feature contributions into sentences a merchandiser can read."""

from __future__ import annotations

import math

import numpy as np
from xsell.retrieval.artifacts import Artifacts

from .types import Reason


def source_phrase(source: str, anchor_id: str, anchor_cat: str) -> str:
    """What a retrieval source's proposal means, in words."""
    return {
        "ann": f"bought by shoppers whose baskets resemble those with {anchor_id}",
        "copurchase": f"bought together with {anchor_id}",
        "complement": f"a top seller of a category that goes with {anchor_cat}",
        "history": "bought by this shopper before",
        "category": f"a popular pricier choice in {anchor_cat}",
        "popular": "a best seller",
        "taste": "close to this shopper's taste",
        "neighbours": "bought by shoppers with purchases like this shopper's",
    }.get(source, f"proposed by the {source} source")


def reason_text(
    name: str, value: float, arts: Artifacts, item: int, anchor: int, up_sell: bool, sources: tuple[str, ...] = ()
) -> str:
    anchor_id = arts.items.ids[anchor] if anchor >= 0 else "your cart"
    anchor_cat = arts.categories.ids[arts.item_category[anchor]] if anchor >= 0 else "your cart's categories"
    item_cat = arts.categories.ids[arts.item_category[item]]
    if math.isnan(value):
        return f"{name}: unknown"
    if name == "price_uplift_log":
        pct = (math.exp(value) - 1.0) * 100
        if up_sell:  # uplift_min < 1 admits cheaper ones: not "premium" then
            kind = "premium alternative" if value > 0 else "alternative"
            return f"{kind}: {pct:+.0f}% price, same category"
        return f"priced at {math.exp(value):.2f}x {anchor_id}"
    if name == "cat_lift_log":
        how = "more often than" if value > 0 else "as often as"  # "0.4x more often" misreads a lift < 1
        return f"shoppers buying {anchor_cat} buy {item_cat} {math.exp(value):.1f}x {how} average"
    if name == "cat_cond_prob":
        return f"{value * 100:.0f}% of baskets with {anchor_cat} also hold {item_cat}"
    if name == "cand_cat_share":
        return f"{item_cat} is in {value * 100:.1f}% of all baskets"
    if name == "copurchase_log":
        return f"bought together with {anchor_id} in {math.expm1(value):.0f} baskets"
    if name == "copurchase_conf":
        return f"{value * 100:.1f}% of baskets with {anchor_id} also hold this item"
    if name == "emb_cos_anchor":
        return f"bought by shoppers whose baskets resemble those with {anchor_id}"
    if name == "emb_user_score":
        return "matches this shopper's taste"
    if name == "user_item_count_log":
        return f"this shopper bought it {math.expm1(value):.0f} times before"
    if name == "user_item_days_since":
        return f"this shopper last bought it {value:.0f} days ago"
    if name == "user_cat_count_log":
        return f"this shopper bought in {item_cat} {math.expm1(value):.0f} times"
    if name == "user_cat_share":
        return f"{value * 100:.0f}% of this shopper's purchases are in {item_cat}"
    if name == "user_baskets_log":
        return f"a shopper with {math.expm1(value):.0f} past baskets"
    if name == "price_pct_vs_user_recent":
        return "in this shopper's recent price range" if abs(value) < 0.25 else (
            f"{'above' if value > 0 else 'below'} this shopper's recent price range")  # fmt: skip
    if name == "user_price_trend":
        return "a shopper trading up lately" if value > 0.05 else (
            "a shopper trading down lately" if value < -0.05 else "a shopper keeping to their price range")  # fmt: skip
    if name in ("price_pct_vs_user", "user_price_level"):
        return "in this shopper's usual price range" if abs(value) < 0.25 else "outside this shopper's usual price range"
    if name in ("cand_price_pct", "anchor_price_pct"):
        what = "priced" if name == "cand_price_pct" else f"{anchor_id} is priced"
        return f"{what} above {value * 100:.0f}% of {item_cat if name == 'cand_price_pct' else anchor_cat}"
    if name == "log_price":
        return f"priced at {math.expm1(value):.2f}"
    if name in ("log_popularity", "log_recent_popularity"):
        return f"popular: in {math.expm1(value):.0f} baskets" + (" in the last 28 days" if "recent" in name else "")
    if name == "anchor_log_popularity":
        return f"{anchor_id} is in {math.expm1(value):.0f} baskets"
    if name == "recent_share":
        return f"trending: {value * 100:.0f}% of its baskets are recent"
    if name == "days_since_sale":
        return f"last sold {value:.0f} days ago"
    if name == "pop_rank_in_cat":
        return f"a top seller of {item_cat}" if value < 0.1 else f"a regular seller of {item_cat}"
    if name == "price_pct_vs_user_cat":
        where = "above" if value > 0 else "below"
        return f"{abs(value) * 100:.0f} percentile points {where} what this shopper usually pays in {item_cat}"
    if name == "switch_log":
        return f"{math.expm1(value):.0f} shoppers moved from {anchor_id} to it on their next {item_cat} purchase"
    if name == "switch_share":
        return f"{value * 100:.0f}% of the switches away from {anchor_id} went to it"
    if name == "user_item_decay":
        return f"bought by this shopper recently (weight {value:.2f})"
    if name == "repeat_cycle":
        return "due again: bought at about this interval" if 0.7 <= value <= 1.5 else (
            f"last bought {value:.1f}x this shopper's usual interval ago")  # fmt: skip
    if name == "item_repeat_rate":
        return f"{value * 100:.0f}% of its buyers buy it again"
    if name == "user_repeat_rate":
        return f"this shopper re-buys {value * 100:.0f}% of their items"
    if name == "knn_score":
        return "bought by shoppers with purchases like this shopper's"
    if name == "segment_item_lift":
        return f"shoppers like this one (same {_segment_words(arts)}) buy it {math.exp(value):.1f}x as often as average"
    if name == "segment_cat_lift":
        return f"shoppers like this one buy in {item_cat} {math.exp(value):.1f}x as often as average"
    if name == "price_pct_vs_segment_cat":
        where = "above" if value > 0 else "below"
        return f"{abs(value) * 100:.0f} percentile points {where} what shoppers like this one pay in {item_cat}"
    if name == "margin_rate":
        return f"margin {value * 100:.0f}%"
    if name == "n_anchors":
        return f"fits a cart of {value:.0f} known items"
    if name == "retrieval_score":
        found = [source_phrase(s, anchor_id, anchor_cat) for s in sources] or ["several retrieval sources"]
        return "found as: " + "; ".join(found)
    if name.startswith("src_"):
        return source_phrase(name[4:], anchor_id, anchor_cat)
    return f"{name} = {value:.3g}"


def _segment_words(arts: Artifacts) -> str:
    return " and ".join(arts.segments.columns) if arts.segments is not None else "segment"


def top_reasons(
    contrib_row: np.ndarray, x_row: np.ndarray, names: list[str], arts: Artifacts,
    item: int, anchor: int, up_sell: bool, n: int = 3, sources: tuple[str, ...] = (),
) -> tuple[Reason, ...]:  # fmt: skip
    """The n features that pushed this item's score up the most (bias column ignored)."""
    contrib = contrib_row[: len(names)]
    order = np.argsort(-contrib, kind="stable")[:n]
    return tuple(
        Reason(
            feature=names[j],
            value=float(x_row[j]),
            contribution=float(contrib[j]),
            text=reason_text(names[j], float(x_row[j]), arts, item, anchor, up_sell, sources),
        )
        for j in order
        if contrib[j] > 0
    )
