"""Bytes that are not a valid request, at three levels: a gRPC call whose payload is not
a protobuf message, malformed HTTP/2 / gRPC framing written straight to the socket,
and oversized messages. The server answers or drops the connection, stays up, and
serves the next good request."""

from __future__ import annotations

import random
import socket
import time

import grpc
import pytest
from xsell.server.app import MAX_RECEIVE_BYTES
from xsell.server.errors import FIELD_METADATA_KEY

from xsell.v1 import xsell_pb2 as pb

from .conftest import good_request, stub_for

METHODS = ("Recommend", "RecommendBatch", "GetModelInfo", "ReloadModel")


def raw_call(channel: grpc.Channel, method: str):
    """A unary call that sends the given bytes as they are (no serializer)."""
    return channel.unary_unary(f"/xsell.v1.RecommendService/{method}")


def outcome(call, payload: bytes) -> tuple[grpc.StatusCode, str, str]:
    try:
        call(payload, timeout=10)
        return grpc.StatusCode.OK, "", ""
    except grpc.RpcError as exc:
        return (
            exc.code(),
            exc.details() or "",
            dict(exc.trailing_metadata() or ()).get(FIELD_METADATA_KEY, ""),
        )


def corrupt_payloads(seed: int = 0, n: int = 150) -> list[bytes]:
    """Hand-made broken encodings plus seeded random and mutated bytes."""
    valid = pb.RecommendRequest(
        user_id="u1", cart=[pb.CartLine(item_id="i1", quantity=2.0)], limit=5,
        filters=pb.Filters(price_min=1.0, exclude_item_ids=["x"]),
    ).SerializeToString()  # fmt: skip
    rng = random.Random(seed)
    out = [
        valid[:-1],
        valid[:1],
        valid[:3],  # truncated inside a field
        b"\x0a\x05\xff\xfe\xfd\xfc\xfb",  # user_id that is not UTF-8
        b"\x0a\xff\xff\xff\xff\x0f",  # user_id claiming a 4 GB length
        b"\x20\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # limit: an 11-byte varint
        b"\x0b",  # start group, never ended
        b"\x0f\x00",  # wire type 7 does not exist
        b"\x00\x00",  # field number 0
        b"\x12\x03\x0a\x01",  # cart line longer than what follows
    ]
    for _ in range(n):
        if rng.random() < 0.5:
            out.append(rng.randbytes(rng.randint(1, 300)))
        else:
            b = bytearray(valid)
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            out.append(bytes(b[: rng.randint(1, len(b))]))
    return out


def test_payloads_that_are_not_protobuf_get_invalid_argument(server, known_items):
    channel, stub = stub_for(server.port)
    counts: dict[str, int] = {}
    with channel:
        for method in METHODS:
            call = raw_call(channel, method)
            for payload in corrupt_payloads(seed=len(method)):
                code, details, field = outcome(call, payload)
                # Some random bytes are a valid message (unknown fields are skipped) that
                # then fails or passes validation; a decode failure names `request`.
                assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                                grpc.StatusCode.FAILED_PRECONDITION), (method, payload, code, details)  # fmt: skip
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    assert details.startswith(f"{field}: ")
                counts[field] = counts.get(field, 0) + 1
        assert stub.Recommend(good_request(known_items), timeout=10).cross_sell
    assert counts.get("request", 0) >= 100, counts  # most garbage fails to decode, and says so
    for method in METHODS:
        assert (
            server.metrics.sample("xsell_requests_total", {"method": method, "code": "INTERNAL"})
            == 0
        )


def test_oversized_messages_are_refused_and_the_server_stays_up(server, known_items):
    channel, stub = stub_for(server.port, **{"grpc.max_send_message_length": 64 << 20})
    with channel:
        huge = pb.RecommendRequest(
            user_id="x" * (MAX_RECEIVE_BYTES + 1), cart=[pb.CartLine(item_id="a")]
        )
        for send in (lambda: stub.Recommend(huge, timeout=20),
                     lambda: raw_call(channel, "Recommend")(b"\x00" * (8 << 20), timeout=20)):  # fmt: skip
            with pytest.raises(grpc.RpcError) as info:
                send()
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "larger than max" in info.value.details()
        # just under the limit is parsed and validated as usual
        fits = pb.RecommendRequest(
            user_id="x" * (MAX_RECEIVE_BYTES - 1000), cart=[pb.CartLine(item_id="a")]
        )
        assert stub.Recommend(fits, timeout=20).fallback
        assert stub.Recommend(good_request(known_items), timeout=10).cross_sell


# ------------------------------------------------------------------ raw HTTP/2

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


def hpack_literal(name: bytes, value: bytes) -> bytes:
    """Literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2)."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def grpc_headers(stream: int, path: bytes = b"/xsell.v1.RecommendService/Recommend") -> bytes:
    block = b"".join(
        hpack_literal(n, v)
        for n, v in ((b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
                     (b":authority", b"127.0.0.1"), (b"content-type", b"application/grpc"), (b"te", b"trailers"))
    )  # fmt: skip
    return h2_frame(0x1, 0x4, stream, block)  # HEADERS, END_HEADERS


def exchange(port: int, data: bytes, *, read_for: float = 0.5, until=None) -> bytes:
    """Write `data` on a fresh TCP connection and read whatever comes back for `read_for`
    seconds, or until the connection closes or `until(bytes so far)` holds."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        sock.settimeout(0.2)
        deadline = time.monotonic() + read_for
        while time.monotonic() < deadline and not (until and until(got)):
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
    return got


def frame_types(data: bytes) -> list[int]:
    """Types of the HTTP/2 frames in a server's byte stream (best effort)."""
    types, i = [], 0
    while i + 9 <= len(data):
        length = int.from_bytes(data[i : i + 3], "big")
        types.append(data[i + 3])
        i += 9 + length
    return types


def test_malformed_framing_on_the_socket(server, known_items):
    settings = h2_frame(0x4, 0, 0, b"")
    good = pb.RecommendRequest(cart=[pb.CartLine(item_id=known_items[0])]).SerializeToString()
    rng = random.Random(7)
    cases = {
        "random bytes": rng.randbytes(4096),
        "http/1.1": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "half a preface": PREFACE[:10],
        "preface then garbage frames": PREFACE + rng.randbytes(2048),
        "frame longer than sent": PREFACE + settings + h2_frame(0x0, 0, 1, b"x" * 10)[:-5] + b"\xff" * 3,
        # gRPC length prefix says 1000 bytes, 10 arrive, then END_STREAM
        "truncated grpc message": PREFACE + settings + grpc_headers(1)
        + h2_frame(0x0, 0x1, 1, b"\x00" + (1000).to_bytes(4, "big") + good[:10]),
        # compressed flag without a negotiated encoding
        "compressed flag": PREFACE + settings + grpc_headers(1)
        + h2_frame(0x0, 0x1, 1, b"\x01" + len(good).to_bytes(4, "big") + good),
        # a 4 GB message announced
        "4 GB length prefix": PREFACE + settings + grpc_headers(1)
        + h2_frame(0x0, 0x1, 1, b"\x00\xff\xff\xff\xff" + good),
        "data on stream 0": PREFACE + settings + h2_frame(0x0, 0x1, 0, b"\x00\x00\x00\x00\x00"),
        "unknown method": PREFACE + settings + grpc_headers(1, b"/nope/Nope") + h2_frame(0x0, 0x1, 1, b"\x00" * 5),
    }  # fmt: skip
    # Well-framed bad gRPC calls are answered on their stream (HEADERS carrying the status,
    # or RST_STREAM); broken framing just gets the connection closed.
    well_framed = ("truncated grpc message", "compressed flag", "4 GB length prefix", "unknown method")
    answered = {}
    for name, data in cases.items():
        if name in well_framed:
            # Wait for the answer itself (a loaded CI host once took over 0.5 s to send it).
            got = exchange(server.port, data, read_for=10,
                           until=lambda b: bool({0x1, 0x3} & set(frame_types(b))))  # fmt: skip
        else:
            got = exchange(server.port, data)
        answered[name] = frame_types(got)
    for name in well_framed:
        assert {0x1, 0x3} & set(answered[name]), (name, answered[name])
    # Many half-open connections do not block anyone.
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(50)]
    try:
        for sock in idle:
            sock.sendall(PREFACE[:5])
        channel, stub = stub_for(server.port)
        with channel:
            for k in range(3):
                assert stub.Recommend(good_request(known_items, k), timeout=5).cross_sell
    finally:
        for sock in idle:
            sock.close()
