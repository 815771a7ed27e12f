"""Protobuf (xsell.v1) <-> ranking core types (xsell.ranking.types).

Pure functions, no grpc. Field values are validated by `RankRequest.validated()`,
so the server, the evaluator and the benchmarks reject the same inputs with the
same messages; this module only adds what the core cannot see (enum numbers that
do not exist, the batch size, proto3 `optional` presence).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xsell.ranking.types import (
    CartLine,
    Filters,
    RankedItem,
    RankRequest,
    RankResult,
    Strategy,
)

from xsell.errors import InvalidRequest
from xsell.v1 import xsell_pb2 as pb

if TYPE_CHECKING:
    from xsell.ranking.ranker import Ranker

MAX_BATCH = 64  # RecommendBatchRequest.requests, documented in the .proto

_STRATEGY_FROM_PB: dict[int, Strategy] = {
    pb.STRATEGY_UNSPECIFIED: Strategy.BOTH,  # the .proto: UNSPECIFIED = BOTH
    pb.STRATEGY_CROSS_SELL: Strategy.CROSS_SELL,
    pb.STRATEGY_UP_SELL: Strategy.UP_SELL,
    pb.STRATEGY_BOTH: Strategy.BOTH,
}
_STRATEGY_TO_PB: dict[Strategy, int] = {
    Strategy.CROSS_SELL: pb.STRATEGY_CROSS_SELL,
    Strategy.UP_SELL: pb.STRATEGY_UP_SELL,
    Strategy.BOTH: pb.STRATEGY_BOTH,
}


def strategy_from_pb(value: int) -> Strategy:
    try:
        return _STRATEGY_FROM_PB[value]
    except KeyError:
        # proto3 enums are open: a newer client can send a number this server lacks.
        known = ", ".join(f"{pb.Strategy.Name(n)}={n}" for n in _STRATEGY_FROM_PB)
        raise InvalidRequest(
            "strategy", f"unknown value {value}; expected one of {known}"
        ) from None


def _optional(msg: Any, name: str) -> float | None:
    return getattr(msg, name) if msg.HasField(name) else None


def filters_from_pb(f: pb.Filters) -> Filters:
    return Filters(
        exclude_item_ids=frozenset(f.exclude_item_ids),
        allowed_categories=frozenset(f.allowed_categories),
        denied_categories=frozenset(f.denied_categories),
        price_min=_optional(f, "price_min"),
        price_max=_optional(f, "price_max"),
        uplift_min=_optional(f, "uplift_min"),
        uplift_max=_optional(f, "uplift_max"),
        exclude_purchased=f.exclude_purchased,
        max_per_category=f.max_per_category,
    )


def request_from_pb(msg: pb.RecommendRequest) -> RankRequest:
    """A validated RankRequest; raises InvalidRequest naming the field."""
    return RankRequest(
        user_id=msg.user_id,
        # quantity 0 is proto3's "not set": the .proto documents it as 1
        cart=tuple(CartLine(line.item_id, line.quantity or 1.0) for line in msg.cart),
        strategy=strategy_from_pb(msg.strategy),
        limit=msg.limit,
        cross_sell_limit=msg.cross_sell_limit,
        up_sell_limit=msg.up_sell_limit,
        filters=filters_from_pb(msg.filters),
        explain=msg.explain,
    ).validated()


def prefixed(exc: InvalidRequest, prefix: str) -> InvalidRequest:
    """The same error with its field placed under `prefix` (e.g. requests[3].limit)."""
    message = str(exc)[len(exc.field) + 2 :] if str(exc).startswith(f"{exc.field}: ") else str(exc)
    return InvalidRequest(f"{prefix}{exc.field}", message)


def batch_from_pb(msg: pb.RecommendBatchRequest) -> list[RankRequest]:
    """Validated requests in order; a bad one refuses the whole batch, naming requests[i]."""
    n = len(msg.requests)
    if n > MAX_BATCH:
        raise InvalidRequest("requests", f"{n} requests, at most {MAX_BATCH} allowed per batch")
    out = []
    for i, item in enumerate(msg.requests):
        try:
            out.append(request_from_pb(item))
        except InvalidRequest as exc:
            raise prefixed(exc, f"requests[{i}].") from None
    return out


def _add_items(field, items: list[RankedItem]) -> None:
    """Append the items to a repeated RecommendedItem field. `add` builds each message in
    place; a list of built messages is copied in again (measured: 25 vs 45 us for 15)."""
    for item in items:
        msg = field.add(
            item_id=item.item_id,
            score=item.score,
            strategy=_STRATEGY_TO_PB[item.strategy],
            anchor_item_id=item.anchor_item_id,
            price=item.price,
            category=item.category,
            price_uplift=item.price_uplift,
            sources=item.sources,
        )
        for r in item.reasons:
            msg.reasons.add(feature=r.feature, value=r.value, contribution=r.contribution, text=r.text)


def response_to_pb(
    result: RankResult, *, request_id: str = "", variant: str = ""
) -> pb.RecommendResponse:
    response = pb.RecommendResponse(
        model_version=result.model_version,
        unknown_item_ids=result.unknown_item_ids,
        fallback=result.fallback,
        fallback_reason=result.fallback_reason,
        request_id=request_id,
        variant=variant,
    )
    _add_items(response.cross_sell, result.cross_sell)
    _add_items(response.up_sell, result.up_sell)
    return response


def model_info_to_pb(ranker: Ranker) -> pb.GetModelInfoResponse:
    m = ranker.manifest
    return pb.GetModelInfoResponse(
        model_version=ranker.version,
        created=str(m.get("created", "")),
        feature_names=list(m.get("feature_names", ())),
        # numbers only: a manifest may carry nested or text entries the map cannot hold
        training_metrics={
            str(k): float(v)
            for k, v in (m.get("metrics") or {}).items()
            if isinstance(v, (int, float))
        },
        data_fingerprint=str(m.get("data_fingerprint", "")),
        num_items=int(m.get("num_items", 0)),
        num_users=int(m.get("num_users", 0)),
        bundle_path=str(ranker.bundle_dir),
    )
