"""Property-based fuzzing of RecommendRequest / RecommendBatchRequest against a real
server over a real socket: every answer is OK or INVALID_ARGUMENT naming the field,
never INTERNAL or UNKNOWN, and the server keeps serving.

The long-running variant is fuzz/fuzz_requests.py (atheris, coverage-guided).
"""

from __future__ import annotations

import math
import re

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xsell.ranking.types import MAX_CART_LINES, MAX_FILTER_IDS, MAX_LIMIT
from xsell.server.convert import MAX_BATCH
from xsell.server.errors import FIELD_METADATA_KEY

from xsell.v1 import xsell_pb2 as pb

from .conftest import good_request, stub_for

# Every field a request can be refused for, as the server names it.
FIELD = re.compile(
    r"^requests$|^(requests\[\d+\]\.)?"
    r"(request|user_id|cart|cart\[\d+\]\.(item_id|quantity)|strategy|limit|cross_sell_limit|up_sell_limit"
    r"|filters\.(exclude_item_ids|allowed_categories|denied_categories|price_min|price_max|uplift_min"
    r"|uplift_max|max_per_category))$"
)
UINT32 = 2**32 - 1
INT32 = st.integers(-(2**31), 2**31 - 1)


def mostly(valid, hostile):
    """`valid` five times in six: each field is hostile alone often enough that both
    answers (OK and INVALID_ARGUMENT) stay common."""
    return st.sampled_from([False] * 5 + [True]).flatmap(lambda bad: hostile if bad else valid)


floats_any = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, -1.0, 1e-300, 1e308, math.inf, -math.inf, math.nan]
)
quantities = mostly(st.sampled_from([0.0, 1.0, 2.5]) | st.floats(0, 1e6), floats_any)
bounds = mostly(st.floats(0, 1e4), floats_any)
limits = mostly(
    st.integers(0, MAX_LIMIT),
    st.sampled_from([MAX_LIMIT + 1, UINT32]) | st.integers(0, UINT32),
)
texts = st.text(max_size=40) | st.sampled_from(
    ["", " ", "\x00", "é" * 3, "🛒", "a/b/c", "\u202e", "x" * 200]
)


@st.composite
def huge_text(draw) -> str:
    """Up to ~1 MB of one character (ascii or multi-byte): under the 4 MiB limit."""
    return draw(st.sampled_from(["x", "é", "🛒"])) * draw(
        st.sampled_from([1_000, 100_000, 250_000])
    )


@st.composite
def item_ids(draw, known: list[str]) -> str:
    return draw(mostly(st.sampled_from(known), texts))


@st.composite
def cart_lines(draw, known: list[str]) -> list[pb.CartLine]:
    lines = draw(
        st.lists(st.builds(pb.CartLine, item_id=item_ids(known), quantity=quantities), max_size=4)
    )
    # thousands of lines cost little to build this way and cross MAX_CART_LINES
    extra = draw(
        mostly(st.just(0), st.sampled_from([MAX_CART_LINES - len(lines), MAX_CART_LINES + 1, 3000]))
    )
    if extra > 0:
        lines += [pb.CartLine(item_id=known[k % len(known)]) for k in range(extra)]
    return lines


@st.composite
def filters(draw, known: list[str]) -> pb.Filters:
    f = pb.Filters(
        exclude_item_ids=draw(st.lists(item_ids(known), max_size=5)),
        allowed_categories=draw(st.lists(texts, max_size=3)),
        denied_categories=draw(st.lists(texts, max_size=3)),
        exclude_purchased=draw(st.booleans()),
        max_per_category=draw(limits),
    )
    for name in ("price_min", "price_max", "uplift_min", "uplift_max"):
        if draw(st.integers(0, 3)) == 0:
            setattr(f, name, draw(bounds))
    big = draw(mostly(st.just(0), st.sampled_from([MAX_FILTER_IDS, MAX_FILTER_IDS + 1])))
    if big:
        getattr(
            f,
            draw(st.sampled_from(["exclude_item_ids", "allowed_categories", "denied_categories"])),
        ).extend(f"id-{k}" for k in range(big))
    return f


@st.composite
def requests(draw, known: list[str], users: list[str]) -> pb.RecommendRequest:
    return pb.RecommendRequest(
        user_id=draw(mostly(st.sampled_from(users) | texts, huge_text())),
        cart=draw(cart_lines(known)),
        strategy=draw(mostly(st.sampled_from([0, 1, 2, 3]), INT32)),  # proto3 enums are open
        limit=draw(limits),
        cross_sell_limit=draw(limits),
        up_sell_limit=draw(limits),
        filters=draw(filters(known)),
        explain=draw(st.booleans()),
        variant=draw(texts),
        request_id=draw(mostly(texts, huge_text())),
    )


@pytest.fixture(scope="module")
def fuzz_server(ranker, bundle_root):
    from xsell.server.app import create_server

    srv, port = create_server(ranker, bundle_root=bundle_root, access_log=False, threads=2)
    srv.start()
    channel, stub = stub_for(port)
    yield srv, stub
    channel.close()
    srv.stop(None)


@pytest.fixture(scope="module")
def ids(known_items, known_users):
    return known_items[:50], known_users[:50]


def check_answer(call, request) -> str:
    """Run `call(request)`: OK, or INVALID_ARGUMENT naming a real field; returns the code name."""
    try:
        call(request, timeout=30)
        return "OK"
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
        assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{code.name}: {details[:300]}"
        field = dict(exc.trailing_metadata() or ()).get(FIELD_METADATA_KEY, "")
        assert FIELD.match(field), field
        assert details.startswith(f"{field}: "), details[:300]
        return f"INVALID_ARGUMENT {field}"


SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples every run (the fuzz/ script explores freely)
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


def test_any_request_gets_ok_or_a_named_invalid_argument(fuzz_server, ids, known_items):
    srv, stub = fuzz_server
    known, users = ids
    seen: dict[str, int] = {}

    @SETTINGS
    @given(request=requests(known, users))
    def run(request):
        outcome = check_answer(stub.Recommend, request)
        seen[outcome.split("[")[0]] = seen.get(outcome.split("[")[0], 0) + 1

    run()
    # Both sides of the contract were exercised, not only refusals.
    assert seen.get("OK", 0) >= 10 and sum(v for k, v in seen.items() if k != "OK") >= 10, seen
    assert stub.Recommend(good_request(known_items), timeout=10).cross_sell
    assert (
        srv.metrics.sample("xsell_requests_total", {"method": "Recommend", "code": "INTERNAL"}) == 0
    )


def test_any_batch_gets_ok_or_a_named_invalid_argument(fuzz_server, ids, known_items):
    srv, stub = fuzz_server
    known, users = ids

    @settings(SETTINGS, max_examples=40)
    @given(
        batch=st.lists(requests(known, users), max_size=3),
        pad=st.sampled_from([0, 0, MAX_BATCH - 3, MAX_BATCH + 1]),
    )
    def run(batch, pad):
        msg = pb.RecommendBatchRequest(
            requests=batch + [good_request(known, k) for k in range(pad)]
        )
        outcome = check_answer(stub.RecommendBatch, msg)
        if len(msg.requests) > MAX_BATCH:
            assert outcome == "INVALID_ARGUMENT requests"

    run()
    assert stub.Recommend(good_request(known_items), timeout=10).cross_sell
    assert (
        srv.metrics.sample("xsell_requests_total", {"method": "RecommendBatch", "code": "INTERNAL"})
        == 0
    )


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0])
@pytest.mark.parametrize("name", ["price_min", "price_max", "uplift_min", "uplift_max"])
def test_non_finite_or_negative_filter_bounds_name_the_field(fuzz_server, known_items, name, value):
    _srv, stub = fuzz_server
    request = good_request(known_items)
    setattr(request.filters, name, value)
    assert check_answer(stub.Recommend, request) == f"INVALID_ARGUMENT filters.{name}"


def test_unknown_strategy_numbers_name_the_field(fuzz_server, known_items):
    _srv, stub = fuzz_server
    for number in (4, 99, -1, 2**31 - 1, -(2**31)):
        request = good_request(known_items)
        request.strategy = number
        assert request.strategy == number  # the Python runtime keeps unknown numbers
        assert check_answer(stub.Recommend, request) == "INVALID_ARGUMENT strategy"
