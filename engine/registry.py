"""Name -> object tables of the Table 1 experiments: models, data sets and pruning methods.

``get_model("resnet56", num_classes=10)``, ``get_dataset("digits")``, ``METHODS["proj_sl"]``
and :func:`build_pruner` are all the command line needs; unknown names raise a ``ValueError``
listing the valid ones. The methods themselves (labels, sparsity learning, pruner kind, order)
are the torch-free rows of :mod:`engine.methods_table`; this module adds their Torch-Pruning
importance and pruner. The top-level ``registry.py`` re-exports everything here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch_pruning as tp

from engine.cnn import EigenDamageImportance
from engine.datasets import DATASETS, DatasetBundle
from engine.datasets import get_dataset as _get_dataset
from engine.methods_table import GRID_METHODS, METHOD_TABLE, MethodRow, method_row
from engine.models.cifar_resnet import DEPTHS, cifar_resnet
from engine.models.dgcnn import DGCNN
from engine.models.mobilenetv2 import MobileNetV2
from engine.models.pointnet import PointNet
from engine.models.vgg import CONFIGS, VGG
from projprune.compensation import DEFAULT_CALIBRATE_DRIFT, CalibratedProjectiveImportance, CompensatingPruner
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


# --------------------------------------------------------------------------- pruners
@dataclass(frozen=True)
class PrunerKind:
    """How :func:`build_pruner` makes one kind of pruner.

    ``factory(model, example_inputs, importance=, iterative_steps=, pruning_ratio=, max_pruning_ratio=,
    ignored_layers=, global_pruning=, **settings)`` returns the pruner; ``settings`` names the keywords
    of :func:`build_pruner` it also takes (``reg`` goes to every sparsity-learning method).
    """

    factory: Callable[..., tp.pruner.BasePruner]
    settings: tuple[str, ...] = ()


PRUNERS: dict[str, PrunerKind] = {
    "magnitude": PrunerKind(tp.pruner.MagnitudePruner),
    "bn_scale": PrunerKind(tp.pruner.BNScalePruner),
    "group_norm": PrunerKind(tp.pruner.GroupNormPruner),
    "growing_reg": PrunerKind(tp.pruner.GrowingRegPruner, ("delta_reg",)),
    "compensating": PrunerKind(CompensatingPruner, ("calibration", "calibrate_every", "calibrate_drift")),
}


# --------------------------------------------------------------------------- methods
# method -> its importance (``num_classes -> Importance``); one entry per row of METHOD_TABLE.
IMPORTANCES: dict[str, Callable[[int], tp.importance.Importance]] = {
    "random": lambda nc: tp.importance.RandomImportance(),
    "l1": lambda nc: tp.importance.MagnitudeImportance(p=1),
    "l2": lambda nc: tp.importance.MagnitudeImportance(p=2),
    "fpgm": lambda nc: tp.importance.FPGMImportance(p=2),
    "obdc": lambda nc: EigenDamageImportance(group_reduction="mean", num_classes=nc),
    "lamp": lambda nc: tp.importance.LAMPImportance(p=2),
    "slim": lambda nc: tp.importance.BNScaleImportance(),
    # torch-pruning 1.6 exports the former GroupNormImportance as GroupMagnitudeImportance.
    "group_norm": lambda nc: tp.importance.GroupMagnitudeImportance(p=2),
    "group_sl": lambda nc: tp.importance.GroupMagnitudeImportance(p=2, normalizer="max"),
    "growing_reg": lambda nc: tp.importance.GroupMagnitudeImportance(p=2, normalizer="max"),
    "proj": lambda nc: ProjectiveImportance(),
    "proj_sl": lambda nc: ProjectiveImportance(normalizer="max"),
    "proj_comp": lambda nc: CalibratedProjectiveImportance(data_free=True),
    "proj_calib": lambda nc: CalibratedProjectiveImportance(flops_aware=True),
}


@dataclass(frozen=True)
class MethodSpec(MethodRow):
    """A pruning method: its row of :data:`engine.methods_table.METHOD_TABLE` (name, label,
    sparsity learning, pruner kind, order) plus the importance factory (``num_classes -> Importance``)."""

    importance_factory: Callable[[int], tp.importance.Importance] | None = None

    @property
    def pruner_kind(self) -> PrunerKind:
        return PRUNERS[self.pruner]

    @property
    def pruner_cls(self) -> Callable[..., tp.pruner.BasePruner]:
        return self.pruner_kind.factory


def _methods() -> dict[str, MethodSpec]:
    rows = {row.name for row in METHOD_TABLE}
    if rows != set(IMPORTANCES) or any(row.pruner not in PRUNERS for row in METHOD_TABLE):
        raise RuntimeError(f"engine.registry: METHOD_TABLE and IMPORTANCES/PRUNERS disagree: rows {sorted(rows)}, "
                           f"importances {sorted(IMPORTANCES)}, pruner kinds {sorted(PRUNERS)}")
    return {row.name: MethodSpec(**{f.name: getattr(row, f.name) for f in fields(row)},
                                 importance_factory=IMPORTANCES[row.name]) for row in METHOD_TABLE}


METHODS: dict[str, MethodSpec] = _methods()
# The methods of the paper's Table 1 grid (``growing_reg`` is an extra).
TABLE1_METHODS: list[str] = list(GRID_METHODS)


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``name``; unknown names list the valid ones."""
    return METHODS[method_row(name).name]


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
                 calibrate_every: int = 1, calibrate_drift: float = DEFAULT_CALIBRATE_DRIFT) -> tp.pruner.BasePruner:
    """The Torch-Pruning pruner of ``method`` as the paper ran it (``pruning_ratio=1.0``, stepped
    progressively; output layers ignored). ``reg`` goes to the sparsity-learning pruners only;
    ``calibration`` (a callable returning training batches, see :func:`calibration_batches`) to the
    calibrated methods (required there, ignored elsewhere); the other keywords to the pruner kinds
    that declare them (:class:`PrunerKind`)."""
    spec = get_method(method)
    if spec.calibrated and calibration is None:
        raise ValueError(f"method {method!r} needs calibration batches (calibration=...)")
    available = {"reg": reg, "delta_reg": delta_reg, "calibration": calibration if spec.calibrated else None,
                 "calibrate_every": calibrate_every, "calibrate_drift": calibrate_drift}
    extra = {key: available[key] for key in spec.pruner_kind.settings}
    if spec.sparsity_learning:
        extra["reg"] = reg
    model.eval()  # BatchNorm1d cannot trace a batch of one in training mode
    return spec.pruner_cls(model, example_inputs, importance=spec.importance_factory(num_classes),
                           iterative_steps=iterative_steps, pruning_ratio=1.0, max_pruning_ratio=max_pruning_ratio,
                           ignored_layers=output_layers(model, num_classes), global_pruning=global_pruning, **extra)


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
