"""The three ViT experiments of paper §4.1, independent of data and I/O.

Each takes the model, a :class:`~vit.methods.ViTMethod` and an ``evaluate(model) -> dict``
callable (which must return ``"top1"``; the CLI adds top-5, loss, MACs, parameters and size),
so tests drive the schedules with an accuracy function they control.

- :func:`run_uniform`: the same amount from every MLP, each amount pruned from the original model.
- :func:`run_adaptive`: last layer to first, remove a chunk at a time while top-1 stays at or above
  ``threshold ** (1 / num_layers)`` of the last accepted top-1; the step that falls below is undone.
- :func:`norm_analysis`: per unit, ``‖w_i‖``, ``|b_i|``, ``‖v_i‖`` and the projection distance.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from engine.harness import progress
from projprune import projection_distances

from .methods import PruneContext, ViTMethod
from .models import mlp_pairs

__all__ = [
    "PAPER_MLP_WIDTH",
    "adaptive_chunk",
    "norm_analysis",
    "run_adaptive",
    "run_uniform",
    "uniform_amounts",
]

Evaluate = Callable[[nn.Module], dict]
OnRow = Callable[[dict, nn.Module], None]

PAPER_MLP_WIDTH = 3072  # ViT-B's MLP width, for which the paper's schedules were written
PAPER_CHUNK = 256  # units per adaptive step on ViT-B


def uniform_amounts(scale: float = 1.0, count: int = 24) -> list[int]:
    """The paper's uniform schedule ``round(i**1.1 * 50)``, ``i = 0..count-1``, times ``scale``.

    ``scale = 1`` is ViT-B's schedule (0, 50, 107, ..., 1574); a model with a narrower MLP uses
    ``scale = width / 3072`` so that it removes the same fractions.
    """
    if scale <= 0 or count < 1:
        raise ValueError(f"scale must be > 0 and count >= 1, got {scale}, {count}")
    return [round(round(i**1.1 * 50) * scale) for i in range(count)]


def adaptive_chunk(width: int) -> int:
    """The adaptive step: 256 units on ViT-B, scaled to ``width`` (at least one unit)."""
    return max(1, round(PAPER_CHUNK * width / PAPER_MLP_WIDTH))


def _widths(model: nn.Module) -> list[int]:
    return [fc1.weight.shape[0] for fc1, _ in mlp_pairs(model)]


def run_uniform(
    model: nn.Module,
    method: ViTMethod,
    amounts: Sequence[int],
    evaluate: Evaluate,
    ctx: PruneContext | None = None,
    on_row: OnRow | None = None,
) -> list[dict]:
    """Prune ``amount`` units from every MLP, for each amount, always from ``model`` itself.

    Returns:
        One row per amount: ``step``, ``amount`` (per layer), ``removed_units`` (all layers),
        ``mlp_units`` (remaining, all layers) and the ``evaluate`` results.
    """
    ctx = ctx or PruneContext()
    widths = _widths(model)
    for amount in amounts:
        if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount < min(widths):
            raise ValueError(f"amounts must be ints in [0, {min(widths)}) (every layer keeps a unit), got {amount!r}")
    rows = []
    for step, amount in enumerate(progress(list(amounts), desc=f"uniform {len(amounts)} amounts")):
        pruned = copy.deepcopy(model)
        method.prune(pruned, {layer: amount for layer in range(len(widths))}, ctx)
        row = {
            "step": step,
            "amount": amount,
            "removed_units": amount * len(widths),
            "mlp_units": sum(widths) - amount * len(widths),
            **evaluate(pruned),
        }
        rows.append(row)
        if on_row is not None:
            on_row(row, pruned)
    return rows


def run_adaptive(
    model: nn.Module,
    method: ViTMethod,
    chunk: int,
    evaluate: Evaluate,
    ctx: PruneContext | None = None,
    threshold: float = 0.9,
    on_row: OnRow | None = None,
) -> tuple[nn.Module, list[dict]]:
    """Greedy per-layer schedule, from the last MLP to the first (paper §4.1).

    In layer ``l``, repeatedly try removing ``chunk`` more units (while at least one unit would
    remain); accept when top-1 ``>= threshold ** (1 / num_layers) * last accepted top-1``,
    otherwise undo that step and move to layer ``l - 1``. Over all layers the accepted top-1 thus
    stays at or above ``threshold`` times the original.

    Returns:
        ``(pruned model, rows)``; row 0 is the unpruned model, then one row per tried step with
        ``layer``, ``layer_removed`` (accepted so far in that layer, this step included if
        accepted), ``removed_units`` (accepted, all layers), ``accepted`` and the evaluation.
    """
    if not method.repeatable:
        raise ValueError("the adaptive schedule prunes a layer repeatedly; this method cannot (use uniform)")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    ctx = ctx or PruneContext()
    widths = _widths(model)
    factor = threshold ** (1 / len(widths))
    removed = [0] * len(widths)
    base = evaluate(model)
    rows = [{"step": 0, "layer": -1, "layer_removed": 0, "removed_units": 0, "accepted": True, **base}]
    if on_row is not None:
        on_row(rows[0], model)
    last_top1 = base["top1"]
    bar = progress(total=sum((w - 1) // chunk for w in widths), desc="adaptive steps")
    for layer in reversed(range(len(widths))):
        while widths[layer] - removed[layer] - chunk >= 1:
            trial = copy.deepcopy(model)
            method.prune(trial, {layer: chunk}, ctx)
            metrics = evaluate(trial)
            accepted = metrics["top1"] >= factor * last_top1
            if accepted:
                model, last_top1 = trial, metrics["top1"]
                removed[layer] += chunk
            row = {
                "step": len(rows),
                "layer": layer,
                "layer_removed": removed[layer],
                "removed_units": sum(removed),
                "accepted": accepted,
                **metrics,
            }
            rows.append(row)
            bar.update(1)
            if on_row is not None:
                on_row(row, trial)
            if not accepted:
                break
    bar.close()
    return model, rows


@torch.no_grad()
def norm_analysis(model: nn.Module, lmbda: float = 1e-3) -> list[dict]:
    """Per MLP unit: ``w_norm = ‖W[i]‖``, ``b_abs = |b[i]|``, ``v_norm = ‖V[:, i]‖``, ``distance`` (λ = ``lmbda``).

    Distances are computed in float64 (docs/algorithm.md §3, residual form). Returns one row per unit.
    """
    rows = []
    for layer, (fc1, fc2) in enumerate(mlp_pairs(model)):
        W = fc1.weight.detach().double().cpu()  # (n, m)
        V = fc2.weight.detach().double().cpu()  # (k, n)
        b = fc1.bias.detach().double().cpu() if fc1.bias is not None else torch.zeros(W.shape[0], dtype=W.dtype)
        distance = projection_distances(W, lmbda)
        w_norm, v_norm = W.norm(dim=1), V.norm(dim=0)
        for unit in range(W.shape[0]):
            rows.append({
                "layer": layer,
                "unit": unit,
                "w_norm": float(w_norm[unit]),
                "b_abs": float(b[unit].abs()),
                "v_norm": float(v_norm[unit]),
                "distance": float(distance[unit]),
            })
    return rows
