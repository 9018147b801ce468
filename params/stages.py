"""Staged pruning of one model: the keep schedule and the per-stage surgery (core ``prune_pair`` / ``prune_pairs``)."""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine.classify import evaluate_accuracy
from params.comparisons import Variant
from params.config import FAILED, MODES
from projprune import recalibrate_batchnorm as core_recalibrate_batchnorm


def stage_percents(stages: int) -> list[int]:
    """Kept percentages per stage: ``stages=10`` -> ``[100, 90, ..., 10]``."""
    if not 1 <= stages <= 100:
        raise ValueError(f"stages must be in [1, 100], got {stages}")
    return [100 - (100 * s) // stages for s in range(stages)]


def stage_schedule(widths: Sequence[int], percents: Sequence[int]) -> list[tuple[int, ...]]:
    """Target widths per stage: ``round(width * percent / 100)`` (halves up), at least one unit.

    Args:
        widths: unpruned widths of the pruned layers, e.g. ``(64, 32, 16)``.
        percents: strictly decreasing kept percentages starting at 100.

    Returns:
        One tuple of widths per stage, non-increasing from stage to stage.
    """
    if not percents or percents[0] != 100 or any(b >= a for a, b in zip(percents, percents[1:])):
        raise ValueError(f"percents must start at 100 and decrease strictly, got {list(percents)}")
    if any(p < 1 for p in percents) or any(w < 1 for w in widths):
        raise ValueError(f"percents and widths must be positive, got {list(percents)}, {list(widths)}")
    # Integer arithmetic: no float rounding surprises at exact halves.
    return [tuple(max(1, (w * p + 50) // 100) for w in widths) for p in percents]


@dataclass
class StageResult:
    """Accuracy after one stage; ``accuracy is None`` exactly when ``status == "failed"``."""

    percent: int
    widths: tuple[int, ...]
    accuracy: float | None
    status: str = "ok"
    reason: str = ""


def _variant_seed(seed: int, model_index: int, variant: Variant) -> int:
    return (seed * 1_000_003 + model_index * 10_007 + zlib.crc32(variant.key.encode())) % (2**31)


def _install_linear_pair(
    fc1: nn.Linear, fc2: nn.Linear, W: torch.Tensor, b: torch.Tensor | None, V: torch.Tensor,
    bias_delta: torch.Tensor | None,
) -> None:
    """Put ``W: (n', m)``, ``b: (n',)`` into ``fc1`` and ``V: (k, n')`` (+ bias delta) into ``fc2``."""
    fc1.weight = nn.Parameter(W.to(fc1.weight.dtype).contiguous())
    if fc1.bias is not None and b is not None:
        fc1.bias = nn.Parameter(b.to(fc1.bias.dtype).contiguous())
    fc2.weight = nn.Parameter(V.to(fc2.weight.dtype).contiguous())
    if fc2.bias is not None and bias_delta is not None:
        fc2.bias = nn.Parameter((fc2.bias.detach() + bias_delta.to(fc2.bias.dtype)).contiguous())
    fc1.out_features = fc2.in_features = W.shape[0]


def prune_chain_global(
    pairs: Sequence[tuple[nn.Linear, nn.Linear]],
    amount: int,
    method: str,
    generator: torch.Generator | None = None,
    **overrides: Any,
) -> None:
    """Remove ``amount`` units in total from chained Linear pairs ``(fc1, fc2), (fc2, fc3), ...``, globally.

    The core's ``prune_pairs`` is chain-safe: it decides everything from the matrices read before
    the first write, then re-reads each pair just before writing it.
    """
    from projprune import prune_pairs

    prune_pairs(pairs, amount, method, generator=generator, **overrides)


def _prune_stage(model: nn.Module, targets: Sequence[int], variant: Variant, generator: torch.Generator) -> None:
    from projprune import prune_pair

    overrides = dict(variant.overrides)
    triples = model.prunable_pairs(variant.scope)
    current = [layer.weight.shape[0] for layer, _, _ in triples]
    if variant.mode == "global":
        if any(norm is not None or not isinstance(layer, nn.Linear) for layer, _, norm in triples):
            raise ValueError(f"variant {variant.label!r}: global mode supports chained Linear pairs without norms")
        total = sum(current) - sum(targets)
        if total > 0:
            pairs = [(layer, nxt) for layer, nxt, _ in triples]
            prune_chain_global(pairs, total, variant.method, generator=generator, **overrides)
        return
    for (layer, next_layer, norm), width, target in zip(triples, current, targets):
        if width > target:
            prune_pair(layer, next_layer, width - target, variant.method, generator=generator, bn=norm, **overrides)


def prune_in_stages(
    model: nn.Module,
    variant: Variant,
    percents: Sequence[int],
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    seed: int = 0,
    after_stage: Callable[[nn.Module], None] | None = None,
) -> list[StageResult]:
    """Prune a copy of ``model`` stage by stage, recording test accuracy after each stage.

    Each stage removes the difference between the current widths and the stage's targets
    (:func:`stage_schedule` of the unpruned widths), so redistribution compounds over stages.

    Args:
        model: a trained model with ``prunable_pairs(scope)`` and ``hidden_widths(scope)``, e.g.
            :class:`LeNetParams` (left untouched).
        variant: what to prune with.
        percents: kept percentages, ``[100, 90, ..., 10]``.
        x_test: (N, 1, S, S) images; y_test: (N,) labels.
        seed: seeds the generator of the ``random`` method.
        after_stage: called on the pruned model after each stage, before evaluation (e.g.
            :func:`recalibrate_batchnorm`).
    """
    if variant.mode not in MODES:
        raise ValueError(f"variant {variant.label!r}: mode must be one of {MODES}, got {variant.mode!r}")
    work = copy.deepcopy(model).eval()
    schedule = stage_schedule(work.hidden_widths(variant.scope), percents)
    generator = torch.Generator().manual_seed(seed)
    results = [StageResult(percents[0], work.hidden_widths(variant.scope), evaluate_accuracy(work, x_test, y_test))]
    failure = ""
    for percent, targets in zip(percents[1:], schedule[1:]):
        if not failure:
            try:
                with torch.no_grad():
                    _prune_stage(work, targets, variant, generator)
            except ValueError as exc:
                if not variant.may_fail:
                    raise
                failure = f"pruning failed: {exc}"
            if not failure and after_stage is not None:
                after_stage(work)
            if not failure and not all(bool(torch.isfinite(p).all()) for p in work.parameters()):
                failure = "non-finite weights after pruning"
        if failure:
            results.append(StageResult(percent, tuple(targets), None, FAILED, failure))
            continue
        results.append(StageResult(percent, work.hidden_widths(variant.scope), evaluate_accuracy(work, x_test, y_test)))
    return results


def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> None:
    """Re-estimate every BatchNorm's running mean/variance on ``x`` (N, ...); no weight changes.

    Pruning a conv's input channels shifts the statistics its BatchNorm saw in training; this is the
    standard cheap repair: the core's :func:`projprune.recalibrate_batchnorm` over ``x`` in batches.
    """
    core_recalibrate_batchnorm(model, x.split(batch_size))
