"""What every pruning step measures: top-1, top-5, loss, MACs, parameters, model size and
inference time.

``evaluate`` and the counters work for any classifier; they are shared by the digits model and
the ImageNet ViTs (and usable by other areas: a generic eval loop and a hook-based MAC counter).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable

import torch
from torch import nn

from engine.classify import evaluate_classifier
from engine.harness import count_params  # re-exported: the one parameter counter

__all__ = ["count_macs", "count_nonzero_params", "count_params", "evaluate", "model_size_mb", "time_inference"]


def evaluate(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], max_batches: int | None = None
) -> dict[str, float]:
    """Top-1, top-5 accuracy and mean cross-entropy over (at most ``max_batches``) batches.

    Args:
        batches: ``(x (B, ...), y (B,))`` pairs; the model's device is used.
        max_batches: stop after this many batches (the paper: 100 batches of 32 images).

    Returns:
        ``{"top1", "top5", "loss", "images"}`` (:func:`engine.classify.evaluate_classifier`).
    """
    return evaluate_classifier(model, batches, max_batches)


def count_nonzero_params(model: nn.Module) -> int:
    """Nonzero entries of the effective weights (after ``torch.nn.utils.prune`` masks are applied)."""
    total = 0
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            effective = getattr(module, name[: -len("_orig")]) if name.endswith("_orig") else param
            total += int(torch.count_nonzero(effective).item())
    return total


def model_size_mb(model: nn.Module) -> float:
    """Bytes of the state dict (parameters, buffers and masks) in MB (10^6 bytes)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6


@torch.no_grad()
def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``example`` (B, C, H, W), divided by B.

    Counts ``nn.Linear`` (``tokens × in × out``), ``nn.Conv2d`` and ``nn.MultiheadAttention``
    (its input and output projections plus the two attention products ``QKᵀ`` and ``AV``, which
    torch computes functionally so no Linear hook sees them). Norms and activations are ignored.
    """
    totals = [0]

    def linear_hook(module: nn.Linear, inputs, output) -> None:
        totals[0] += inputs[0].numel() * module.out_features

    def conv_hook(module: nn.Conv2d, inputs, output) -> None:
        kh, kw = module.kernel_size
        totals[0] += output.numel() * (module.in_channels // module.groups) * kh * kw

    def attention_hook(module: nn.MultiheadAttention, inputs, output) -> None:
        query, key = inputs[0], inputs[1]
        if not module.batch_first:
            query, key = query.transpose(0, 1), key.transpose(0, 1)
        batch, q_len, dim = query.shape
        k_len = key.shape[1]
        projections = batch * (q_len * dim * dim + 2 * k_len * dim * module.kdim) + batch * q_len * dim * dim
        totals[0] += projections + 2 * batch * q_len * k_len * dim

    handles = []
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            handles.append(module.register_forward_hook(attention_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
    was_training = model.training
    model.eval()
    try:
        model(example.to(next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return totals[0] // example.shape[0]


@torch.no_grad()
def time_inference(model: nn.Module, x: torch.Tensor, repeats: int = 5) -> float:
    """Median wall time in ms of a forward pass on the batch ``x`` (after one warm-up pass)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    model.eval()
    x = x.to(next(model.parameters()).device)
    model(x)
    times = []
    for _ in range(repeats):
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
