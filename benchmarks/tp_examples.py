"""Benchmark: our pruners on Torch-Pruning's torchvision example models, beside its magnitude pruning.

Torch-Pruning's torchvision example prunes every torchvision classification, detection and
segmentation model to 50 % of its channels in one local step (random weights, ``L1`` magnitude
importance, ``round_to`` = heads for ViTs, the classifier and detection heads ignored). This
script builds the same models with the same ignored layers, example inputs and settings (written
here from its list) and prunes each with

* ``magnitude``: Torch-Pruning's ``MagnitudePruner`` + ``MagnitudeImportance(p=1)`` (the example);
* ``proj``: the same pruner with :class:`projprune.ProjectiveImportance`;
* ``proj_comp``: :class:`~projprune.CompensatingPruner`, data-free (``CalibratedProjectiveImportance(data_free=True)``);
* ``proj_calib``: :class:`~projprune.CompensatingPruner` calibrated on one batch of ``--batch`` random
  images (``CalibratedProjectiveImportance(flops_aware=True)``), as ``engine.registry`` builds them.

Every (model, method) runs in its own subprocess, so peak memory (``ru_maxrss``) is its own.
Per run: ``pruned`` or the first line of the error, the pruning time (pruner construction +
step, calibration included), its ratio to magnitude's time on the same model (for ``proj_calib``
also ``x_magnitude_forward``: one plain forward of its calibration images, timed apart, over
magnitude's time: the part of the ratio the model's own forward takes), peak memory,
parameters kept, and the mean relative output change ``‖f'(x) − f(x)‖ / ‖f(x)‖`` over the
first ``--probe`` images of the calibration batch and over ``--probe`` fresh images (detection models:
the backbone's feature maps, as their box lists differ in length). The last lines give per method the
models pruned (and any that failed where magnitude pruned) and, over the models where both finished,
the median ratios of output change and time to magnitude's.

``--coverage`` answers only "does it prune": one subprocess per model runs every method on its own
copy of the model, each after a full garbage collection (the last method's pruner is cyclic garbage of
gigabytes that would slow the next one), for status and time (the pruned model must still run its example
inputs). With ``--input-size`` the images are that small where the model allows it (ViTs: rounded up to
the patch size; detection: the transform resizes to it, SSDs to their fixed 300 / 320; Inception-v3 takes
75 at least).

    python benchmarks/tp_examples.py --models alexnet,vgg16 --input-size 64
    python benchmarks/tp_examples.py --models vit_b_16 --methods magnitude,proj_calib
    python benchmarks/tp_examples.py --coverage --input-size 64 --methods magnitude,proj_comp,proj_calib
    python benchmarks/tp_examples.py            # every model of the example (hours)
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # `python benchmarks/tp_examples.py`: import engine etc. from this repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.harness import parse_config, run_cli, split_list  # noqa: E402
from engine.report import markdown_table  # noqa: E402

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

CLASSIFICATION = [
    "alexnet", "vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14",
    "convnext_tiny", "convnext_small", "convnext_base", "convnext_large",
    "densenet121", "densenet169", "densenet201", "densenet161",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4",
    "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_s", "efficientnet_v2_m",
    "efficientnet_v2_l", "googlenet", "inception_v3", "mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3",
    "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
    "regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf", "regnet_y_3_2gf", "regnet_y_8gf", "regnet_y_16gf",
    "regnet_y_32gf", "regnet_y_128gf",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
    "wide_resnet50_2", "wide_resnet101_2", "squeezenet1_0", "squeezenet1_1",
    "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
]
SEGMENTATION = ["fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
                "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]
DETECTION = ["ssdlite320_mobilenet_v3_large", "ssd300_vgg16", "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2",
             "fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_mobilenet_v3_large_fpn", "fcos_resnet50_fpn",
             "keypointrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2", "retinanet_resnet50_fpn_v2"]
MODELS = CLASSIFICATION + SEGMENTATION + DETECTION
METHODS = ["magnitude", "proj", "proj_comp", "proj_calib"]
# proj_calib's calibration images: the smallest count of a sweep (4, 8, 16, 32) whose output change on fresh
# images was not materially worse than 32's (benchmark report of issue 26; rerun with --batch to check)
CALIBRATION_IMAGES = 4


@dataclass
class TPExamplesConfig:
    models: str = field(default=",".join(MODELS), metadata={"help": "comma-separated torchvision model names"})
    methods: str = field(default=",".join(METHODS), metadata={"help": f"comma-separated of {METHODS}"})
    input_size: int = field(default=0, metadata={"help": "image side (0: the example's, 224 / 299 for "
                                                         "inception_v3 / 300x400 and 500x400 for detection)"})
    batch: int = field(default=CALIBRATION_IMAGES, metadata={"help": "calibration images (proj_calib's one batch, "
                                                                     "in the example inputs' structure)"})
    probe: int = field(default=8, metadata={"help": "images the output change is measured on: a fresh batch of "
                                                    "this many (the same for every --batch), and the first of the "
                                                    "calibration batch (at most --batch)"})
    ratio: float = field(default=0.5, metadata={"help": "pruning ratio (the example's 0.5)"})
    max_positions: int = field(default=0, metadata={"help": "proj_calib: second moments from at most this many "
                                                            "positions of each calibration image (CompensatingPruner "
                                                            "max_positions; 0: all, exact)"})
    timeout: float = field(default=1800.0, metadata={"help": "seconds per (model, method) before it is stopped"})
    threads: int = field(default=1, metadata={"help": "torch threads per run"})
    seed: int = 0
    coverage: bool = field(default=False, metadata={"help": "status only: one process per model runs every method "
                                                            "on its own copy (pruned or the first error line, time); "
                                                            "no output change, no per-method peak memory"})
    worker: str = field(default="", metadata={"help": "internal: run one 'model:method' (or 'model:*' with "
                                                      "--coverage) and print its JSON"})


# --------------------------------------------------------------------------- the example's models
def kind_of(name: str) -> str:
    return "detection" if name in DETECTION else "segmentation" if name in SEGMENTATION else "classification"


def build_model(name: str, input_size: int) -> nn.Module:
    """The example's construction of ``name`` (random weights; trainable backbones, no aux heads).

    ``input_size`` (0: the example's) where the model allows it: a ViT is built for that side rounded
    up to its patch size; a detection model's transform resizes to it (``min_size = max_size``) instead
    of to its own 320-800 pixels (SSDs keep their fixed 300 / 320).
    """
    import torch.nn as nn
    import torchvision.models as tvm
    import torchvision.models.detection as tvd
    import torchvision.models.segmentation as tvs

    if name.startswith("vit_"):  # torchvision zero-initialises the head: random, so the output change is measurable
        patch = int(name.rsplit("_", 1)[1])
        extra = {"image_size": -(-input_size // patch) * patch} if input_size else {}
        model = getattr(tvm, name)(**extra)
        nn.init.normal_(model.heads.head.weight, std=model.heads.head.in_features ** -0.5)
        return model
    if name in ("googlenet", "inception_v3"):
        return getattr(tvm, name)(aux_logits=False, init_weights=True)
    if name in SEGMENTATION:  # random weights: no backbone download (the example's machine had them cached)
        extra = {} if name.startswith("lraspp") else {"aux_loss": None}
        return getattr(tvs, name)(weights=None, weights_backbone=None, **extra)
    if name in DETECTION:
        builder = getattr(tvd, name)
        if name.startswith("ssd"):
            return builder(weights=None, weights_backbone=None)
        extra = {"min_size": input_size, "max_size": input_size} if input_size else {}
        return builder(weights=None, weights_backbone=None, trainable_backbone_layers=5, **extra)
    return getattr(tvm, name)()


def ignored_layers(model: nn.Module, name: str) -> list[nn.Module]:
    """The example's ignored layers: 1000-way classifiers and the detection heads; and (not in the
    example, which halves them) the segmentation models' 21-class output convs, so that every method
    keeps the outputs whose change is measured (our compensating importances never score them)."""
    import torch.nn as nn

    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1000]
    if name in SEGMENTATION:
        ignored += [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == 21]
    if name.startswith("ssd"):
        ignored.append(model.head)
    if name.startswith("fasterrcnn"):
        ignored += [model.rpn.head.cls_logits, model.rpn.head.bbox_pred, model.backbone.fpn, model.roi_heads]
    if name == "fcos_resnet50_fpn":
        ignored += [model.head.classification_head.cls_logits, model.head.regression_head.bbox_reg,
                    model.head.regression_head.bbox_ctrness]
    if name == "keypointrcnn_resnet50_fpn":
        ignored += [model.rpn.head.cls_logits, model.backbone.fpn.layer_blocks, model.rpn.head.bbox_pred,
                    model.roi_heads.box_head, model.roi_heads.box_predictor, model.roi_heads.keypoint_predictor]
    if name == "maskrcnn_resnet50_fpn_v2":
        ignored += [model.rpn.head.cls_logits, model.rpn.head.bbox_pred, model.roi_heads.box_predictor,
                    model.roi_heads.mask_predictor]
    if name == "retinanet_resnet50_fpn_v2":
        ignored += [model.head.classification_head.cls_logits, model.head.regression_head.bbox_reg]
    return ignored


def make_inputs(name: str, input_size: int, batch: int, probe: int, seed: int):
    """``(example_inputs, calibration batch, fresh batch)`` in the example's structure: a tensor, or for
    Faster R-CNN a list of images (two for the example, of two sizes); ``batch`` calibration and ``probe``
    fresh images. The fresh images come from their own generator: the same for every ``batch``."""
    import torch

    def draw(count: int, generator: torch.Generator):
        if name.startswith("fasterrcnn"):
            sizes = [(input_size, input_size)] * 2 if input_size else [(300, 400), (500, 400)]
            return [torch.rand(3, *sizes[i % 2], generator=generator) for i in range(count)]
        side = input_size or (299 if name == "inception_v3" else 224)
        if name == "inception_v3":
            side = max(side, 75)  # its smallest input
        if name.startswith("vit_"):
            patch = int(name.rsplit("_", 1)[1])
            side = -(-side // patch) * patch
        return torch.randn(count, 3, side, side, generator=generator)

    generator = torch.Generator().manual_seed(seed + 1)
    example, calibration = draw(1 if not name.startswith("fasterrcnn") else 2, generator), draw(batch, generator)
    return example, calibration, draw(probe, torch.Generator().manual_seed(seed + 2))


def probe_output(model: nn.Module, name: str, inputs) -> torch.Tensor:
    """``(samples, features)`` float64: what the output change is measured on."""
    import torch

    with torch.no_grad():
        if kind_of(name) == "detection":
            captured = []
            handle = model.backbone.register_forward_hook(lambda m, i, out: captured.append(out))
            try:
                model(inputs)
            finally:
                handle.remove()
            maps = captured[0].values() if isinstance(captured[0], dict) else [captured[0]]
            return torch.cat([m.flatten(1) for m in maps], dim=1).double()
        out = model(inputs)
        if isinstance(out, dict):
            out = out["out"]
        return out.flatten(1).double()


def relative_change(after: torch.Tensor, before: torch.Tensor) -> float:
    """Mean over samples of ``‖after − before‖ / ‖before‖``."""
    if after.shape != before.shape:
        return float("nan")
    return float(((after - before).norm(dim=1) / before.norm(dim=1).clamp_min(1e-30)).mean())


def build_pruner(model: nn.Module, name: str, method: str, example_inputs, calibration_batch, ratio: float,
                 max_positions: int = 0):
    import torch_pruning as tp
    from torchvision.models.vision_transformer import VisionTransformer

    from projprune import ProjectiveImportance
    from projprune.compensation import CalibratedProjectiveImportance, CompensatingPruner

    settings = dict(iterative_steps=1, pruning_ratio=ratio, global_pruning=False,
                    ignored_layers=ignored_layers(model, name),
                    round_to=model.encoder.layers[0].num_heads if isinstance(model, VisionTransformer) else None)
    if method == "magnitude":
        return tp.pruner.MagnitudePruner(model, example_inputs, tp.importance.MagnitudeImportance(p=1), **settings)
    if method == "proj":
        return tp.pruner.MagnitudePruner(model, example_inputs, ProjectiveImportance(), **settings)
    if method == "proj_comp":
        return CompensatingPruner(model, example_inputs, CalibratedProjectiveImportance(data_free=True), **settings)
    if method == "proj_calib":
        return CompensatingPruner(model, example_inputs, CalibratedProjectiveImportance(flops_aware=True),
                                  calibration=lambda: [calibration_batch], max_positions=max_positions or None,
                                  **settings)
    raise ValueError(f"--methods: expected names from {METHODS}, got {method!r}")


def _prune(model: nn.Module, name: str, method: str, cfg: TPExamplesConfig, example_inputs, calibration_batch
           ) -> float:
    """Build ``method``'s pruner on ``model`` and take its step; the seconds both took (calibration included;
    the libraries' imports not: they are imported first)."""
    import torch_pruning  # noqa: F401 - imported before the clock starts, as every method uses it
    from torchvision.models.vision_transformer import VisionTransformer

    import projprune.compensation  # noqa: F401

    start = time.perf_counter()
    pruner = build_pruner(model, name, method, example_inputs, calibration_batch, cfg.ratio, cfg.max_positions)
    pruner.step()
    if isinstance(model, VisionTransformer):
        model.hidden_dim = model.conv_proj.out_channels
    return time.perf_counter() - start


def _forward_time(model: nn.Module, name: str, batch) -> str:
    """Seconds of one no-grad forward of the calibration ``batch`` through the unpruned ``model`` (as a table
    entry): ``proj_calib`` runs it once more, hooked, so its time cannot be below this."""
    start = time.perf_counter()
    probe_output(model, name, batch)
    return f"{time.perf_counter() - start:.2f}"


def _failure(err: Exception) -> str:
    """The first line of an error, for the table."""
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:160]


def _model_and_inputs(name: str, cfg: TPExamplesConfig, probe: int):
    """The seeded model of ``name`` (eval mode, trainable weights, as the example builds it) and its
    :func:`make_inputs` with ``probe`` fresh images."""
    import torch

    torch.manual_seed(cfg.seed)
    model = build_model(name, cfg.input_size).eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model, make_inputs(name, cfg.input_size, cfg.batch, probe, cfg.seed)


def run_one(name: str, method: str, cfg: TPExamplesConfig) -> dict:
    """Build, prune and measure one (model, method) in this process."""
    model, (example_inputs, calibration_batch, fresh_batch) = _model_and_inputs(name, cfg, cfg.probe)
    probes = (calibration_batch[:cfg.probe], fresh_batch)
    params = sum(p.numel() for p in model.parameters())
    before = [probe_output(model, name, b) for b in probes]
    row = {"model": name, "method": method, "status": "pruned", "params_kept": "", "time_s": "",
           "change_calib": "", "change_fresh": ""}
    if method == "proj_calib":
        row["forward_s"] = _forward_time(model, name, calibration_batch)
    start = time.perf_counter()
    try:
        elapsed = _prune(model, name, method, cfg, example_inputs, calibration_batch)
        after = [probe_output(model, name, b) for b in probes]
    except Exception as err:  # noqa: BLE001 - the table reports the first line of any failure
        row["status"] = _failure(err)
        row["time_s"] = f"{time.perf_counter() - start:.1f}"
    else:
        row["time_s"] = f"{elapsed:.2f}"
        row["params_kept"] = f"{sum(p.numel() for p in model.parameters()) / params:.2f}"
        row["change_calib"] = f"{relative_change(after[0], before[0]):.4g}"
        row["change_fresh"] = f"{relative_change(after[1], before[1]):.4g}"
    row["peak_mb"] = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
    return row


def run_coverage(name: str, methods: list[str], cfg: TPExamplesConfig) -> list[dict]:
    """Every method on its own copy of one built model: ``pruned`` (the pruned model runs its example
    inputs) or the first error line, and the time; rows in ``methods``' order."""
    import copy
    import gc

    model, (example_inputs, calibration_batch, _) = _model_and_inputs(name, cfg, 1)
    rows = []
    for method in methods:
        copied = copy.deepcopy(model)
        # every method starts without the last one's garbage: a pruner and its dependency graph are reference
        # cycles holding gigabytes (Faster R-CNN: ~3.5 GB each), and the cyclic collector's passes over them
        # doubled the next method's graph build (8.4 -> 16.7 s), always a later method's
        gc.collect()
        row = {"model": name, "method": method, "status": "pruned"}
        start = time.perf_counter()
        try:
            row["time_s"] = f"{_prune(copied, name, method, cfg, example_inputs, calibration_batch):.2f}"
            probe_output(copied, name, example_inputs)
        except Exception as err:  # noqa: BLE001 - the table reports the first line of any failure
            row["status"], row["time_s"] = _failure(err), f"{time.perf_counter() - start:.1f}"
        rows.append(row)
        del copied
    gc.collect()
    for row in rows:  # timed after the runs (on the unpruned model): no run gets a warm-up forward of its own
        if row["method"] == "proj_calib":
            row["forward_s"] = _forward_time(model, name, calibration_batch)
    return rows


def run_isolated(name: str, method: str, cfg: TPExamplesConfig, argv: list[str]) -> list[dict]:
    """``run_one`` (or with ``--coverage`` and ``method`` ``*``, ``run_coverage``) in a subprocess (its own peak
    memory), stopped after ``cfg.timeout`` seconds; its rows."""
    command = [sys.executable, "-m", "benchmarks.tp_examples", *argv, "--worker", f"{name}:{method}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg.threads))
    start = time.perf_counter()
    methods = split_list(cfg.methods) if method == "*" else [method]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=cfg.timeout, env=env,
                              cwd=Path(__file__).resolve().parents[1])  # -m finds benchmarks/ from any directory
    except subprocess.TimeoutExpired:
        return [{"model": name, "method": m, "status": f"stopped after {cfg.timeout:.0f} s",
                 "time_s": f">{time.perf_counter() - start:.0f}"} for m in methods]
    lines = [line for line in done.stdout.splitlines() if line.startswith("[")]
    if done.returncode != 0 or not lines:
        error = [line for line in done.stderr.strip().splitlines() if line.strip()]
        status = f"exit {done.returncode}: {error[-1] if error else ''}"
        return [{"model": name, "method": m, "status": status[:160]} for m in methods]
    return json.loads(lines[-1])


def summarise(rows: list[dict]) -> list[str]:
    """Per method: models pruned, and where magnitude pruned but it did not; the median ratios of the
    compensating methods' output change and time to magnitude's, where both pruned."""
    by_key = {(r["model"], r["method"]): r for r in rows}
    lines = []
    for method in dict.fromkeys(r["method"] for r in rows):
        pruned = [model for (model, m), row in by_key.items() if m == method and row.get("status") == "pruned"]
        lost = [model for (model, m), row in by_key.items() if m == method and row.get("status") != "pruned"
                and by_key.get((model, "magnitude"), {}).get("status") == "pruned"]
        models = len({model for model, m in by_key if m == method})
        lines.append(f"{method}: pruned {len(pruned)} of {models} models"
                     + (f"; failed where magnitude pruned: {', '.join(lost)}" if lost else ""))
    for method in ("proj", "proj_comp", "proj_calib"):
        for column in ("change_calib", "change_fresh", "time_s"):
            ratios = []
            for (model, m), row in by_key.items():
                base = by_key.get((model, "magnitude"))
                if m != method or not base or row.get("status") != "pruned" or base.get("status") != "pruned":
                    continue
                if row.get(column) and base.get(column) and float(base[column]) > 0:
                    ratios.append(float(row[column]) / float(base[column]))
            if ratios:
                lines.append(f"median {method}/magnitude {column}: {statistics.median(ratios):.3f} "
                             f"(max {max(ratios):.3f}) over {len(ratios)} models")
    return lines


def main(argv: list[str] | None = None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_config(TPExamplesConfig, argv, description=__doc__.splitlines()[0])
    import torch

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.worker:
        name, _, method = cfg.worker.partition(":")
        rows = run_coverage(name, split_list(cfg.methods), cfg) if method == "*" else [run_one(name, method, cfg)]
        print(json.dumps(rows))
        return []
    models = split_list(cfg.models, name="--models", unique=True)
    methods = split_list(cfg.methods, name="--methods", unique=True)
    if not models or any(m not in MODELS for m in models):
        raise ValueError(f"--models: expected names from {MODELS}, got {cfg.models!r}")
    if not methods or any(m not in METHODS for m in methods):
        raise ValueError(f"--methods: expected names from {METHODS}, got {cfg.methods!r}")
    if (cfg.input_size < 0 or cfg.batch < 1 or cfg.probe < 1 or not 0 < cfg.ratio < 1 or cfg.timeout <= 0
            or cfg.max_positions < 0):
        raise ValueError("--input-size must be >= 0, --batch >= 1, --probe >= 1, --ratio in (0, 1), --timeout > 0, "
                         "--max-positions >= 0")
    from engine.harness import machine_description

    print(f"Measured {machine_description()}; {'--coverage, ' if cfg.coverage else ''}models in turn, one process "
          "each.\n", flush=True)
    rows = []
    for name in models:
        for row in (run_isolated(name, "*", cfg, argv) if cfg.coverage
                    else (r for method in methods for r in run_isolated(name, method, cfg, argv))):
            base = next((r for r in rows if r["model"] == name and r["method"] == "magnitude"), None)
            if base and base.get("status") == "pruned" and row.get("status") == "pruned":
                base_time = max(float(base["time_s"]), 1e-3)
                row["x_magnitude_time"] = f"{float(row['time_s']) / base_time:.1f}"
                if row.get("forward_s"):
                    row["x_magnitude_forward"] = f"{float(row['forward_s']) / base_time:.1f}"
            rows.append(row)
            print(" ".join(f"{k}={v}" for k, v in row.items()), file=sys.stderr, flush=True)
    columns = ["model", "method", "status", "time_s", "x_magnitude_time", "x_magnitude_forward", "peak_mb",
               "params_kept", "change_calib", "change_fresh"]
    print(markdown_table([{c: r.get(c, "") for c in columns} for r in rows], columns=columns))
    for line in summarise(rows):
        print(line)
    return rows


if __name__ == "__main__":
    run_cli(main, prog="tp_examples")
