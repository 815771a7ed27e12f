"""Contract guards: `buf lint`, `buf breaking` against the last release (protos-released/),
and the Java options generating with `protoc --java_out`.

A breaking change is shown to fail on a scratch copy of the repository's config and
protos; a compatible one is shown to pass, so the guard is neither blind nor stuck.
buf comes from npm (clients/node devDependency @bufbuild/buf); protoc from Debian's
protobuf-compiler. Skipped when missing, failed instead under XSELL_REQUIRE_TOOLCHAINS=1.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO = Path("protos/xsell/v1/xsell.proto")


@pytest.fixture(scope="module")
def buf(require_tool) -> str:
    return require_tool(
        str(ROOT / "clients/node/node_modules/.bin/buf"),
        "buf comes from npm: run `npm ci` in clients/node",
    )


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, check=False, capture_output=True, text=True, timeout=120)


@pytest.fixture
def scratch(tmp_path) -> Path:
    """The repository's buf.yaml, protos/ and protos-released/, copied."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    shutil.copytree(ROOT / "protos-released", tmp_path / "protos-released")
    return tmp_path


def edit(root: Path, old: str, new: str) -> None:
    path = root / PROTO
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not found once in {PROTO}"
    path.write_text(text.replace(old, new))


def test_lint_passes(buf):
    proc = run([buf, "lint"], ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_breaking_change_since_the_release(buf):
    proc = run([buf, "breaking", "--against", "protos-released"], ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("uint32 limit = 4;", "uint32 limit = 11;", 'field "4" with name "limit"'),  # renumbered
        (
            "  string category = 6;\n",
            "  reserved 6;\n",
            'field "6" with name "category"',
        ),  # removed
        ("double price = 5;", "float price = 5;", 'from "double" to "float"'),  # retyped
        ("STRATEGY_UP_SELL = 2;", "STRATEGY_UPSELL = 2;", "STRATEGY_UP_SELL"),  # enum renamed
        (
            'option java_package = "io.xsell.v1";',
            'option java_package = "io.xsell.api";',
            "java_package",
        ),
    ],
)
def test_breaking_changes_fail(buf, scratch, old, new, message):
    edit(scratch, old, new)
    proc = run([buf, "breaking", "--against", "protos-released"], scratch)
    assert proc.returncode != 0, f"buf breaking accepted {old!r} -> {new!r}"
    assert message in proc.stdout + proc.stderr


def test_compatible_change_passes(buf, scratch):
    edit(
        scratch,
        "  string request_id = 10;\n",
        "  string request_id = 10;\n  // Shopper's locale.\n  string locale = 11;\n",
    )
    proc = run([buf, "breaking", "--against", "protos-released"], scratch)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_lint_catches_a_style_violation(buf, scratch):
    edit(scratch, "string user_id = 1;", "string userId = 1;")
    proc = run([buf, "lint"], scratch)
    assert proc.returncode != 0 and "userId" in proc.stdout + proc.stderr


def test_java_options_generate(require_tool, tmp_path):
    protoc = require_tool("protoc", "Debian's protobuf-compiler has the Java generator")
    proc = run(
        [protoc, "-I", "protos", f"--java_out={tmp_path}", str(PROTO.relative_to("protos"))], ROOT
    )
    assert proc.returncode == 0, proc.stderr
    package = tmp_path / "io" / "xsell" / "v1"  # java_package
    generated = {p.name for p in package.glob("*.java")}
    # java_multiple_files: one file per message / enum, plus the outer class
    for name in ("XsellProto", "RecommendRequest", "RecommendResponse", "Filters", "Strategy"):
        assert f"{name}.java" in generated, sorted(generated)
    assert "package io.xsell.v1;" in (package / "RecommendRequest.java").read_text()
