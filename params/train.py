"""A small, deterministic classifier train/evaluate loop (reusable by any experiment on tensors)."""

from __future__ import annotations

import torch
from torch import nn


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> list[float]:
    """Train ``model`` in place with Adam and cross-entropy on in-memory tensors.

    Args:
        model: any classifier ``(B, ...) -> (B, C)``.
        x: inputs (N, ...); y: labels (N,) int64.
        epochs, lr, batch_size: the usual; the paper uses 10, 3e-3, 64.
        seed: seeds the shuffling and dropout, so the same seed gives the same weights on CPU.

    Returns:
        The mean training loss of each epoch.
    """
    if epochs < 0 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need epochs >= 0, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout draws from the global generator
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            if len(idx) == 1 and len(x) > 1:
                continue  # a lone sample breaks BatchNorm's batch statistics; it is reshuffled next epoch
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        losses.append(total / max(count, 1))
    model.eval()
    return losses


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``x`` (N, ...) with labels ``y`` (N,)."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == y[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / max(len(x), 1)
