"""The GPT-2 grid as data (docs/reproduction.md §3), expanded into ``gpt2/main.py`` commands.

Two stages, run by ``scripts/gridrun.py`` (bash: one after another here; SLURM: two job
arrays, the second ``afterok`` on the first): ``base`` = the unpruned model on every data
set (for ``tiny`` this also trains and caches the model, so the pruning array does not train
it in parallel), then ``prune`` = every method at every rate. A run is done when its
``result.csv`` exists, so re-running resumes.

    python -m gpt2.grid --preset tiny [--parse]                 # the README table, on CPU
    python -m gpt2.grid --preset paper --dry-run                # gpt2 .. gpt2-xl, PTB and WikiText-2
    python -m gpt2.grid --models gpt2 --datasets wikitext2 --methods proj,proj_coef --rates 0.1

plus the ``gridrun`` flags (``--backend``, ``--dependency``, ``--headers-from``, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # `python gpt2/grid.py`: import engine etc. from this repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.harness import run_cli, split_list  # noqa: E402
from gpt2.main import ATTENTION_METHOD_NAMES as ATTENTION_METHODS  # noqa: E402  (torch-free)
from gpt2.main import GPT2Config, run_name  # noqa: E402
from scripts.gridrun import Stage, Task, add_grid_arguments, options_from_args, run_stages  # noqa: E402

# Preset -> model -> data sets. "paper": the models and data sets of the paper's §4.2 table.
PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    "tiny": {"tiny": ("stdlib",)},
    "paper": {
        "gpt2": ("ptb", "wikitext2"),
        "gpt2-medium": ("wikitext2",),
        "gpt2-large": ("wikitext2",),
        "gpt2-xl": ("wikitext2",),
    },
}
DEFAULT_METHODS = ("random", "norm", "proj_coef", "proj", "proj_exact", "proj_comp", "depgraph")
DEFAULT_RATES = (0.1, 0.2, 0.3)


@dataclasses.dataclass
class GPT2Grid:
    """Which runs to make; ``extra`` flags go to every ``gpt2/main.py`` command."""

    models: dict[str, tuple[str, ...]]
    methods: tuple[str, ...] = DEFAULT_METHODS
    rates: tuple[float, ...] = DEFAULT_RATES
    output_dir: str = "run"
    extra: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in ATTENTION_METHODS]
        if unknown:
            raise ValueError(f"methods {unknown} unknown; expected names of {sorted(ATTENTION_METHODS)}")
        if any(not 0.0 < r < 1.0 for r in self.rates):
            raise ValueError(f"rates must be in (0, 1), got {self.rates}")


def _task(grid: GPT2Grid, model: str, dataset: str, method: str, rate: float) -> Task:
    flags = ["--model", model, "--dataset", dataset, "--method", method, "--rate", f"{rate:g}",
             "--output-dir", grid.output_dir, *grid.extra]
    name = run_name(GPT2Config(model=model, dataset=dataset, method=method, rate=rate))
    return Task(name=name, command=(sys.executable, "-m", "gpt2.main", *flags),
                done_path=f"{grid.output_dir}/gpt2/{name}/result.csv")


def build_stages(grid: GPT2Grid) -> list[Stage]:
    """``base`` (unpruned runs) then ``prune`` (every method x rate), per model and data set."""
    pairs = [(model, dataset) for model, datasets in grid.models.items() for dataset in datasets]
    base = tuple(_task(grid, model, dataset, "none", 0.0) for model, dataset in pairs)
    prune = tuple(_task(grid, model, dataset, method, rate)
                  for model, dataset in pairs for method in grid.methods for rate in grid.rates)
    return [Stage("base", base), Stage("prune", prune)]


def _csv(text: str | None) -> tuple[str, ...]:
    return tuple(split_list(text))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Expand and run the GPT-2 perplexity grid (docs/reproduction.md §3).")
    parser.add_argument("--preset", default="tiny", choices=tuple(PRESETS), help="models and data sets")
    parser.add_argument("--models", default=None, help="comma list replacing the preset's models")
    parser.add_argument("--datasets", default=None, help="comma list replacing every model's data sets")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma list of attention methods")
    parser.add_argument("--rates", default=",".join(f"{r:g}" for r in DEFAULT_RATES), help="comma list of QK rates")
    parser.add_argument("--output-dir", default="run", help="gpt2/main.py --output-dir")
    parser.add_argument("--main-args", default="", help="extra flags for every run, e.g. '--max-blocks 20'")
    parser.add_argument("--parse", action="store_true", help="afterwards, write the tables with gpt2/parse.py")
    add_grid_arguments(parser)
    args = parser.parse_args(argv)
    models = dict(PRESETS[args.preset])
    if args.models:
        models = {m: models.get(m, ("wikitext2",)) for m in _csv(args.models)}
    if args.datasets:
        models = {m: _csv(args.datasets) for m in models}
    grid = GPT2Grid(models=models, methods=_csv(args.methods), rates=tuple(float(r) for r in _csv(args.rates)),
                    output_dir=args.output_dir, extra=tuple(args.main_args.split()))
    stages = build_stages(grid)
    options = options_from_args(args, default_job_name=f"gpt2-{args.preset}")
    code = run_stages(stages, options)
    if code == 0 and args.parse and not options.dry_run and all(t.is_done() for s in stages for t in s.tasks):
        from gpt2.parse import main as parse_main

        parse_main(["--output-dir", args.output_dir, "--methods", ",".join(grid.methods)])
    return code


if __name__ == "__main__":
    sys.exit(run_cli(main, "gpt2/grid.py"))
