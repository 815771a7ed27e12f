"""`xsell recommend`: ask a running server for recommendations; a table or JSON.

    xsell recommend --address HOST:PORT --user U --cart A,B --strategy up_sell --limit 5 [--explain] [--json]

Cart lines may carry a quantity: `--cart A:2,B`. Errors print the server's status
and message (and the field, for INVALID_ARGUMENT) and exit 2; so do bad --tls* flags
(naming the flag and the file), before any call.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from xsell.errors import InvalidRequest

DEFAULT_ADDRESS = "127.0.0.1:50051"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "recommend",
        help="ask a running xsell server for recommendations",
        description="Call RecommendService.Recommend and print the items as a table (or JSON).",
    )
    p.add_argument(
        "--address",
        default=os.environ.get("XSELL_ADDRESS", DEFAULT_ADDRESS),
        help="server HOST:PORT (default $XSELL_ADDRESS or %(default)s)",
    )
    p.add_argument("--user", default="", help="shopper id (may be empty or unknown)")
    p.add_argument(
        "--cart", default="", help="comma-separated cart item ids, optionally ID:QUANTITY"
    )
    p.add_argument(
        "--strategy",
        choices=("cross_sell", "up_sell", "both"),
        default="both",
        help="what to produce (default %(default)s)",
    )
    p.add_argument("--limit", type=int, default=0, help="items per list (0 = server default, 10)")
    p.add_argument("--cross-sell-limit", type=int, default=0, help="with --strategy both")
    p.add_argument("--up-sell-limit", type=int, default=0, help="with --strategy both")
    f = p.add_argument_group("filters")
    f.add_argument("--exclude", default="", help="comma-separated item ids never to return")
    f.add_argument("--allow-categories", default="", help="comma-separated leaf categories")
    f.add_argument("--deny-categories", default="", help="comma-separated leaf categories")
    f.add_argument("--price-min", type=float, default=None)
    f.add_argument("--price-max", type=float, default=None)
    f.add_argument("--uplift-min", type=float, default=None, help="up-sell: lowest price ratio")
    f.add_argument("--uplift-max", type=float, default=None, help="up-sell: highest price ratio")
    f.add_argument("--exclude-purchased", action="store_true", help="skip items the user bought")
    f.add_argument("--max-per-category", type=int, default=0, help="0 = no cap")
    p.add_argument("--explain", action="store_true", help="ask for the reasons behind each item")
    p.add_argument("--json", action="store_true", help="print the full answer as JSON")
    p.add_argument("--variant", default="", help="experiment key, echoed and logged")
    p.add_argument("--request-id", default="", help="request id, echoed and logged")
    p.add_argument(
        "--timeout", type=float, default=5.0, help="seconds, retries included (default %(default)s)"
    )
    p.add_argument(
        "--retries", type=int, default=3, help="extra attempts on UNAVAILABLE (default %(default)s)"
    )
    add_security_arguments(p)
    p.set_defaults(func=_run)


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    """The "security" flags (--tls-ca/--tls-cert/--tls-key/--tls-server-name/--tls and
    --token), shared by `xsell recommend` and `xsell loadtest`; read them back with
    `tls_from_args` and `args.token`."""
    t = parser.add_argument_group("security")
    t.add_argument("--tls-ca", default=None, help="CA certificate (PEM); turns TLS on")
    t.add_argument(
        "--tls-cert", default=None, help="client certificate (PEM) for mTLS; turns TLS on"
    )
    t.add_argument("--tls-key", default=None, help="client private key (PEM) for mTLS")
    t.add_argument(
        "--tls-server-name", default=None, help="name to verify in the server certificate"
    )
    t.add_argument("--tls", action="store_true", help="TLS with the system's CA roots")
    t.add_argument(
        "--token",
        default=os.environ.get("XSELL_TOKEN") or None,
        help="bearer token (default $XSELL_TOKEN)",
    )


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def parse_cart(value: str) -> list[tuple[str, float]]:
    """ "A:2,B" -> [("A", 2.0), ("B", 1.0)]; raises InvalidRequest naming the line."""
    out = []
    for i, part in enumerate(_split(value)):
        item_id, sep, quantity = part.rpartition(":")
        if not sep:
            out.append((part, 1.0))
            continue
        try:
            out.append((item_id, float(quantity)))
        except ValueError:
            raise InvalidRequest(
                f"cart[{i}].quantity", f"{quantity!r} in {part!r} is not a number"
            ) from None
    return out


def json_safe(value: Any) -> Any:
    """NaN and infinities as the proto3 JSON mapping spells them ("NaN", "Infinity",
    "-Infinity"): bare NaN is not JSON and breaks jq. The server sends NaN for a
    feature value it does not know (Reason.value)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _cell(value: float, fmt: str) -> str:
    return format(value, fmt) if value else "-"


def format_table(recs, *, out: TextIO) -> None:
    """A readable table per list: #, item, price, uplift, category, score, reason."""
    header = f"model {recs.model_version}"
    if recs.request_id:
        header += f"  request {recs.request_id}"
    print(header, file=out)
    if recs.unknown_item_ids:
        print(f"unknown cart items (ignored): {', '.join(recs.unknown_item_ids)}", file=out)
    if recs.fallback:
        print(f"fallback: {recs.fallback_reason}", file=out)
    for name, items in (("cross_sell", recs.cross_sell), ("up_sell", recs.up_sell)):
        if not items:
            continue
        rows = [("#", "item", "price", "uplift", "category", "score", "reason")]
        for rank, item in enumerate(items, 1):
            if item.reasons:  # --explain: the largest contribution, in words
                reason = item.reasons[0].text
            else:
                reason = "via " + ", ".join(item.sources)
                reason += f" (with {item.anchor_item_id})" if item.anchor_item_id else ""
            rows.append(
                (
                    str(rank),
                    item.item_id,
                    _cell(item.price, ".2f"),
                    f"{item.price_uplift:.2f}x" if item.price_uplift else "-",
                    item.category,
                    f"{item.score:.4f}",
                    reason,
                )
            )
        widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]) - 1)]
        print(f"\n{name} ({len(items)})", file=out)
        for row in rows:
            cells = [
                cell.rjust(w) if c in (0, 2, 3, 5) else cell.ljust(w)
                for c, (cell, w) in enumerate(zip(row, widths))
            ]
            print("  ".join([*cells, row[-1]]).rstrip(), file=out)
    if not recs.items:
        print("\n(no items)", file=out)


def _read_pem(flag: str, path: str) -> None:
    from xsell.clients.client import ClientConfigError

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ClientConfigError(f"{flag}: cannot read {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:  # gRPC would fail only at the handshake, naming no file
        raise ClientConfigError(f"{flag}: {path} is not a PEM file")


def _ssl_reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason without its tags: "key values mismatch", not
    "[X509: KEY_VALUES_MISMATCH] key values mismatch (_ssl.c:3926)"."""
    text = exc.args[1] if len(exc.args) > 1 else str(exc)
    return re.sub(r"^\[[^\]]*\]\s*|\s*\(_ssl\.c:\d+\)$", "", str(text))


def tls_from_args(args: argparse.Namespace):
    """`TlsOptions` from the --tls* flags, or None for plaintext. The files are checked
    now, as the Node and Go clients do: a bad one fails before any call, naming the flag
    and the file; so does a flag that would be ignored."""
    from xsell.clients.client import ClientConfigError, TlsOptions

    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key):
        if args.tls_server_name:  # a plaintext channel verifies no name
            raise ClientConfigError("--tls-server-name needs TLS (--tls-ca, --tls-cert or --tls)")
        return None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ClientConfigError("--tls-cert and --tls-key go together (mutual TLS needs both)")
    files = {"--tls-ca": args.tls_ca, "--tls-cert": args.tls_cert, "--tls-key": args.tls_key}
    for flag, path in files.items():
        if path:
            _read_pem(flag, path)
    # The standard library's OpenSSL parses the files as gRPC will (no connection made).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if args.tls_ca:
        try:
            context.load_verify_locations(cafile=args.tls_ca)
        except ssl.SSLError:
            raise ClientConfigError(f"--tls-ca: no certificate in {args.tls_ca}") from None
    if args.tls_cert:
        try:  # the password callback: an encrypted key fails instead of prompting
            context.load_cert_chain(args.tls_cert, args.tls_key, password=lambda: b"")
        except ssl.SSLError as exc:
            raise ClientConfigError(
                f"--tls-cert {args.tls_cert} / --tls-key {args.tls_key}: not a certificate and "
                f"its private key ({_ssl_reason(exc)})"
            ) from None
    return TlsOptions(
        ca_cert=args.tls_ca or None,
        client_cert=args.tls_cert or None,
        client_key=args.tls_key or None,
        server_name=args.tls_server_name or None,
    )


def _run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from xsell.clients.client import Filters, XsellClient

    out = out if out is not None else sys.stdout
    tls = tls_from_args(args)
    filters = Filters(
        exclude_item_ids=_split(args.exclude),
        allowed_categories=_split(args.allow_categories),
        denied_categories=_split(args.deny_categories),
        price_min=args.price_min,
        price_max=args.price_max,
        uplift_min=args.uplift_min,
        uplift_max=args.uplift_max,
        exclude_purchased=args.exclude_purchased,
        max_per_category=args.max_per_category,
    )
    with XsellClient(
        args.address, timeout=args.timeout, retries=args.retries, tls=tls, token=args.token
    ) as client:
        recs = client.recommend(
            user_id=args.user,
            cart=parse_cart(args.cart),
            strategy=args.strategy,
            limit=args.limit,
            cross_sell_limit=args.cross_sell_limit,
            up_sell_limit=args.up_sell_limit,
            filters=filters,
            explain=args.explain,
            variant=args.variant,
            request_id=args.request_id,
        )
    if args.json:
        out.write(json.dumps(json_safe(recs.to_dict()), indent=2, allow_nan=False) + "\n")
    else:
        format_table(recs, out=out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m xsell.clients.cli ...` = `xsell recommend ...`."""
    from xsell.cli import main as xsell_main

    return xsell_main(["recommend", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
