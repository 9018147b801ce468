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
from projprune.calibration import ActivationStats
from projprune.greedy import PruneResult, StepCallback, apply_refit, validate_layer
from projprune.options import ProjectionOptions, resolve_options
from projprune.surgery import (
    check_pair,
    check_pairs,
    install_results,
    pair_matrices,
    prune_pairs_global,
    slice_pair,
    transaction,
)

__all__ = ["CALIB_LMBDA", "PAIR_METHODS", "PairMethod", "baseline_scores", "fluctuation_scores", "prune_pair",
           "prune_pairs", "select_baseline_global", "standardised", "wanda_scores"]


@dataclass(frozen=True)
class PairMethod:
    """How a named method selects and redistributes.

    Attributes:
        kind: ``"random"``, ``"norm"`` (smallest row norm first), ``"lazy"`` or ``"exact"``
            (projective greedy with that tracking), ``"act_norm"`` (smallest centred
            activation norm times next-layer column norm, then a least-squares refit), or the
            retraining-free LLM baselines ``"flap"`` (:func:`fluctuation_scores`, removed units'
            mean folded into the next bias) and ``"wanda_sp"`` (:func:`wanda_scores`, no
            compensation), used by :func:`projprune.transformers.prune_ffn`.
        p: the norm's order for ``kind="norm"``.
        options: :class:`ProjectionOptions` for the projective kinds and ``act_norm``.
        description: one line for tables and ``--help``.
        needs_stats: the method runs on calibration statistics (``stats=`` is required).
    """

    kind: str
    p: int | None = None
    options: ProjectionOptions = field(default_factory=ProjectionOptions)
    description: str = ""
    needs_stats: bool = False


def _proj(alpha: float, beta: float, gamma: float) -> PairMethod:
    return PairMethod(
        "lazy",
        options=ProjectionOptions(alpha=alpha, beta=beta, gamma=gamma, tracking="lazy"),
        description=f"projective, lazy tracking, (α, β, γ) = ({alpha}, {beta}, {gamma})",
    )


#: Relative ridge λ of the calibrated methods (λ = CALIB_LMBDA · trace(C) / n); ``act_norm``'s refit.
CALIB_LMBDA = 1e-3
#: ``calib``'s relative λ. A stronger ridge than CALIB_LMBDA shrinks the compensation towards
#: what generalises beyond the calibration set. Chosen on validation text that is neither calibration
#: nor evaluation text (all-MiniLM-L6-v2, 128 held-out docstring sentences): best of 1e-3, 1e-2, 1e-1,
#: 3e-1 at both 30 % and 50 % pruned.
CALIB_SELECT_LMBDA = 1e-1

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
        options=ProjectionOptions(alpha=0.5, beta=0.5, gamma=0.0, tracking="exact"),
        description="projective, exact greedy (rank-1 downdates), (α, β, γ) = (0.5, 0.5, 0)",
    ),
    "exact_oac": PairMethod(
        "exact",
        options=ProjectionOptions(alpha=0.0, beta=0.0, gamma=0.0, tracking="exact", output_aware=True,
                                  compensate=True),
        description="projective, exact greedy, output-aware scores, compensation into the next layer's weight",
    ),
    "calib": PairMethod(
        "exact",
        options=ProjectionOptions(alpha=0.0, beta=0.0, gamma=0.0, lmbda=CALIB_SELECT_LMBDA, tracking="exact",
                                  output_aware=True, compensate=True, mean_correction=True),
        description="calibrated projective: exact greedy on activations, output-aware, compensated, "
                    "mean-corrected (greedy structured OBS)",
        needs_stats=True,
    ),
    "act_norm": PairMethod(
        "act_norm",
        options=ProjectionOptions(alpha=0.0, beta=0.0, gamma=0.0, lmbda=CALIB_LMBDA, refit=True,
                                  mean_correction=True),
        description="data-aware baseline: smallest ‖h_i − μ_i‖·‖v_i‖, least-squares refit, mean correction",
        needs_stats=True,
    ),
}


def _method(name: str) -> PairMethod:
    if not isinstance(name, str) or name not in PAIR_METHODS:
        raise ValueError(f"method must be one of {sorted(PAIR_METHODS)}, got {name!r}")
    return PAIR_METHODS[name]


def fluctuation_scores(V: torch.Tensor, stats: ActivationStats) -> torch.Tensor:
    """FLAP's fluctuation metric (An et al., AAAI 2024): ``Var(h_i) · ‖V[:, i]‖²``, float64 ``(n,)`` on the CPU.

    ``V: (k, n)`` the next layer's weight, ``stats`` the ``n`` inputs it reads. The variance is the
    population one (``C[i, i]``); FLAP's ``1/(N-1)`` only rescales every score alike.
    """
    variance = stats.covariance().diagonal().clamp_min(0.0).cpu()
    return variance * V.double().cpu().pow(2).sum(dim=0)


def wanda_scores(V: torch.Tensor, stats: ActivationStats) -> torch.Tensor:
    """Structured Wanda: ``‖h_i‖ · Σ_k |V[k, i]|``, float64 ``(n,)`` on the CPU.

    Wanda scores a weight by ``|W_kj| · ‖x_j‖`` (``‖x_j‖`` the root mean square of the input it
    multiplies over the calibration tokens, uncentred); a unit's score sums it over the unit's
    column of the next layer ``V: (k, n)``, as the Wanda-sp baseline of FLAP's code does. The
    producing layer's row is left out there too: its inputs are the block's input features, the
    same for every unit, so that term would only add a weighted row magnitude to the score.
    """
    rms = (stats.sum_outer.diagonal() / stats.count).clamp_min(0.0).sqrt().cpu()
    return rms * V.double().cpu().abs().sum(dim=0)


def standardised(scores: torch.Tensor) -> torch.Tensor:
    """``(s - mean(s)) / std(s)`` (unbiased std; zeros when every score is equal): FLAP's per-layer
    standardisation before a global ranking."""
    s = scores.double()
    if s.numel() < 2:
        return torch.zeros_like(s)
    std = s.std()
    return (s - s.mean()) / std if std > 0 else torch.zeros_like(s)


def baseline_scores(
    Ws: Sequence[torch.Tensor],
    spec: PairMethod,
    generator: torch.Generator | None = None,
    Vs: Sequence[torch.Tensor] | None = None,
    stats: Sequence[ActivationStats] | None = None,
) -> list[torch.Tensor]:
    """Per-layer scores of a one-shot method (lowest pruned first), float64 on the CPU.

    ``random``: uniform; ``norm``: row norms; ``act_norm``: ``sqrt(C[i, i]) · ‖v_i‖``. Norm
    scores are divided by their layer's sum, as the projective global mode does with distances.
    ``flap`` (:func:`fluctuation_scores`) and ``wanda_sp`` (:func:`wanda_scores`) are standardised
    per layer instead, as FLAP's adaptive structure search does before its global ranking.
    """
    sizes = [W.shape[0] for W in Ws]
    if spec.kind == "random":
        return [torch.rand(n, generator=generator, dtype=torch.float64) for n in sizes]
    if spec.kind == "norm":
        raw = [torch.linalg.vector_norm(W.double().cpu(), ord=spec.p, dim=1) for W in Ws]
    elif spec.kind == "act_norm":
        raw = [st.covariance().diagonal().clamp_min(0.0).sqrt().cpu()
               * torch.linalg.vector_norm(V.double().cpu(), dim=0) for V, st in zip(Vs, stats)]
    elif spec.kind in ("flap", "wanda_sp"):
        score = fluctuation_scores if spec.kind == "flap" else wanda_scores
        return [standardised(score(V, st)) for V, st in zip(Vs, stats)]
    else:
        raise ValueError(f"baseline_scores: kind {spec.kind!r} is not a one-shot method")
    return [s / s.sum() if s.sum() > 0 else s for s in raw]


def select_baseline_global(
    Ws: Sequence[torch.Tensor],
    amount: int,
    spec: PairMethod,
    generator: torch.Generator | None,
    Vs: Sequence[torch.Tensor] | None = None,
    stats: Sequence[ActivationStats] | None = None,
) -> list[torch.Tensor]:
    """Keep masks of a one-shot method (random, norm, act_norm) over several layers, chosen globally.

    Args:
        Ws: layer weights ``(n_l, m_l)``.
        amount: total units to remove; every layer keeps at least one.
        spec: a ``"random"``, ``"norm"``, ``"act_norm"``, ``"flap"`` or ``"wanda_sp"`` method.
        Vs, stats: next-layer weights and calibration statistics (the calibrated kinds only).

    Returns:
        Per layer, a ``(n_l,)`` bool keep mask.
    """
    sizes = [W.shape[0] for W in Ws]
    flat = torch.cat(baseline_scores(Ws, spec, generator, Vs, stats))
    layer_of = torch.cat([torch.full((n,), li) for li, n in enumerate(sizes)])
    offsets = [0]
    for n in sizes[:-1]:
        offsets.append(offsets[-1] + n)
    removed_per_layer = [0] * len(Ws)
    keep = [torch.ones(n, dtype=torch.bool) for n in sizes]
    taken = 0
    for flat_idx in torch.sort(flat, stable=True).indices.tolist():
        if taken == amount:
            break
        li = int(layer_of[flat_idx])
        if removed_per_layer[li] >= sizes[li] - 1:
            continue  # every layer keeps a unit
        keep[li][flat_idx - offsets[li]] = False
        removed_per_layer[li] += 1
        taken += 1
    return [k.to(W.device) for k, W in zip(keep, Ws)]


def _refit_results(matrices, keeps, stats, opts: ProjectionOptions) -> list[PruneResult]:
    results = []
    for (W, _, V), keep, st in zip(matrices, keeps, stats):
        ones = torch.ones(W.shape[0], dtype=W.dtype, device=W.device)
        result = PruneResult(keep=keep, order=torch.nonzero(~keep).flatten(), scale_w=ones, scale_b=ones,
                             scale_v=ones)
        apply_refit(result, V, st, opts)
        results.append(result)
    return results


def prune_pairs(
    pairs: Sequence[tuple[nn.Module, nn.Module]],
    amount: int,
    method: str,
    *,
    generator: torch.Generator | None = None,
    bns: Sequence[nn.Module | None] | None = None,
    stats: Sequence[ActivationStats] | None = None,
    callback: StepCallback | None = None,
    **overrides,
) -> list[torch.Tensor]:
    """Prune ``amount`` units in total over ``pairs`` with a named method, chosen globally.

    Args:
        pairs: ``(layer1, layer2)`` pairs (``nn.Linear`` or ``nn.Conv2d``).
        amount: total number of units to remove (every pair keeps one).
        method: a key of :data:`PAIR_METHODS`.
        generator: randomness for ``"random"``.
        bns: optional norm layers after each ``layer1``.
        stats: calibration statistics per pair (required by methods with ``needs_stats``,
            refused by the others).
        callback: step callback of the projective greedy.
        **overrides: :class:`ProjectionOptions` fields replacing the method's (e.g. ``lmbda=1e-2``).

    Returns:
        Per pair, the sorted kept indices.
    """
    spec = _method(method)
    if spec.needs_stats and stats is None:
        raise ValueError(f"method {method!r} runs on calibration statistics: pass stats= (one ActivationStats "
                         "per pair, from projprune.collect_activation_stats)")
    if not spec.needs_stats and stats is not None:
        raise ValueError(f"method {method!r} is data-free and takes no stats; expected stats=None "
                         "(calibrated methods: " + ", ".join(k for k, v in PAIR_METHODS.items() if v.needs_stats) + ")")
    if spec.kind in ("lazy", "exact"):
        return prune_pairs_global(pairs, amount, spec.options, bns=bns, stats=stats, callback=callback,
                                  **overrides)
    opts = resolve_options(spec.options, overrides)
    if overrides and spec.kind in ("random", "norm"):
        raise ValueError(f"method {method!r} takes no options, got {sorted(overrides)}")
    bns, stats = check_pairs(pairs, bns, stats)
    matrices = [pair_matrices(l1, l2) for l1, l2 in pairs]
    Ws = [W for W, _, _ in matrices]
    capacity = sum(W.shape[0] for W in Ws) - len(Ws)
    amount = check_amount(amount, capacity + 1)
    if spec.kind == "act_norm":
        for li, ((W, _, V), st) in enumerate(zip(matrices, stats)):
            validate_layer(W, None, V, st, opts, name=f"[{li}]")
    keeps = select_baseline_global(Ws, amount, spec, generator, [V for _, _, V in matrices], stats)
    if spec.kind == "act_norm":
        install_results(pairs, bns, _refit_results(matrices, keeps, stats, opts))
        return [torch.nonzero(k).flatten() for k in keeps]
    with transaction([m for pair in pairs for m in pair] + list(bns)):
        return [slice_pair(l1, l2, torch.nonzero(k).flatten(), norm) for (l1, l2), k, norm in zip(pairs, keeps, bns)]


def prune_pair(
    layer1: nn.Module,
    layer2: nn.Module,
    amount: int,
    method: str,
    *,
    generator: torch.Generator | None = None,
    bn: nn.Module | None = None,
    stats: ActivationStats | None = None,
    callback: StepCallback | None = None,
    **overrides,
) -> torch.Tensor:
    """Prune ``amount`` units of one pair with a named method (see :data:`PAIR_METHODS`).

    Returns:
        Sorted kept indices, int64.
    """
    _method(method)
    check_pair(layer1, layer2, bn)
    amount = check_amount(amount, layer1.weight.shape[0])
    return prune_pairs([(layer1, layer2)], amount, method, generator=generator, bns=[bn],
                       stats=None if stats is None else [stats], callback=callback, **overrides)[0]
