"""clients/reflection.py discovers and calls the service with no .proto and no xsell code.

The script runs in a fresh interpreter where importing `xsell` is made impossible, so
every type it uses must have come from the server's reflection service.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from xsell.clients import XsellClient

SCRIPT = Path(__file__).resolve().parents[2] / "clients" / "reflection.py"
# sys.modules[name] = None makes `import name` raise ImportError
BLOCKED = (
    "import runpy, sys; sys.modules['xsell'] = None; sys.modules['xsell.v1'] = None; "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def reflect(address: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKED, str(SCRIPT), "--address", address, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_lists_and_describes_the_services(address):
    listed = reflect(address, "list")
    assert listed.returncode == 0, listed.stderr
    services = listed.stdout.split()
    assert {"xsell.v1.RecommendService", "grpc.health.v1.Health"} <= set(services)
    described = reflect(address, "describe", "xsell.v1.RecommendService")
    assert described.returncode == 0, described.stderr
    assert json.loads(described.stdout)["Recommend"] == {
        "input": "xsell.v1.RecommendRequest",
        "output": "xsell.v1.RecommendResponse",
    }
    assert set(json.loads(described.stdout)) == {
        "Recommend",
        "RecommendBatch",
        "GetModelInfo",
        "ReloadModel",
    }


def test_calls_recommend_like_the_client(address, shop):
    cart = shop.by_popularity[:2]
    request = {
        "cart": [{"item_id": i} for i in cart],
        "strategy": "STRATEGY_CROSS_SELL",
        "limit": 4,
    }
    proc = reflect(address, "call", "xsell.v1.RecommendService/Recommend", json.dumps(request))
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    with XsellClient(address, timeout=10) as client:
        expected = client.recommend(cart=cart, strategy="cross_sell", limit=4)
    assert [i["item_id"] for i in answer["cross_sell"]] == [i.item_id for i in expected.cross_sell]
    assert [i["score"] for i in answer["cross_sell"]] == [i.score for i in expected.cross_sell]
    assert answer["model_version"] == expected.model_version


def test_server_errors_are_reported(address):
    proc = reflect(
        address,
        "call",
        "xsell.v1.RecommendService/Recommend",
        '{"cart": [{"item_id": "A"}], "limit": 500}',
    )
    assert proc.returncode == 2
    assert "INVALID_ARGUMENT: limit: must be between 1 and 100" in proc.stderr
