"""The Table 1 grid as data (docs/reproduction.md §1), expanded into ``main.py`` commands.

One place lists data sets, models, methods, speed-ups and the paper's training settings;
the launchers (``scripts/master.sbatch``, ``cifar10.sh``, ``cifar100.sh``, ``modelnet40.sh``,
``imagenet.sh``, ``digits.sh``) only choose from it. Two stages per grid: pretraining
(one task per data set and model), then pruning + fine-tuning (one task per data set, model,
method and speed-up), which under SLURM is a job array depending on the pretraining array.
``scripts/gridrun.py`` runs or submits them and skips finished runs (``scripts/parse_logs.py``
reads their log as complete), so a re-submitted grid resumes. Methods come from
``engine/methods_table.py``, run names and paths from ``engine/table1_layout.py``.

Usage (from the repository root)::

    python -m scripts.grid --dataset cifar10 [--dataset cifar100 ...] [--models resnet56]
        [--methods l2,proj_sl] [--speed-ups 2,3] [--output-dir run] [--stage all|pretrain|prune]
        [--pretrain-epochs N] [--finetune-epochs N] [--sl-epochs N] [--dry-run] [--backend ...]
        [--parse]          # after a bash (or --wait) run: scripts/parse_logs.py -> tables

plus the ``gridrun`` flags (``--backend``, ``--dependency``, ``--headers-from``, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from engine import table1_layout as layout
from engine.methods_table import GRID_METHODS, METHOD_ROWS
from scripts.gridrun import Stage, Task, add_grid_arguments, options_from_args, run_stages

TABLE1_METHODS: tuple[str, ...] = GRID_METHODS  # the default --methods
# Rows beyond the paper (the compensating pruner, docs/algorithm.md §8.1), in the digits grid too.
EXTRA_METHODS: tuple[str, ...] = ("proj_comp", "proj_calib")

SPEED_UPS: tuple[float, ...] = (2.0, 3.0)
SEED = 1
SL_REG = 1e-5  # --reg for the sparsity-learning methods (docs/reproduction.md §1)
# A run is finished when scripts/parse_logs.py reads its log as complete: a pretraining log with its final
# "Best Acc=", a pruning log with a "Best Acc=" after the pruning lines (not the sparsity-learning one) or
# after a resumed fine-tuning, with no restart after it.
DONE_CHECK = "scripts.parse_logs:run_finished"


@dataclasses.dataclass(frozen=True)
class DatasetPlan:
    """Models and ``main.py`` settings of one data set (flag name without dashes -> value)."""

    models: tuple[str, ...]
    pretrain: dict[str, str]
    prune: dict[str, str]
    launcher: tuple[str, ...] = ()  # arguments between python and main.py, e.g. torchrun's for ImageNet
    speed_ups: tuple[float, ...] = SPEED_UPS
    methods: tuple[str, ...] = TABLE1_METHODS  # the default rows of this grid
    model_pretrain: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)  # per-model pretrain


_FINETUNE = {"total-epochs": "100", "lr": "0.01", "lr-decay-milestones": "60,80"}
PLANS: dict[str, DatasetPlan] = {
    "cifar10": DatasetPlan(
        models=("vgg19", "resnet56", "mobilenetv2"),
        pretrain={"total-epochs": "200", "lr": "0.1", "lr-decay-milestones": "120,160,180"},
        prune=dict(_FINETUNE),
    ),
    "cifar100": DatasetPlan(
        models=("vgg19", "resnet56", "mobilenetv2"),
        pretrain={"total-epochs": "200", "lr": "0.1", "lr-decay-milestones": "120,160,180"},
        prune=dict(_FINETUNE),
    ),
    "modelnet40": DatasetPlan(
        models=("pointnet", "dgcnn"),
        pretrain={"total-epochs": "250", "lr": "0.1", "lr-decay-milestones": "100,160,200", "batch-size": "32"},
        prune={**_FINETUNE, "batch-size": "32"},
    ),
    "imagenet": DatasetPlan(
        models=("resnet50",),
        pretrain={"total-epochs": "90", "lr": "0.08", "lr-decay-milestones": "30,60,80", "batch-size": "256"},
        # the paper's target is 2 GFLOPs (about 2x from ResNet-50's 4.1); the run name says 2.0
        prune={"total-epochs": "90", "lr": "0.08", "lr-decay-milestones": "30,60,80", "batch-size": "256",
               "target-flops": "2"},
        launcher=("-m", "torch.distributed.run", "--nproc_per_node={gpus}"),  # = torchrun
        speed_ups=(2.0,),
    ),
    # The embedded default: a CPU-sized Table 1 in miniature (a few minutes on 2 cores).
    "digits": DatasetPlan(
        models=("resnet20",),
        pretrain={"total-epochs": "30", "lr": "0.1", "lr-decay-milestones": "20,25", "batch-size": "64"},
        # 100 pruning steps instead of 400: EigenDamage (obdc) refreshes its Fisher before every step
        prune={"total-epochs": "6", "lr": "0.01", "lr-decay-milestones": "4", "batch-size": "64",
               "iterative-steps": "100", "sl-total-epochs": "4", "sl-lr-decay-milestones": "3", "bn-recalibrate": "4"},
        speed_ups=(2.0,),
        methods=TABLE1_METHODS + EXTRA_METHODS,
        # the ResNet-20 schedule fails other models on 8x8 digits: VGG-19 reaches .24 at lr 0.1 (.976 at
        # 0.01), MobileNetV2 .61 in 30 epochs (about .95 with 60 epochs at lr 0.05, batch 32), ResNet-56
        # diverges at lr 0.1 (loss 45,100 after one epoch, .26 at best; .969 at 0.02; one thread, 2026-12-05)
        model_pretrain={"vgg19": {"lr": "0.01"}, "resnet56": {"lr": "0.02"},
                        "mobilenetv2": {"total-epochs": "60", "lr": "0.05", "lr-decay-milestones": "40,50",
                                        "batch-size": "32"}},
    ),
}


def _flags(settings: dict[str, str]) -> list[str]:
    out: list[str] = []
    for key, value in settings.items():
        out += [f"--{key}", value]
    return out


@dataclasses.dataclass
class GridConfig:
    """What to expand: data sets, optional subsets and epoch overrides (None = the plan's)."""

    datasets: tuple[str, ...]
    models: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None
    speed_ups: tuple[float, ...] | None = None
    output_dir: str = "run"
    dataroot: str | None = None
    pretrain_epochs: int | None = None
    finetune_epochs: int | None = None
    sl_epochs: int | None = None
    seeds: tuple[int, ...] | None = None  # None: seed 1 into output_dir; else one output_dir/seed<N> per seed
    python: str = sys.executable
    main: str = "main.py"
    gpus: int = 4

    def __post_init__(self) -> None:
        for name in self.datasets:
            if name not in PLANS:
                raise ValueError(f"dataset {name!r}: expected one of {', '.join(PLANS)}")
        if self.models:
            from engine import registry  # the model list lives with the builders (imports torch)

            for name in self.models:
                if name not in registry.MODELS:
                    raise ValueError(f"--models {name!r}: unknown model; valid: {', '.join(sorted(registry.MODELS))}")
        for name in self.methods or ():
            if name not in METHOD_ROWS:
                raise ValueError(f"method {name!r}: expected one of {', '.join(METHOD_ROWS)}")
        for value in self.speed_ups or ():
            if value <= 1:
                raise ValueError(f"speed-up {value}: expected a FLOPs speed-up above 1")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)
                                       or any(seed < 0 for seed in self.seeds)):
            raise ValueError(f"--seeds {self.seeds}: expected distinct non-negative integers, e.g. 1,2,3")
        for key in ("pretrain_epochs", "finetune_epochs", "sl_epochs"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} {value}: expected a positive number of epochs")


def _models(cfg: GridConfig, dataset: str) -> tuple[str, ...]:
    """The plan's models, or the requested ones (any model with one data set, else the plan's subset)."""
    plan = PLANS[dataset]
    if cfg.models is None:
        return plan.models
    if len(cfg.datasets) == 1:
        return cfg.models
    return tuple(m for m in cfg.models if m in plan.models)


def _prefix(cfg: GridConfig, dataset: str, seed: int) -> list[str]:
    """``python [launcher args] main.py --seed <seed>``."""
    launcher = [part.format(gpus=cfg.gpus) for part in PLANS[dataset].launcher]
    return [cfg.python, *launcher, cfg.main, "--seed", str(seed)]


def seed_runs(cfg: GridConfig) -> list[tuple[int, str, str]]:
    """``(seed, output dir, task-name suffix)`` per seed: run names carry no seed, so each seed has its own
    run tree (``<output_dir>/seed<N>``; without ``seeds``: seed 1 in ``output_dir`` itself)."""
    if cfg.seeds is None:
        return [(SEED, cfg.output_dir, "")]
    return [(seed, str(Path(cfg.output_dir) / f"seed{seed}"), f"-seed{seed}") for seed in cfg.seeds]


def _tail(cfg: GridConfig, output_dir: str) -> list[str]:
    out = [] if output_dir == "run" else ["--output-dir", output_dir]
    return out + ([] if cfg.dataroot is None else ["--dataroot", cfg.dataroot])


def pretrain_tasks(cfg: GridConfig) -> list[Task]:
    """One task per (data set, model): ``main.py --mode pretrain`` with the paper's schedule."""
    tasks = []
    for seed, output_dir, suffix in seed_runs(cfg):
        for dataset in cfg.datasets:
            plan = PLANS[dataset]
            for model in _models(cfg, dataset):
                settings = {**plan.pretrain, **plan.model_pretrain.get(model, {})}
                if cfg.pretrain_epochs is not None:
                    settings["total-epochs"] = str(cfg.pretrain_epochs)
                argv = _prefix(cfg, dataset, seed) + ["--mode", "pretrain", "--dataset", dataset, "--model", model]
                argv += _flags(settings) + _tail(cfg, output_dir)
                log = layout.log_path(output_dir, dataset, "pretrain", layout.run_name(dataset, model))
                tasks.append(Task(f"{dataset}-pretrain-{model}{suffix}", tuple(argv), str(log),
                                  done_check=DONE_CHECK))
    return tasks


def prune_tasks(cfg: GridConfig) -> list[Task]:
    """One task per (data set, model, method, speed-up): global pruning, then fine-tuning."""
    return [_prune_task(cfg, dataset, model, method, speed_up, seed_run)
            for seed_run in seed_runs(cfg) for dataset in cfg.datasets for model in _models(cfg, dataset)
            for method in cfg.methods or PLANS[dataset].methods
            for speed_up in cfg.speed_ups or PLANS[dataset].speed_ups]


def _prune_task(cfg: GridConfig, dataset: str, model: str, method: str, speed_up: float,
                seed_run: tuple[int, str, str] | None = None) -> Task:
    """The pruning task; ``seed_run``: one of :func:`seed_runs` (default: its first)."""
    seed, output_dir, suffix = seed_run or seed_runs(cfg)[0]
    settings = dict(PLANS[dataset].prune)
    if cfg.finetune_epochs is not None:
        settings["total-epochs"] = str(cfg.finetune_epochs)
    learns_sparsity = METHOD_ROWS[method].sparsity_learning
    if not learns_sparsity:
        settings = {k: v for k, v in settings.items() if not k.startswith("sl-")}
    elif cfg.sl_epochs is not None:
        settings["sl-total-epochs"] = str(cfg.sl_epochs)
    argv = _prefix(cfg, dataset, seed) + ["--mode", "prune", "--dataset", dataset, "--model", model]
    argv += ["--restore", str(layout.pretrain_checkpoint(output_dir, dataset, model)), "--finetune",
             "--global-pruning"]
    if learns_sparsity:
        argv += ["--reg", f"{SL_REG:g}"]
    argv += ["--speed-up", f"{float(speed_up):g}", "--method", method]
    argv += _flags(settings) + _tail(cfg, output_dir)
    name = layout.run_name(dataset, model, method, speed_up, global_pruning=True)
    log = layout.log_path(output_dir, dataset, "prune", name)
    return Task(name + suffix, tuple(argv), str(log), done_check=DONE_CHECK)


def build_stages(cfg: GridConfig, stage: str = "all") -> list[Stage]:
    """The grid's stages: ``pretrain`` then ``prune`` (or one of them)."""
    stages = []
    if stage in ("all", "pretrain"):
        stages.append(Stage("pretrain", tuple(pretrain_tasks(cfg))))
    if stage in ("all", "prune"):
        stages.append(Stage("prune", tuple(prune_tasks(cfg))))
    return [s for s in stages if s.tasks]


def _csv(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(part for part in text.split(",") if part)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Expand and run the Table 1 grid (docs/reproduction.md §1).")
    parser.add_argument("--dataset", action="append", required=True, choices=tuple(PLANS),
                        help="data set(s) of the grid (repeatable)")
    parser.add_argument("--models", default=None, help="comma list (default: the plan's models)")
    parser.add_argument("--methods", default=None,
                        help="comma list (default: the plan's methods: Table 1's; on digits also "
                             f"{','.join(EXTRA_METHODS)})")
    parser.add_argument("--speed-ups", default=None, help="comma list (default: 2,3)")
    parser.add_argument("--output-dir", default="run", help="main.py --output-dir")
    parser.add_argument("--dataroot", default=None, help="main.py --dataroot")
    parser.add_argument("--pretrain-epochs", type=int, default=None)
    parser.add_argument("--finetune-epochs", type=int, default=None)
    parser.add_argument("--sl-epochs", type=int, default=None)
    parser.add_argument("--seeds", default=None,
                        help="comma list, e.g. 1,2,3: one run tree <output-dir>/seed<N> per seed, tables as "
                             "mean [min, max] over them (default: seed 1 into --output-dir)")
    parser.add_argument("--gpus", type=int, default=int(os.environ.get("GPUS", "4")),
                        help="torchrun processes for ImageNet (env GPUS)")
    parser.add_argument("--stage", default="all", choices=("all", "pretrain", "prune"))
    parser.add_argument("--parse", action="store_true",
                        help="when the grid has finished here: write tables with scripts/parse_logs.py")
    parser.add_argument("--results", default=None, help="--out of parse_logs (default scripts/results/<datasets>)")
    parser.add_argument("--metric", default="best_pruned,one_shot,one_shot_bn",
                        help="--metric of parse_logs for --parse")
    add_grid_arguments(parser)
    args = parser.parse_args(argv)
    speed_ups = _csv(args.speed_ups)
    if speed_ups and not all(part.replace(".", "", 1).isdigit() for part in speed_ups):
        raise ValueError(f"--speed-ups {args.speed_ups!r}: expected comma-separated numbers, e.g. 2,3")
    seeds = _csv(args.seeds)
    if seeds is not None and not all(part.strip().isdigit() for part in seeds):
        raise ValueError(f"--seeds {args.seeds!r}: expected comma-separated non-negative integers, e.g. 1,2,3")
    cfg = GridConfig(
        datasets=tuple(dict.fromkeys(args.dataset)), models=_csv(args.models), methods=_csv(args.methods),
        speed_ups=None if speed_ups is None else tuple(float(s) for s in speed_ups), output_dir=args.output_dir,
        dataroot=args.dataroot, pretrain_epochs=args.pretrain_epochs, finetune_epochs=args.finetune_epochs,
        sl_epochs=args.sl_epochs, gpus=args.gpus, seeds=None if seeds is None else tuple(int(s) for s in seeds),
    )
    stages = build_stages(cfg, args.stage)
    if not stages:
        raise ValueError("the grid is empty: check --models against the data sets' models")
    options = options_from_args(args, default_job_name="-".join(cfg.datasets))
    code = run_stages(stages, options)
    all_done = all(t.is_done() for s in stages for t in s.tasks)
    # tables once the grid has finished here (or failed: then from the runs that did finish)
    if args.parse and not options.dry_run and (all_done or code != 0):
        out = args.results or f"scripts/results/{'-'.join(cfg.datasets)}"
        parse = [sys.executable, "-m", "scripts.parse_logs", "--runs", cfg.output_dir, "--out", out,
                 "--datasets", ",".join(cfg.datasets), "--metric", args.metric]
        parsed = subprocess.run(parse).returncode if Path(cfg.output_dir).is_dir() else 0
        code = code or parsed
    return code


if __name__ == "__main__":
    from engine.harness import run_cli

    run_cli(lambda: sys.exit(main()), prog="python -m scripts.grid")
