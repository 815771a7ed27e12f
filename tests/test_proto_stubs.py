"""The installed Python stubs are what tools/gen_protos.py makes from protos/ today."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import xsell.v1

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_are_not_stale(tmp_path):
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "tools" / "gen_protos.py")
    gen = importlib.util.module_from_spec(spec)
    sys.modules["gen_protos"] = gen
    spec.loader.exec_module(gen)
    fresh = gen.generate(tmp_path)
    installed = Path(xsell.v1.__file__).parent
    assert fresh, "no .proto files found"
    for path in fresh:
        assert (installed / path.name).is_file(), f"{path.name} missing: reinstall (pip install -e .)"
    # Compare what the stubs encode (the serialized descriptor), not their text: the
    # text also carries the generator's version, which may differ between the
    # isolated build environment and this one.
    from xsell.v1 import xsell_pb2

    fresh_pb2 = next(p for p in fresh if p.name == "xsell_pb2.py")
    assert _serialized_descriptor(fresh_pb2) == xsell_pb2.DESCRIPTOR.serialized_pb, (
        "xsell_pb2.py is stale: protos/ changed since it was generated; "
        "run `python tools/gen_protos.py` or reinstall"
    )


def _serialized_descriptor(pb2_source: Path) -> bytes:
    """The bytes passed to AddSerializedFile(...) in a generated *_pb2.py."""
    for node in ast.walk(ast.parse(pb2_source.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            return ast.literal_eval(node.args[0])
    raise AssertionError(f"no AddSerializedFile call in {pb2_source}")


def test_stubs_expose_the_contract():
    from xsell.v1 import xsell_pb2, xsell_pb2_grpc

    assert xsell_pb2.DESCRIPTOR.package == "xsell.v1"
    assert hasattr(xsell_pb2_grpc, "RecommendServiceStub")
    names = {m.name for m in xsell_pb2.DESCRIPTOR.services_by_name["RecommendService"].methods}
    assert names == {"Recommend", "RecommendBatch", "GetModelInfo", "ReloadModel"}
