"""Train and evaluate a classifier on in-memory tensors: the one loop the small embedded models share.

Used by the digits demo (``engine.demo``), the hyper-parameter analysis (``params/``) and the
digits ViT (``vit/small.py``). Loader-based training for the Table 1 models is ``engine.train``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from engine.harness import progress

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    cosine: bool = False,
    desc: str = "train",
) -> list[float]:
    """Train ``model`` in place with cross-entropy, seeded shuffling, then leave it in eval mode.

    Args:
        model: any classifier ``(B, ...) -> (B, C)``.
        x: inputs ``(N, ...)``; y: labels ``(N,)`` int64.
        epochs, lr, batch_size: the usual.
        seed: seeds the shuffling and dropout, so the same seed gives the same weights on CPU.
        optimizer: ``"adam"`` or ``"adamw"`` (with ``weight_decay``).
        cosine: cosine learning-rate decay over all steps.
        desc: label of the progress bar.

    Returns:
        The mean training loss of each epoch.
    """
    if epochs < 0 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need epochs >= 0, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout draws from the global generator
    extra = {"weight_decay": weight_decay} if optimizer == "adamw" else {}
    opt = OPTIMIZERS[optimizer](model.parameters(), lr=lr, **extra)
    steps = epochs * ((len(y) + batch_size - 1) // batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1)) if cosine else None
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    model.train()
    for _ in progress(range(epochs), desc=desc, leave=False):
        order = torch.randperm(len(x), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            if len(idx) == 1 and len(x) > 1:
                continue  # a lone sample breaks BatchNorm's batch statistics; it is reshuffled next epoch
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        losses.append(total / max(count, 1))
    model.eval()
    return losses


@torch.no_grad()
def classifier_totals(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    max_batches: int | None = None,
    device: torch.device | str | None = None,
    topk: int = 5,
) -> torch.Tensor:
    """Sums over (at most ``max_batches``) batches: ``[top-1 hits, top-k hits, cross-entropy, images]`` (float64).

    ``batches`` yields ``(x (B, ...), y (B,))``; they go to ``device`` (default: the model's). The
    model runs in eval mode and gets its training flag back. Sums (not means) so that ranks of a
    distributed run can add them up before dividing.
    """
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)
    try:
        for index, (x, y) in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            x, y = x.to(device), y.to(device)
            logits = model(x)  # (B, classes)
            ranked = logits.topk(min(topk, logits.shape[1]), dim=1).indices  # (B, k)
            totals[0] += (ranked[:, 0] == y).sum().item()
            totals[1] += (ranked == y[:, None]).any(dim=1).sum().item()
            totals[2] += F.cross_entropy(logits, y, reduction="sum").item()
            totals[3] += y.numel()
    finally:
        model.train(was_training)
    return totals


def evaluate_classifier(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    max_batches: int | None = None,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Top-1, top-5 accuracy and mean cross-entropy: ``{"top1", "top5", "loss", "images"}``.

    Top-5 counts a hit when the label is among the ``min(5, classes)`` largest logits.

    Raises:
        ValueError: no batch was evaluated.
    """
    top1, top5, loss, images = classifier_totals(model, batches, max_batches, device).tolist()
    if images == 0:
        raise ValueError("evaluate: no batches to evaluate (empty data or max_batches=0)")
    return {"top1": top1 / images, "top5": top5 / images, "loss": loss / images, "images": int(images)}


def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``x`` ``(N, ...)`` with labels ``y`` ``(N,)`` (0 if empty)."""
    batches = zip(x.split(batch_size), y.split(batch_size))
    top1, _, _, images = classifier_totals(model, batches, device=x.device).tolist()
    return top1 / max(images, 1)
