"""Evaluation and calibration data: the embedded ``digits`` set or ImageNet class folders.

Both give batches of ``(x (B, 3, H, W), y (B,))`` so the same experiment code runs on the small
digits ViT and on ViT-B/16.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.digits import digits_tensors

__all__ = ["EvalData", "digits_data", "digits_to_rgb", "imagenet_data"]


@dataclass
class EvalData:
    """Re-iterable evaluation batches plus the few batches data-driven criteria need.

    Attributes:
        batches: evaluation batches (iterated once per pruning step).
        calibration: training batches for criteria that need gradients (EigenDamage).
        stats_batches: training images ``(B, 3, H, W)`` for the calibrated methods' activation
            statistics (never evaluation images); empty when not requested.
        example: one input image ``(1, 3, H, W)`` for the MAC counter.
        timing_batch: one evaluation batch ``(B, 3, H, W)`` for the inference-time measurement.
    """

    batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
    calibration: list[tuple[torch.Tensor, torch.Tensor]]
    example: torch.Tensor
    timing_batch: torch.Tensor
    stats_batches: list[torch.Tensor] = field(default_factory=list)


def digits_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """``(N, 1, 8, 8)`` in [0, 1] -> ``(N, 3, 8, 8)`` in [-1, 1]: torchvision's ViT stem reads 3 channels."""
    return (x.expand(-1, 3, -1, -1) - 0.5) / 0.5


def _batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)]


def _check_calib_size(calib_size: int) -> None:
    if isinstance(calib_size, bool) or not isinstance(calib_size, int) or calib_size < 0:
        raise ValueError(f"calib_size must be a non-negative int (training images), got {calib_size!r}")


def digits_data(batch_size: int = 32, calibration_batches: int = 4, seed: int = 0, calib_size: int = 0) -> EvalData:
    """The digits test split as evaluation batches; its training split for calibration.

    ``calib_size`` training images (a seeded shuffle, at most the whole split) become ``stats_batches``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check_calib_size(calib_size)
    x_train, y_train, x_test, y_test = digits_tensors(seed=seed)
    x_test, x_train = digits_to_rgb(x_test), digits_to_rgb(x_train)
    batches = _batches(x_test, y_test, batch_size)
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))
    x_stats = x_train[order[:calib_size]]
    return EvalData(
        batches=batches,
        calibration=_batches(x_train, y_train, batch_size)[:calibration_batches],
        example=x_test[:1],
        timing_batch=batches[0][0],
        stats_batches=[x for x, _ in _batches(x_stats, y_train[: len(x_stats)], batch_size)] if calib_size else [],
    )


class _FirstBatches:
    """Re-iterable view of the first ``count`` batches of a DataLoader (each pass re-reads the images)."""

    def __init__(self, loader: Iterable, count: int) -> None:
        self.loader, self.count = loader, count

    def __iter__(self) -> Iterator:
        for index, batch in enumerate(self.loader):
            if index >= self.count:
                return
            yield batch


def imagenet_data(
    dataroot: str | os.PathLike,
    transform: Callable,
    batch_size: int = 32,
    eval_batches: int = 100,
    calibration_batches: int = 4,
    workers: int = 4,
    seed: int = 1,
    calib_size: int = 0,
) -> EvalData:
    """ImageNet ``<dataroot>/val`` (and ``train`` for calibration) in class folders, with ``transform``.

    The evaluation images are a seeded shuffle of ``val`` cut to ``eval_batches`` batches (the
    paper: 100 batches of 32), so that they span the classes; the same seed gives the same images.
    ``calib_size`` images of a seeded shuffle of ``train`` become ``stats_batches``.

    Raises:
        FileNotFoundError: ``<dataroot>/val`` is missing, or ``calib_size > 0`` and ``<dataroot>/train`` is.
    """
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder

    val_dir = Path(dataroot) / "val"
    if not val_dir.is_dir():
        raise FileNotFoundError(
            f"ImageNet validation folder not found: {val_dir} (expected --dataroot DIR with DIR/val/<class>/<image>, "
            "the ILSVRC2012 validation images sorted into class folders)"
        )
    generator = torch.Generator().manual_seed(seed)
    val = ImageFolder(str(val_dir), transform=transform)
    order = torch.randperm(len(val), generator=generator)[: eval_batches * batch_size].tolist()
    loader = DataLoader(Subset(val, order), batch_size=batch_size, shuffle=False, num_workers=workers)
    train_dir = Path(dataroot) / "train"
    _check_calib_size(calib_size)
    if calib_size and not train_dir.is_dir():
        raise FileNotFoundError(
            f"ImageNet training folder not found: {train_dir} (the calibrated methods draw their calibration "
            "images from the training split, never from the evaluation images; expected DIR/train/<class>/<image>)"
        )
    calib_source = ImageFolder(str(train_dir), transform=transform) if train_dir.is_dir() else val
    calib_order = torch.randperm(len(calib_source), generator=generator)[: calibration_batches * batch_size].tolist()
    calibration = list(DataLoader(Subset(calib_source, calib_order), batch_size=batch_size, num_workers=workers))
    stats_batches = []
    if calib_size:
        train = ImageFolder(str(train_dir), transform=transform)
        stats_order = torch.randperm(len(train), generator=generator)[:calib_size].tolist()
        stats_batches = [x for x, _ in DataLoader(Subset(train, stats_order), batch_size=batch_size,
                                                  num_workers=workers)]
    first_x, _ = next(iter(loader))
    return EvalData(
        batches=_FirstBatches(loader, eval_batches),
        calibration=calibration,
        example=first_x[:1],
        timing_batch=first_x,
        stats_batches=stats_batches,
    )
