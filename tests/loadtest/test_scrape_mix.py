"""Request mixes (replayed baskets, synthetic) and the metrics scrape, on real inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from prometheus_client import generate_latest
from xsell.clients.loadtest.mix import (
    SYNTHETIC_SHAPES,
    describe,
    last_days,
    parse_weights,
    read_requests,
    replay_requests,
    synthetic_requests,
    write_requests,
)
from xsell.clients.loadtest.scrape import parse, server_delta
from xsell.server.metrics import ServerMetrics

from xsell.errors import DataError

DAY = 86_400


def test_server_delta_of_two_real_scrapes():
    """ServerMetrics is what the server exports; the delta keeps only the calls in between."""
    m = ServerMetrics()
    m.observe_stages({"retrieval": 0.1, "model": 0.1})  # before the window: must not count
    m.requests.labels("Recommend", "OK").inc()
    before = parse(generate_latest(m.registry).decode())
    retrieval = [0.0003, 0.0007, 0.0015, 0.0015, 0.003]
    for s in retrieval:
        m.observe_stages({"retrieval": s, "model": 0.002, "features": 0.0004, "rules": 0.0001})
    m.latency.labels("Recommend").observe(0.005)
    m.requests.labels("Recommend", "OK").inc(5)
    m.requests.labels("Recommend", "INVALID_ARGUMENT").inc(2)
    after = parse(generate_latest(m.registry).decode())
    d = server_delta(before, after)
    r = d["stages"]["retrieval"]
    assert r["count"] == 5
    assert r["mean_ms"] == pytest.approx(np.mean(retrieval) * 1e3)
    assert 1.0 <= r["p50_ms"] <= 2.0  # the median 1.5 ms lies in the (1, 2] ms bucket
    assert d["stages"]["model"]["count"] == 5 and d["stages"]["model"]["mean_ms"] == pytest.approx(
        2.0
    )
    assert d["handlers"]["Recommend"]["count"] == 1
    assert d["requests"] == {"Recommend": {"INVALID_ARGUMENT": 2, "OK": 5}}


def test_parse_weights():
    assert parse_weights("both=3,up_sell=1") == {"both": 0.75, "up_sell": 0.25}
    assert parse_weights("cross_sell") == {"cross_sell": 1.0}
    for bad in ("both=-1", "everything=1", "both=x", "both=0"):
        with pytest.raises(ValueError):
            parse_weights(bad)


def _baskets(events):
    """basket_id -> (user, set of items) for purchase/cart lines."""
    ev = events[events["event_type"].isin(["purchase", "cart"])]
    return {b: (g["user_id"].iloc[0], set(g["item_id"])) for b, g in ev.groupby("basket_id")}


def test_replay_takes_real_test_period_baskets(dataset):
    events = dataset.events
    reqs = replay_requests(events, n=300, seed=1, cart_size=3, period_days=28)
    recent = last_days(events, 28)
    assert recent["timestamp"].min() > events["timestamp"].max() - 28 * DAY
    baskets = _baskets(recent)
    by_user: dict[str, list[set]] = {}
    for user, items in baskets.values():
        by_user.setdefault(user, []).append(items)
    for r in reqs:
        cart = [line["itemId"] for line in r["cart"]]
        assert len(cart) == 3 == len(set(cart))
        # the cart is 3 items of one real test-period basket of that shopper
        assert any(set(cart) <= items for items in by_user[r["userId"]]), r
        assert r["strategy"] == "STRATEGY_BOTH"
    assert replay_requests(events, n=300, seed=1, cart_size=3) == reqs
    assert replay_requests(events, n=300, seed=2, cart_size=3) != reqs


def test_replay_whole_baskets_and_strategy_mix(dataset):
    reqs = replay_requests(dataset.events, n=2000, seed=0, max_cart=4,
                           strategies={"both": 0.5, "cross_sell": 0.3, "up_sell": 0.2})  # fmt: skip
    sizes = [len(r["cart"]) for r in reqs]
    assert max(sizes) == 4 and min(sizes) >= 1
    shares = {k: sum(r["strategy"] == k for r in reqs) / len(reqs)
              for k in ("STRATEGY_BOTH", "STRATEGY_CROSS_SELL", "STRATEGY_UP_SELL")}  # fmt: skip
    assert shares["STRATEGY_BOTH"] == pytest.approx(0.5, abs=0.05)
    assert shares["STRATEGY_UP_SELL"] == pytest.approx(0.2, abs=0.05)


def test_replay_refuses_impossible_cart_size(dataset):
    with pytest.raises(DataError, match="basket"):
        replay_requests(dataset.events, n=10, seed=0, cart_size=500)


def test_synthetic_mix_shapes_and_vocabulary():
    items = [f"i{k}" for k in range(200)]
    users = [f"u{k}" for k in range(50)]
    pop = np.arange(200, dtype=float)
    reqs = synthetic_requests(items, users, pop, n=4000, seed=5)
    assert reqs == synthetic_requests(items, users, pop, n=4000, seed=5)
    known = set(items)
    unknown = [r for r in reqs if r.get("userId", "").startswith("loadtest-unknown")]
    assert len(unknown) / len(reqs) == pytest.approx(
        {n: s for s, n in SYNTHETIC_SHAPES}["unknown"], abs=0.02
    )
    history_only = [r for r in reqs if "cart" not in r]
    assert len(history_only) / len(reqs) == pytest.approx(0.10, abs=0.02)
    for r in reqs:
        if r in unknown:
            continue
        assert all(line["itemId"] in known for line in r.get("cart", []))
    # popular-weighted: the top half of the items fills clearly more than half the carts
    drawn = [
        int(line["itemId"][1:]) for r in reqs if r not in unknown for line in r.get("cart", [])
    ]
    assert np.mean(np.array(drawn) >= 100) > 0.65


def test_request_file_roundtrip_and_errors(tmp_path, dataset):
    reqs = replay_requests(dataset.events, n=50, seed=0, cart_size=2, limit=5)
    path = write_requests(reqs, tmp_path / "mix.jsonl")
    msgs = read_requests(path)
    assert len(msgs) == 50
    assert [m.user_id for m in msgs] == [r["userId"] for r in reqs]
    assert all(m.limit == 5 and len(m.cart) == 2 for m in msgs)
    assert describe(msgs)["strategies"] == {"STRATEGY_BOTH": 50}
    bad = tmp_path / "bad.jsonl"
    lines = path.read_text().splitlines()
    lines[6] = json.dumps({"cart": [{"itemId": "a", "quantity": "lots"}]})
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        read_requests(bad)
    assert err.value.file == str(bad) and err.value.row == 7
    with pytest.raises(DataError, match="no request"):
        read_requests(write_text(tmp_path / "empty.jsonl", "\n# nothing\n"))


def test_describe_names_a_strategy_newer_than_this_client(tmp_path):
    """An enum number the reader accepts (proto3 keeps unknown values) is described by its
    number, as the proto3 JSON mapping prints it, instead of ending the run in a traceback."""
    path = write_text(tmp_path / "mix.jsonl", '{"strategy": 7}\n{"strategy": "STRATEGY_UP_SELL"}\n')
    assert describe(read_requests(path))["strategies"] == {"7": 1, "STRATEGY_UP_SELL": 1}


def write_text(path, text):
    path.write_text(text)
    return path
