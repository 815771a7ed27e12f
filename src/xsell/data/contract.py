"""The data contract (DESIGN.md section 1) as in-memory types.

After loading and validation every table has exactly these dtypes, so the rest of
xsell never re-checks them.

events  : user_id str, item_id str, timestamp int64 (epoch seconds, UTC),
          event_type str in EVENT_GRADES, quantity float64 > 0,
          unit_price float64 >= 0, basket_id str   (+ extra columns, kept)
catalog : item_id str (unique), category str (leaf), category_path str,
          price float64 >= 0, cost float64 (NaN = unknown), brand str ("" = unknown),
          title str, in_stock bool   (+ extra columns, kept)
users   : user_id str (unique) + segment columns as str (optional table)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

# Graded relevance: purchase > cart > view. Also the LambdaRank label grades.
EVENT_GRADES: dict[str, int] = {"view": 1, "cart": 2, "purchase": 3}

EVENT_COLUMNS = ("user_id", "item_id", "timestamp", "event_type", "quantity", "unit_price", "basket_id")
CATALOG_COLUMNS = ("item_id", "category", "category_path", "price", "cost", "brand", "title", "in_stock")


@dataclass
class CleaningReport:
    """What the loader did to the input: nothing is dropped without a line here."""

    files: dict[str, str] = field(default_factory=dict)  # table -> path
    rows_read: dict[str, int] = field(default_factory=dict)  # table -> rows
    rows_kept: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)  # table -> reason -> rows
    duplicates_merged: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first messages
    defaults_filled: dict[str, int] = field(default_factory=dict)  # "table.column" -> rows

    def total_dropped(self) -> int:
        return sum(sum(r.values()) for r in self.dropped.values())

    def drops(self, table: str) -> str:
        """A table's dropped rows by reason, most first, on one line ("" if none)."""
        reasons = sorted(self.dropped.get(table, {}).items(), key=lambda kv: -kv[1])
        return ", ".join(f"{reason} {n:,}" for reason, n in reasons if n)

    def to_dict(self) -> dict:
        return asdict(self)

    def write(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))


@dataclass
class Dataset:
    events: pd.DataFrame
    catalog: pd.DataFrame
    users: pd.DataFrame | None
    report: CleaningReport
