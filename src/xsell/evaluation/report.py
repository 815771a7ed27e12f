"""Render an evaluation report (the dict `evaluate` returns) as Markdown and a PNG chart,
and check it against the targets of the ranking-quality issue."""

from __future__ import annotations

import math
from pathlib import Path

# what `evaluate` writes to the report directory (besides bundles/), in the order they
# are moved into place: report.json, the one a reader or script looks for first, last
REPORT_FILES = ("per_query_ndcg.npz", "report.md", "report.png", "report.json")
METRICS = (
    ("ndcg", "NDCG@10"),
    ("recall", "Recall@10"),
    ("hit_rate", "HitRate@10"),
    ("revenue", "revenue@10"),
)
UPLIFT = ("uplift", "uplift of hits")
# (view, NDCG factor over the best baseline, compare revenue, compare uplift)
TARGETS = (
    ("cross_sell", 1.25, True, False),
    ("cross_sell_new", 1.25, False, False),
    ("up_sell", 1.2, False, True),
)
# feature group -> the view it is for
ABLATION_TASKS = {"no price features": "up_sell", "no complement features": "cross_sell"}


def _f(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _digits(metric: str) -> int:
    return 1 if metric == "revenue" else (3 if metric == "uplift" else 4)


def _est(e: dict, metric: str) -> str:
    d = _digits(metric)
    return f"{_f(e['mean'], d)} [{_f(e['lo'], d)}, {_f(e['hi'], d)}]"


def _diff(e: dict, metric: str) -> str:
    d = _digits(metric)
    if e["n"] == 0:
        return "n/a"
    sign = "+" if e["mean"] >= 0 else ""
    mark = " *" if (e["lo"] > 0 or e["hi"] < 0) else ""  # interval excludes 0
    return f"{sign}{_f(e['mean'], d)} [{_f(e['lo'], d)}, {_f(e['hi'], d)}]{mark}"


def targets(report: dict) -> dict:
    """Each issue target with the measured value and whether it is met."""
    out = {}
    for view, factor, revenue, uplift in TARGETS:
        r = report["views"].get(view, {})
        methods = r.get("methods", {})
        if "model" not in methods:
            continue
        best = r["best_baseline"]
        b, m = methods[best], methods["model"]
        ratio = m["ndcg"]["mean"] / b["ndcg"]["mean"] if b["ndcg"]["mean"] else float("nan")
        out[f"{view}: NDCG@10 >= {factor}x best baseline ({best})"] = {
            "model": m["ndcg"]["mean"], "baseline": b["ndcg"]["mean"], "ratio": ratio, "met": bool(ratio >= factor),
        }  # fmt: skip
        if revenue:
            out[f"{view}: revenue@10 >= best baseline ({best})"] = {
                "model": m["revenue"]["mean"], "baseline": b["revenue"]["mean"],
                "met": bool(m["revenue"]["mean"] >= b["revenue"]["mean"]),
            }  # fmt: skip
        if uplift:
            out[f"{view}: uplift of hits >= best baseline ({best})"] = {
                "model": m["uplift"]["mean"], "baseline": b["uplift"]["mean"],
                "met": bool(m["uplift"]["mean"] >= b["uplift"]["mean"]),
            }  # fmt: skip
    for ablation, view in ABLATION_TASKS.items():
        diffs = report["views"].get(view, {}).get("ablations_vs_model", {})
        if ablation in diffs:
            d = diffs[ablation]["ndcg"]  # ablation - model: a gain of the features is < 0
            out[f"{view}: the features removed in '{ablation}' add NDCG@10"] = {
                "gain": -d["mean"], "lo": -d["hi"], "hi": -d["lo"], "met": bool(d["hi"] < 0),
            }  # fmt: skip
    return out


def write_markdown(report: dict, path: Path) -> None:
    p, d = report["protocol"], report["data"]
    lines = [
        "# xsell offline evaluation",
        "",
        (
            f"Protocol: DESIGN.md section 3, k = {p['k']}; test = last {p['test_days']} days "
            f"(from {d['test_start']}), validation window = the {p['valid_days']} days before "
            f"(from {d['valid_start']}), seed {p['seed']}."
        ),
        (
            f"Data: {d['events']:,} events ({d['fit_rows']:,} fit, {d['valid_rows']:,} validation, "
            f"{d['test_rows']:,} test); {d['warm_items']:,} items and {d['warm_users']:,} users "
            "seen in training."
        ),
        f"Intervals: {p['ci']}. Prices: {p['price']}. `*` = the paired interval excludes 0.",
        "",
    ]
    if report.get("targets"):
        lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
        for name, t in report["targets"].items():
            if "ratio" in t:
                value = f"{_f(t['model'])} vs {_f(t['baseline'])} = {_f(t['ratio'], 2)}x"
            elif "gain" in t:
                value = f"{_f(t['gain'])} [{_f(t['lo'])}, {_f(t['hi'])}]"
            else:
                value = f"{_f(t['model'], 3)} vs {_f(t['baseline'], 3)}"
            lines.append(f"| {name} | {value} | {'yes' if t['met'] else '**no**'} |")
        lines.append("")
    for view, r in report["views"].items():
        lines += [f"## {_title(view)}", ""]
        st = r["query_stats"]
        lines.append(f"{r['queries']:,} queries. Dropped as cold: " + ", ".join(
            f"{k.replace('_', ' ')} {v:,}" for k, v in st.items() if "cold" in k) + ".")  # fmt: skip
        if "methods" not in r:
            lines += ["", "No queries: nothing to score.", ""]
            continue
        if "candidate_recall" in r:
            c = r["candidate_recall"]
            lines.append(f"Candidate recall of the retrieval stage: {_est(c['recall'], 'ndcg')} "
                         f"({c['mean_candidates']:.0f} candidates per query).")  # fmt: skip
        metrics = METRICS + ((UPLIFT,) if any("uplift" in m for m in r["methods"].values()) else ())
        lines += ["", "| method | " + " | ".join(label for _, label in metrics) + " | ΔNDCG@10 vs best | Δrevenue@10 vs best |",
                  "|---" * (len(metrics) + 3) + "|"]  # fmt: skip
        best = r["best_baseline"]
        for name, m in r["methods"].items():
            label = f"**{name}** (best baseline)" if name == best else name
            row = [label] + [_est(m[key], key) for key, _ in metrics]
            diff = r["paired_vs_best"].get(name)
            row += (
                [_diff(diff["ndcg"], "ndcg"), _diff(diff["revenue"], "revenue")]
                if diff
                else ["-", "-"]
            )
            lines.append("| " + " | ".join(row) + " |")
        if r.get("ablations_vs_model"):
            lines += [
                "",
                "Ablations, paired difference to the full model (negative = the removed part helps):",
                "",
            ]
            for name, dd in r["ablations_vs_model"].items():
                lines.append(
                    f"- {name}: ΔNDCG@10 {_diff(dd['ndcg'], 'ndcg')}, Δrevenue@10 {_diff(dd['revenue'], 'revenue')}"
                )
        lines.append("")
    lines += ["## Tuned blends (validation window)", ""]
    for name, b in report["blend"].items():
        if b is None:
            lines.append(f"- {name}: no validation queries, no blend")
            continue
        w = ", ".join(f"{c} {v:g}" for c, v in b["weights"].items() if v)
        lines.append(
            f"- {name}: {w}; validation NDCG@10 {_f(b['validation_ndcg'])} on {b['validation_queries']:,} queries"
        )
    lines += ["", "## Timings (s)", "", ", ".join(f"{k} {v:.1f}" for k, v in report["timings"].items()),
              f"ALS (implicit, CPU): {report['als_seconds']}", ""]  # fmt: skip
    Path(path).write_text("\n".join(lines))


def _title(view: str) -> str:
    from .runner import VIEW_TITLES

    return VIEW_TITLES.get(view, view)


def write_chart(report: dict, path: Path) -> None:
    """NDCG@10 and revenue@10 per method and view, with 95% interval bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = [v for v, r in report["views"].items() if "methods" in r]
    fig, axes = plt.subplots(
        2, max(len(views), 1), figsize=(5.5 * max(len(views), 1), 9), squeeze=False
    )
    for col, view in enumerate(views):
        r = report["views"][view]
        names = list(r["methods"])
        for row, (key, label) in enumerate((METRICS[0], METRICS[3])):
            ax = axes[row][col]
            est = [r["methods"][n][key] for n in names]
            means = [e["mean"] if e["mean"] is not None else float("nan") for e in est]
            err = [
                [max(m - e["lo"], 0) for m, e in zip(means, est)],
                [max(e["hi"] - m, 0) for m, e in zip(means, est)],
            ]
            colors = ["tab:blue" if n in r["baselines"] else "tab:orange" for n in names]
            ax.barh(range(len(names)), means, xerr=err, color=colors, capsize=3)
            ax.set_yticks(range(len(names)), names, fontsize=8)
            ax.invert_yaxis()
            ax.set_xlabel(label)
            ax.set_title(
                f"{_title(view)}\n({r['queries']:,} queries)" if row == 0 else "", fontsize=9
            )
    fig.suptitle(
        "xsell offline evaluation: blue = baselines, orange = model / ablations; bars = 95% CI"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
