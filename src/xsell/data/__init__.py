"""The data contract (DESIGN.md section 1): load, validate, obtain and generate data.

- `xsell.data.loaders`: `load_dataset`, `load_events`, `load_catalog`, `load_users`,
  `write_table`, `fingerprint`
- `xsell.data.tafeng`: the real Ta-Feng data set (`write_tafeng`)
- `xsell.data.synthetic`: a seeded shop with planted structure (`generate`, `generate_frames`)
- `xsell.data.contract`: `Dataset`, `CleaningReport`, `EVENT_GRADES`
"""

from xsell.data.contract import EVENT_GRADES, CleaningReport, Dataset
from xsell.data.loaders import (
    fingerprint,
    load_catalog,
    load_dataset,
    load_events,
    load_users,
    write_table,
)

__all__ = [
    "EVENT_GRADES",
    "CleaningReport",
    "Dataset",
    "fingerprint",
    "load_catalog",
    "load_dataset",
    "load_events",
    "load_users",
    "write_table",
]
