"""Offline evaluation (DESIGN.md section 3): time split, queries, baselines, metrics, report.

    from xsell.evaluation import evaluate
    report = evaluate(dataset, "report_dir")          # or: xsell evaluate --events ... --out ...

Modules: `split` (time split), `queries` (cross-sell / new-to-shopper / up-sell queries and
the candidate rules), `metrics` (per-query metrics and intervals), `baselines` (popularity,
buy again, co-purchase, ALS, tuned blend), `model` (querying a Ranker), `runner`
(`evaluate`), `report` (Markdown, PNG, targets), `cli`.
"""

from __future__ import annotations

__all__ = ["evaluate"]


def __getattr__(name: str):
    # lazy: `xsell --help` imports this package's cli, which must not pull in scipy/implicit
    if name == "evaluate":
        from .runner import evaluate

        return evaluate
    raise AttributeError(name)
