"""Reciprocal-rank fusion with eligible anchors: which anchor a fused candidate keeps."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from xsell.retrieval.candidates import _Fuser

lists_ = st.lists(
    st.tuples(
        st.lists(st.integers(0, 12), max_size=8, unique=True),  # a source's items, best first
        st.integers(0, 5),  # its anchor
        st.data(),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(lists_)
def test_an_item_keeps_the_anchor_of_its_first_eligible_entry(lists):
    plain, banded = _Fuser(), _Fuser()
    entries: dict[int, list[tuple[int, bool]]] = {}  # item -> (anchor, eligible) in add order
    for items, anchor, data in lists:
        ok = np.array(data.draw(st.lists(st.booleans(), min_size=len(items), max_size=len(items))), dtype=bool)
        plain.add(np.array(items, dtype=np.int64), "category", anchor)
        banded.add(np.array(items, dtype=np.int64), "category", anchor, ok)
        for item, e in zip(items, ok):
            entries.setdefault(item, []).append((anchor, bool(e)))
    a, b = plain.result(), banded.result()
    # eligibility picks the anchor only: items, scores and sources are those of plain fusion
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.score, b.score)
    np.testing.assert_array_equal(a.sources, b.sources)
    for item, anchor_plain, anchor_banded in zip(b.items.tolist(), a.anchors.tolist(), b.anchors.tolist()):
        seen = entries[item]
        assert anchor_plain == seen[0][0]
        eligible = [anc for anc, e in seen if e]
        assert anchor_banded == (eligible[0] if eligible else seen[0][0])
