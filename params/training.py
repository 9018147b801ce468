"""Models of the study: train once, cache as safetensors with the settings that made them, reload."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.classify import evaluate_accuracy, train_classifier
from engine.harness import (
    load_cached,
    progress,
    save_checkpoint,
)
from params.config import ParamsConfig
from params.data import draw_split, resolve_split_sizes
from params.models import HIDDEN_WIDTHS, LeNetParams


@dataclass(frozen=True)
class ModelFactory:
    """How to build one architecture: ``build(input_size)`` and the settings that identify it.

    ``name`` tags the cached files (``<dataset>_<name>_<index>.safetensors``); ``arch`` goes into
    each checkpoint's metadata so a cache built with other settings is refused.
    """

    name: str
    build: Callable[[int], nn.Module]
    arch: tuple[tuple[str, Any], ...] = ()


def lenet_factory(cfg: ParamsConfig) -> ModelFactory:
    """The paper's LeNet-style model with ``cfg.dropout``."""
    return ModelFactory(
        "lenet",
        lambda input_size: LeNetParams(input_size=input_size, dropout=cfg.dropout),
        (("dropout", cfg.dropout), ("hidden", list(HIDDEN_WIDTHS))),
    )


def _training_key(cfg: Any, factory: ModelFactory, index: int, n_train: int, n_val: int) -> dict[str, Any]:
    return {
        "dataset": cfg.dataset,
        "model": factory.name,
        "model_index": index,
        "seed": cfg.seed * 1000 + index,
        "epochs": cfg.epochs,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "train_size": n_train,
        "val_size": n_val,
        **dict(factory.arch),
    }


def model_path(models_dir: str | Path, dataset: str, name: str, index: int) -> Path:
    """Where model ``index`` of architecture ``name`` on ``dataset`` is cached."""
    return Path(models_dir) / f"{dataset}_{name}_{index:02d}.safetensors"


def check_cached_models(cfg: Any, factory: ModelFactory, models_dir: Path, n_train: int, n_val: int) -> None:
    """Refuse cached models trained with other settings (before anything is trained or written).

    Args:
        cfg: a config with ``dataset, seed, epochs, lr, batch_size, num_models, retrain``.

    Raises:
        ValueError: a cached file's training settings differ (names the file and the fields).
    """
    for index in range(cfg.num_models):
        path = model_path(models_dir, cfg.dataset, factory.name, index)
        load_cached(path, _training_key(cfg, factory, index, n_train, n_val), cfg.retrain, key_field="training")


def train_or_load_models(
    cfg: Any, factory: ModelFactory, data: tuple[torch.Tensor, ...], models_dir: Path, logger: Any
) -> list[tuple[nn.Module, dict[str, Any]]]:
    """N trained models with their metadata (val/test accuracy), from ``models_dir`` or trained now.

    Model ``i`` uses seed ``cfg.seed * 1000 + i`` for its train/validation split, initialisation,
    shuffling and dropout, and is saved atomically (safetensors) as soon as it is trained.
    """
    n_train, n_val = resolve_split_sizes(cfg.dataset, len(data[0]), cfg.train_size, cfg.val_size)
    input_size = int(data[0].shape[-1])
    models = []
    for index in progress(range(cfg.num_models), desc="models"):
        path = model_path(models_dir, cfg.dataset, factory.name, index)
        key = _training_key(cfg, factory, index, n_train, n_val)
        cached = load_cached(path, key, cfg.retrain, key_field="training")
        if cached is not None:
            state, meta = cached
            model = factory.build(input_size)
            model.load_state_dict(state)
            model.eval()
            logger.info(f"Model {index}: loaded {path}, val Acc={meta['val_acc']:.4f}, test Acc={meta['test_acc']:.4f}")
        else:
            split = draw_split(data, n_train, n_val, split_seed=key["seed"])
            torch.manual_seed(key["seed"])  # weight initialisation
            model = factory.build(input_size)
            losses = train_classifier(
                model, split.x_train, split.y_train, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                seed=key["seed"],
            )
            val_acc = evaluate_accuracy(model, split.x_val, split.y_val) if n_val else float("nan")
            test_acc = evaluate_accuracy(model, split.x_test, split.y_test)
            meta = {"training": key, "val_acc": val_acc, "test_acc": test_acc,
                    "final_loss": losses[-1] if losses else None}
            save_checkpoint(path, model.state_dict(), meta)
            logger.info(f"Model {index}: trained {cfg.epochs} epochs, val Acc={val_acc:.4f}, test Acc={test_acc:.4f}")
        models.append((model, meta))
    return models
