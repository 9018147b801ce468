"""Tables and figures from finished ViT runs (those with a ``.json`` summary).

    python vit/parse.py --output-dir run            # writes run/vit/results/

Per model: ``vit_uniform_top1_<model>.csv`` (method x amount), ``vit_uniform_last_<model>.csv`` (every
metric at the largest amount, masks included: parameters, nonzero parameters, MACs and measured
speed-up), ``vit_adaptive_<model>.csv``, all of them in ``vit_tables.md``; figures
``vit_uniform_<model>``, ``vit_adaptive_<model>``, ``vit_norms_<model>`` (PNG + PDF).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `python vit/parse.py`: import engine etc. from this repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.harness import atomic_write_csv, atomic_write_text, parse_config, read_csv, run_cli, wrote  # noqa: E402
from engine.report import markdown_table as _markdown_table  # noqa: E402
from vit.plots import plot_adaptive, plot_norms, plot_uniform  # noqa: E402

__all__ = ["ParseConfig", "adaptive_table", "collect_runs", "main", "markdown_table", "uniform_tables"]


@dataclass
class ParseConfig:
    """Command line of ``vit/parse.py``."""

    output_dir: str = field(default="run", metadata={"help": "run directory root (reads <dir>/vit)"})
    results_dir: str = field(default="", metadata={"help": "where to write; empty = <output-dir>/vit/results"})


@dataclass
class Run:
    """One finished run: its rows (CSV values as strings) and per-step timings."""

    model: str
    experiment: str
    method: str
    rows: list[dict[str, str]]
    timings: list[dict[str, str]]


def collect_runs(output_dir: str | Path) -> list[Run]:
    """Every finished run under ``<output_dir>/vit/<model>/<experiment>/<name>/``, sorted by path."""
    runs = []
    for summary in sorted(Path(output_dir).glob("vit/*/*/*/*.json")):
        model, experiment = summary.parts[-4], summary.parts[-3]
        name = summary.stem
        prefix = f"{model}-{experiment}"
        method = name[len(prefix) + 1:] if name.startswith(prefix + "-") else ""
        csv_path = summary.with_suffix(".csv")
        if not csv_path.is_file():
            continue
        timing_path = summary.parent / f"{name}-timing.csv"
        timings = read_csv(timing_path) if timing_path.is_file() else []
        runs.append(Run(model, experiment, method, read_csv(csv_path), timings))
    return runs


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table of ``rows`` (columns in first-seen order unless given); ``(no runs)`` if empty."""
    return _markdown_table(rows, columns, empty="(no runs)\n")


def _speedup(run: Run, step: int) -> str:
    times = {int(t["step"]): float(t["inference_ms"]) for t in run.timings}
    if 0 not in times or step not in times or times[step] <= 0:
        return ""
    return f"{times[0] / times[step]:.2f}"


def uniform_tables(runs: Sequence[Run]) -> tuple[list[dict], list[dict]]:
    """``(top-1 per method and amount, every metric at each method's largest amount)``."""
    top1_rows, last_rows = [], []
    for run in runs:
        top1_rows.append({"method": run.method, **{row["amount"]: f"{float(row['top1']):.3f}" for row in run.rows}})
        last = run.rows[-1]
        first = run.rows[0]
        last_rows.append({
            "method": run.method,
            "amount": last["amount"],
            "top1": f"{float(last['top1']):.4f}",
            "top5": f"{float(last['top5']):.4f}",
            "loss": f"{float(last['loss']):.4f}",
            "params_M": f"{int(last['params']) / 1e6:.4f}",
            "nonzero_params_M": f"{int(last['nonzero_params']) / 1e6:.4f}",
            "MACs_M": f"{int(last['macs']) / 1e6:.3f}",
            "MACs_ratio": f"{int(last['macs']) / int(first['macs']):.3f}",
            "speedup_measured": _speedup(run, int(last["step"])),
        })
    return top1_rows, last_rows


def adaptive_table(runs: Sequence[Run]) -> list[dict]:
    """Per method: parameters and accuracy before and after the adaptive schedule."""
    table = []
    for run in runs:
        base = run.rows[0]
        final = [row for row in run.rows if row["accepted"] == "True"][-1]
        table.append({
            "method": run.method,
            "params_M": f"{int(base['params']) / 1e6:.4f} -> {int(final['params']) / 1e6:.4f}",
            "removed_units": final["removed_units"],
            "top1": f"{float(base['top1']):.4f} -> {float(final['top1']):.4f}",
            "top5": f"{float(final['top5']):.4f}",
            "MACs_M": f"{int(final['macs']) / 1e6:.3f}",
            "speedup_measured": _speedup(run, int(final["step"])),
        })
    return table


def main(argv: list[str] | None = None) -> Path:
    """Write every table and figure; returns the results directory."""
    cfg = parse_config(ParseConfig, argv, description=__doc__)
    root = Path(cfg.output_dir)
    if not (root / "vit").is_dir():
        raise FileNotFoundError(f"no ViT runs under {root / 'vit'} (expected --output-dir of vit/main.py runs)")
    out = Path(cfg.results_dir) if cfg.results_dir else root / "vit" / "results"
    runs = collect_runs(root)
    markdown = ["# ViT MLP pruning results (no fine-tuning)\n"]
    for model in sorted({run.model for run in runs}):
        by_kind = {kind: [r for r in runs if r.model == model and r.experiment == kind]
                   for kind in ("uniform", "adaptive", "norm_analysis")}
        if by_kind["uniform"]:
            top1, last = uniform_tables(by_kind["uniform"])
            atomic_write_csv(out / f"vit_uniform_top1_{model}.csv", top1)
            atomic_write_csv(out / f"vit_uniform_last_{model}.csv", last)
            markdown += [f"## {model}: uniform, top-1 per removed units per layer\n", markdown_table(top1),
                         f"\n## {model}: uniform, at the largest amount\n", markdown_table(last), ""]
            plot_uniform({r.method: ([int(x["amount"]) for x in r.rows], [float(x["top1"]) for x in r.rows])
                          for r in by_kind["uniform"]}, f"{model}: uniform MLP pruning", out / f"vit_uniform_{model}")
        if by_kind["adaptive"]:
            table = adaptive_table(by_kind["adaptive"])
            atomic_write_csv(out / f"vit_adaptive_{model}.csv", table)
            markdown += [f"## {model}: adaptive\n", markdown_table(table), ""]
            series = {}
            for r in by_kind["adaptive"]:
                accepted = [x for x in r.rows if x["accepted"] == "True"]
                series[r.method] = ([int(x["params"]) / 1e6 for x in accepted], [float(x["top1"]) for x in accepted])
            plot_adaptive(series, f"{model}: adaptive MLP pruning", out / f"vit_adaptive_{model}")
        for r in by_kind["norm_analysis"]:
            plot_norms(r.rows, f"{model}: MLP weights per layer", out / f"vit_norms_{model}")
    atomic_write_text(out / "vit_tables.md", "\n".join(markdown))
    wrote(out)
    return out


if __name__ == "__main__":
    run_cli(main, "vit/parse.py")
