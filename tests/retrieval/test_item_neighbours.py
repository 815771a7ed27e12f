"""The offline neighbour table against brute force, and its use by the candidate source."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from xsell.retrieval.ann import build_index
from xsell.retrieval.item_neighbours import (
    NO_NEIGHBOUR,
    annoy_neighbours,
    exact_neighbours,
    neighbour_row,
)
from xsell.retrieval.mf import normalize_rows


def brute_force(unit: np.ndarray, k: int) -> list[list[int]]:
    live = np.linalg.norm(unit, axis=1) > 0.5
    out = []
    for i in range(len(unit)):
        if not live[i]:
            out.append([])
            continue
        sims = [(-float(unit[i] @ unit[j]), j) for j in range(len(unit)) if j != i and live[j]]
        out.append([j for _, j in sorted(sims)[:k]])
    return out


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), dim=st.integers(1, 6), k=st.integers(1, 12), zeros=st.integers(0, 40),
       block=st.integers(1, 17), seed=st.integers(0, 10_000))  # fmt: skip
def test_exact_table_equals_brute_force(n, dim, k, zeros, block, seed):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors[rng.choice(n, size=min(zeros, n), replace=False)] = 0.0  # items nobody bought
    unit = normalize_rows(vectors)
    table = exact_neighbours(unit, k, block=block)
    assert table.shape == (n, k) and table.dtype == np.int32
    expected = brute_force(unit, k)
    for i in range(n):
        row = table[i][table[i] != NO_NEIGHBOUR].tolist()
        assert len(row) == len(expected[i])
        # same similarities in the same order (float ties may swap equal-similarity items)
        np.testing.assert_allclose(unit[row] @ unit[i] if row else [], unit[expected[i]] @ unit[i] if row else [],
                                   rtol=0, atol=1e-5)  # fmt: skip
        assert i not in row
        assert (table[i][len(row):] == NO_NEIGHBOUR).all()  # padding only at the end


def test_exact_table_is_deterministic_under_ties():
    unit = normalize_rows(np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=np.float32))
    table = exact_neighbours(unit, 3)
    assert table[0].tolist() == [1, 2, 3]  # equal cosine: lower index first
    assert table[3].tolist() == [0, 1, 2]


def test_annoy_table_agrees_with_exact_on_a_small_catalog(tmp_path):
    rng = np.random.default_rng(0)
    unit = normalize_rows(rng.normal(size=(300, 8)).astype(np.float32))
    build_index(unit, tmp_path / "ann.idx", n_trees=20, seed=0)
    from annoy import AnnoyIndex

    index = AnnoyIndex(8, "angular")
    index.load(str(tmp_path / "ann.idx"))
    approx = annoy_neighbours(index, 300, 10, search_k=-1)
    exact = exact_neighbours(unit, 10)
    overlap = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert overlap > 0.9, overlap
    assert all(i not in approx[i] for i in range(300))


def test_neighbour_row_drops_padding():
    table = np.array([[3, 1, NO_NEIGHBOUR]], dtype=np.int32)
    assert neighbour_row(table, 0, 3).tolist() == [3, 1]
    assert neighbour_row(table, 0, 1).tolist() == [3]
    assert neighbour_row(table, 0, 1).dtype == np.int64


def test_bundle_ranks_from_its_table(bundle_dir):
    """The session bundle carries the table; the cross-sell ANN source reads it, no Annoy search."""
    from xsell.ranking.ranker import Ranker
    from xsell.retrieval.candidates import ann_neighbours

    ranker = Ranker.load(bundle_dir)
    arts = ranker.arts
    assert arts.item_neighbours is not None and arts.item_neighbours.shape[0] == len(arts.items)
    item = int(arts.popular_items[0])
    from_table = ann_neighbours(arts, item, 20)
    sims = arts.item_factors[from_table] @ arts.item_factors[item]
    assert (np.diff(sims) <= 1e-6).all()  # best first
    others = np.setdiff1d(np.arange(len(arts.items)), np.append(from_table, item))
    live = others[np.linalg.norm(arts.item_factors[others], axis=1) > 0.5]
    assert sims[-1] >= (arts.item_factors[live] @ arts.item_factors[item]).max() - 1e-6  # nothing better left out
