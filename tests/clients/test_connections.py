"""Calls rotate over several connections, so they reach every worker of `xsell serve
--workers 2` (the kernel gives each connection, not each call, to one worker:
SO_REUSEPORT). A real server subprocess; which worker answered is read from its log
(one JSON access line per call, with the pid of the worker that answered)."""

from __future__ import annotations

import asyncio

from xsell.clients import AsyncXsellClient, XsellClient

from .conftest import answered

# 16 connections all given to one of 2 workers: odds 2 / 2**16
CONNECTIONS, CALLS = 16, 32


def test_calls_rotate_over_connections_and_reach_every_worker(serve_cli, bundle_dir):
    proc = serve_cli(bundle_dir, "--workers", "2")
    address = f"127.0.0.1:{proc.port}"
    with XsellClient(address, connections=1, timeout=10) as one:
        for _ in range(CALLS):
            one.model_info()
    assert len(answered(proc, 0, CALLS)) == 1  # one connection: one worker

    with XsellClient(address, connections=CONNECTIONS, timeout=10) as many:
        for _ in range(CALLS):
            many.model_info()
    assert answered(proc, CALLS, CALLS) == set(proc.pids)

    async def rotate() -> None:
        async with AsyncXsellClient(address, connections=CONNECTIONS, timeout=10) as client:
            for _ in range(CALLS):
                await client.model_info()

    asyncio.run(rotate())
    assert answered(proc, 2 * CALLS, CALLS) == set(proc.pids)
