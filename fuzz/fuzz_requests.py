"""Fuzz the request path for N minutes: bytes -> RecommendRequest -> validation -> ranking
-> response, in process (`--target core`, thousands of inputs a second, coverage-guided
under atheris), or the same bytes sent raw to a real gRPC server on 127.0.0.1
(`--target grpc`, slower, covers the server's deserialiser, interceptors and mapping).

Half the inputs are decoded as protobuf bytes as they are; the other half drive a
structured builder (atheris.FuzzedDataProvider style) that puts fuzzed strings,
floats (NaN, inf, negatives), enum numbers and list sizes into the fields, so the
validation and ranking code is reached, not only the protobuf parser.

Allowed outcomes: a response, a DecodeError / InvalidRequest (core), or the statuses OK /
INVALID_ARGUMENT naming a field (grpc). Everything else is a finding.

    python fuzz/fuzz_requests.py --minutes 10 [--target core|grpc] [--bundle DIR] [--out fuzz-out]

Without --bundle a small bundle is trained once on generated data into
`<out>/bundle` (about 15 s).
"""

from __future__ import annotations

import math
import re
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Expected, Run, env_quiet, fuzz, parse_args

FIELD = re.compile(
    r"^(request|user_id|cart|cart\[\d+\]\.(item_id|quantity)|strategy|limit|cross_sell_limit|up_sell_limit"
    r"|filters\.(exclude_item_ids|allowed_categories|denied_categories|price_min|price_max|uplift_min"
    r"|uplift_max|max_per_category))$"
)
SPECIAL_FLOATS = [0.0, -0.0, 1.0, -1.0, math.nan, math.inf, -math.inf, 1e308, 5e-324, 2.5, 100.0]


def ensure_bundle(out: Path, given: str | None) -> Path:
    if given:
        return Path(given)
    bundle = out / "bundle"
    if (bundle / "manifest.json").is_file():
        return bundle
    from xsell.ranking.model import ModelConfig
    from xsell.ranking.train import TrainConfig, train_bundle
    from xsell.retrieval.artifacts import RetrievalConfig

    from xsell.data.loaders import load_dataset
    from xsell.data.synthetic import generate

    data = out / "data"
    generate(data, n_users=600, n_items=300, n_categories=20, days=60, seed=7, fmt="csv")
    ds = load_dataset(data / "events.csv", data / "catalog.csv", data / "users.csv")
    cfg = TrainConfig(max_queries=600, seed=0, retrieval=RetrievalConfig(factors=32, iterations=8),
                      model=ModelConfig(max_rounds=60, early_stopping_rounds=15, learning_rate=0.15, threads=1))  # fmt: skip
    return train_bundle(ds, bundle, cfg, log=lambda *_: None)


class Provider:
    """A tiny FuzzedDataProvider: consumes the input bytes to build field values."""

    def __init__(self, data: bytes, items: list[str]) -> None:
        self.data, self.pos, self.items = data, 0, items

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def uint(self, nbytes: int) -> int:
        return int.from_bytes(bytes(self.byte() for _ in range(nbytes)), "little")

    def text(self) -> str:
        kind = self.byte() % 6
        if kind == 0:
            return ""
        if kind <= 2 and self.items:
            return self.items[self.uint(2) % len(self.items)]
        n = self.byte()
        raw = bytes(self.byte() for _ in range(n))
        if kind == 5:  # huge
            return raw.decode("utf-8", "replace") * (1 + self.uint(2) % 2000)
        return raw.decode("utf-8", "replace")

    def number(self) -> float:
        if self.byte() % 2:
            return SPECIAL_FLOATS[self.byte() % len(SPECIAL_FLOATS)]
        return struct.unpack("<d", bytes(self.byte() for _ in range(8)))[0]

    def size(self, cap: int) -> int:
        k = self.byte()
        return {250: 101, 251: 1001, 252: 3000, 253: 100, 254: 1000}.get(k, k % cap)


def structured(data: bytes, items: list[str]):
    from xsell.v1 import xsell_pb2 as pb

    p = Provider(data, items)
    req = pb.RecommendRequest(
        user_id=p.text(), variant=p.text(), request_id=p.text(), explain=bool(p.byte() % 2)
    )
    for _ in range(p.size(6)):
        req.cart.add(item_id=p.text(), quantity=p.number() if p.byte() % 3 == 0 else 0.0)
    # zero bytes (short inputs) give valid values; other bytes reach the edges
    req.strategy = (
        [0, 1, 2, 3, 4, -1, 2**31 - 1][p.byte() % 7] if p.byte() % 4 != 3 else p.uint(4) - 2**31
    )
    for name in ("limit", "cross_sell_limit", "up_sell_limit"):
        setattr(
            req,
            name,
            [0, 1, 10, 100, 101, 2**32 - 1][p.byte() % 6] if p.byte() % 4 != 3 else p.uint(4),
        )
    f = req.filters
    for name in ("exclude_item_ids", "allowed_categories", "denied_categories"):
        n = p.size(4)
        getattr(f, name).extend(p.text() if k < 8 else f"x{k}" for k in range(n))
    for name in ("price_min", "price_max", "uplift_min", "uplift_max"):
        if p.byte() % 3 == 0:
            setattr(f, name, p.number())
    f.exclude_purchased = bool(p.byte() % 2)
    f.max_per_category = p.uint(1) if p.byte() % 2 else p.uint(4)
    return req


def core_target(bundle: Path):
    from google.protobuf.message import DecodeError
    from xsell.ranking.ranker import Ranker
    from xsell.server import convert

    from xsell.errors import InvalidRequest
    from xsell.v1 import xsell_pb2 as pb

    ranker = Ranker.load(bundle)
    items = list(map(str, ranker.arts.items.ids[:50]))

    def target(data: bytes) -> str:
        if data[:1] == b"\x00":
            try:
                msg = pb.RecommendRequest.FromString(data[1:])
            except DecodeError:
                raise Expected("decode error") from None
        else:
            msg = structured(data[1:], items)
        try:
            request = convert.request_from_pb(msg)
        except InvalidRequest as exc:
            if not FIELD.match(exc.field):
                raise AssertionError(
                    f"InvalidRequest names an unknown field {exc.field!r}"
                ) from exc
            raise Expected(f"invalid {exc.field.split('[')[0]}") from None
        result = ranker.rank(request)
        n_cross, n_up = request.limits()
        if len(result.cross_sell) > n_cross or len(result.up_sell) > n_up:
            raise AssertionError(
                f"more items than asked: {len(result.cross_sell)}/{n_cross}, {len(result.up_sell)}/{n_up}"
            )
        returned = {i.item_id for i in result.cross_sell} | {i.item_id for i in result.up_sell}
        if returned & set(request.filters.exclude_item_ids):
            raise AssertionError("an excluded item was returned")
        convert.response_to_pb(
            result, request_id=msg.request_id, variant=msg.variant
        ).SerializeToString()
        return "ok fallback" if result.fallback else "ok"

    return target, items


def grpc_target(bundle: Path):
    import grpc
    from xsell.ranking.ranker import Ranker
    from xsell.server.app import create_server
    from xsell.server.errors import FIELD_METADATA_KEY

    ranker = Ranker.load(bundle)
    items = list(map(str, ranker.arts.items.ids[:50]))
    server, port = create_server(ranker, access_log=False)
    server.start()
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
    )
    call = channel.unary_unary("/xsell.v1.RecommendService/Recommend")

    def target(data: bytes) -> str:
        payload = (
            data[1:] if data[:1] == b"\x00" else structured(data[1:], items).SerializeToString()
        )
        try:
            call(payload, timeout=30)
            return "OK"
        except grpc.RpcError as exc:
            code = exc.code()
            field = dict(exc.trailing_metadata() or ()).get(FIELD_METADATA_KEY, "")
            if code == grpc.StatusCode.INVALID_ARGUMENT and FIELD.match(field):
                raise Expected(f"INVALID_ARGUMENT {field.split('[')[0]}") from None
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED and len(payload) > 4 * 1024 * 1024:
                raise Expected("RESOURCE_EXHAUSTED (too large)") from None
            raise AssertionError(f"{code.name}: {exc.details()}") from None

    target.server = server  # keep it referenced: a collected grpc.Server stops serving
    return target, items


def seeds(items: list[str]) -> list[bytes]:
    from xsell.v1 import xsell_pb2 as pb

    valid = [
        pb.RecommendRequest(cart=[pb.CartLine(item_id=items[0])], limit=5),
        pb.RecommendRequest(user_id="u00001", strategy=2, limit=10, explain=True),
        pb.RecommendRequest(cart=[pb.CartLine(item_id=i, quantity=2) for i in items[:5]],
                            filters=pb.Filters(price_min=1, price_max=100, exclude_item_ids=items[5:9],
                                               max_per_category=2)),
    ]  # fmt: skip
    out = [b"\x00" + m.SerializeToString() for m in valid]
    out += [b"\x01" + bytes(range(k, k + 64)) for k in (0, 64, 128)]
    return out


def main() -> int:
    args = parse_args(__doc__, lambda p: (p.add_argument("--target", choices=["core", "grpc"], default="core"),
                                          p.add_argument("--bundle", default=None)))  # fmt: skip
    env_quiet()
    args.out.mkdir(parents=True, exist_ok=True)
    bundle = ensure_bundle(args.out, args.bundle)
    target, items = (core_target if args.target == "core" else grpc_target)(bundle)
    run = Run(f"requests-{args.target}", args.out, args.minutes, args.seed)
    fuzz(run, target, seeds(items), args.engine)
    return 1 if run.findings else 0


if __name__ == "__main__":
    sys.exit(main())
