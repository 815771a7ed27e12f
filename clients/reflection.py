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

Security takes the flags of `xsell recommend`, checked the same way before any call:
`--tls-ca CA.pem` (TLS; `--tls` alone: the system's roots), `--tls-cert`/`--tls-key`
(mutual TLS), `--tls-server-name NAME`, and `--token TOKEN` (default $XSELL_TOKEN),
sent as `authorization: Bearer TOKEN` with every request, reflection's included:

    XSELL_TOKEN=... python clients/reflection.py --address 10.0.0.7:50051 \\
        --tls-ca ca.pem --tls-cert client.pem --tls-key client.key list

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
import os
import re
import ssl
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


class _CallDefaults(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Gives every call without a deadline `timeout` seconds (None: none), and adds
    `metadata` (the token) to every call.

    ProtoReflectionDescriptorDatabase calls ServerReflectionInfo with no deadline and no
    metadata, and has no way to pass either: against a server that accepts the
    connection but never answers, `list` and `describe` (and `call`, which looks the
    method up first) would wait forever; against one with token auth they would be
    refused (UNAUTHENTICATED)."""

    def __init__(self, timeout: float | None, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._timeout = timeout
        self._metadata = metadata

    def _details(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        timeout = d.timeout if d.timeout is not None else self._timeout
        metadata = (*(d.metadata or ()), *self._metadata) if self._metadata else d.metadata
        return _CallDetails(d.method, timeout, metadata, d.credentials,
                            getattr(d, "wait_for_ready", None), getattr(d, "compression", None))  # fmt: skip

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


def bearer_metadata(token: str | None, name: str = "token") -> tuple[tuple[str, str], ...]:
    """`authorization: Bearer <token>` as the xsell clients send it (clients/client.py
    call_metadata); no token, no metadata. `name`: how an error names the token."""
    if not token:
        return ()
    token = token.strip()
    if not token.isprintable() or not token.isascii() or " " in token:
        raise ValueError(f"{name}: must be printable ASCII without spaces")
    return (("authorization", f"Bearer {token}"),)


def _read_pem(flag: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError(f"{flag}: cannot read {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:  # gRPC would fail only at the handshake, naming no file
        raise ValueError(f"{flag}: {path} is not a PEM file")
    return data


def channel_security(args: argparse.Namespace) -> tuple[grpc.ChannelCredentials | None, list]:
    """(credentials, channel options) from the --tls* flags; None = plaintext. Checked
    as `xsell recommend` checks them (clients/cli.py tls_from_args), in the same words:
    a bad file or a flag that would be ignored fails before any call, naming the flag.
    A copy, so that the script stays standalone; tests/clients/test_reflection.py checks
    that both say the same."""
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key):
        if args.tls_server_name:  # a plaintext channel verifies no name
            raise ValueError("--tls-server-name needs TLS (--tls-ca, --tls-cert or --tls)")
        return None, []
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together (mutual TLS needs both)")
    ca = _read_pem("--tls-ca", args.tls_ca) if args.tls_ca else None
    cert = _read_pem("--tls-cert", args.tls_cert) if args.tls_cert else None
    key = _read_pem("--tls-key", args.tls_key) if args.tls_key else None
    # The standard library's OpenSSL parses the files as gRPC will (no connection made).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if args.tls_ca:
        try:
            context.load_verify_locations(cafile=args.tls_ca)
        except ssl.SSLError:
            raise ValueError(f"--tls-ca: no certificate in {args.tls_ca}") from None
    if args.tls_cert:
        try:  # the password callback: an encrypted key fails instead of prompting
            context.load_cert_chain(args.tls_cert, args.tls_key, password=lambda: b"")
        except ssl.SSLError as exc:
            reason = re.sub(r"^\[[^\]]*\]\s*|\s*\(_ssl\.c:\d+\)$", "",
                            str(exc.args[1] if len(exc.args) > 1 else exc))  # fmt: skip
            raise ValueError(f"--tls-cert {args.tls_cert} / --tls-key {args.tls_key}: not a certificate "
                             f"and its private key ({reason})") from None  # fmt: skip
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )
    # the name checked in the server's certificate (and sent as SNI) when it is not the
    # address's host, e.g. when dialling an IP
    options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
    return credentials, options


class ReflectionClient:
    """Services, methods and unary calls of a server, all learned from reflection.

    `timeout`: seconds each reflection request may take (None: no deadline). `token`:
    bearer token sent with every request (a server with token auth refuses reflection
    without one). TLS is the channel's business: pass a `grpc.secure_channel`."""

    def __init__(
        self, channel: grpc.Channel, *, timeout: float | None = 5.0, token: str | None = None
    ) -> None:
        metadata = bearer_metadata(token)
        if timeout is not None or metadata:
            channel = grpc.intercept_channel(channel, _CallDefaults(timeout, metadata))
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
    # the security flags of `xsell recommend` (clients/cli.py add_security_arguments)
    t = parser.add_argument_group("security")
    t.add_argument("--tls-ca", default=None, help="CA certificate (PEM); turns TLS on")
    t.add_argument("--tls-cert", default=None, help="client certificate (PEM) for mTLS; turns TLS on")
    t.add_argument("--tls-key", default=None, help="client private key (PEM) for mTLS")
    t.add_argument("--tls-server-name", default=None, help="name to verify in the server certificate")
    t.add_argument("--tls", action="store_true", help="TLS with the system's CA roots")
    t.add_argument("--token", default=os.environ.get("XSELL_TOKEN") or None,
                   help="bearer token (default $XSELL_TOKEN)")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the services the server offers")
    d = sub.add_parser("describe", help="list a service's methods and their message types")
    d.add_argument("service", help="e.g. xsell.v1.RecommendService")
    c = sub.add_parser("call", help="call a unary method with a JSON request")
    c.add_argument("method", help="e.g. xsell.v1.RecommendService/Recommend")
    c.add_argument("request", nargs="?", default="{}", help="request as proto3 JSON")
    args = parser.parse_args(argv)

    try:  # every flag is checked before any connection
        credentials, options = channel_security(args)
        bearer_metadata(args.token, "--token")
    except ValueError as exc:
        print(f"reflection: {exc}", file=sys.stderr)
        return 2
    if credentials is None:
        channel = grpc.insecure_channel(args.address)
    else:
        channel = grpc.secure_channel(args.address, credentials, options=options)
    with channel:
        client = ReflectionClient(channel, timeout=args.timeout, token=args.token)
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
                print(f"reflection: {args.address}: {exc.code().name}: {exc.details()}"
                      f"{_hint(exc.code(), args, credentials is not None)}", file=sys.stderr)  # fmt: skip
            return 2
        except (KeyError, ValueError, json_format.ParseError) as exc:
            print(f"reflection: {exc}", file=sys.stderr)
            return 2
    return 0


def _hint(code: grpc.StatusCode, args: argparse.Namespace, tls: bool) -> str:
    """The flag to try, in the words of the other clients (the Node and Go clients,
    `xsell loadtest`). A refused client certificate shows only as a closed connection
    under TLS 1.3: the server checks it after the client has finished its handshake."""
    if code == grpc.StatusCode.UNAUTHENTICATED and not args.token:
        return " (give --token or set $XSELL_TOKEN)"
    if code == grpc.StatusCode.UNAVAILABLE:
        if not tls:
            return " (plaintext channel: if the server uses TLS, give --tls-ca or --tls)"
        if not args.tls_cert:
            return " (if the server requires mutual TLS, give --tls-cert and --tls-key)"
    return ""


if __name__ == "__main__":
    sys.exit(main())
