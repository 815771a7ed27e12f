"""Vocabulary round trips; the Annoy index against exact cosine search."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xsell.retrieval.ann import AnnIndex, angular_to_cosine, build_index
from xsell.retrieval.mf import normalize_rows
from xsell.retrieval.vocab import Vocabulary


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12), unique=True, max_size=30))
def test_vocabulary_round_trip(tmp_path_factory, ids):
    path = tmp_path_factory.mktemp("vocab") / "v.json"
    Vocabulary(ids).save(path)
    loaded = Vocabulary.load(path)
    assert list(loaded.ids) == ids
    assert list(loaded.encode(ids)) == list(range(len(ids)))
    assert loaded.get("\x00never-an-id") == -1


def test_vocabulary_refuses_duplicates():
    with pytest.raises(ValueError):
        Vocabulary(["a", "b", "a"])


def test_annoy_recall_against_exact_cosine(tmp_path, rng):
    vectors = rng.normal(size=(2000, 16)).astype(np.float32)
    build_index(vectors, tmp_path / "a.idx", n_trees=20, seed=1)
    index = AnnIndex(tmp_path / "a.idx", 16, search_k=4000)
    unit = normalize_rows(vectors)
    recalls = []
    for q in rng.choice(2000, 50, replace=False):
        exact = np.argsort(-(unit @ unit[q]))[:20]
        ids, cos = index.query_item(int(q), 20)
        recalls.append(len(set(ids) & set(exact)) / 20)
        np.testing.assert_allclose(cos, unit[ids] @ unit[q], atol=1e-4)
    assert np.mean(recalls) >= 0.9


def test_annoy_build_is_deterministic_for_a_seed(tmp_path, rng):
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    build_index(vectors, tmp_path / "a.idx", n_trees=5, seed=3)
    build_index(vectors, tmp_path / "b.idx", n_trees=5, seed=3)
    assert (tmp_path / "a.idx").read_bytes() == (tmp_path / "b.idx").read_bytes()


def test_annoy_dimension_mismatch_is_refused(tmp_path, rng):
    build_index(rng.normal(size=(50, 8)).astype(np.float32), tmp_path / "a.idx", n_trees=2)
    with pytest.raises((ValueError, OSError)):
        AnnIndex(tmp_path / "a.idx", 16)


def test_angular_to_cosine_inverts_annoy_distance():
    cos = np.array([1.0, 0.5, 0.0, -1.0], dtype=np.float32)
    dist = np.sqrt(2 - 2 * cos)
    np.testing.assert_allclose(angular_to_cosine(dist), cos, atol=1e-6)
