"""A bundle with lleaves-compiled models ranks exactly like LightGBM (issue 6)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from xsell.ranking.bundle import COMPILED_FILES, MANIFEST, MODEL_FILES, write_manifest
from xsell.ranking.ranker import Ranker
from xsell.ranking.types import CartLine, RankRequest

lleaves = pytest.importorskip("lleaves", reason="lleaves not installed (pip install 'xsell[fast]')")


def test_compiled_bundle_scores_equal_lightgbm(bundle_dir, dataset, tmp_path):
    from xsell.ranking.compiled import compile_booster

    copy = tmp_path / "compiled"
    shutil.copytree(bundle_dir, copy)
    for strategy, name in MODEL_FILES.items():
        compile_booster(copy / name, copy / COMPILED_FILES[strategy])
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest.pop("files")
    write_manifest(copy, manifest)  # the compiled files join the hashed set

    plain, fast = Ranker.load(bundle_dir), Ranker.load(copy)
    assert {getattr(p, "kind", "") for p in fast.predictors.values()} == {"lleaves"}
    items = dataset.events["item_id"].value_counts().index[:30]
    for i in range(0, 30, 3):
        req = RankRequest(cart=tuple(CartLine(x) for x in items[i : i + 3]), limit=20)
        a, b = plain.rank(req), fast.rank(req)
        for la, lb in ((a.cross_sell, b.cross_sell), (a.up_sell, b.up_sell)):
            assert [x.item_id for x in la] == [x.item_id for x in lb]
            np.testing.assert_allclose([x.score for x in la], [x.score for x in lb], atol=1e-6)
