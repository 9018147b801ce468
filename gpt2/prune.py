"""Pruning the QK dimensions of every attention head, and the MLPs, of :class:`gpt2.model.GPT2`.

Attention (docs/reproduction.md §3): in every head keep ``n_keep = qk_dim - round(rate * qk_dim)``
query/key dimensions, the same index set for Q and K. Head ``h`` of a layer owns rows
``h*qk : (h+1)*qk`` of ``q_proj`` and ``k_proj``. For the projective methods a dimension
``d`` is the row ``[W_q[d], b_q[d]]`` (the bias as one more input column, so the rows
describe ``q_d(x) = W_q[d]·x + b_q[d]`` exactly); ``Q_h`` and ``K_h`` are the head's
``(qk, n_embd + 1)`` row blocks.

Methods (:data:`ATTENTION_METHODS`), every one returns the kept indices per head:

- ``random``: a random subset (seeded ``torch.Generator``).
- ``norm``: keep the largest ``||W_q[d]|| + ||W_k[d]||`` (weights only, the paper's score).
- ``proj_coef``: the reference's rule: keep the dimensions whose coefficient rows have the
  largest ``||C_Q[d]|| + ||C_K[d]||``, ``C = solve_normal_equations(rows)`` (docs/algorithm.md §1).
- ``proj``: the paper's text: prune the smallest projection distance; a dimension's
  distance is ``dist_Q[d] + dist_K[d]`` (docs/algorithm.md §1 on ``Q_h`` and on ``K_h``).
- ``proj_exact``: the core's exact greedy (:func:`projprune.greedy_exact`, selection only,
  α = β = γ = 0) on the concatenated rows ``[Q_h | K_h]``: a dimension is redundant when its
  query *and* key rows are expressed by the others with the same coefficients; the
  distances are re-projected after every removal.
- ``proj_comp``: greedy with exact compensation through ``q·k = Σ_d q_d k_d``. If
  ``q_i ≈ Σ_j c_j q_j``, then ``q_i k_i ≈ Σ_j q_j (c_j k_i)``: dropping ``i`` and folding
  ``k_j += c_j k_i`` (weights and bias) keeps every score up to the residual
  ``dist_Q[i] · ||k_i||`` (symmetrically ``q_j += e_j q_i`` when ``k_i ≈ Σ_j e_j k_j``, error
  ``||q_i|| · dist_K[i]``). Each step removes the dimension with the smallest of these
  bounds, folds it into the side that achieves it, and recomputes. With an exactly
  dependent dimension and ``λ → 0`` the scores are unchanged.
- ``depgraph``: Torch-Pruning's dependency graph and group-norm importance
  (``GroupMagnitudeImportance(p=2)``), the paper's DepGraph baseline: the coupled Q/K
  channels of a layer are one group and, with ``num_heads`` set, the same positions are
  pruned in every head (Torch-Pruning averages the importance over heads).

MLP pruning goes through the core registry :func:`projprune.prune_pair` (any
``PAIR_METHODS`` name, e.g. ``exact`` or ``proj550``) on ``(c_fc, c_proj)`` of every block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from gpt2.model import GPT2, CausalSelfAttention
from projprune.greedy import greedy_exact
from projprune.solvers import projection_distances, solve_normal_equations

__all__ = [
    "ATTENTION_METHODS",
    "AttentionMethod",
    "attention_keep_count",
    "head_rows",
    "norm_scores",
    "proj_coef_scores",
    "proj_distance_scores",
    "prune_attention",
    "prune_head_qk",
    "prune_mlp",
    "slice_qk",
]

SelectFn = Callable[..., torch.Tensor]


# --------------------------------------------------------------------------- per-head rows
def head_rows(attn: CausalSelfAttention, head: int, with_bias: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The query and key rows of one head, float64.

    Returns:
        ``(Q_h, K_h)``, each ``(qk_dim, n_embd + 1)`` (bias last) or ``(qk_dim, n_embd)``.
    """
    qk = attn.qk_dim
    rows = slice(head * qk, (head + 1) * qk)
    out = []
    for proj in (attn.q_proj, attn.k_proj):
        W = proj.weight.detach()[rows].double()
        if with_bias:
            W = torch.cat([W, proj.bias.detach()[rows].double().unsqueeze(1)], dim=1)
        out.append(W)
    return out[0], out[1]


def norm_scores(attn: CausalSelfAttention) -> torch.Tensor:
    """``||W_q[d]|| + ||W_k[d]||`` per head and dimension: ``(n_head, qk_dim)`` float64 (keep the largest)."""
    n_head, qk = attn.n_head, attn.qk_dim
    wq = attn.q_proj.weight.detach().double().view(n_head, qk, -1)
    wk = attn.k_proj.weight.detach().double().view(n_head, qk, -1)
    return wq.norm(dim=-1) + wk.norm(dim=-1)


def proj_distance_scores(attn: CausalSelfAttention, lmbda: float = 1e-3) -> torch.Tensor:
    """Projection distance of each dimension among its head's dims, Q plus K: ``(n_head, qk_dim)`` float64."""
    scores = []
    for head in range(attn.n_head):
        Q_h, K_h = head_rows(attn, head)
        scores.append(projection_distances(Q_h, lmbda) + projection_distances(K_h, lmbda))
    return torch.stack(scores)


def proj_coef_scores(attn: CausalSelfAttention, lmbda: float = 1e-3) -> torch.Tensor:
    """The reference's score ``||C_Q[d]|| + ||C_K[d]||`` (coefficient rows): ``(n_head, qk_dim)`` float64."""
    scores = []
    for head in range(attn.n_head):
        Q_h, K_h = head_rows(attn, head)
        C_Q = solve_normal_equations(Q_h, lmbda)
        C_K = solve_normal_equations(K_h, lmbda)
        scores.append(C_Q.norm(dim=1) + C_K.norm(dim=1))
    return torch.stack(scores)


def _keep_largest(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """``(n_head, qk)`` scores -> ``(n_head, n_keep)`` sorted indices of the largest (ties: lowest index)."""
    # A stable sort on the negated scores keeps the lowest index among equal scores.
    order = torch.sort(-scores, dim=1, stable=True).indices[:, :n_keep]
    return torch.sort(order, dim=1).values


# --------------------------------------------------------------------------- selectors
def _select_random(attn: CausalSelfAttention, n_keep: int, *, generator: torch.Generator, **_) -> torch.Tensor:
    scores = torch.rand(attn.n_head, attn.qk_dim, generator=generator, dtype=torch.float64)
    return _keep_largest(scores, n_keep)


def _select_norm(attn: CausalSelfAttention, n_keep: int, **_) -> torch.Tensor:
    return _keep_largest(norm_scores(attn), n_keep)


def _select_proj(attn: CausalSelfAttention, n_keep: int, *, lmbda: float, **_) -> torch.Tensor:
    return _keep_largest(proj_distance_scores(attn, lmbda), n_keep)


def _select_proj_coef(attn: CausalSelfAttention, n_keep: int, *, lmbda: float, **_) -> torch.Tensor:
    return _keep_largest(proj_coef_scores(attn, lmbda), n_keep)


def _select_proj_exact(attn: CausalSelfAttention, n_keep: int, *, lmbda: float, **_) -> torch.Tensor:
    amount = attn.qk_dim - n_keep
    keeps = []
    for head in range(attn.n_head):
        Q_h, K_h = head_rows(attn, head)
        result = greedy_exact(torch.cat([Q_h, K_h], dim=1), amount, alpha=0.0, beta=0.0, gamma=0.0, lmbda=lmbda)
        keeps.append(result.kept_indices)
    return torch.stack(keeps)


def prune_head_qk(Q_h: torch.Tensor, K_h: torch.Tensor, amount: int, lmbda: float = 1e-3
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy QK-dimension pruning of one head with exact compensation through ``q·k``.

    Args:
        Q_h, K_h: ``(qk, m)`` query and key rows (bias as the last column if any), float64.
        amount: dimensions to remove, ``0 <= amount < qk``.
        lmbda: ridge regulariser of the coefficients (λ → 0 makes the fold exact for
            exactly dependent dimensions).

    Returns:
        ``(keep (qk - amount,) sorted int64, Q_h' (qk - amount, m), K_h' (qk - amount, m))``:
        the kept rows after folding; ``Q_h'[a]·K_h'[b]`` summed over kept dims approximates
        the original ``Σ_d q_d k_d``.
    """
    if not 0 <= amount < Q_h.shape[0]:
        raise ValueError(f"amount must be in [0, {Q_h.shape[0]}), got {amount}")
    Q_h, K_h = Q_h.clone(), K_h.clone()
    alive = torch.arange(Q_h.shape[0])
    for _ in range(amount):
        Qa, Ka = Q_h[alive], K_h[alive]
        C_Q, C_K = solve_normal_equations(Qa, lmbda), solve_normal_equations(Ka, lmbda)
        err_fold_k = projection_distances(Qa, lmbda) * Ka.norm(dim=1)  # q_i ≈ C_Q[i] Qa, fold into K
        err_fold_q = Qa.norm(dim=1) * projection_distances(Ka, lmbda)  # k_i ≈ C_K[i] Ka, fold into Q
        best = torch.minimum(err_fold_k, err_fold_q)
        i = int(torch.argmin(best))
        if err_fold_k[i] <= err_fold_q[i]:
            K_h[alive] = Ka + C_Q[i].unsqueeze(1) * Ka[i]  # k_j += c_j k_i (C_Q[i, i] = 0)
        else:
            Q_h[alive] = Qa + C_K[i].unsqueeze(1) * Qa[i]
        alive = torch.cat([alive[:i], alive[i + 1:]])
    return alive, Q_h[alive], K_h[alive]


def _select_proj_comp(attn: CausalSelfAttention, n_keep: int, *, lmbda: float, **_) -> torch.Tensor:
    amount, qk, m = attn.qk_dim - n_keep, attn.qk_dim, attn.q_proj.in_features
    keeps = []
    with torch.no_grad():
        for head in range(attn.n_head):
            Q_h, K_h = head_rows(attn, head)
            keep, Q_new, K_new = prune_head_qk(Q_h, K_h, amount, lmbda)
            rows = head * qk + keep
            for proj, new in ((attn.q_proj, Q_new), (attn.k_proj, K_new)):
                proj.weight[rows] = new[:, :m].to(proj.weight.dtype)
                proj.bias[rows] = new[:, m].to(proj.bias.dtype)
            keeps.append(keep)
    return torch.stack(keeps)


class _QKProduct(nn.Module):
    """``readout(q(x) * k(x))``: the element-wise product makes Torch-Pruning couple query and key channels.

    ``readout`` (zero weights, so it adds nothing to the group-norm importance) is the
    downstream layer Torch-Pruning needs to treat the group as attention.
    """

    def __init__(self, q_proj: nn.Linear, k_proj: nn.Linear) -> None:
        super().__init__()
        self.q = nn.Linear(q_proj.in_features, q_proj.out_features)
        self.k = nn.Linear(k_proj.in_features, k_proj.out_features)
        self.q.load_state_dict(q_proj.state_dict())
        self.k.load_state_dict(k_proj.state_dict())
        self.readout = nn.Linear(q_proj.out_features, 1)
        nn.init.zeros_(self.readout.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.q(x) * self.k(x))


def _select_depgraph(attn: CausalSelfAttention, n_keep: int, **_) -> torch.Tensor:
    import torch_pruning as tp

    qk, n_head = attn.qk_dim, attn.n_head
    aux = _QKProduct(attn.q_proj, attn.k_proj)
    pruner = tp.pruner.MetaPruner(
        aux,
        example_inputs=torch.zeros(1, 2, attn.q_proj.in_features),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=(qk - n_keep) / qk,
        num_heads={aux.q: n_head, aux.k: n_head},
        prune_head_dims=True,
        prune_num_heads=False,
        iterative_steps=1,
    )
    pruned: list[int] = []
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            if dep.target.module is aux.q and pruner.DG.is_out_channel_pruning_fn(dep.handler):
                pruned.extend(int(i) for i in idxs)
    keep_mask = torch.ones(n_head * qk, dtype=torch.bool)
    keep_mask[torch.tensor(pruned, dtype=torch.long)] = False
    keep = torch.nonzero(keep_mask.view(n_head, qk))[:, 1].view(n_head, -1)
    if keep.shape[1] != n_keep:
        raise RuntimeError(f"Torch-Pruning kept {keep.shape[1]} dims per head, expected {n_keep}")
    return keep


@dataclass(frozen=True)
class AttentionMethod:
    """A named QK-dimension selector: ``select(attn, n_keep, *, lmbda, generator) -> (n_head, n_keep)``."""

    select: SelectFn
    compensates: bool  # True when ``select`` also rewrites the kept rows in place
    description: str


ATTENTION_METHODS: dict[str, AttentionMethod] = {
    "random": AttentionMethod(_select_random, False, "random subset per head"),
    "norm": AttentionMethod(_select_norm, False, "keep largest ||Wq[d]|| + ||Wk[d]||"),
    "proj_coef": AttentionMethod(_select_proj_coef, False, "keep largest coefficient-row norms (reference)"),
    "proj": AttentionMethod(_select_proj, False, "prune smallest projection distance, Q plus K (paper)"),
    "proj_exact": AttentionMethod(_select_proj_exact, False, "core exact greedy on [Q_h | K_h] rows"),
    "proj_comp": AttentionMethod(_select_proj_comp, True, "greedy with exact fold through q.k"),
    "depgraph": AttentionMethod(_select_depgraph, False, "Torch-Pruning DepGraph group-norm baseline"),
}


# --------------------------------------------------------------------------- application
def attention_keep_count(qk_dim: int, rate: float) -> int:
    """Dimensions kept per head: ``qk_dim - round(rate * qk_dim)``; ``rate`` in ``[0, 1)``."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    n_keep = qk_dim - int(round(rate * qk_dim))
    return max(n_keep, 1)


def slice_qk(attn: CausalSelfAttention, keep: torch.Tensor) -> None:
    """Keep query/key dims ``keep: (n_head, n_keep)`` (indices within each head) of ``attn``, in place."""
    n_head, n_keep = keep.shape
    if n_head != attn.n_head or int(keep.min()) < 0 or int(keep.max()) >= attn.qk_dim:
        raise ValueError(f"keep must be (n_head={attn.n_head}, n_keep) indices in [0, {attn.qk_dim})")
    rows = (torch.arange(n_head).unsqueeze(1) * attn.qk_dim + keep).flatten()
    for name in ("q_proj", "k_proj"):
        old: nn.Linear = getattr(attn, name)
        new = nn.Linear(old.in_features, rows.numel(), device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(old.weight[rows])
            new.bias.copy_(old.bias[rows])
        setattr(attn, name, new)
    attn.qk_dim = n_keep


def prune_attention(model: GPT2, rate: float, method: str, *, lmbda: float = 1e-3, seed: int = 1,
                    layers: list[int] | None = None) -> list[torch.Tensor]:
    """Prune ``rate`` of the QK dimensions of every head of every (or the listed) layer, in place.

    Args:
        model: the GPT-2 to prune.
        rate: fraction of each head's QK dimensions to remove, ``[0, 1)``.
        method: a key of :data:`ATTENTION_METHODS`.
        lmbda: ridge regulariser of the projective methods.
        seed: seed of the ``random`` method's generator.
        layers: layer indices (default all).

    Returns:
        Per pruned layer, the kept indices ``(n_head, n_keep)``.
    """
    if method not in ATTENTION_METHODS:
        raise ValueError(f"method must be one of {sorted(ATTENTION_METHODS)}, got {method!r}")
    n_layer = len(model.h)
    layers = list(range(n_layer)) if layers is None else layers
    if any(not 0 <= i < n_layer for i in layers):
        raise ValueError(f"layers must be indices in [0, {n_layer}), got {layers}")
    n_keeps = [attention_keep_count(model.h[i].attn.qk_dim, rate) for i in layers]
    generator = torch.Generator().manual_seed(seed)
    spec = ATTENTION_METHODS[method]
    kept = []
    for i, n_keep in zip(layers, n_keeps):
        attn = model.h[i].attn
        keep = spec.select(attn, n_keep, lmbda=lmbda, generator=generator)
        slice_qk(attn, keep)
        kept.append(keep)
    model.sync_config()
    return kept


def prune_mlp(model: GPT2, rate: float, method: str = "exact", *, seed: int = 1, calibration=None,
              **overrides) -> list[torch.Tensor]:
    """Prune ``round(rate * width)`` units of every MLP through the core's :func:`projprune.prune_pair`.

    Args:
        model: the GPT-2 to prune (in place).
        rate: fraction of each MLP's hidden units to remove, ``[0, 1)``.
        method: a ``projprune.PAIR_METHODS`` name (``random``, ``l2``, ``proj550``, ``exact``,
            ``calib``, ``act_norm``, ...).
        seed: seed of the ``random`` method.
        calibration: token batches ``(B, T)`` (calibration text, never the evaluation text) for the
            calibrated methods: statistics of what ``c_proj`` reads, collected block by block after
            the blocks before it were pruned.
        overrides: keyword overrides passed to ``prune_pair`` (e.g. ``lmbda``).

    Returns:
        Per layer, the kept unit indices (sorted int64).
    """
    from projprune import PAIR_METHODS, collect_activation_stats, prune_pair

    if not 0.0 <= rate < 1.0:
        raise ValueError(f"mlp rate must be in [0, 1), got {rate}")
    if method not in PAIR_METHODS:
        raise ValueError(f"mlp method must be one of {sorted(PAIR_METHODS)}, got {method!r}")
    needs_stats = PAIR_METHODS[method].needs_stats
    if needs_stats:
        calibration = list(calibration or [])
        if not calibration:
            raise ValueError(f"mlp method {method!r} needs calibration= token batches (calibration text, "
                             "separate from the evaluation text)")
    generator = torch.Generator().manual_seed(seed)
    kept = []
    for block in model.h:
        amount = int(round(rate * block.mlp.c_fc.out_features))
        stats = collect_activation_stats(model, [block.mlp.c_proj], calibration)[0] if needs_stats else None
        kept.append(prune_pair(block.mlp.c_fc, block.mlp.c_proj, amount, method, generator=generator,
                               stats=stats, **overrides))
    model.sync_config()
    return kept
