"""Summaries of a study: per-stage statistics, figures and ``SUMMARY.md``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from engine.report import markdown_table  # noqa: E402
from params.comparisons import Comparison  # noqa: E402
from params.significance import holm_adjust, mean_ci, paired_t_test  # noqa: E402
from params.stages import StageResult  # noqa: E402


def summarise(
    comparisons: Sequence[Comparison],
    results: Mapping[str, list[list[StageResult]]],
    percents: Sequence[int],
    confidence: float,
    alpha_level: float,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-variant statistics and paired tests.

    Args:
        results: variant key -> per model -> per stage results.

    Returns:
        ``(summary_rows, test_rows)``: mean and CI per (comparison, variant, percent); paired
        t-tests per (comparison, test pair, percent < 100) with Holm-adjusted p-values within
        each comparison.
    """
    summary, tests = [], []
    for comp in comparisons:
        for variant in comp.variants:
            per_model = results[variant.key]
            for s, percent in enumerate(percents):
                accs = [stages[s].accuracy for stages in per_model if stages[s].accuracy is not None]
                failed = len(per_model) - len(accs)
                row: dict[str, Any] = {"comparison": comp.name, "variant": variant.label, "kept_percent": percent,
                                       "n_ok": len(accs), "n_failed": failed}
                if accs:
                    mean, half = mean_ci(accs, confidence)
                    row.update(mean=mean, ci_low=None if half is None else mean - half,
                               ci_high=None if half is None else mean + half, half_width=half)
                summary.append(row)
        comp_tests = []
        for label, reference in comp.tests:
            mine, ref = results[comp.variant(label).key], results[comp.variant(reference).key]
            for s, percent in enumerate(percents):
                if percent == 100:
                    continue  # nothing pruned yet: every variant is the same model
                pairs = [(a[s].accuracy, b[s].accuracy) for a, b in zip(mine, ref)
                         if a[s].accuracy is not None and b[s].accuracy is not None]
                row = {"comparison": comp.name, "variant": label, "reference": reference,
                       "kept_percent": percent, "n_pairs": len(pairs)}
                if pairs:
                    diff, p = paired_t_test([a for a, _ in pairs], [b for _, b in pairs])
                    row.update(mean_diff=diff, p=p)
                comp_tests.append(row)
        testable = [row for row in comp_tests if row.get("p") is not None]
        for row, adjusted in zip(testable, holm_adjust([row["p"] for row in testable]) if testable else []):
            row["p_holm"] = adjusted
            row["significant"] = adjusted < alpha_level
        tests += comp_tests
    return summary, tests


def _fmt(value: Any, digits: int = 4) -> Any:
    return f"{value:.{digits}g}" if isinstance(value, float) else ("" if value is None else value)


def plot_comparison(ax: Any, comp: Comparison, summary: Sequence[Mapping[str, Any]]) -> None:
    """Mean accuracy against kept percentage with confidence bands, one line per variant."""
    rows = [r for r in summary if r["comparison"] == comp.name]
    methods = list(dict.fromkeys(v.method for v in comp.variants))
    two_modes = len({v.mode for v in comp.variants}) > 1
    paired = comp.name == "decay"
    cmap = plt.get_cmap("viridis" if comp.name in ("alpha_beta", "gamma", "lambda") else "tab10")
    for i, variant in enumerate(comp.variants):
        mine = [r for r in rows if r["variant"] == variant.label and r.get("mean") is not None]
        if not mine:
            continue
        x = np.array([r["kept_percent"] for r in mine], dtype=float)
        y = np.array([r["mean"] for r in mine]) * 100
        if comp.name in ("alpha_beta", "gamma", "lambda"):
            color = cmap(i / max(1, len(comp.variants) - 1))
        else:
            color = cmap(methods.index(variant.method) % 10 if (two_modes or paired) else i % 10)
        dashed = (two_modes and variant.mode == "global") or (paired and variant.label.endswith("no decay"))
        ax.plot(x, y, marker="o", markersize=3, color=color, linestyle="--" if dashed else "-", label=variant.label)
        if all(r.get("half_width") is not None for r in mine):
            low = np.array([r["ci_low"] for r in mine]) * 100
            high = np.array([r["ci_high"] for r in mine]) * 100
            ax.fill_between(x, low, high, color=color, alpha=0.15, linewidth=0)
    ax.set_xlim(102, min(r["kept_percent"] for r in rows) - 2)  # pruning proceeds left to right
    ax.set_ylim(0, 100)  # t-bands of few models can leave [0, 100]; accuracy cannot
    ax.set_xlabel("kept hidden units (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(comp.title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)


def _accuracy_table(comp: Comparison, rows: Sequence[Mapping[str, Any]], percents: Sequence[int]) -> list[str]:
    """Markdown lines: one row per variant, mean ± CI half-width (%) per kept percentage."""
    table = []
    for variant in comp.variants:
        cells = []
        for r in rows:
            if r["variant"] != variant.label:
                continue
            if r.get("mean") is None:
                cells.append("failed")
                continue
            hw = f" ± {100 * r['half_width']:.1f}" if r.get("half_width") is not None else ""
            note = f" ({r['n_failed']} failed)" if r["n_failed"] else ""
            cells.append(f"{100 * r['mean']:.1f}{hw}{note}")
        table.append([variant.label, *cells, *[""] * (len(percents) - len(cells))])
    return [*markdown_table(table, columns=["variant", *(f"{p} %" for p in percents)]).splitlines(), ""]


def _differences(cfg: Any, comp: Comparison, comp_tests: Sequence[Mapping[str, Any]], percents: Sequence[int],
                 failures: Mapping[str, str]) -> list[str]:
    """Markdown lines: paired differences to the reference, the significant ones, and failures."""
    lines: list[str] = []
    tested = [p for p in percents if p != 100]
    lines += [
        "Paired differences to the reference (accuracy points; `**` Holm-adjusted p < "
        f"{cfg.alpha_level:g}, `*` unadjusted p < {cfg.alpha_level:g} only):",
        "",
    ]
    significant, table = [], []
    for label, reference in comp.tests:
        cells = []
        for t in comp_tests:
            if t["variant"] != label or t["reference"] != reference:
                continue
            if t.get("mean_diff") is None:
                cells.append("n/a")
                continue
            mark = "**" if t.get("significant") else "*" if (t.get("p") or 1.0) < cfg.alpha_level else ""
            cells.append(f"{100 * t['mean_diff']:+.1f}{mark}")
            if t.get("significant"):
                significant.append(t)
        table.append([f"{label} vs {reference}", *cells, *[""] * (len(tested) - len(cells))])
    lines += [*markdown_table(table, columns=["variant vs reference", *(f"{p} %" for p in tested)]).splitlines(), ""]
    for label, reference in comp.tests:
        mine = [t for t in significant if t["variant"] == label and t["reference"] == reference]
        parts = [
            f"{word} at " + ", ".join(f"{t['kept_percent']} % ({100 * t['mean_diff']:+.1f})" for t in group)
            for word, group in (("better", [t for t in mine if t["mean_diff"] > 0]),
                                ("worse", [t for t in mine if t["mean_diff"] < 0])) if group
        ]
        if parts:
            lines.append(f"- **{label}** vs {reference}, significant after Holm: " + "; ".join(parts))
    if not significant:
        lines.append(f"- No difference to the reference is significant after Holm adjustment "
                     f"(level {cfg.alpha_level:g}).")
    for variant in comp.variants:
        if variant.key in failures:
            lines.append(f"- **{variant.label}** failed on some models: {failures[variant.key]}")
    return lines


def markdown_summary(
    cfg: Any,
    heading: str,
    comparisons: Sequence[Comparison],
    summary: Sequence[Mapping[str, Any]],
    tests: Sequence[Mapping[str, Any]],
    base_accuracy: tuple[float, float | None],
    failures: Mapping[str, str],
) -> str:
    """A Markdown report: accuracy tables (mean ± CI half-width, %) and significant differences."""
    mean, half = base_accuracy
    ci = f" ± {100 * half:.2f}" if half is not None else ""
    lines = [
        f"# {heading}",
        "",
        f"{cfg.num_models} models, {cfg.epochs} epochs (Adam lr {cfg.lr:g}, batch {cfg.batch_size}), seed {cfg.seed}. "
        f"Unpruned test accuracy {100 * mean:.2f}{ci} % (mean ± {100 * cfg.confidence:g} % Student-t half-width).",
        f"Significance: two-sided paired t-tests over the models, Holm-adjusted within each comparison, "
        f"level {cfg.alpha_level:g}.",
        "",
    ]
    for comp in comparisons:
        rows = [r for r in summary if r["comparison"] == comp.name]
        percents = list(dict.fromkeys(r["kept_percent"] for r in rows))
        lines += [f"## {comp.title} (`{comp.name}`)", "", f"![{comp.name}](figures/{comp.name}.png)", ""]
        lines += _accuracy_table(comp, rows, percents)
        lines += _differences(cfg, comp, [t for t in tests if t["comparison"] == comp.name], percents, failures)
        lines.append("")
    return "\n".join(lines)
