"""Gather ``result.csv`` files of ``gpt2/main.py`` runs into the paper-shaped perplexity table.

    python -m gpt2.parse --output-dir run

writes ``<output-dir>/gpt2/table.{csv,md,tex}`` (one row per model/data set: ``none`` and,
per method, the perplexities at each rate, like the paper's §4.2 table) and the figure
``<output-dir>/gpt2/ppl_vs_rate.{png,pdf}`` (perplexity against rate, one panel per
model/data set, one line per method, the unpruned model at rate 0).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `python gpt2/parse.py`: import engine etc. from this repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.harness import (  # noqa: E402
    atomic_write_csv,
    atomic_write_text,
    parse_config,
    read_csv,
    run_cli,
    save_figure,
    split_list,
    wrote,
)
from engine.report import latex_table, markdown_table  # noqa: E402
from gpt2.main import ATTENTION_METHOD_NAMES as ATTENTION_METHODS  # noqa: E402  (torch-free)

__all__ = ["ParseConfig", "collect", "main", "plot", "table_rows", "to_latex", "to_markdown"]

METHOD_ORDER = ("random", "norm", "proj_coef", "proj", *[m for m in ATTENTION_METHODS
                                                         if m not in ("random", "norm", "proj_coef", "proj")])


@dataclass
class ParseConfig:
    output_dir: str = field(default="run", metadata={"help": "run root holding gpt2/<run>/result.csv"})
    methods: str = field(default="", metadata={"help": "comma-separated methods to tabulate ('' = all found)"})


def _setting(row: dict) -> tuple[str, str, str]:
    mlp = "" if float(row.get("mlp_rate", 0) or 0) == 0 else f"{row['mlp_method']} {float(row['mlp_rate']):.2f}"
    return row["model"], row["dataset"], mlp


def collect(output_dir: str | Path) -> list[dict]:
    """Every result row under ``<output_dir>/gpt2/*/result.csv`` (sorted by run directory)."""
    root = Path(output_dir) / "gpt2"
    if not root.is_dir():
        raise FileNotFoundError(f"no GPT-2 runs under {root} (run gpt2/main.py first)")
    rows = []
    for path in sorted(root.glob("*/result.csv")):
        rows.extend(read_csv(path))
    return rows


def table_rows(rows: Sequence[dict], methods: Sequence[str] | None = None) -> tuple[list[dict], list[str], list[float]]:
    """Wide rows ``{model, dataset, mlp, none, <method>@<rate>...}``; returns ``(rows, methods, rates)``."""
    found = {r["method"] for r in rows if r["method"] != "none"}
    methods = [m for m in (methods or METHOD_ORDER) if m in found]
    rates = sorted({float(r["rate"]) for r in rows if r["method"] != "none"})
    settings: dict[tuple, dict] = {}
    for r in rows:
        key = _setting(r)
        wide = settings.setdefault(key, {"model": key[0], "dataset": key[1], "mlp": key[2]})
        column = "none" if r["method"] == "none" else f"{r['method']}@{float(r['rate']):g}"
        wide[column] = float(r["perplexity"])
    return list(settings.values()), methods, rates


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value) or value >= 1e4:
        return f"{value:.3g}"
    return f"{value:.2f}" if value < 1e3 else f"{value:.1f}"


def _cells(wide: dict, methods: Sequence[str], rates: Sequence[float]) -> list[str]:
    cells = [_fmt(wide.get("none"))]
    for method in methods:
        cells.append(" / ".join(_fmt(wide.get(f"{method}@{rate:g}")) for rate in rates))
    return cells


def _label(wide: dict) -> list[str]:
    return [wide["model"] + (f" (MLP {wide['mlp']})" if wide["mlp"] else ""), wide["dataset"]]


def _header(methods: Sequence[str], rates: Sequence[float]) -> list[str]:
    rate_text = "/".join(f"{r:g}".lstrip("0") for r in rates)
    return ["model", "dataset", "none", *[f"{m} {rate_text}" for m in methods]]


def to_markdown(wide_rows: Sequence[dict], methods: Sequence[str], rates: Sequence[float]) -> str:
    """The paper's layout: ``| model | dataset | none | random .1/.2/.3 | ...``."""
    return markdown_table([_label(w) + _cells(w, methods, rates) for w in wide_rows], columns=_header(methods, rates))


def to_latex(wide_rows: Sequence[dict], methods: Sequence[str], rates: Sequence[float]) -> str:
    """A ``tabular`` with the same cells as :func:`to_markdown`."""
    return latex_table([_label(w) + _cells(w, methods, rates) for w in wide_rows], _header(methods, rates),
                       align="ll" + "r" * (1 + len(methods)))


def plot(wide_rows: Sequence[dict], methods: Sequence[str], rates: Sequence[float], path_stem: str | Path) -> None:
    """Perplexity against rate, one panel per model/data set (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(wide_rows), figsize=(4.5 * len(wide_rows), 3.6), squeeze=False)
    for ax, wide in zip(axes[0], wide_rows):
        for method in methods:
            xs, ys = [], []
            for rate in [0.0, *rates]:
                value = wide.get("none") if rate == 0.0 else wide.get(f"{method}@{rate:g}")
                if value is not None:
                    xs.append(rate)
                    ys.append(value)
            ax.plot(xs, ys, marker="o", label=method)
        values = [v for k, v in wide.items() if k == "none" or "@" in k]
        if values and max(values) > 3 * min(values):  # log scale only when the range calls for it
            ax.set_yscale("log")
        ax.set_xlabel("QK rate")
        ax.set_ylabel("perplexity")
        ax.set_title(" / ".join(_label(wide)))
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    save_figure(fig, path_stem)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> str:
    """Write the table (CSV, Markdown, LaTeX) and the figure; returns the Markdown."""
    cfg = parse_config(ParseConfig, argv, description=__doc__.splitlines()[0])
    methods = split_list(cfg.methods) or None
    if methods is not None and any(m not in ATTENTION_METHODS for m in methods):
        raise ValueError(f"--methods must be names of {sorted(ATTENTION_METHODS)}, got {methods}")
    rows = collect(cfg.output_dir)
    wide_rows, methods, rates = table_rows(rows, methods)
    out = Path(cfg.output_dir) / "gpt2"
    columns = ["model", "dataset", "mlp", "none", *[f"{m}@{r:g}" for m in methods for r in rates]]
    atomic_write_csv(out / "table.csv", wide_rows, fieldnames=columns)
    markdown = to_markdown(wide_rows, methods, rates)
    atomic_write_text(out / "table.md", markdown)
    atomic_write_text(out / "table.tex", to_latex(wide_rows, methods, rates))
    plot(wide_rows, methods, rates, out / "ppl_vs_rate")
    print(markdown, end="")
    wrote(out / "table.md", out / "table.csv", out / "table.tex", out / "ppl_vs_rate.png")
    return markdown


if __name__ == "__main__":
    run_cli(main, "gpt2/parse.py")
