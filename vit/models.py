"""torchvision Vision Transformers as the paper pruned them, loaded offline.

The machines these experiments run on have no internet: weights come from the torch hub cache
(``<torch hub dir>/checkpoints/<file>``, where ``torchvision`` itself would download them) or
from an explicit ``--weights PATH``. A missing file is a :class:`FileNotFoundError` that names
the file, where to put it and where to get it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import vision_transformer as tv_vit

from engine.harness import load_checkpoint

__all__ = [
    "VIT_MODELS",
    "ViTSpec",
    "hub_checkpoint_path",
    "load_state_file",
    "load_vit",
    "mlp_pairs",
    "weights_filename",
]


@dataclass(frozen=True)
class ViTSpec:
    """One torchvision ViT: its builder and the weights the paper used (which carry the eval transform)."""

    builder: Callable[..., tv_vit.VisionTransformer]
    weights: tv_vit.WeightsEnum


# The paper's models (docs/reproduction.md §2): IMAGENET1K_V1 for B/L, SWAG end-to-end (518 px) for H/14.
VIT_MODELS: dict[str, ViTSpec] = {
    "vit_b_16": ViTSpec(tv_vit.vit_b_16, tv_vit.ViT_B_16_Weights.IMAGENET1K_V1),
    "vit_b_32": ViTSpec(tv_vit.vit_b_32, tv_vit.ViT_B_32_Weights.IMAGENET1K_V1),
    "vit_l_16": ViTSpec(tv_vit.vit_l_16, tv_vit.ViT_L_16_Weights.IMAGENET1K_V1),
    "vit_l_32": ViTSpec(tv_vit.vit_l_32, tv_vit.ViT_L_32_Weights.IMAGENET1K_V1),
    "vit_h_14": ViTSpec(tv_vit.vit_h_14, tv_vit.ViT_H_14_Weights.IMAGENET1K_SWAG_E2E_V1),
}


def _spec(name: str) -> ViTSpec:
    if name not in VIT_MODELS:
        raise ValueError(f"model must be one of {sorted(VIT_MODELS)}, got {name!r}")
    return VIT_MODELS[name]


def weights_filename(name: str) -> str:
    """The checkpoint file torchvision downloads for ``name`` (e.g. ``vit_b_16-c867db91.pth``)."""
    return os.path.basename(urlparse(_spec(name).weights.url).path)


def hub_checkpoint_path(name: str) -> Path:
    """Where torchvision looks for ``name``'s weights: ``<torch.hub.get_dir()>/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / weights_filename(name)


def load_state_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a torchvision ``.pth`` (tensors only, no pickled code).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a readable state dict.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_checkpoint(path)[0]  # the shared safetensors reader (same errors)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    # torchvision publishes pickled state dicts; weights_only refuses anything but tensors.
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises several exception types for bad files
        raise ValueError(f"weights file {path} is not a readable state dict: {exc}") from exc
    if not isinstance(state, dict):
        raise ValueError(f"weights file {path} holds a {type(state).__name__}, expected a state dict")
    return state


def load_vit(
    name: str, weights: str | os.PathLike | None = None, pretrained: bool = True
) -> tuple[tv_vit.VisionTransformer, Callable]:
    """Build torchvision ViT ``name`` and load its ImageNet weights without touching the network.

    Args:
        name: one of :data:`VIT_MODELS`.
        weights: a state-dict file (``.pth`` or ``.safetensors``); default: the torch hub cache.
        pretrained: ``False`` gives a randomly initialised model (benchmarks) and ignores ``weights``.

    Returns:
        ``(model in eval mode, eval transform)``; the transform is the weights' own
        (resize, centre crop, ImageNet normalisation; bicubic 518 px for ``vit_h_14``).

    Raises:
        ValueError: unknown ``name`` or unreadable weights.
        FileNotFoundError: the weights are neither at ``weights`` nor in the hub cache.
    """
    spec = _spec(name)
    image_size = spec.weights.meta["min_size"][0]
    state = None
    if pretrained:
        path = Path(weights) if weights is not None else hub_checkpoint_path(name)
        if not path.is_file():
            where = f"--weights {path}" if weights is not None else f"the torch hub cache ({path.parent})"
            raise FileNotFoundError(
                f"weights for {name} not found in {where}. This machine is offline: download "
                f"{spec.weights.url} elsewhere and copy {weights_filename(name)} to {hub_checkpoint_path(name)} "
                f"(or pass --weights PATH)."
            )
        state = load_state_file(path)
    model = spec.builder(weights=None, image_size=image_size)
    if state is not None:
        model.load_state_dict(state)
    model.eval()
    return model, spec.weights.transforms()


def mlp_pairs(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """The MLP of every encoder block: ``[(mlp[0], mlp[3]), ...]``, i.e. ``(W, b)`` and ``V`` (paper §4.1).

    Works for every torchvision ``VisionTransformer`` (the small digits model included).
    """
    layers = getattr(getattr(model, "encoder", None), "layers", None)
    if layers is None:
        raise ValueError(f"expected a torchvision VisionTransformer (model.encoder.layers), got {type(model).__name__}")
    return [(block.mlp[0], block.mlp[3]) for block in layers]
