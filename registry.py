"""Name -> object tables of the Table 1 experiments: models, data sets and pruning methods.

``get_model("resnet56", num_classes=10)``, ``get_dataset("digits")`` and
``METHODS["proj_sl"]`` are all the command line needs; unknown names raise a
``ValueError`` listing the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch_pruning as tp

from engine.cnn import EigenDamageImportance
from engine.datasets import DATASETS, DatasetBundle
from engine.datasets import get_dataset as _get_dataset
from engine.models.cifar_resnet import DEPTHS, cifar_resnet
from engine.models.dgcnn import DGCNN
from engine.models.mobilenetv2 import MobileNetV2
from engine.models.pointnet import PointNet
from engine.models.vgg import CONFIGS, VGG
from projprune.compensation import CalibratedProjectiveImportance, CompensatingPruner
from projprune.importance import ProjectiveImportance


# --------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelSpec:
    """How to build a model and which inputs it reads (``"image"`` or ``"points"``)."""

    builder: Callable[..., nn.Module]
    input_kind: str = "image"


def _resnet50(num_classes: int, in_channels: int = 3, width_mult: float = 1.0, input_size: int = 224) -> nn.Module:
    """torchvision's ResNet-50; small inputs (< 64 px) get a 3x3 stride-1 stem without max-pool."""
    import torchvision

    model = torchvision.models.resnet50(num_classes=num_classes, width_per_group=max(1, round(64 * width_mult)))
    if in_channels != 3 or input_size < 64:
        model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        if input_size < 64:
            model.maxpool = nn.Identity()
    return model


MODELS: dict[str, ModelSpec] = {
    **{name: ModelSpec(lambda nc, ic, wm, size, _n=name: cifar_resnet(_n, nc, ic, wm)) for name in DEPTHS},
    **{name: ModelSpec(lambda nc, ic, wm, size, _n=name: VGG(_n, nc, ic, wm, size)) for name in CONFIGS},
    "mobilenetv2": ModelSpec(lambda nc, ic, wm, size: MobileNetV2(nc, ic, wm)),
    "pointnet": ModelSpec(lambda nc, ic, wm, size: PointNet(nc, ic, wm), "points"),
    "dgcnn": ModelSpec(lambda nc, ic, wm, size: DGCNN(nc, ic, k=min(20, size), width_mult=wm), "points"),
    "resnet50": ModelSpec(lambda nc, ic, wm, size: _resnet50(nc, ic, wm, size)),
}


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; unknown names list the valid ones."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def get_model(name: str, num_classes: int, in_channels: int = 3, width_mult: float = 1.0,
              input_size: int = 32) -> nn.Module:
    """Build a model by name.

    Args:
        name: a key of :data:`MODELS` (``resnet20``..``resnet110``, ``vgg11``..``vgg19``,
            ``mobilenetv2``, ``pointnet``, ``dgcnn``, ``resnet50``).
        num_classes: output width.
        in_channels: input channels (image channels or coordinates per point).
        width_mult: hidden-width multiplier (1.0 = the paper's networks).
        input_size: image side or number of points (small images adapt pooling/stems).
    """
    if width_mult <= 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    return model_spec(name).builder(num_classes, in_channels, width_mult, input_size)


def get_dataset(name: str, root: str = "data", **kwargs) -> DatasetBundle:
    """Load a data set by name (see :func:`engine.datasets.get_dataset`)."""
    return _get_dataset(name, root, **kwargs)


DATASET_NAMES = sorted(DATASETS)


# --------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class MethodSpec:
    """A pruning method: importance factory (``num_classes -> Importance``), pruner class,
    whether it trains with a sparsity regulariser first, its label in the tables, and whether it
    reads calibration batches (training images) while it prunes."""

    importance_factory: Callable[[int], tp.importance.Importance]
    pruner_cls: type
    sparsity_learning: bool
    label: str
    calibrated: bool = False


METHODS: dict[str, MethodSpec] = {
    "random": MethodSpec(lambda nc: tp.importance.RandomImportance(), tp.pruner.MagnitudePruner, False, "Random"),
    "l1": MethodSpec(lambda nc: tp.importance.MagnitudeImportance(p=1), tp.pruner.MagnitudePruner, False, "L1"),
    "l2": MethodSpec(lambda nc: tp.importance.MagnitudeImportance(p=2), tp.pruner.MagnitudePruner, False,
                     "MagnitudeL2"),
    "fpgm": MethodSpec(lambda nc: tp.importance.FPGMImportance(p=2), tp.pruner.MagnitudePruner, False, "FPGM"),
    "obdc": MethodSpec(lambda nc: EigenDamageImportance(group_reduction="mean", num_classes=nc),
                       tp.pruner.MagnitudePruner, False, "EigenDamage"),
    "lamp": MethodSpec(lambda nc: tp.importance.LAMPImportance(p=2), tp.pruner.MagnitudePruner, False, "LAMP"),
    "slim": MethodSpec(lambda nc: tp.importance.BNScaleImportance(), tp.pruner.BNScalePruner, True, "Slimming"),
    # torch-pruning 1.6 exports the former GroupNormImportance as GroupMagnitudeImportance.
    "group_norm": MethodSpec(lambda nc: tp.importance.GroupMagnitudeImportance(p=2), tp.pruner.GroupNormPruner,
                             False, "DepGraph"),
    "group_sl": MethodSpec(lambda nc: tp.importance.GroupMagnitudeImportance(p=2, normalizer="max"),
                           tp.pruner.GroupNormPruner, True, "DepGraph-SL"),
    "growing_reg": MethodSpec(lambda nc: tp.importance.GroupMagnitudeImportance(p=2, normalizer="max"),
                              tp.pruner.GrowingRegPruner, True, "GrowingReg"),
    "proj": MethodSpec(lambda nc: ProjectiveImportance(), tp.pruner.MagnitudePruner, False, "Projective"),
    "proj_sl": MethodSpec(lambda nc: ProjectiveImportance(normalizer="max"), tp.pruner.GroupNormPruner, True,
                          "Projective (ours)"),
    # Beyond the paper (docs/algorithm.md §8.1): removed channels folded into every consumer.
    "proj_comp": MethodSpec(lambda nc: CalibratedProjectiveImportance(data_free=True), CompensatingPruner, False,
                            "Projective + compensation, data-free"),
    "proj_calib": MethodSpec(lambda nc: CalibratedProjectiveImportance(), CompensatingPruner, False,
                             "Projective + compensation, calibrated", calibrated=True),
}

# The eleven methods of the paper's Table 1 grid (``growing_reg`` is an extra).
TABLE1_METHODS = ["random", "l1", "l2", "fpgm", "obdc", "lamp", "slim", "group_norm", "group_sl", "proj", "proj_sl"]


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``name``; unknown names list the valid ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def output_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """Layers never pruned: every Linear/Conv whose output width is ``num_classes``, plus any the
    model declares through ``pruning_ignored_layers()`` (e.g. PointNet's transform regressor)."""
    ignored = [m for m in model.modules()
               if (isinstance(m, nn.Linear) and m.out_features == num_classes)
               or (isinstance(m, nn.modules.conv._ConvNd) and m.out_channels == num_classes)]
    extra = getattr(model, "pruning_ignored_layers", None)
    return ignored + (list(extra()) if callable(extra) else [])


def build_pruner(model: nn.Module, example_inputs: torch.Tensor, method: str, num_classes: int, *,
                 iterative_steps: int = 400, max_pruning_ratio: float = 1.0, global_pruning: bool = False,
                 reg: float = 5e-4, delta_reg: float = 1e-4, calibration: Callable | None = None,
                 calibrate_every: int = 1) -> tp.pruner.BasePruner:
    """The Torch-Pruning pruner of ``method`` as the paper ran it (``pruning_ratio=1.0``, stepped
    progressively; output layers ignored). ``reg`` goes to the sparsity-learning pruners only;
    ``calibration`` (a callable returning training batches, see :func:`calibration_batches`) and
    ``calibrate_every`` to the calibrated ones (required there, ignored elsewhere)."""
    spec = get_method(method)
    if spec.calibrated and calibration is None:
        raise ValueError(f"method {method!r} needs calibration batches (calibration=...)")
    extra = {}
    if spec.pruner_cls is CompensatingPruner:
        extra["calibration"] = calibration if spec.calibrated else None
        extra["calibrate_every"] = calibrate_every
    if spec.sparsity_learning:
        extra["reg"] = reg
    if spec.pruner_cls is tp.pruner.GrowingRegPruner:
        extra["delta_reg"] = delta_reg
    model.eval()  # BatchNorm1d cannot trace a batch of one in training mode
    build = partial(spec.pruner_cls, global_pruning=global_pruning, **extra)
    return build(model, example_inputs, importance=spec.importance_factory(num_classes),
                 iterative_steps=iterative_steps, pruning_ratio=1.0, max_pruning_ratio=max_pruning_ratio,
                 ignored_layers=output_layers(model, num_classes))


def calibration_batches(dataset, images: int = 64, seed: int = 0, batch_size: int = 64) -> Callable[[], list]:
    """A callable returning the same ``images`` training inputs (a seeded draw) as batches of ``batch_size``.

    Every call (one per pruning step) returns the same tensors, so a run is deterministic and every
    DDP rank calibrates alike.
    """
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ValueError(f"images must be a positive int, got {images!r}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:images].tolist()
    inputs = torch.stack([dataset[i][0] for i in order])
    batches = list(inputs.split(batch_size))
    return lambda: batches
