"""benchmarks/canned_serve.py, the ranking-free server behind `bench_load.py --canned`:
its figure (the ceiling of a Recommend call) means something only if every worker
really answers from the canned result, and still refuses bad requests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from xsell.ranking.types import CartLine, RankRequest, Strategy
from xsell.server.service import WORKER_METADATA_KEY

from tests.conftest import READY
from xsell.v1 import xsell_pb2 as pb
from xsell.v1 import xsell_pb2_grpc as pb_grpc

CANNED = Path(__file__).resolve().parents[2] / "benchmarks" / "canned_serve.py"


@pytest.fixture
def canned_server(bundle_dir, tmp_path):
    log = tmp_path / "canned.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(CANNED), "serve", "--bundle", str(bundle_dir), "--port", "0",
             "--workers", "2", "--no-access-log"],
            stdout=subprocess.PIPE, stderr=err, start_new_session=True,
        )  # fmt: skip
    assert proc.stdout is not None
    match = READY.search(proc.stdout.readline().decode())
    try:
        assert match, log.read_text(errors="replace")[-3000:]
        yield f"127.0.0.1:{match['port']}"
    finally:
        proc.terminate()
        proc.wait(30)


def test_every_worker_answers_from_the_canned_result(canned_server, ranker, facts):
    carts = [(facts.items_by_popularity[k],) for k in range(0, 40, 4)]  # ten different carts
    real = {
        tuple(i.item_id for i in ranker.rank(RankRequest(cart=(CartLine(c[0]),), strategy=Strategy.CROSS_SELL)).cross_sell)
        for c in carts
    }
    assert len(real) > 1  # the real ranker tells these carts apart
    # 16 connections: SO_REUSEPORT puts all of them on one of the 2 workers once in 32,768
    channels = [grpc.insecure_channel(canned_server, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(16)]  # fmt: skip
    try:
        stubs = [pb_grpc.RecommendServiceStub(c) for c in channels]
        workers = set()
        for stub in stubs:  # which worker each connection reached
            _, call = stub.GetModelInfo.with_call(pb.GetModelInfoRequest(), timeout=30)
            workers.update(v for key, v in call.trailing_metadata() if key == WORKER_METADATA_KEY)
        assert len(workers) == 2
        answers = set()
        for stub in stubs:
            for cart in carts:
                request = pb.RecommendRequest(cart=[pb.CartLine(item_id=cart[0])], strategy=pb.STRATEGY_CROSS_SELL)
                answers.add(tuple(item.item_id for item in stub.Recommend(request, timeout=30).cross_sell))
        assert len(answers) == 1 and len(next(iter(answers))) > 0
        bad = pb.RecommendRequest(cart=[pb.CartLine(item_id="")])
        with pytest.raises(grpc.RpcError) as refused:
            stubs[0].Recommend(bad, timeout=30)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "cart[0].item_id" in refused.value.details()
    finally:
        for c in channels:
            c.close()
