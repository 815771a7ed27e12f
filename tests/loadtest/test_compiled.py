"""The optional lleaves predictor scores exactly as LightGBM does (to 1e-6), on a real
trained model, and falls back to LightGBM whenever the compiled file cannot be trusted."""

from __future__ import annotations

import importlib.util
import json

import lightgbm as lgb
import numpy as np
import pytest
from xsell.ranking.bundle import MODEL_FILES
from xsell.ranking.compiled import compile_booster, compiled_usable, load_predictor, sidecar_path

needs_lleaves = pytest.mark.skipif(
    importlib.util.find_spec("lleaves") is None,
    reason="lleaves is not installed (optional: pip install lleaves 'llvmlite==0.44.*')",
)


def _threshold_rows(booster: lgb.Booster, rng: np.random.Generator, n: int) -> np.ndarray:
    """Rows whose values sit on, just below and just above the model's own split
    thresholds, plus NaNs and zeros: every branch and every `<=` boundary is taken."""
    trees = booster.trees_to_dataframe()
    splits = trees[trees["split_feature"].notna()]
    names = booster.feature_name()
    x = rng.normal(size=(n, len(names)))
    for j, name in enumerate(names):
        th = splits.loc[splits["split_feature"] == name, "threshold"].to_numpy(dtype=np.float64)
        # LightGBM writes a split "at zero" as its sentinel threshold -1e-35 and treats
        # |x| <= 1e-35 as zero before comparing; lleaves compares the raw value. They only
        # disagree on inputs within ~1e-35 of zero, which no feature produces (exact 0.0 is
        # still drawn below), so the sentinel itself is not used as a test value.
        th = th[np.abs(th) > 1e-34]
        if len(th) == 0:
            continue
        picks = rng.choice(th, size=n)
        nudge = rng.choice([-1e-7, 0.0, 0.0, 1e-7], size=n) * np.maximum(1.0, np.abs(picks))
        x[:, j] = picks + nudge
    x[rng.random(x.shape) < 0.08] = np.nan
    x[rng.random(x.shape) < 0.04] = 0.0
    return x


@pytest.fixture(scope="module")
def compiled_model(bundle_dir, tmp_path_factory):
    model_txt = bundle_dir / MODEL_FILES["cross_sell"]
    out = tmp_path_factory.mktemp("compiled") / "cross_sell.so"
    compile_booster(model_txt, out)
    return model_txt, out


@needs_lleaves
def test_compiled_scores_equal_lightgbm(compiled_model):
    model_txt, out = compiled_model
    predict = load_predictor(model_txt, out)
    assert predict.kind == "lleaves"
    booster = lgb.Booster(model_file=str(model_txt))
    x = _threshold_rows(booster, np.random.default_rng(11), 5000)
    for rows in (x, x.astype(np.float32), x[:1]):  # float32 is what the feature table builds
        expected = booster.predict(rows, num_threads=1)
        got = predict(rows)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert np.std(booster.predict(x, num_threads=1)) > 0  # the rows do reach different leaves
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["num_trees"] == booster.num_trees() and meta["compile_seconds"] > 0


@needs_lleaves
def test_stale_or_foreign_compiled_files_fall_back(compiled_model, bundle_dir, tmp_path, caplog):
    model_txt, out = compiled_model
    assert compiled_usable(model_txt, out) == (True, "")
    # a different model text: the object was built from another model
    other = bundle_dir / MODEL_FILES["up_sell"]
    ok, why = compiled_usable(other, out)
    assert not ok and "another model" in why
    assert load_predictor(other, out).kind == "lightgbm"
    assert "compiled model not used" in caplog.text
    # built for another CPU: refused before it can be loaded (it could crash the process)
    moved = tmp_path / "moved.so"
    moved.write_bytes(out.read_bytes())
    meta = json.loads(sidecar_path(out).read_text())
    meta["target"]["cpu"] = "some-other-cpu"
    sidecar_path(moved).write_text(json.dumps(meta))
    ok, why = compiled_usable(model_txt, moved)
    assert not ok and "cpu" in why
    # a missing sidecar or object
    (tmp_path / "bare.so").write_bytes(out.read_bytes())
    assert not compiled_usable(model_txt, tmp_path / "bare.so")[0]
    assert not compiled_usable(model_txt, tmp_path / "absent.so")[0]


def test_without_compiled_file_lightgbm_serves(bundle_dir, tmp_path):
    model_txt = bundle_dir / MODEL_FILES["up_sell"]
    predict = load_predictor(model_txt, None)
    assert predict.kind == "lightgbm"
    assert load_predictor(model_txt, tmp_path / "absent.so").kind == "lightgbm"
    booster = lgb.Booster(model_file=str(model_txt))
    x = np.random.default_rng(0).normal(size=(50, booster.num_feature()))
    np.testing.assert_array_equal(predict(x), booster.predict(x, num_threads=1))


@needs_lleaves
def test_a_model_lleaves_cannot_compile_leaves_no_compiled_file(bundle_dir, tmp_path):
    """Training logs a warning and serves such a model with LightGBM instead of failing.
    The model: a tree splits on a feature its header calls constant ("none"), as a model
    boosted on from another one's trees can be; lleaves emits invalid LLVM IR for it."""
    from xsell.ranking.train import _compile

    text = (bundle_dir / MODEL_FILES["cross_sell"]).read_text()
    booster = lgb.Booster(model_str=text)
    used = booster.trees_to_dataframe()["split_feature"].dropna().iloc[0]
    j = booster.feature_name().index(used)
    header, rest = text.split("\ntree_sizes=", 1)
    lines = header.splitlines()
    k = next(i for i, line in enumerate(lines) if line.startswith("feature_infos="))
    infos = lines[k].removeprefix("feature_infos=").split(" ")
    infos[j] = "none"
    lines[k] = "feature_infos=" + " ".join(infos)
    bad = tmp_path / "model.txt"
    bad.write_text("\n".join(lines) + "\ntree_sizes=" + rest)
    lgb.Booster(model_file=str(bad))  # LightGBM itself still loads it
    messages: list[str] = []
    out = tmp_path / "model.so"
    _compile(bad, out, messages.append)
    assert any("WARNING model.txt: not compiled" in m for m in messages), messages
    assert not out.exists() and not sidecar_path(out).exists()
    assert load_predictor(bad, out).kind == "lightgbm"
