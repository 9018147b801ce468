"""The embedded default: a small torchvision ``VisionTransformer`` trained on ``digits`` on CPU.

Same class, same ``encoder.layers[i].mlp`` layout as ViT-B/16, so every experiment runs on it
through the same code path. Its MLP keeps ViT-B's 4x expansion (hidden 64 -> 256 units), so the
MLP weight ``W`` is wide (``n > m``) as in the paper's models. Trained once per seed and
configuration, then cached under the run directory as a safetensors checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from torchvision.models.vision_transformer import VisionTransformer

from engine.classify import train_classifier
from engine.digits import digits_tensors
from engine.harness import load_cached, save_checkpoint, seed_everything

from .data import digits_to_rgb
from .metrics import evaluate

__all__ = ["SmallViTConfig", "build_small_vit", "load_or_train_small_vit", "small_vit_checkpoint"]


@dataclass(frozen=True)
class SmallViTConfig:
    """Architecture and training of the digits ViT (trains in about a minute on 2 CPU cores)."""

    image_size: int = 8
    patch_size: int = 2  # 16 patches + class token
    num_layers: int = 4
    num_heads: int = 4
    hidden_dim: int = 64
    mlp_dim: int = 256  # ViT-B's 4x expansion
    num_classes: int = 10
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4


def build_small_vit(cfg: SmallViTConfig) -> VisionTransformer:
    """An untrained torchvision ``VisionTransformer`` with ``cfg``'s shape (3-channel input)."""
    shape = ("image_size", "patch_size", "num_layers", "num_heads", "hidden_dim", "mlp_dim", "num_classes")
    return VisionTransformer(**{name: getattr(cfg, name) for name in shape})


def small_vit_checkpoint(output_dir: str | os.PathLike, seed: int) -> Path:
    """``<output_dir>/vit/small/pretrain/small_vit_digits_seed<seed>.safetensors``."""
    return Path(output_dir) / "vit" / "small" / "pretrain" / f"small_vit_digits_seed{seed}.safetensors"


def load_or_train_small_vit(
    output_dir: str | os.PathLike,
    seed: int = 1,
    cfg: SmallViTConfig | None = None,
    logger: logging.Logger | None = None,
    retrain: bool = False,
) -> VisionTransformer:
    """The trained digits ViT: from its cached checkpoint, or trained now and cached.

    The cache policy is :func:`engine.harness.load_cached`: a checkpoint trained with another
    configuration is refused (ValueError) unless ``retrain`` is set.
    """
    cfg = cfg or SmallViTConfig()
    path = small_vit_checkpoint(output_dir, seed)
    wanted = {"config": dataclasses.asdict(cfg), "seed": seed}
    cached = load_cached(path, wanted, retrain, what="cached small ViT")
    if cached is not None:
        model = build_small_vit(cfg)
        model.load_state_dict(cached[0])
        model.eval()
        if logger:
            logger.info(f"Loaded small ViT from {path}")
        return model
    seed_everything(seed)
    model = build_small_vit(cfg)
    x_train, y_train, x_test, y_test = digits_tensors()
    train_classifier(
        model,
        digits_to_rgb(x_train),
        y_train,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=seed,
        optimizer="adamw",
        weight_decay=cfg.weight_decay,
        cosine=True,
        desc="train small ViT",
    )
    test = evaluate(model, [(digits_to_rgb(x_test), y_test)])
    save_checkpoint(path, model.state_dict(), {**wanted, "test_top1": test["top1"]})
    if logger:
        logger.info(f"Trained small ViT: test top-1 {test['top1']:.4f}; saved {path}")
    return model
