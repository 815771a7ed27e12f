"""Bugs found from this area in code it does not own (ranking/), kept as regression tests
once fixed (they were strict xfail tests while open)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys


# Fixed by ranking.bundle.check_model_text (LightGBM 4.7 segfaults on a truncated model file).
def test_ranker_load_of_a_truncated_model_raises_instead_of_crashing(bundle_dir, tmp_path):
    bad = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bad)
    model = bad / "model_up_sell.txt"
    model.write_bytes(model.read_bytes()[: int(model.stat().st_size * 0.6)])
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["files"][model.name] = hashlib.sha256(
        model.read_bytes()
    ).hexdigest()  # a forged / buggy writer
    (bad / "manifest.json").write_text(json.dumps(manifest))
    code = "import sys; from xsell.ranking.ranker import Ranker; Ranker.load(sys.argv[1])"
    done = subprocess.run([sys.executable, "-c", code, str(bad)], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    # Wanted: a BundleError (exit 1, "BundleError" in the traceback), not a signal.
    assert done.returncode == 1 and "BundleError" in done.stderr, (
        done.returncode,
        done.stderr[-500:],
    )
