"""Greedy group optimal-brain-surgeon pruning of a layer's inputs (docs/algorithm.md §8.2).

A *group* is a set of input channels of a linear layer ``y = V h + c`` that leave together,
e.g. the ``head_dim`` channels one attention head writes into the output projection. With
``C`` the centred covariance of ``h`` and the ridge ``M = C + λI``, ``P = M⁻¹``:

- removing group ``R`` (kept channels ``K``) costs ``tr(V_R (P_RR)⁻¹ V_Rᵀ)``, the smallest
  output error ``E‖V_R (h_R − μ_R) − V_R A (h_K − μ_K)‖²`` (plus the ridge penalty) that any
  compensation ``A`` can leave;
- the best compensation is ``A = −(P_RR)⁻¹ P_RK = M_RK M_KK⁻¹``, folded as ``V_K += V_R A``;
- the precision of the kept channels is the Schur complement ``P_KK − P_KR (P_RR)⁻¹ P_RK``
  (which equals ``M_KK⁻¹``), so the next step needs no new inverse.

:func:`greedy_group_obs` removes the cheapest group, updates ``V`` and ``P``, and repeats.
Every step factors all remaining groups' ``P_RR`` blocks at once (one batched float64
Cholesky), which gives both the costs and the chosen group's ``A``. Tensors in, tensors out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from projprune.solvers import regularised_inverse

__all__ = ["GroupOBSResult", "compensate_removed", "group_removal_costs", "greedy_group_obs"]


@dataclass
class GroupOBSResult:
    """Outcome of :func:`greedy_group_obs`.

    Attributes:
        keep: ``(g,)`` bool, the groups that stay.
        order: ``(amount,)`` int64, removed groups in removal order.
        costs: ``(amount,)`` float64, the cost of each removal when it was made (marginal costs).
        weight: ``(k, n')`` float64, ``V`` on the kept channels after every compensation; its
            columns follow ``groups[keep].flatten()``.
        precision: ``(n', n')`` float64, ``P`` of the kept channels after the Schur updates (same order).
    """

    keep: torch.Tensor
    order: torch.Tensor
    costs: torch.Tensor
    weight: torch.Tensor
    precision: torch.Tensor


def group_removal_costs(P: torch.Tensor, V: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cost of removing each group alone, ``tr(V_R (P_RR)⁻¹ V_Rᵀ)``, and the blocks' Cholesky factors.

    Args:
        P: ``(n, n)`` the precision ``(C + λI)⁻¹``, symmetric positive definite.
        V: ``(k, n)`` the layer's weight.
        groups: ``(g, u)`` int64 channel indices, one row per group (equal sizes).

    Returns:
        ``costs: (g,)`` and ``L: (g, u, u)`` lower factors with ``L Lᵀ = P_RR`` (one batched Cholesky).
    """
    blocks = P[groups.unsqueeze(2), groups.unsqueeze(1)]  # (g, u, u)
    L, info = torch.linalg.cholesky_ex(blocks)
    if bool((info != 0).any()):
        raise ValueError("the precision's group blocks are not positive definite; expected finite statistics and "
                         "a ridge lmbda > 0")
    columns = V[:, groups].permute(1, 2, 0)  # (g, u, k): V_Rᵀ per group
    scaled = torch.linalg.solve_triangular(L, columns, upper=False)  # L⁻¹ V_Rᵀ
    return scaled.square().sum(dim=(1, 2)), L


def greedy_group_obs(
    C: torch.Tensor,
    V: torch.Tensor,
    groups: torch.Tensor,
    amount: int,
    lam: float,
    callback: Callable[[int], None] | None = None,
) -> GroupOBSResult:
    """Remove ``amount`` groups of inputs one at a time, cheapest first, compensating the rest.

    Args:
        C: ``(n, n)`` centred covariance of the layer's input ``h``.
        V: ``(k, n)`` the layer's weight.
        groups: ``(g, u)`` int64, disjoint channel indices covering ``0..n-1``, one row per group.
        amount: groups to remove, ``0 <= amount < g``.
        lam: absolute ridge ``λ > 0`` (callers scale it by ``trace(C)/n``).
        callback: called with the step index after every removal.

    Returns:
        :class:`GroupOBSResult` (computed in float64 on ``C``'s device).
    """
    n = C.shape[0]
    g, u = groups.shape
    if C.shape != (n, n) or V.dim() != 2 or V.shape[1] != n or g * u != n:
        raise ValueError(f"expected C (n, n), V (k, n) and groups (g, u) with g·u = n, got {tuple(C.shape)}, "
                         f"{tuple(V.shape)}, {tuple(groups.shape)}")
    if not 0 <= amount < g:
        raise ValueError(f"amount must be in [0, {g - 1}] (every layer keeps a group), got {amount}")
    device = C.device
    perm = groups.to(device).flatten()  # work in group order: group i owns positions i·u .. (i+1)·u − 1
    P = regularised_inverse(C.to(torch.float64)[perm][:, perm], lam, "the calibration covariance")
    weight = V.to(device=device, dtype=torch.float64)[:, perm]
    alive = list(range(g))
    position = torch.arange(n, device=device).reshape(g, u)  # alive groups' channels in the compact P, weight
    order, costs = [], []
    for step in range(amount):
        cost, L = group_removal_costs(P, weight, position)
        j = int(torch.argmin(cost))
        removed = position[j]
        rows = P.index_select(0, removed)  # (u, m): P_R·
        A = -torch.cholesky_solve(rows, L[j])  # (u, m): h_R ≈ A h_K on the kept channels
        position = torch.cat((position[:j], position[j + 1:]))
        kept = position.flatten()
        rows_k, A_k = rows.index_select(1, kept), A.index_select(1, kept)
        # V_K += V_R A folds the removed columns in; P_KK + P_KR A = P_KK − P_KR P_RR⁻¹ P_RK (Schur complement)
        weight = weight.index_select(1, kept).addmm_(weight.index_select(1, removed), A_k)
        P = P.index_select(0, kept).index_select(1, kept).addmm_(rows_k.T, A_k)
        position = torch.arange(kept.numel(), device=device).reshape(-1, u)
        order.append(alive.pop(j))
        costs.append(float(cost[j]))
        if callback is not None:
            callback(step)
    keep = torch.ones(g, dtype=torch.bool)
    keep[order] = False
    return GroupOBSResult(keep=keep, order=torch.tensor(order, dtype=torch.long),
                          costs=torch.tensor(costs, dtype=torch.float64), weight=weight, precision=P)


def compensate_removed(C: torch.Tensor, mu: torch.Tensor, V: torch.Tensor, keep: torch.Tensor,
                       lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept columns after folding in the removed ones, and the bias change, in one solve.

    ``V' = V_K + V_R A`` with ``A = C_RK (C_KK + λI)⁻¹`` (= ``V M[:, K] M_KK⁻¹``, what the greedy's
    step-by-step compensation accumulates: the kept columns are not shrunk by the ridge), and
    ``Δb = V μ − V' μ_K = V_R μ_R − V_R A μ_K``, which keeps the output's mean.

    Args:
        C: ``(n, n)`` centred covariance; mu: ``(n,)`` means; V: ``(k, n)``; keep: ``(n,)`` bool.
        lam: absolute ridge ``λ > 0``.

    Returns:
        ``V': (k, n')`` and ``Δb: (k,)``, float64.
    """
    C, mu, V = C.to(torch.float64), mu.to(C.device, torch.float64), V.to(C.device, torch.float64)
    keep = keep.to(C.device)
    kept, removed = torch.nonzero(keep).flatten(), torch.nonzero(~keep).flatten()
    A = C[removed][:, kept] @ regularised_inverse(C[kept][:, kept], lam, "the kept channels' calibration covariance")
    V_new = V[:, kept] + V[:, removed] @ A
    return V_new, V @ mu - V_new @ mu[kept]
