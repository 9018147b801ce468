"""One-shot CNN pruning on digits, measured honestly: every Table 1 method and the compensating pruner.

    python -m benchmarks.cnn_one_shot [--output-dir run/one_shot] [--methods l2,proj_calib]
        [--finetune-epochs 6] [--skip-grid] [--seed-methods slim,l2,obdc,proj_comp,proj_calib]
        [--noise-methods slim,l2,proj_comp,proj_calib] [--cost-model resnet56] [--positions 0,32,16,8,4]
    python -m benchmarks.cnn_one_shot --output-dir . --only-positions   # after the Quick start's digits run

Runs the digits Table 1 grid (``scripts.grid``: pretraining, then ``main.py --mode prune`` with
``--bn-recalibrate 4`` for every method, the usual short fine-tuning) on four settings — ResNet-20
2× and 3×, VGG-19 2×, MobileNetV2 2× — and prints, per setting, the accuracy right after pruning
(``one_shot``), after re-estimating BatchNorm statistics on 4 training batches (``one_shot_bn``) and
the best after fine-tuning (``best_pruned``). Calibration uses training images only; the accuracies
are on the test split.

Then the noise: the same one-shot runs on ResNet-20 (2× and 3×) for a few methods with seeds 2-5
(``main.py --seed``: the calibration draw, the recalibration batches, random scores), no
fine-tuning; mean, min and max of ``one_shot`` and ``one_shot_bn`` over seeds 1-5 (seed 1 is the
grid's run). One test image is .0022, and a single seed decides little.

Then the recalibration noise: the seed-1 pruned ResNet-20s (2×, 3×; no fine-tuning, saved before any
recalibration) and the unpruned one, on the test split with no recalibration, after recalibrating on
4 shuffled training batches of 64 (mean, min and max over 8 draws) and on the whole training split.
Which 4 batches are drawn moves ``one_shot_bn`` about as much as the methods differ.

Then the cost: the progressive pruning loop of ``l2`` and of ``proj_calib`` (calibration included)
on the same pretrained ResNet-56, timed side by side in this process (goal: under 2× ``l2``), with
the digits grid's 100-step schedule and the paper's 400 steps.
Then sampled positions (``max_positions``, docs/algorithm.md §8.1.2): ``proj_calib`` one-shot on the
seed-1 ResNet-20 with its second moments from at most 32, 16, 8, 4 of the 64 positions per image,
validation and test accuracy and seconds (``--only-positions``: this table alone, written to
``<output-dir>/run/positions.md``, next to the network it reads: git-ignored for ``--output-dir .``).
The tables are printed and written to ``<output-dir>/one_shot.md``.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/cnn_one_shot.py`: import engine etc. from this repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

SETTINGS = (("resnet20", "2,3"), ("vgg19,mobilenetv2", "2"))
METRICS = ("one_shot", "one_shot_bn", "best_pruned")
COST_GOAL = 2.0


def _task_env() -> dict[str, str]:
    """The runs' environment: one thread unless ``OMP_NUM_THREADS`` says otherwise, as ``scripts/digits.sh``
    (the thread count changes float32 summation order, hence the trained network: with it, the ResNet-20
    here is the Quick start's)."""
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def _grid(output_dir: Path, models: str, *flags: str) -> None:
    """``scripts.grid`` on digits into ``output_dir`` (sequential; finished runs are skipped)."""
    subprocess.run([sys.executable, "-m", "scripts.grid", "--dataset", "digits", "--models", models,
                    "--output-dir", str(output_dir / "run"), "--backend", "bash",
                    "--task-log-dir", str(output_dir / "logs"), "--log-dir", str(output_dir / "logs"), *flags],
                   check=True, env=_task_env())


def run_grid(output_dir: Path, methods: str | None, finetune_epochs: int | None) -> None:
    """The digits grid for every setting."""
    for models, speed_ups in SETTINGS:
        flags = ["--speed-ups", speed_ups]
        if methods:
            flags += ["--methods", methods]
        if finetune_epochs is not None:
            flags += ["--finetune-epochs", str(finetune_epochs)]
        _grid(output_dir, models, *flags)


def accuracy_table(runs_dir: Path) -> str:
    """Markdown: one row per method, ``one_shot / one_shot_bn / best_pruned`` per setting."""
    from scripts import parse_logs

    runs, _ = parse_logs.collect(runs_dir, ["digits"], "global")
    rows = [run.summary() for run in runs if run.kind == "prune"]
    columns, methods, _ = parse_logs.summary_table(rows, "one_shot")
    values = {metric: parse_logs.means(parse_logs.summary_table(rows, metric)[2]) for metric in METRICS}
    head = ["method"] + [parse_logs.column_label(c) for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = {(metric, c): max(values[metric].get((m, c), -1.0) for m in methods) for metric in METRICS
            for c in columns}
    for method in methods:
        cells = [parse_logs.METHOD_LABELS.get(method, method) + f" (`{method}`)"]
        for column in columns:
            parts = []
            for metric in METRICS:
                value = values[metric].get((method, column), math.nan)
                text = "–" if math.isnan(value) else f"{value:.3f}".lstrip("0")
                parts.append(f"**{text}**" if value == best[(metric, column)] else text)
            cells.append(" / ".join(parts))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _set_flag(argv: list[str], flag: str, value: str) -> None:
    """Set ``flag``'s value in ``argv`` (appended when absent)."""
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]


def _seed_run(output_dir: Path, model: str, method: str, speed_up: float, seed: int, *,
              runs_dir: Path | None = None, bn_recalibrate: int | None = None,
              sl_restore: Path | None = None, run: bool = True) -> Path:
    """The grid's pruning run of ``method`` with ``--seed seed`` and no fine-tuning; returns its log.

    ``runs_dir``: its ``--output-dir`` (default ``<output_dir>/seeds/seed<seed>``); ``bn_recalibrate``:
    None keeps the grid's ``--bn-recalibrate``; ``sl_restore``: a sparse checkpoint to start from.
    Skipped when its log and pruned checkpoint are already there, and never run when ``run`` is False
    (``--skip-grid``: only what is there is tabulated)."""
    from engine import table1_layout as layout
    from scripts import grid

    runs_dir = output_dir / "seeds" / f"seed{seed}" if runs_dir is None else runs_dir
    task = grid._prune_task(grid.GridConfig(datasets=("digits",), output_dir=str(output_dir / "run")),
                            "digits", model, method, speed_up)
    argv = [a for a in task.command if a != "--finetune"]
    _set_flag(argv, "--seed", str(seed))
    _set_flag(argv, "--output-dir", str(runs_dir))
    if bn_recalibrate is not None:
        _set_flag(argv, "--bn-recalibrate", str(bn_recalibrate))
    if sl_restore is not None:
        argv += ["--sl-restore", str(sl_restore)]
    recalibrates = "--bn-recalibrate" in argv and int(argv[argv.index("--bn-recalibrate") + 1]) > 0
    log = layout.log_path(runs_dir, "digits", "prune", layout.run_name("digits", model, method, speed_up))
    checkpoint = layout.pruned_checkpoint(log.parent, "digits", model, method)
    marker = "BN Acc:" if recalibrates else "Acc:"
    if run and not (log.is_file() and checkpoint.is_file() and marker in log.read_text()):
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_task_env())
    return log


def seed_table(output_dir: Path, methods: Sequence[str], seeds: Sequence[int] = (2, 3, 4, 5),
               model: str = "resnet20", speed_ups: Sequence[float] = (2.0, 3.0), run: bool = True) -> str:
    """Markdown: ``one_shot`` and ``one_shot_bn`` as mean [min, max] over seed 1 (the grid's run) and ``seeds``
    (``run`` False: over the logs already there)."""
    from engine import table1_layout as layout
    from scripts import parse_logs

    head = "| method | " + " | ".join(f"{model} {s:g}× one_shot | {model} {s:g}× one_shot_bn" for s in speed_ups)
    lines = [head + " |", "|---|" + "---|" * (2 * len(speed_ups))]
    for method in methods:
        cells = [parse_logs.METHOD_LABELS.get(method, method) + f" (`{method}`)"]
        for speed_up in speed_ups:
            name = layout.run_name("digits", model, method, speed_up)
            logs = [layout.log_path(output_dir / "run", "digits", "prune", name)]
            logs += [_seed_run(output_dir, model, method, speed_up, seed, run=run) for seed in seeds]
            runs = [parse_logs.parse_log(log) for log in logs if log.is_file()]
            summaries = [run.summary() for run in runs if not isinstance(run, str)]
            for metric in ("one_shot", "one_shot_bn"):
                values = [row[metric] for row in summaries if not math.isnan(row[metric])]
                cells.append(f"{sum(values) / len(values):.3f} [{min(values):.3f}, {max(values):.3f}]"
                             if values else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _recalibrated_accuracy(model: torch.nn.Module, batches: Sequence, test_loader) -> float:
    """Test accuracy of a copy of ``model`` with its BatchNorm statistics re-estimated on ``batches``
    (none: as it is)."""
    from engine.train import evaluate
    from projprune.calibration import recalibrate_batchnorm

    model = copy.deepcopy(model)
    if batches:
        recalibrate_batchnorm(model, batches, max_batches=len(batches))
    return evaluate(model.eval(), test_loader)[0]


def _recal_cells(model: torch.nn.Module, bundle, draws: int, batches: int = 4, batch_size: int = 64) -> list[str]:
    """``[no recalibration, mean [min, max] over draws of batches, the whole training split]`` as text.

    Draw ``d`` is the first ``batches`` of ``main.py --seed d``'s training loader, so draw 1 is the
    grid's recalibration (but for sparsity-learning methods, whose training consumed the loader first)."""
    from torch.utils.data import DataLoader

    from engine.harness import progress
    from engine.train import make_loader

    test_loader = DataLoader(bundle.test, batch_size=256)
    accs = []
    for draw in progress(range(1, draws + 1), desc="recalibration draws", leave=False):
        loader = make_loader(bundle.train, batch_size, True, draw)
        accs.append(_recalibrated_accuracy(model, list(itertools.islice(loader, batches)), test_loader))
    whole = list(DataLoader(bundle.train, batch_size=batch_size))
    return [f"{_recalibrated_accuracy(model, [], test_loader):.3f}",
            f"{sum(accs) / len(accs):.3f} [{min(accs):.3f}, {max(accs):.3f}]",
            f"{_recalibrated_accuracy(model, whole, test_loader):.3f}"]


def recal_noise_table(output_dir: Path, methods: Sequence[str], draws: int = 8, model_name: str = "resnet20",
                      speed_ups: Sequence[float] = (2.0, 3.0), batches: int = 4, run: bool = True) -> str:
    """Markdown: test accuracy of the seed-1 pruned models (grid command, no fine-tuning, no recalibration,
    into ``<output_dir>/recal_noise``) without recalibration, over ``draws`` draws of ``batches`` shuffled
    training batches of 64 (mean [min, max]) and with the whole training split; plus the unpruned model.
    ``run`` False (``--skip-grid``): no pruning run is started, missing ones are "–"."""
    from engine import table1_layout as layout

    pretrained = layout.pretrain_checkpoint(output_dir / "run", "digits", model_name)
    if not (run or pretrained.is_file()):
        return f"Recalibration noise skipped: no pretrained {model_name} at {pretrained} (--skip-grid)"
    import registry
    from engine.train import load_model
    from scripts import grid, parse_logs

    bundle = registry.get_dataset("digits")

    def fresh() -> torch.nn.Module:
        return registry.get_model(model_name, bundle.num_classes, bundle.in_channels, input_size=bundle.input_size)

    head = ["method"] + [f"{model_name} {s:g}× {what}" for s in speed_ups
                         for what in ("none", f"{batches}×64 ({draws} draws)", "whole train")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    unpruned = fresh()
    load_model(pretrained, unpruned)
    lines.append("| unpruned | " + " | ".join(_recal_cells(unpruned, bundle, draws, batches) * len(speed_ups)) + " |")
    for method in methods:
        cells = [parse_logs.METHOD_LABELS.get(method, method) + f" (`{method}`)"]
        for speed_up in speed_ups:
            name = layout.run_name("digits", model_name, method, speed_up)
            sparse = None
            if registry.get_method(method).sparsity_learning:  # the grid's sparse model, when there
                sparse = layout.sparse_checkpoint(layout.run_dir(output_dir / "run", "digits", "prune", name),
                                                  "digits", model_name, method, grid.SL_REG)
                sparse = sparse if sparse.is_file() else None
            log = _seed_run(output_dir, model_name, method, speed_up, grid.SEED, runs_dir=output_dir / "recal_noise",
                            bn_recalibrate=0, sl_restore=sparse, run=run)
            pruned = layout.pruned_checkpoint(log.parent, "digits", model_name, method)
            if not pruned.is_file():  # only with run=False
                cells += ["–"] * 3
                continue
            model = fresh()
            load_model(pruned, model)
            cells += _recal_cells(model, bundle, draws, batches)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


CHOICES = tuple((flops_aware, lmbda) for flops_aware in (False, True) for lmbda in (1e-4, 1e-3, 1e-2))
# positions_table: max_positions of proj_calib's sampled-positions rows (None: every one of the 8x8 map's 64)
POSITIONS = (None, 32, 16, 8, 4)


def _validation_setup(output_dir: Path, model_name: str, val_fraction: float, seed: int, calib_size: int):
    """``(pretrained, bundle, calibration, loaders)`` for one-shot runs judged on a validation split carved
    (seeded, ``val_fraction``) from the digits training split: the grid's seed-1 pretrained ``model_name``,
    ``calib_size`` calibration images from the rest of the training split, loaders ``{"val", "test"}``;
    None without the pretrained checkpoint."""
    from engine import table1_layout as layout

    checkpoint = layout.pretrain_checkpoint(output_dir / "run", "digits", model_name)
    if not checkpoint.is_file():
        return None
    from torch.utils.data import DataLoader, Subset

    import registry
    from engine.train import load_model

    bundle = registry.get_dataset("digits")
    order = torch.randperm(len(bundle.train), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = int(round(val_fraction * len(order)))
    val, rest = Subset(bundle.train, order[:cut]), Subset(bundle.train, order[cut:])
    calibration = registry.calibration_batches(rest, calib_size, seed)
    loaders = {"val": DataLoader(val, batch_size=256), "test": DataLoader(bundle.test, batch_size=256)}
    pretrained = registry.get_model(model_name, bundle.num_classes, bundle.in_channels, input_size=bundle.input_size)
    load_model(checkpoint, pretrained)
    return pretrained, bundle, calibration, loaders


def _one_shot_proj_calib(pretrained: torch.nn.Module, bundle, calibration, speed_up: float, loaders: dict,
                         lmbda: float = 1e-3, flops_aware: bool = True,
                         max_positions: int | None = None) -> tuple[dict[str, float], float]:
    """``({split: accuracy}, seconds)`` of ``proj_calib`` pruning a copy of ``pretrained`` one-shot (the
    grid's 100-step schedule, no recalibration, no fine-tuning) to ``speed_up``, timed from the pruner's
    construction to the end of its schedule."""
    import registry
    from engine.cnn import progressive_pruning
    from engine.train import evaluate
    from projprune.compensation import CalibratedProjectiveImportance

    model = copy.deepcopy(pretrained).eval()
    example = bundle.example_inputs(1)
    start = time.perf_counter()
    pruner = registry.get_method("proj_calib").pruner_cls(
        model, example, importance=CalibratedProjectiveImportance(lmbda=lmbda, flops_aware=flops_aware),
        iterative_steps=100, pruning_ratio=1.0, ignored_layers=registry.output_layers(model, bundle.num_classes),
        global_pruning=True, calibration=calibration, max_positions=max_positions)
    progressive_pruning(pruner, model, speed_up, example)
    seconds = time.perf_counter() - start
    return {split: evaluate(model.eval(), loader)[0] for split, loader in loaders.items()}, seconds


def choose_on_validation(output_dir: Path, model_name: str = "resnet20", speed_ups: Sequence[float] = (2.0, 3.0),
                         choices: Sequence[tuple[bool, float]] = CHOICES, val_fraction: float = 0.2, seed: int = 1,
                         calib_size: int = 64) -> str:
    """Markdown: ``proj_calib``'s settings (``flops_aware``, ``lmbda``) chosen on a validation split carved
    (seeded, ``val_fraction``) from the digits training split, never the test split.

    The seed-1 pretrained model of the grid is pruned one-shot with each setting, calibrated on
    ``calib_size`` images of the training split *without* the validation images; the choice is the best
    mean validation ``one_shot`` over ``speed_ups``. Test accuracies are shown after the choice, for
    information only. Caveat: the pretrained model saw the validation images in training (the grid pretrains
    on the whole training split), so validation accuracies are optimistic; they rank the settings.
    """
    setup = _validation_setup(output_dir, model_name, val_fraction, seed, calib_size)
    if setup is None:
        return f"Validation choice skipped: no pretrained {model_name} under {output_dir / 'run'}"
    pretrained, bundle, calibration, loaders = setup
    from engine.harness import progress

    accs: dict[tuple[bool, float], dict[str, list[float]]] = {}
    for flops_aware, lmbda in progress(choices, desc="proj_calib settings"):
        accs[(flops_aware, lmbda)] = {"val": [], "test": []}
        for speed_up in speed_ups:
            found, _ = _one_shot_proj_calib(pretrained, bundle, calibration, speed_up, loaders, lmbda=lmbda,
                                            flops_aware=flops_aware)
            for split, accuracy in found.items():
                accs[(flops_aware, lmbda)][split].append(accuracy)
    chosen = max(accs, key=lambda c: sum(accs[c]["val"]))
    head = ["flops_aware", "lmbda"] + [f"{split} {s:g}×" for split in ("val", "test") for s in speed_ups]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for choice, found in accs.items():
        mark = " (chosen)" if choice == chosen else ""
        cells = [f"{choice[0]}{mark}", f"{choice[1]:g}"] + [f"{a:.3f}" for split in ("val", "test")
                                                           for a in found[split]]
        lines.append("| " + " | ".join(cells) + " |")
    return (f"`proj_calib` one-shot (no recalibration, no fine-tuning), {model_name}, seed {seed}: settings chosen "
            f"by the mean validation accuracy ({len(loaders['val'].dataset)} training images held out of "
            "calibration; the pretrained network saw them); test accuracy shown for information only\n\n"
            + "\n".join(lines))


def positions_table(output_dir: Path, positions: Sequence[int | None] = POSITIONS, model_name: str = "resnet20",
                    speed_ups: Sequence[float] = (2.0, 3.0), val_fraction: float = 0.2,
                    seeds: Sequence[int] = (1, 2, 3, 4, 5), calib_size: int = 64) -> str:
    """Markdown: what sampled positions (``CompensatingPruner(max_positions=...)``, docs/algorithm.md §8.1.2)
    cost ``proj_calib`` in accuracy on trained weights: the grid's seed-1 pretrained ``model_name`` pruned
    one-shot to each of ``speed_ups`` with every limit in ``positions`` (None: every position); per seed a
    validation split and a calibration draw as in :func:`choose_on_validation`; validation and test accuracy
    as mean [min, max] over ``seeds``, and the mean seconds of the whole schedule."""
    setups = [_validation_setup(output_dir, model_name, val_fraction, seed, calib_size) for seed in seeds]
    if setups[0] is None:
        return f"Sampled-positions table skipped: no pretrained {model_name} under {output_dir / 'run'}"
    from engine.harness import progress

    head = ["max_positions"] + [f"{split} {s:g}×" for split in ("val", "test") for s in speed_ups] + \
        [f"seconds {s:g}×" for s in speed_ups]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    size = setups[0][1].input_size
    for limit in progress(positions, desc="max_positions"):
        found = {(split, s): [] for split in ("val", "test") for s in speed_ups}
        seconds = {s: [] for s in speed_ups}
        for pretrained, bundle, calibration, loaders in setups:
            for s in speed_ups:
                accuracies, elapsed = _one_shot_proj_calib(pretrained, bundle, calibration, s, loaders,
                                                           max_positions=limit)
                seconds[s].append(elapsed)
                for split, accuracy in accuracies.items():
                    found[(split, s)].append(accuracy)
        cells = [str(limit) if limit else f"all ({size * size})"]
        cells += [_spread(found[key]) for key in found] + [f"{sum(v) / len(v):.1f}" for v in seconds.values()]
        lines.append("| " + " | ".join(cells) + " |")
    held_out = len(setups[0][3]["val"].dataset)
    return (f"`proj_calib` one-shot with sampled positions (no recalibration, no fine-tuning), {model_name} "
            f"on {size}×{size} digits (the grid's seed-1 network), {calib_size} calibration images; mean [min, max] "
            f"over seeds {', '.join(map(str, seeds))} of the validation split ({held_out} training images held out "
            "of calibration; the network saw them in training) and of the calibration draw; test accuracy for "
            "information\n\n" + "\n".join(lines))


def _spread(values: Sequence[float]) -> str:
    """``mean [min, max]`` to three decimals (one value: itself)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{sum(values) / len(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def time_pruning(model: torch.nn.Module, example: torch.Tensor, method: str, calibration,
                 calibrate_every: int = 1, speed_up: float = 2.0,
                 calibrate_drift: float | None = None, iterative_steps: int = 100) -> tuple[float, float, int]:
    """``(seconds, speed-up reached, steps)`` of building ``method``'s pruner and its progressive loop
    of ``iterative_steps`` on a copy (``calibrate_drift``: None = the pruner's default)."""
    import registry
    from engine.cnn import progressive_pruning

    model = copy.deepcopy(model)
    extra = {} if calibrate_drift is None else {"calibrate_drift": calibrate_drift}
    start = time.perf_counter()
    pruner = registry.build_pruner(model, example, method, 10, iterative_steps=iterative_steps, global_pruning=True,
                                   calibration=calibration, calibrate_every=calibrate_every, **extra)
    reached = progressive_pruning(pruner, model, speed_up, example)
    return time.perf_counter() - start, reached, pruner.current_step


def cost_table(output_dir: Path, model_name: str, calib_size: int = 64, pretrain: bool = True) -> str:
    """``l2`` vs ``proj_calib`` (default: statistics re-collected after every twentieth of the channels;
    every step, the former default; every 10 steps at most) on the digits-trained model (8x8 inputs)
    and on a CIFAR-sized untrained one (32x32 random inputs: timing only), with the digits grid's
    100-step schedule; then ``l2`` vs ``proj_calib`` with the paper's 400 steps. Without the pretrained
    model and ``pretrain`` False (``--skip-grid``), a line saying so instead of the table."""
    checkpoint = output_dir / "run" / "digits" / "pretrain" / f"digits_{model_name}.pth"
    if not checkpoint.is_file():
        if not pretrain:
            return (f"Cost table skipped: no pretrained {model_name} at {checkpoint} (--skip-grid only tabulates; "
                    f"run without it to pretrain one)")
        _grid(output_dir, model_name, "--stage", "pretrain")
    import registry
    from engine.train import load_model

    bundle = registry.get_dataset("digits")
    digits_model = registry.get_model(model_name, bundle.num_classes, bundle.in_channels, input_size=8)
    load_model(checkpoint, digits_model)
    torch.manual_seed(0)
    cifar_images = torch.randn(calib_size, 3, 32, 32)
    few = calib_size // 4  # a 32x32 image gives 16x the positions of an 8x8 one
    cases = {
        "digits 8×8, trained": (digits_model.eval(), bundle.example_inputs(1),
                                {calib_size: registry.calibration_batches(bundle.train, calib_size)}),
        "32×32, untrained": (registry.get_model(model_name, 10, 3, input_size=32).eval(), torch.randn(1, 3, 32, 32),
                             {calib_size: lambda: [cifar_images], few: lambda: [cifar_images[:few]]}),
    }
    lines = [f"| {model_name} 2× | steps schedule | method | seconds | × l2 | steps | speed-up reached |",
             "|---|---|---|---|---|---|---|"]
    verdicts = []
    for schedule in (100, 400):
        for case, (model, example, calibrations) in cases.items():
            base = None  # the first row of each (case, schedule): l2 with the same schedule
            runs = [("`l2`", "l2", 1, None, calib_size), ("`proj_calib`", "proj_calib", 1, None, calib_size)]
            if schedule == 100:
                runs += [("`proj_calib`, statistics every step (`calibrate_drift=0`)", "proj_calib", 1, 0.0,
                          calib_size), ("`proj_calib --calib-every 10`", "proj_calib", 10, None, calib_size)]
                runs += [(f"`proj_calib --calib-size {size}`", "proj_calib", 1, None, size)
                         for size in calibrations if size != calib_size]
            for label, method, every, drift, size in runs:
                seconds, reached, steps = time_pruning(model, example, method, calibrations[size], every,
                                                       calibrate_drift=drift, iterative_steps=schedule)
                base = seconds if base is None else base
                lines.append(f"| {case} | {schedule} | {label} | {seconds:.2f} | {seconds / base:.2f} | {steps} "
                             f"| {reached:.2f}× |")
                if method != "l2":
                    verdicts.append(f"{case}, {schedule} steps, {label}: {seconds / base:.2f}×")
    lines.append(f"\nGoal: `proj_calib` (calibration included) under {COST_GOAL:g}× `l2`'s loop — "
                 + "; ".join(verdicts) + ".")
    return "\n".join(lines)


def _positions(text: str) -> list[int | None]:
    """``--positions``: non-negative ints, 0 meaning every position (None); ValueError otherwise."""
    from engine.harness import split_list

    values = split_list(text)
    if not all(v.isdigit() for v in values):
        raise ValueError(f"--positions: expected a comma list of non-negative ints, got {text!r}")
    return [int(v) or None for v in values]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", type=Path, default=Path("run/one_shot"))
    parser.add_argument("--methods", default=None, help="comma list (default: the grid's: Table 1 + ours)")
    parser.add_argument("--finetune-epochs", type=int, default=None)
    parser.add_argument("--skip-grid", action="store_true", help="only tabulate the logs already there")
    parser.add_argument("--seed-methods", default="slim,l2,obdc,proj_comp,proj_calib",
                        help="comma list for the seeds table ('' skips it)")
    parser.add_argument("--noise-methods", default="slim,l2,proj_comp,proj_calib",
                        help="comma list for the recalibration-noise table ('' skips it)")
    parser.add_argument("--cost-model", default="resnet56")
    parser.add_argument("--no-choice", action="store_true",
                        help="skip choosing proj_calib's flops_aware/lmbda on a validation split of the training data")
    parser.add_argument("--positions", default=",".join(str(p or 0) for p in POSITIONS),
                        help="comma list of proj_calib max_positions for the sampled-positions table (0: every "
                             "position; '' skips the table)")
    parser.add_argument("--only-positions", action="store_true",
                        help="only the sampled-positions table, from the pretrained ResNet-20 under "
                             "<output-dir>/run (the grid's, or the Quick start's with --output-dir .)")
    args = parser.parse_args(argv)
    from engine.harness import atomic_write_text, split_list
    from engine.methods_table import METHOD_ROWS  # torch-free: a typo fails in a second, not after imports

    seed_methods, noise_methods = split_list(args.seed_methods), split_list(args.noise_methods)
    positions = _positions(args.positions)
    for flag, names in (("--methods", split_list(args.methods or "")), ("--seed-methods", seed_methods),
                        ("--noise-methods", noise_methods)):
        unknown = sorted(set(names) - set(METHOD_ROWS))
        if unknown:  # before hours of grid runs, not after
            raise ValueError(f"{flag}: unknown method(s) {', '.join(unknown)}; expected some of "
                             f"{', '.join(METHOD_ROWS)}")
    torch.set_num_threads(1)
    if args.only_positions:
        from engine import table1_layout as layout

        checkpoint = layout.pretrain_checkpoint(args.output_dir / "run", "digits", "resnet20")
        if not checkpoint.is_file():  # before anything is written
            raise FileNotFoundError(f"--only-positions reads the pretrained ResNet-20 at {checkpoint}: run "
                                    "`bash scripts/digits.sh` first (then --output-dir .), or this script's grid")
        text = positions_table(args.output_dir, positions or POSITIONS)
        print(text)
        atomic_write_text(args.output_dir / "run" / "positions.md", text + "\n")  # beside the run tree it read
        return
    if not args.skip_grid:
        run_grid(args.output_dir, args.methods, args.finetune_epochs)
    text = (f"one_shot / one_shot_bn / best_pruned on digits (test split; {time.strftime('%Y-%m-%d')})\n\n"
            + accuracy_table(args.output_dir / "run"))
    if seed_methods:
        text += ("\n\nOver seeds 1-5 (ResNet-20, no fine-tuning):\n\n"
                 + seed_table(args.output_dir, seed_methods, run=not args.skip_grid))
    if noise_methods:
        text += ("\n\nRecalibration noise (ResNet-20, seed 1, no fine-tuning; test accuracy with no BatchNorm "
                 "recalibration, over draws of training batches, with the whole training split):\n\n"
                 + recal_noise_table(args.output_dir, noise_methods, run=not args.skip_grid))
    if not (args.no_choice or args.skip_grid):  # pruning runs: not a tabulation
        text += "\n\n" + choose_on_validation(args.output_dir)
    text += "\n\n" + cost_table(args.output_dir, args.cost_model, pretrain=not args.skip_grid)
    if positions and not args.skip_grid:
        text += "\n\n" + positions_table(args.output_dir, positions)
    print(text)
    atomic_write_text(args.output_dir / "one_shot.md", text + "\n")


if __name__ == "__main__":
    from engine.harness import run_cli

    run_cli(main, prog="python -m benchmarks.cnn_one_shot")
