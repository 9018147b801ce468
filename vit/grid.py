"""The ViT grid as data (docs/reproduction.md §2): models x methods x experiments as ``vit/main.py`` tasks.

Two stages, run by ``scripts/gridrun.py`` (sequentially under bash, or as dependent SLURM job
arrays): ``analysis`` (``norm_analysis`` per model; for ``small`` it also trains and caches the
digits ViT, so the arrays of the next stage do not all train it at once), then ``prune``
(``uniform`` for every method, ``adaptive`` for every method that can prune a layer twice). A run is
done when its ``.json`` summary exists; finished runs are skipped, so a re-submitted grid resumes.

    python -m vit.grid [--models vit_b_16,small] [--methods l2,proj000] [--experiments uniform]
        [--output-dir run] [--dataroot data/imagenet] [--extra "--eval-batches 10"] [--parse]
        [--dry-run] [--backend auto|bash|slurm] [...more scripts/gridrun.py flags]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python vit/grid.py`: import engine etc. from this repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.harness import plain_text, run_cli, split_list  # noqa: E402
from scripts.gridrun import Stage, Task, add_grid_arguments, options_from_args, resolve_backend, run_stages  # noqa: E402
from vit.main import EXPERIMENTS, VIT_METHOD_NAMES, VIT_MODEL_NAMES, ViTConfig, run_dir, run_name  # noqa: E402

__all__ = ["PAPER_MODELS", "GridSpec", "build_stages", "main"]

PAPER_MODELS: tuple[str, ...] = VIT_MODEL_NAMES  # B/16, B/32, L/16, L/32, H/14
SEED = 1


@dataclass(frozen=True)
class GridSpec:
    """Which part of the grid to run and the flags every task gets."""

    models: tuple[str, ...] = PAPER_MODELS
    methods: tuple[str, ...] = VIT_METHOD_NAMES
    experiments: tuple[str, ...] = EXPERIMENTS
    output_dir: str = "run"
    dataroot: str = "data/imagenet"
    extra: tuple[str, ...] = ()
    python: str = sys.executable

    def __post_init__(self) -> None:
        for label, values, known in (("models", self.models, ("small", *VIT_MODEL_NAMES)),
                                     ("methods", self.methods, VIT_METHOD_NAMES),
                                     ("experiments", self.experiments, EXPERIMENTS)):
            unknown = [v for v in values if v not in known]
            if unknown or not values:
                raise ValueError(f"--{label} must be a non-empty comma list of {list(known)}, got {list(values)}")


def _task(spec: GridSpec, model: str, experiment: str, method: str) -> Task:
    cfg = ViTConfig(model=model, experiment=experiment, method=method, output_dir=spec.output_dir)
    name = run_name(cfg)
    command = [spec.python, "-m", "vit.main", "--model", model, "--experiment", experiment, "--method", method,
               "--output-dir", spec.output_dir, "--seed", str(SEED)]
    if model in VIT_MODEL_NAMES:
        command += ["--dataroot", spec.dataroot]
    return Task(name=f"vit-{name}", command=[*command, *spec.extra],
                done_path=str(run_dir(cfg) / f"{name}.json"))


def build_stages(spec: GridSpec) -> list[Stage]:
    """``[analysis, prune]`` stages (empty stages dropped)."""
    from vit.methods import VIT_METHODS  # which methods prune a layer twice (adaptive)

    analysis = [_task(spec, model, "norm_analysis", spec.methods[0])
                for model in spec.models if "norm_analysis" in spec.experiments]
    prune = [
        _task(spec, model, experiment, method)
        for model in spec.models
        for experiment in ("uniform", "adaptive")
        if experiment in spec.experiments
        for method in spec.methods
        if experiment == "uniform" or VIT_METHODS[method].repeatable
    ]
    return [stage for stage in (Stage("analysis", analysis), Stage("prune", prune)) if stage.tasks]


def _csv(text: str, default: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(split_list(text)) if text else default


def main(argv: Sequence[str] | None = None) -> int:
    """Run or submit the grid; with ``--parse``, write the tables once it has finished here."""
    parser = argparse.ArgumentParser(description=plain_text(__doc__.split("\n\n")[0]))
    parser.add_argument("--models", default="", help=f"comma list (default {','.join(PAPER_MODELS)}; small = digits)")
    parser.add_argument("--methods", default="", help="comma list (default: every method of vit/methods.py)")
    parser.add_argument("--experiments", default="", help=f"comma list of {','.join(EXPERIMENTS)} (default all)")
    parser.add_argument("--output-dir", default="run")
    parser.add_argument("--dataroot", default="data/imagenet", help="ImageNet root for the torchvision models")
    parser.add_argument("--extra", default="", help="more vit/main.py flags for every task, one quoted string")
    parser.add_argument("--parse", action="store_true", help="after the grid: vit/parse.py -> tables and figures")
    add_grid_arguments(parser)
    args = parser.parse_args(argv)
    spec = GridSpec(
        models=_csv(args.models, PAPER_MODELS),
        methods=_csv(args.methods, VIT_METHOD_NAMES),
        experiments=_csv(args.experiments, EXPERIMENTS),
        output_dir=args.output_dir,
        dataroot=args.dataroot,
        extra=tuple(shlex.split(args.extra)),
    )
    options = options_from_args(args, default_job_name="vit")
    code = run_stages(build_stages(spec), options)
    finished_here = options.wait or resolve_backend(options.backend) == "bash"  # not just submitted
    if code == 0 and args.parse and finished_here and not args.dry_run and (Path(spec.output_dir) / "vit").is_dir():
        from vit.parse import main as parse_main

        print(f"tables: {parse_main(['--output-dir', spec.output_dir])}")
    return code


if __name__ == "__main__":
    sys.exit(run_cli(main, "vit/grid.py"))
