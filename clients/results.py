"""Typed answers of the xsell API: plain frozen dataclasses, no protobuf.

`XsellClient` returns these unless asked for the raw protobuf (`raw=True`). The
`from_pb` functions are pure, so the sync and asyncio clients share them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from xsell.v1 import xsell_pb2 as pb

StrategyName = Literal["cross_sell", "up_sell", "both"]

# RecommendedItem.strategy on the wire -> the name the client uses everywhere.
_STRATEGY_NAMES: dict[int, str] = {
    pb.STRATEGY_UNSPECIFIED: "both",
    pb.STRATEGY_CROSS_SELL: "cross_sell",
    pb.STRATEGY_UP_SELL: "up_sell",
    pb.STRATEGY_BOTH: "both",
}


@dataclass(frozen=True)
class Reason:
    """One feature's additive contribution to an item's score."""

    feature: str
    value: float
    contribution: float
    text: str  # a sentence a person can read


@dataclass(frozen=True)
class RecommendedItem:
    item_id: str
    score: float  # higher is better; comparable only within one response
    strategy: str  # "cross_sell" or "up_sell" (a newer server's unknown enum: "strategy_<n>")
    anchor_item_id: str  # cart item it relates to; "" for fallbacks
    price: float
    category: str
    price_uplift: float  # price / anchor price; 0.0 without an anchor
    sources: tuple[str, ...]  # retrieval sources that proposed it
    reasons: tuple[Reason, ...] = ()  # only when the request asked to explain


@dataclass(frozen=True)
class Recommendations:
    cross_sell: tuple[RecommendedItem, ...]
    up_sell: tuple[RecommendedItem, ...]
    model_version: str
    unknown_item_ids: tuple[str, ...] = ()  # cart ids the bundle does not know (ignored)
    fallback: bool = False
    fallback_reason: str = ""
    request_id: str = ""
    variant: str = ""

    @property
    def items(self) -> tuple[RecommendedItem, ...]:
        """Cross-sell items, then up-sell items, each list best first."""
        return self.cross_sell + self.up_sell

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelInfo:
    model_version: str
    created: str  # ISO-8601 UTC
    feature_names: tuple[str, ...]
    training_metrics: Mapping[str, float] = field(default_factory=dict)
    data_fingerprint: str = ""
    num_items: int = 0
    num_users: int = 0
    bundle_path: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["training_metrics"] = dict(self.training_metrics)
        return d


@dataclass(frozen=True)
class ReloadResult:
    model_version: str  # serving now
    previous_version: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def strategy_name(value: int) -> str:
    return _STRATEGY_NAMES.get(value, f"strategy_{value}")


def reason_from_pb(msg: pb.Reason) -> Reason:
    return Reason(msg.feature, msg.value, msg.contribution, msg.text)


def item_from_pb(msg: pb.RecommendedItem) -> RecommendedItem:
    return RecommendedItem(
        item_id=msg.item_id,
        score=msg.score,
        strategy=strategy_name(msg.strategy),
        anchor_item_id=msg.anchor_item_id,
        price=msg.price,
        category=msg.category,
        price_uplift=msg.price_uplift,
        sources=tuple(msg.sources),
        reasons=tuple(reason_from_pb(r) for r in msg.reasons),
    )


def recommendations_from_pb(msg: pb.RecommendResponse) -> Recommendations:
    return Recommendations(
        cross_sell=tuple(item_from_pb(i) for i in msg.cross_sell),
        up_sell=tuple(item_from_pb(i) for i in msg.up_sell),
        model_version=msg.model_version,
        unknown_item_ids=tuple(msg.unknown_item_ids),
        fallback=msg.fallback,
        fallback_reason=msg.fallback_reason,
        request_id=msg.request_id,
        variant=msg.variant,
    )


def model_info_from_pb(msg: pb.GetModelInfoResponse) -> ModelInfo:
    return ModelInfo(
        model_version=msg.model_version,
        created=msg.created,
        feature_names=tuple(msg.feature_names),
        training_metrics=dict(sorted(msg.training_metrics.items())),
        data_fingerprint=msg.data_fingerprint,
        num_items=msg.num_items,
        num_users=msg.num_users,
        bundle_path=msg.bundle_path,
    )


def reload_from_pb(msg: pb.ReloadModelResponse) -> ReloadResult:
    return ReloadResult(msg.model_version, msg.previous_version)
