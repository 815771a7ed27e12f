"""Request and result types of the ranking core (no protobuf, no grpc here).

The gRPC adapter (`xsell.server`) converts protobuf <-> these types; the evaluator
and the benchmarks build them directly. Validation of field values happens in
`RankRequest.validated()` so every caller gets the same errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import Enum

from xsell.errors import InvalidRequest

MAX_LIMIT = 100  # largest list a request may ask for
MAX_CART_LINES = 100  # largest cart a request may carry
DEFAULT_LIMIT = 10
MAX_FILTER_IDS = 1000  # exclude_item_ids / category lists


class Strategy(str, Enum):
    CROSS_SELL = "cross_sell"
    UP_SELL = "up_sell"
    BOTH = "both"


@dataclass(frozen=True)
class CartLine:
    item_id: str
    quantity: float = 1.0


@dataclass(frozen=True)
class Filters:
    exclude_item_ids: frozenset[str] = frozenset()
    allowed_categories: frozenset[str] = frozenset()
    denied_categories: frozenset[str] = frozenset()
    price_min: float | None = None
    price_max: float | None = None
    uplift_min: float | None = None  # up-sell only; None = strictly pricier than the anchor
    uplift_max: float | None = None
    exclude_purchased: bool = False
    max_per_category: int = 0  # 0 = no cap


@dataclass(frozen=True)
class RankRequest:
    user_id: str = ""
    cart: tuple[CartLine, ...] = ()
    strategy: Strategy = Strategy.BOTH
    limit: int = DEFAULT_LIMIT
    cross_sell_limit: int = 0  # BOTH only; 0 = limit
    up_sell_limit: int = 0
    filters: Filters = field(default_factory=Filters)
    explain: bool = False
    # Evaluation only: rank exactly these item ids (skip retrieval). Not exposed over gRPC.
    candidate_ids: tuple[str, ...] | None = None

    def validated(self) -> RankRequest:
        """Check every field; raise InvalidRequest naming the field. Returns self."""
        if not self.user_id and not self.cart:
            raise InvalidRequest("cart", "empty request: give a user_id or at least one cart line")
        if len(self.cart) > MAX_CART_LINES:
            raise InvalidRequest("cart", f"{len(self.cart)} lines, at most {MAX_CART_LINES} allowed")
        for i, line in enumerate(self.cart):
            if not line.item_id:
                raise InvalidRequest(f"cart[{i}].item_id", "must not be empty")
            if not math.isfinite(line.quantity) or line.quantity < 0:
                raise InvalidRequest(f"cart[{i}].quantity", f"must be a finite number >= 0, got {line.quantity}")
        for name in ("limit", "cross_sell_limit", "up_sell_limit"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_LIMIT:
                raise InvalidRequest(name, f"must be between 1 and {MAX_LIMIT} (0 = default), got {value}")
        f = self.filters
        for name in ("price_min", "price_max", "uplift_min", "uplift_max"):
            value = getattr(f, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise InvalidRequest(f"filters.{name}", f"must be a finite number >= 0, got {value}")
        if f.price_min is not None and f.price_max is not None and f.price_min > f.price_max:
            raise InvalidRequest("filters.price_min", f"price_min {f.price_min} > price_max {f.price_max}")
        if f.uplift_min is not None and f.uplift_max is not None and f.uplift_min > f.uplift_max:
            raise InvalidRequest("filters.uplift_min", f"uplift_min {f.uplift_min} > uplift_max {f.uplift_max}")
        for name in ("exclude_item_ids", "allowed_categories", "denied_categories"):
            if len(getattr(f, name)) > MAX_FILTER_IDS:
                raise InvalidRequest(f"filters.{name}", f"at most {MAX_FILTER_IDS} entries")
        if f.max_per_category < 0:
            raise InvalidRequest("filters.max_per_category", "must be >= 0")
        return self

    def limits(self) -> tuple[int, int]:
        """(cross-sell count, up-sell count) this request asks for."""
        base = self.limit or DEFAULT_LIMIT
        if self.strategy is Strategy.CROSS_SELL:
            return base, 0
        if self.strategy is Strategy.UP_SELL:
            return 0, base
        return self.cross_sell_limit or base, self.up_sell_limit or base

    def with_(self, **changes) -> RankRequest:
        return replace(self, **changes)


@dataclass(frozen=True)
class Reason:
    feature: str
    value: float
    contribution: float
    text: str


@dataclass(frozen=True)
class RankedItem:
    item_id: str
    score: float
    strategy: Strategy  # CROSS_SELL or UP_SELL
    anchor_item_id: str
    price: float
    category: str
    price_uplift: float
    sources: tuple[str, ...]
    reasons: tuple[Reason, ...] = ()


@dataclass
class RankResult:
    cross_sell: list[RankedItem]
    up_sell: list[RankedItem]
    model_version: str
    unknown_item_ids: list[str] = field(default_factory=list)
    fallback: bool = False
    fallback_reason: str = ""
    # seconds spent per stage: retrieval, features, model, rules
    timings: dict[str, float] = field(default_factory=dict)
