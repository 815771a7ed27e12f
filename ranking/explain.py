"""Turn LightGBM feature contributions into sentences a merchandiser can read."""

from __future__ import annotations

import math

import numpy as np

from xsell.retrieval.artifacts import Artifacts

from .types import Reason


def reason_text(name: str, value: float, arts: Artifacts, item: int, anchor: int, up_sell: bool) -> str:
    anchor_id = arts.items.ids[anchor] if anchor >= 0 else "your cart"
    if math.isnan(value):
        return f"{name}: unknown"
    if name == "price_uplift_log":
        pct = (math.exp(value) - 1.0) * 100
        if up_sell:
            return f"premium alternative: {pct:+.0f}% price, same category"
        return f"priced at {math.exp(value):.2f}x {anchor_id}"
    if name == "cat_lift_log":
        cat_a = arts.categories.ids[arts.item_category[anchor]] if anchor >= 0 else "?"
        cat_c = arts.categories.ids[arts.item_category[item]]
        return f"shoppers buying {cat_a} buy {cat_c} {math.exp(value):.1f}x more often than average"
    if name == "cat_cond_prob":
        return f"{value * 100:.0f}% of baskets with {anchor_id}'s category also hold this category"
    if name == "copurchase_log":
        return f"bought together with {anchor_id} in {math.expm1(value):.0f} baskets"
    if name == "copurchase_conf":
        return f"{value * 100:.1f}% of baskets with {anchor_id} also hold this item"
    if name in ("emb_cos_anchor", "emb_user_score"):
        return "shoppers with similar baskets buy it" if name == "emb_cos_anchor" else "matches this shopper's taste"
    if name == "user_item_count_log":
        return f"this shopper bought it {math.expm1(value):.0f} times before"
    if name in ("price_pct_vs_user", "user_price_level"):
        return "in this shopper's usual price range" if abs(value) < 0.25 else "outside this shopper's usual price range"
    if name in ("log_popularity", "log_recent_popularity"):
        return f"popular: in {math.expm1(value):.0f} baskets" + (" recently" if "recent" in name else "")
    if name == "user_cat_count_log":
        return f"this shopper bought in this category {math.expm1(value):.0f} times"
    if name == "retrieval_score":
        return "proposed early by several retrieval sources"
    if name.startswith("src_"):
        return f"proposed by the {name[4:]} source"
    if name == "pop_rank_in_cat":
        return "a top seller of its category" if value < 0.1 else "a regular seller of its category"
    return f"{name} = {value:.3g}"


def top_reasons(
    contrib_row: np.ndarray, x_row: np.ndarray, names: list[str], arts: Artifacts,
    item: int, anchor: int, up_sell: bool, n: int = 3,
) -> tuple[Reason, ...]:  # fmt: skip
    """The n features that pushed this item's score up the most (bias column ignored)."""
    contrib = contrib_row[: len(names)]
    order = np.argsort(-contrib, kind="stable")[:n]
    return tuple(
        Reason(
            feature=names[j],
            value=float(x_row[j]),
            contribution=float(contrib[j]),
            text=reason_text(names[j], float(x_row[j]), arts, item, anchor, up_sell),
        )
        for j in order
        if contrib[j] > 0
    )
