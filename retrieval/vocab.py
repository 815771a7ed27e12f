"""Immutable id <-> index vocabulary, saved beside the index it addresses."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np


class Vocabulary:
    """Maps external string ids to dense 0..n-1 indices (and back)."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = np.asarray([str(i) for i in ids], dtype=object)
        self._index = {item: i for i, item in enumerate(self.ids)}
        if len(self._index) != len(self.ids):
            raise ValueError("vocabulary ids must be unique")

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item: str) -> bool:
        return item in self._index

    def get(self, item: str) -> int:
        """Index of `item`, or -1 when unknown."""
        return self._index.get(item, -1)

    def encode(self, items: Iterable[str]) -> np.ndarray:
        """Indices (int64) of `items`, -1 for unknown ones."""
        get = self._index.get
        return np.fromiter((get(i, -1) for i in items), dtype=np.int64)

    def save(self, path: Path) -> None:
        # JSON, not one-id-per-line: ids may contain any character.
        Path(path).write_text(json.dumps(list(self.ids)))

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        return cls(json.loads(Path(path).read_text()))
