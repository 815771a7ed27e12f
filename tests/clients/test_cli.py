"""`xsell recommend`: the table and the JSON carry the same answer as the Python client."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from xsell.clients import XsellClient
from xsell.clients.cli import json_safe, parse_cart

from xsell.cli import main
from xsell.errors import InvalidRequest


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["recommend", *args])
    out, err = capsys.readouterr()
    return code, out, err


def table_rows(out: str, section: str) -> list[list[str]]:
    """Rows (split on 2+ spaces) of one list's table in the CLI output."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{section} ("))
    rows = []
    for line in lines[start + 2 :]:  # skip the title and the header
        if not line.strip():
            break
        rows.append([cell for cell in line.split("  ") if cell.strip()])
    return rows


def test_table_lists_the_items_the_client_gets(address, shop, capsys):
    user, cart = shop.users[0], shop.by_popularity[:2]
    with XsellClient(address, timeout=10) as client:
        expected = client.recommend(user_id=user, cart=cart, strategy="up_sell", limit=5)
    assert expected.up_sell
    code, out, _ = run_cli(
        capsys,
        "--address",
        address,
        "--user",
        user,
        "--cart",
        ",".join(cart),
        "--strategy",
        "up_sell",
        "--limit",
        "5",
    )
    assert code == 0
    assert out.splitlines()[0] == f"model {expected.model_version}"
    header = next(line for line in out.splitlines() if line.startswith("#"))
    assert header.split() == ["#", "item", "price", "uplift", "category", "score", "reason"]
    assert "cross_sell (" not in out
    rows = table_rows(out, "up_sell")
    assert [r[1].strip() for r in rows] == [i.item_id for i in expected.up_sell]
    for row, item in zip(rows, expected.up_sell):
        assert float(row[2]) == pytest.approx(item.price, abs=0.005)
        assert row[3].strip() == f"{item.price_uplift:.2f}x"
        assert row[4].strip() == item.category
        assert row[6].strip().startswith("via " + ", ".join(item.sources))


def test_explain_puts_the_top_reason_in_the_table(address, shop, capsys):
    cart = shop.by_popularity[:1]
    with XsellClient(address, timeout=10) as client:
        expected = client.recommend(cart=cart, strategy="cross_sell", limit=3, explain=True)
    code, out, _ = run_cli(
        capsys,
        "--address",
        address,
        "--cart",
        cart[0],
        "--strategy",
        "cross_sell",
        "--limit",
        "3",
        "--explain",
    )
    assert code == 0
    rows = table_rows(out, "cross_sell")
    assert [r[-1].strip() for r in rows] == [i.reasons[0].text for i in expected.cross_sell]


def test_json_is_the_client_answer(address, shop, capsys):
    cart = shop.by_popularity[:2]
    with XsellClient(address, timeout=10) as client:
        expected = client.recommend(
            cart=[(cart[0], 2.0), cart[1]],
            limit=4,
            explain=True,
            request_id="r1",
            filters=None,
        )
    code, out, _ = run_cli(
        capsys,
        "--address",
        address,
        "--cart",
        f"{cart[0]}:2,{cart[1]}",
        "--limit",
        "4",
        "--explain",
        "--request-id",
        "r1",
        "--json",
    )
    assert code == 0
    assert json.loads(out) == json.loads(json.dumps(json_safe(expected.to_dict())))
    assert "NaN" not in out.replace('"NaN"', "")  # strict JSON: NaN only as a string


def test_filters_reach_the_server(address, shop, capsys):
    cart = shop.by_popularity[:1]
    code, out, _ = run_cli(
        capsys,
        "--address",
        address,
        "--cart",
        cart[0],
        "--strategy",
        "cross_sell",
        "--limit",
        "10",
        "--json",
    )
    base = json.loads(out)["cross_sell"]
    assert code == 0 and len(base) >= 2
    excluded = base[0]["item_id"]
    price_max = sorted(i["price"] for i in base)[len(base) // 2]
    code, out, _ = run_cli(
        capsys,
        "--address",
        address,
        "--cart",
        cart[0],
        "--strategy",
        "cross_sell",
        "--limit",
        "10",
        "--exclude",
        excluded,
        "--price-max",
        str(price_max),
        "--json",
    )
    filtered = json.loads(out)["cross_sell"]
    assert code == 0 and filtered
    assert all(i["item_id"] != excluded and i["price"] <= price_max + 1e-6 for i in filtered)


def test_server_errors_exit_2_naming_the_field(address, capsys):
    code, out, err = run_cli(capsys, "--address", address, "--cart", "A", "--limit", "500")
    assert code == 2 and out == ""
    assert "INVALID_ARGUMENT" in err and "limit: must be between 1 and 100" in err


def test_bad_cart_quantity_exits_2_naming_the_line(address, capsys):
    code, _, err = run_cli(capsys, "--address", address, "--cart", "A:2,B:lots")
    assert code == 2 and "cart[1].quantity" in err


def test_the_installed_command_runs(address, shop):
    """The real entry point in a fresh process, token from the environment."""
    cart = shop.by_popularity[0]
    env = {**os.environ, "XSELL_TOKEN": "t0ken"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "xsell.cli",
            "recommend",
            "--address",
            address,
            "--cart",
            cart,
            "--strategy",
            "cross_sell",
            "--limit",
            "2",
            "--json",
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert 0 < len(answer["cross_sell"]) <= 2 and answer["up_sell"] == []


@given(
    st.lists(
        st.tuples(
            st.text("abcXYZ019-_", min_size=1, max_size=8),
            st.one_of(st.none(), st.floats(0, 1e6, allow_nan=False)),
        ),
        max_size=6,
    )
)
def test_parse_cart_reads_ids_and_quantities(lines):
    text = ",".join(i if q is None else f"{i}:{q!r}" for i, q in lines)
    assert parse_cart(text) == [(i, 1.0 if q is None else q) for i, q in lines]


def test_parse_cart_names_a_bad_quantity():
    with pytest.raises(InvalidRequest) as info:
        parse_cart("A, B:x")
    assert info.value.field == "cart[1].quantity"


def test_json_safe_spells_non_finite_numbers():
    assert json_safe({"a": [math.nan, math.inf, -math.inf, 1.5]}) == {
        "a": ["NaN", "Infinity", "-Infinity", 1.5]
    }


def test_a_reader_that_goes_away_is_not_a_traceback(address, shop):
    """`xsell recommend ... | head`: the pipe's reader is gone before the answer is
    written. The command stops quietly with 141 (128 + SIGPIPE, as a shell reports a
    command killed by it), not with a BrokenPipeError traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "xsell.cli", "recommend", "--address", address, "--cart", shop.by_popularity[0],
         "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    proc.stdout.close()  # long before it has connected and ranked
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err, err.decode()[-2000:]
    assert proc.returncode == 141
