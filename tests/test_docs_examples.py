"""The READMEs' Python examples, run as written against a real server on a socket.

Only the address is changed (the examples dial 127.0.0.1:50051; the test server
listens on a free port). The session bundle is the synthetic shop, whose ids the
clients README uses; the top-level README's ids are Ta-Feng's, which this bundle does
not know: the answer is then the popular-items fallback, which a caller sees as well
for an item added to the catalog after training.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python_blocks(doc: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", doc.read_text(), re.MULTILINE | re.DOTALL)


def _run(code: str, address: str) -> str:
    """The example in a fresh interpreter, as a reader would run it; its stdout."""
    assert "127.0.0.1:50051" in code
    proc = subprocess.run([sys.executable, "-c", code.replace("127.0.0.1:50051", address)],
                          check=False, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def address(server) -> str:
    return f"127.0.0.1:{server.port}"


def test_readme_api_example_runs_when_a_fallback_serves(address):
    """Ta-Feng ids against the synthetic bundle: unknown cart, unknown shopper, so
    popular items fill both lists, and those carry no reasons even with explain."""
    (block,) = [b for b in _python_blocks(ROOT / "README.md") if "XsellClient" in b]
    printed = _run(block, address).splitlines()
    assert len(printed) == 10  # limit=5, strategy="both": 5 cross-sell + 5 up-sell lines
    assert {line.split()[0] for line in printed} == {"cross_sell", "up_sell"}


def test_clients_readme_python_example_runs(address, bundle_dir, bundle_root, copy_bundle):
    """The whole example, the admin reload included: its relative path is read from
    the server's bundle root."""
    (block,) = [b for b in _python_blocks(ROOT / "clients" / "README.md") if "XsellClient" in b]
    name = re.search(r'client\.reload\("([^"]+)"\)', block).group(1)
    target = bundle_root / name
    if not target.exists():
        copy_bundle(bundle_dir, target)
    printed = _run(block, address).splitlines()
    assert 1 <= len(printed) <= 5  # limit=5 up-sell items, one line each
    for line in printed:
        assert float(line.split()[1]) <= 20.0  # Filters(price_max=20.0)
        assert line.split()[0] != "i00025"  # exclude_item_ids
