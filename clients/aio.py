"""asyncio client of `xsell.v1.RecommendService` (grpc.aio), the twin of XsellClient.

    from xsell.clients import AsyncXsellClient

    async with AsyncXsellClient("127.0.0.1:50051") as client:
        recs = await client.recommend(cart=["A"], strategy="cross_sell", limit=5)

Same arguments, results, deadlines, retries (UNAVAILABLE only, `asyncio.sleep`
between attempts) and errors (`XsellRpcError`) as `xsell.clients.client`. Create
it inside a running event loop; grpc.aio channels belong to the loop they were
made in.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from xsell.clients.client import (
    DEFAULT_CONNECTIONS,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    RELOAD_TIMEOUT,
    Backoff,
    CartEntry,
    ClientConfigError,
    Filters,
    RecommendRequest,
    TlsOptions,
    XsellRpcError,
    _Settings,
    batch_to_pb,
    check_timeout,
)
from xsell.clients.results import (
    ModelInfo,
    Recommendations,
    ReloadResult,
    model_info_from_pb,
    recommendations_from_pb,
    reload_from_pb,
)

from xsell.v1 import xsell_pb2 as pb
from xsell.v1 import xsell_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger("xsell.clients")


class AsyncXsellClient:
    """Non-blocking client; see XsellClient for the arguments."""

    def __init__(
        self,
        address: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        tls: TlsOptions | None = None,
        token: str | None = None,
        backoff: Backoff | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        options: Sequence[tuple[str, Any]] = (),
        seed: int | None = None,
        connections: int = DEFAULT_CONNECTIONS,
    ) -> None:
        self._s = _Settings.build(
            address,
            timeout=timeout,
            retries=retries,
            tls=tls,
            token=token,
            backoff=backoff,
            metadata=metadata,
            options=options,
            seed=seed,
            connections=connections,
        )
        self._channels = self._s.open_channels(grpc.aio.insecure_channel, grpc.aio.secure_channel)
        self._stubs = [pb_grpc.RecommendServiceStub(c) for c in self._channels]
        self._turn = itertools.count()
        self._closed = False

    @property
    def address(self) -> str:
        return self._s.address

    async def recommend(
        self,
        *,
        user_id: str = "",
        cart: Sequence[CartEntry] = (),
        strategy: str = "both",
        limit: int = 0,
        cross_sell_limit: int = 0,
        up_sell_limit: int = 0,
        filters: Filters | None = None,
        explain: bool = False,
        variant: str = "",
        request_id: str = "",
        timeout: float | None = None,
        raw: bool = False,
    ) -> Recommendations | pb.RecommendResponse:
        request = RecommendRequest(
            user_id=user_id,
            cart=cart,
            strategy=strategy,
            limit=limit,
            cross_sell_limit=cross_sell_limit,
            up_sell_limit=up_sell_limit,
            filters=filters,
            explain=explain,
            variant=variant,
            request_id=request_id,
        ).to_pb()
        response = await self._call("Recommend", request, timeout)
        return response if raw else recommendations_from_pb(response)

    async def recommend_batch(
        self,
        requests: Iterable[RecommendRequest | Mapping[str, Any] | pb.RecommendRequest],
        *,
        timeout: float | None = None,
        raw: bool = False,
    ) -> list[Recommendations] | pb.RecommendBatchResponse:
        response = await self._call("RecommendBatch", batch_to_pb(requests), timeout)
        return response if raw else [recommendations_from_pb(r) for r in response.responses]

    async def model_info(
        self, *, timeout: float | None = None, raw: bool = False
    ) -> ModelInfo | pb.GetModelInfoResponse:
        response = await self._call("GetModelInfo", pb.GetModelInfoRequest(), timeout)
        return response if raw else model_info_from_pb(response)

    async def reload(
        self,
        bundle_path: str | os.PathLike = "",
        *,
        timeout: float = RELOAD_TIMEOUT,
        raw: bool = False,
    ) -> ReloadResult | pb.ReloadModelResponse:
        request = pb.ReloadModelRequest(bundle_path=os.fspath(bundle_path))
        response = await self._call("ReloadModel", request, timeout)
        return response if raw else reload_from_pb(response)

    async def _call(self, method: str, request: Any, timeout: float | None) -> Any:
        if self._closed:
            raise ClientConfigError(f"{method}: the client is closed")
        budget = self._s.timeout if timeout is None else check_timeout(timeout)
        deadline = time.monotonic() + budget
        retry = 0
        while True:
            rpc = getattr(self._stubs[next(self._turn) % len(self._stubs)], method)
            try:
                return await rpc(
                    request,
                    timeout=max(deadline - time.monotonic(), 0.0),
                    metadata=self._s.metadata,
                )
            except grpc.aio.AioRpcError as exc:
                delay = self._s.plan_retry(exc, retry, deadline)
                if delay is None:
                    raise XsellRpcError.from_grpc(method, exc, attempts=retry + 1) from None
                log.debug("%s: %s; retry %d in %.3fs", method, exc.code().name, retry + 1, delay)
                await asyncio.sleep(delay)
                retry += 1

    async def close(self) -> None:
        self._closed = True
        for channel in self._channels:
            await channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncXsellClient({self._s.address!r}, timeout={self._s.timeout}, retries={self._s.retries}, tls={self._s.tls is not None}, connections={self._s.connections})"
