"""Named per-pair pruning methods: one table that every experiment uses.

``PAIR_METHODS`` maps a method name to how it selects (random, row norm, lazy or exact
projective greedy) and with which options. :func:`prune_pair` and :func:`prune_pairs`
apply a method by name to one pair or, globally, to several.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from projprune._checks import check_amount
from projprune.surgery import (
    _check_pair,
    _slice_pair,
    pair_matrices,
    prune_pairs_global,
)

__all__ = ["PAIR_METHODS", "PairMethod", "prune_pair", "prune_pairs", "select_baseline_global"]


@dataclass(frozen=True)
class PairMethod:
    """How a named method selects and redistributes.

    Attributes:
        kind: ``"random"``, ``"norm"`` (smallest row norm first), ``"lazy"`` or ``"exact"``.
        p: the norm's order for ``kind="norm"``.
        options: keyword arguments for :func:`projprune.prune_pairs_global`.
        description: one line for tables and ``--help``.
    """

    kind: str
    p: int | None = None
    options: dict = field(default_factory=dict)
    description: str = ""


def _proj(alpha: float, beta: float, gamma: float) -> PairMethod:
    return PairMethod(
        "lazy",
        options={"alpha": alpha, "beta": beta, "gamma": gamma},
        description=f"projective, lazy tracking, (α, β, γ) = ({alpha}, {beta}, {gamma})",
    )


PAIR_METHODS: dict[str, PairMethod] = {
    "random": PairMethod("random", description="uniformly random units"),
    "l1": PairMethod("norm", p=1, description="smallest L1 row norm"),
    "l2": PairMethod("norm", p=2, description="smallest L2 row norm"),
    "proj000": _proj(0.0, 0.0, 0.0),
    "proj500": _proj(0.5, 0.0, 0.0),
    "proj550": _proj(0.5, 0.5, 0.0),
    "proj5n50": _proj(0.5, -0.5, 0.0),
    "proj555": _proj(0.5, 0.5, 0.5),
    "exact": PairMethod(
        "exact",
        options={"alpha": 0.5, "beta": 0.5, "gamma": 0.0},
        description="projective, exact greedy (rank-1 downdates), (α, β, γ) = (0.5, 0.5, 0)",
    ),
    "exact_oac": PairMethod(
        "exact",
        options={"alpha": 0.0, "beta": 0.0, "gamma": 0.0, "output_aware": True, "compensate": True},
        description="projective, exact greedy, output-aware scores, compensation into the next layer",
    ),
}


def _method(name: str) -> PairMethod:
    if name not in PAIR_METHODS:
        raise ValueError(f"method must be one of {sorted(PAIR_METHODS)}, got {name!r}")
    return PAIR_METHODS[name]


def select_baseline_global(
    Ws: Sequence[torch.Tensor], amount: int, spec: PairMethod, generator: torch.Generator | None
) -> list[torch.Tensor]:
    """Keep masks of a random or norm method over several layers, chosen globally.

    Args:
        Ws: layer weights ``(n_l, m_l)``.
        amount: total units to remove; every layer keeps at least one.
        spec: a ``"random"`` or ``"norm"`` entry of :data:`PAIR_METHODS`.

    Returns:
        Per layer, a ``(n_l,)`` bool keep mask. Norm scores are divided by their layer's sum,
        as the projective global mode does with distances.
    """
    sizes = [W.shape[0] for W in Ws]
    if spec.kind == "random":
        scores = [torch.rand(n, generator=generator, dtype=torch.float64) for n in sizes]
    else:
        scores = []
        for W in Ws:
            s = torch.linalg.vector_norm(W.double().cpu(), ord=spec.p, dim=1)
            scores.append(s / s.sum() if s.sum() > 0 else s)
    flat = torch.cat(scores)
    layer_of = torch.cat([torch.full((n,), li) for li, n in enumerate(sizes)])
    order = torch.sort(flat, stable=True).indices
    removed_per_layer = [0] * len(Ws)
    keep = [torch.ones(n, dtype=torch.bool) for n in sizes]
    offsets = [0]
    for n in sizes[:-1]:
        offsets.append(offsets[-1] + n)
    taken = 0
    for flat_idx in order.tolist():
        if taken == amount:
            break
        li = int(layer_of[flat_idx])
        if removed_per_layer[li] >= sizes[li] - 1:
            continue  # every layer keeps a unit
        keep[li][flat_idx - offsets[li]] = False
        removed_per_layer[li] += 1
        taken += 1
    return [k.to(W.device) for k, W in zip(keep, Ws)]


def prune_pairs(
    pairs: Sequence[tuple[nn.Module, nn.Module]],
    amount: int,
    method: str,
    *,
    generator: torch.Generator | None = None,
    bns: Sequence[nn.Module | None] | None = None,
    **overrides,
) -> list[torch.Tensor]:
    """Prune ``amount`` units in total over ``pairs`` with a named method, chosen globally.

    Args:
        pairs: ``(layer1, layer2)`` pairs (``nn.Linear`` or ``nn.Conv2d``).
        amount: total number of units to remove (every pair keeps one).
        method: a key of :data:`PAIR_METHODS`.
        generator: randomness for ``"random"``.
        bns: optional norm layers after each ``layer1``.
        **overrides: replace the method's options (e.g. ``lmbda=1e-2``, ``decay=False``).

    Returns:
        Per pair, the sorted kept indices.
    """
    spec = _method(method)
    bns = list(bns) if bns is not None else [None] * len(pairs)
    if spec.kind in ("lazy", "exact"):
        options = {**spec.options, **overrides}
        return prune_pairs_global(pairs, amount, solver=spec.kind, bns=bns, **options)
    if overrides:
        raise ValueError(f"method {method!r} takes no options, got {sorted(overrides)}")
    if len(pairs) == 0 or len(bns) != len(pairs):
        raise ValueError("pairs must be non-empty and bns must have one entry per pair")
    for li, ((layer1, layer2), norm) in enumerate(zip(pairs, bns)):
        _check_pair(layer1, layer2, norm, label=f"[{li}]")
    Ws = [pair_matrices(l1, l2)[0] for l1, l2 in pairs]
    capacity = sum(W.shape[0] for W in Ws) - len(Ws)
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount <= capacity:
        raise ValueError(f"amount must be an int with 0 <= amount <= {capacity}, got {amount!r}")
    keeps = select_baseline_global(Ws, amount, spec, generator)
    return [_slice_pair(l1, l2, torch.nonzero(k).flatten(), norm) for (l1, l2), k, norm in zip(pairs, keeps, bns)]


def prune_pair(
    layer1: nn.Module,
    layer2: nn.Module,
    amount: int,
    method: str,
    *,
    generator: torch.Generator | None = None,
    bn: nn.Module | None = None,
    **overrides,
) -> torch.Tensor:
    """Prune ``amount`` units of one pair with a named method (see :data:`PAIR_METHODS`).

    Returns:
        Sorted kept indices, int64.
    """
    _method(method)
    _check_pair(layer1, layer2, bn)
    check_amount(amount, layer1.weight.shape[0])
    return prune_pairs([(layer1, layer2)], amount, method, generator=generator, bns=[bn], **overrides)[0]
