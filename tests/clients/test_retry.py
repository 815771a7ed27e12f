"""Retries: only UNAVAILABLE, bounded by `retries` and by the call's deadline.

Attempts are counted on the server side (its request counter), not by the client.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from xsell.clients import Backoff, XsellClient, XsellRpcError
from xsell.clients.client import MIN_ATTEMPT_SECONDS, RETRYABLE_CODES, next_delay

QUICK = Backoff(initial=0.01, maximum=0.05)


# ------------------------------------------------------------------ the schedule (pure)


@given(
    initial=st.floats(0.001, 1.0),
    spread=st.floats(1.0, 100.0),
    multiplier=st.floats(1.0, 4.0),
    jitter=st.floats(0.0, 0.99),
    retry=st.integers(0, 200),
    u=st.floats(0.0, 1.0, exclude_max=True),
)
def test_backoff_delay_stays_within_its_jitter_band_and_cap(
    initial, spread, multiplier, jitter, retry, u
):
    b = Backoff(initial=initial, maximum=initial * spread, multiplier=multiplier, jitter=jitter)
    base = min(b.maximum, initial * multiplier ** min(retry, 64))
    delay = b.delay(retry, u)
    assert (
        base * (1 - jitter) * (1 - 1e-12)
        <= delay
        <= min(b.maximum, base * (1 + jitter)) * (1 + 1e-12)
    )


@given(retry=st.integers(0, 30), u=st.floats(0.0, 1.0, exclude_max=True))
def test_backoff_grows_until_the_cap(retry, u):
    b = Backoff(initial=0.01, maximum=2.0, multiplier=2.0, jitter=0.0)
    assert b.delay(retry + 1, u) >= b.delay(retry, u)
    assert b.delay(retry + 1, u) == min(2.0, 2 * b.delay(retry, u))


@pytest.mark.parametrize("code", list(grpc.StatusCode))
def test_only_unavailable_is_retryable(code):
    delay = next_delay(code, retry=0, retries=3, backoff=QUICK, u=0.5, time_left=10.0)
    assert (delay is not None) == (code == grpc.StatusCode.UNAVAILABLE)
    assert RETRYABLE_CODES == {grpc.StatusCode.UNAVAILABLE}


@given(retry=st.integers(0, 10), retries=st.integers(0, 10), time_left=st.floats(0.0, 1.0))
def test_no_retry_past_the_count_or_the_deadline(retry, retries, time_left):
    delay = next_delay(
        grpc.StatusCode.UNAVAILABLE,
        retry=retry,
        retries=retries,
        backoff=QUICK,
        u=0.5,
        time_left=time_left,
    )
    if retry >= retries or QUICK.delay(retry, 0.5) + MIN_ATTEMPT_SECONDS > time_left:
        assert delay is None
    else:
        assert delay == QUICK.delay(retry, 0.5)


# ------------------------------------------------------------------ against real servers


@pytest.mark.parametrize("retries", [0, 2])
def test_unavailable_is_retried_exactly_retries_times(not_serving, server_calls, retries):
    with (
        XsellClient(
            f"127.0.0.1:{not_serving.port}", retries=retries, timeout=10, backoff=QUICK, seed=1
        ) as client,
        pytest.raises(XsellRpcError) as info,
    ):
        client.recommend(cart=["A"])
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert info.value.attempts == retries + 1
    assert server_calls(not_serving, "Recommend", "UNAVAILABLE") == retries + 1


def test_other_codes_are_not_retried(server, server_calls):
    before = server_calls(server, "Recommend", "INVALID_ARGUMENT")
    with (
        XsellClient(f"127.0.0.1:{server.port}", retries=5, backoff=QUICK) as client,
        pytest.raises(XsellRpcError) as info,
    ):
        client.recommend(cart=["A"], limit=1000)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and info.value.attempts == 1
    assert server_calls(server, "Recommend", "INVALID_ARGUMENT") - before == 1


def test_retries_stop_at_the_deadline(not_serving, server_calls):
    timeout = 0.4
    with XsellClient(
        f"127.0.0.1:{not_serving.port}",
        retries=1000,
        timeout=timeout,
        backoff=Backoff(initial=0.02, maximum=0.05),
    ) as client:
        start = time.monotonic()
        with pytest.raises(XsellRpcError) as info:
            client.model_info()
        elapsed = time.monotonic() - start
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert elapsed < timeout + 0.2, f"took {elapsed:.3f}s for a {timeout}s budget"
    # at least timeout / (max wait + the attempt) attempts fit; far fewer than 1000
    assert 4 <= info.value.attempts < 40
    assert server_calls(not_serving, "GetModelInfo", "UNAVAILABLE") == info.value.attempts


def test_a_server_that_comes_up_late_is_reached_by_retrying(ranker, free_port, caplog):
    """Nothing listens on the port at first; a server starts there 1.3 s later (after
    gRPC's own first reconnect attempt, which comes 0.8-1.2 s after a failure)."""
    from xsell.server.app import create_server

    address = f"127.0.0.1:{free_port}"
    with (
        XsellClient(address, retries=0, timeout=2) as impatient,
        pytest.raises(XsellRpcError) as info,
    ):
        impatient.model_info()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.attempts == 1

    started: list = []
    delay = 1.3

    def start_late() -> None:
        time.sleep(delay)
        srv, _ = create_server(ranker, port=free_port, access_log=False)
        srv.start()
        started.append((srv, time.monotonic()))

    thread = threading.Thread(target=start_late)
    caplog.set_level(logging.DEBUG, logger="xsell.clients")
    with XsellClient(
        address, retries=30, timeout=15, backoff=Backoff(initial=0.05, maximum=0.2), seed=3
    ) as client:
        begin = time.monotonic()
        thread.start()
        try:
            info = client.model_info()
            reached = time.monotonic()
        finally:
            thread.join()
    srv, up_at = started[0]
    try:
        assert info.model_version == ranker.version
        retries = [r for r in caplog.records if "UNAVAILABLE; retry" in r.getMessage()]
        assert len(retries) >= 2, "the client should have retried while the port was closed"
        assert reached >= up_at >= begin + delay
        # reconnect back-off follows ours (<= 0.2 s), not gRPC's default 1 s+
        assert reached - up_at < 0.6, f"reached {reached - up_at:.3f}s after the server came up"
    finally:
        srv.stop(None)
