#!/usr/bin/env python3
"""Discover and call an xsell server through gRPC server reflection, without the
.proto files or any generated code.

Needs only `grpcio`, `grpcio-reflection` and `protobuf`; it imports nothing from
xsell, so it can be copied anywhere and pointed at any server that enables
reflection:

    python clients/reflection.py --address 127.0.0.1:50051 list
    python clients/reflection.py --address 127.0.0.1:50051 describe xsell.v1.RecommendService
    python clients/reflection.py --address 127.0.0.1:50051 call \\
        xsell.v1.RecommendService/Recommend '{"user_id": "u1", "cart": [{"item_id": "A"}]}'

`call` takes the request in the proto3 JSON mapping and prints the answer the same
way (field names as in the .proto). How it works: the server's reflection service
sends the FileDescriptorProtos of the service and everything it imports;
`ProtoReflectionDescriptorDatabase` feeds them into a DescriptorPool; message
classes are built from those descriptors at run time.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class _DefaultDeadline(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Gives every call without a deadline `timeout` seconds.

    ProtoReflectionDescriptorDatabase calls ServerReflectionInfo with no deadline and
    has no way to pass one: against a server that accepts the connection but never
    answers, `list` and `describe` (and `call`, which looks the method up first) would
    wait forever."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout

    def _details(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        if d.timeout is not None:
            return d
        return _CallDetails(d.method, self._timeout, d.metadata, d.credentials,
                            getattr(d, "wait_for_ready", None), getattr(d, "compression", None))  # fmt: skip

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


class ReflectionClient:
    """Services, methods and unary calls of a server, all learned from reflection.

    `timeout`: seconds each reflection request may take (None: no deadline)."""

    def __init__(self, channel: grpc.Channel, *, timeout: float | None = 5.0) -> None:
        if timeout is not None:
            channel = grpc.intercept_channel(channel, _DefaultDeadline(timeout))
        self._channel = channel
        self._db = ProtoReflectionDescriptorDatabase(channel)
        self._pool = descriptor_pool.DescriptorPool(self._db)

    def services(self) -> list[str]:
        return sorted(self._db.get_services())

    def describe(self, service: str) -> dict[str, dict[str, str]]:
        """{method: {"input": full type name, "output": full type name}}."""
        desc = self._pool.FindServiceByName(service)
        return {
            m.name: {"input": m.input_type.full_name, "output": m.output_type.full_name}
            for m in desc.methods
        }

    def call(self, method_path: str, request_json: str, *, timeout: float = 5.0) -> dict:
        """Call a unary method "package.Service/Method" with a JSON request."""
        service_name, _, method_name = method_path.rpartition("/")
        if not service_name or not method_name:
            raise ValueError(f"method: expected package.Service/Method, got {method_path!r}")
        method = self._pool.FindServiceByName(service_name).methods_by_name.get(method_name)
        if method is None:
            raise ValueError(f"method: {service_name} has no method {method_name!r}")
        if method.client_streaming or method.server_streaming:
            raise ValueError(f"method: {method_path} is streaming; only unary calls are supported")
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        request = json_format.Parse(request_json or "{}", request_cls())
        rpc = self._channel.unary_unary(
            f"/{service_name}/{method_name}",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        response = rpc(request, timeout=timeout)
        return json_format.MessageToDict(
            response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default="127.0.0.1:50051", help="server HOST:PORT")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds per call, reflection requests included")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the services the server offers")
    d = sub.add_parser("describe", help="list a service's methods and their message types")
    d.add_argument("service", help="e.g. xsell.v1.RecommendService")
    c = sub.add_parser("call", help="call a unary method with a JSON request")
    c.add_argument("method", help="e.g. xsell.v1.RecommendService/Recommend")
    c.add_argument("request", nargs="?", default="{}", help="request as proto3 JSON")
    args = parser.parse_args(argv)

    with grpc.insecure_channel(args.address) as channel:
        client = ReflectionClient(channel, timeout=args.timeout)
        try:
            if args.command == "list":
                print("\n".join(client.services()))
            elif args.command == "describe":
                print(json.dumps(client.describe(args.service), indent=2))
            else:
                answer = client.call(args.method, args.request, timeout=args.timeout)
                print(json.dumps(answer, indent=2))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                print(f"reflection: {args.address}: no answer within --timeout {args.timeout:g} s "
                      f"(DEADLINE_EXCEEDED)", file=sys.stderr)  # fmt: skip
            else:
                print(f"reflection: {args.address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 2
        except (KeyError, ValueError, json_format.ParseError) as exc:
            print(f"reflection: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
