"""Prune whole attention heads of Hugging Face transformers (docs/algorithm.md §8.2).

    >>> from projprune.transformers import prune_heads, from_pretrained
    >>> report = prune_heads(model, 0.25, "calib", calibration=batches)   # in place
    >>> model.save_pretrained("pruned")                                  # config records the heads
    >>> model = from_pretrained("pruned")                                # rebuilds the pruned layout

A head is removed with its query/key/value rows and its columns of the output projection
(``attention.output.dense``, ``c_proj``, ``out_proj``, ``o_proj``). With grouped-query
attention the unit is one key/value head *with its query heads* (a whole group): the forward
maps query head ``j`` to key/value head ``j // num_key_value_groups``, so removing whole groups
keeps that map, ``num_key_value_groups`` and the rotary embeddings unchanged; removing query
heads inside a group would need uneven groups, which no ``transformers`` forward supports.
Every count below ("heads", ``ratio``) is in units: heads, or key/value groups.

Methods (:data:`HEAD_METHODS`): ``random``, ``l2`` (norm of the head's output-projection
columns), ``flap`` (FLAP, An et al., AAAI 2024), ``act_norm`` (FLAP's score with a least-squares
refit) and ``calib`` (greedy group OBS with compensation into the kept heads and mean
correction, :mod:`projprune.group_obs`). The last three read calibration statistics of what
the output projection reads.

Lower-level pieces, for callers that allocate units themselves (e.g. across heads and FFN units):

- :func:`~projprune.transformers.families.find_attention_blocks` ``(model) -> list[AttentionBlock]``;
  ``block.units``, ``block.params_per_unit()`` give the units and the parameters each one owns.
- :func:`collect_head_stats` ``(model, blocks, calibration) -> list[ActivationStats]``.
- :func:`head_costs` ``(blocks, method, stats) -> list[Tensor]``: per block, each unit's score
  if it were removed alone now, normalised so that blocks compare (lowest removed first).
- :func:`head_curves` ``(blocks, method, stats, amounts) -> list[HeadCurve]``: per block, the
  removal order and the normalised marginal cost of each removal (for ``calib`` the greedy's,
  after the earlier removals' compensation).
- ``prune_heads(..., amounts=[...], stats=[...])`` prunes given per-block unit counts with
  precomputed statistics.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from projprune.calibration import ActivationStats, collect_activation_stats
from projprune.greedy import calibration_terms, refit_next_layer
from projprune.group_obs import compensate_removed, greedy_group_obs, group_removal_costs
from projprune.methods import CALIB_LMBDA, fluctuation_scores, standardised
from projprune.solvers import regularised_inverse
from projprune.transformers._planning import (
    HeadPlan,
    apply_head_plans,
    check_attention_blocks,
    check_calibration,
    check_head_plans,
)
from projprune.transformers.families import AttentionBlock, find_attention_blocks
from projprune.transformers.prune import LayerReport, PruneReport

__all__ = ["CALIBRATED_HEAD_METHODS", "CALIB_HEADS_LMBDA", "HEAD_METHODS", "HeadCurve", "collect_head_stats",
           "find_attention_blocks", "head_costs", "head_curves", "prune_heads"]

#: Every method :func:`prune_heads` accepts, with a one-line description.
HEAD_METHODS: dict[str, str] = {
    "random": "uniformly random heads",
    "l2": "smallest norm of the head's output-projection columns",
    "flap": "FLAP: smallest Σ Var(h_i)·‖v_i‖² over the head, removed heads' mean V_R μ_R into the output bias",
    "act_norm": "FLAP's score, then the least-squares refit of the output projection and mean correction",
    "calib": "greedy group OBS: cost tr(V_R P_RR⁻¹ V_Rᵀ), compensation into the kept heads, mean correction",
}
#: Methods that read calibration statistics.
CALIBRATED_HEAD_METHODS = frozenset({"flap", "act_norm", "calib"})
_OPTIONS: dict[str, frozenset[str]] = {
    "random": frozenset({"seed"}),
    "l2": frozenset(),
    "flap": frozenset({"mean_correction"}),
    "act_norm": frozenset({"lmbda", "mean_correction"}),
    "calib": frozenset({"lmbda", "mean_correction", "compensate", "energy"}),
}
#: ``calib``'s relative ridge for heads (λ = lmbda · trace(C) / n), chosen on validation text that is
#: neither calibration nor evaluation text (all-MiniLM-L6-v2: 200 docstring sentences after the 300
#: calibration ones; ``benchmarks/minilm_heads.py --validation-sentences 200``): of 1e-3, 1e-2, 3e-2,
#: 1e-1, 3e-1, 1, 3 it was best at 25 %, 50 % and 75 % of heads removed (the FFN ``calib``'s 1e-1 next).
CALIB_HEADS_LMBDA = 0.3
#: Default relative ridges per method (``act_norm``'s refit uses the FFN ``act_norm``'s).
_DEFAULT_LMBDA = {"calib": CALIB_HEADS_LMBDA, "act_norm": CALIB_LMBDA}


@dataclass
class HeadCurve:
    """One block's removal sequence.

    Attributes:
        order: ``(amount,)`` int64 units in removal order.
        costs: ``(amount,)`` float64 normalised cost of each removal when it is made (see :func:`head_costs`).
        params_per_unit: parameters one unit owns.
    """

    order: torch.Tensor
    costs: torch.Tensor
    params_per_unit: int


# --------------------------------------------------------------------------- checks
def _check_arguments(ratio: Any, method: Any, global_mode: Any, options: dict[str, Any]) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) \
            or not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"ratio must be a number in [0, 1) (fraction of heads removed per layer), got {ratio!r}")
    if not isinstance(method, str) or method not in HEAD_METHODS:
        raise ValueError(f"method must be one of {sorted(HEAD_METHODS)}, got {method!r}")
    if not isinstance(global_mode, bool):
        raise ValueError(f"global_mode must be True or False, got {global_mode!r}")
    unknown = sorted(set(options) - _OPTIONS[method])
    if unknown:
        raise ValueError(f"method {method!r} does not take option(s) {unknown}; it takes "
                         f"{sorted(_OPTIONS[method]) or 'none'}")
    for name in ("mean_correction", "compensate"):
        if name in options and not isinstance(options[name], bool):
            raise ValueError(f"{name} must be True or False, got {options[name]!r}")
    if options.get("energy", "none") not in ("none", "output"):
        raise ValueError(f"energy must be 'none' or 'output' (what global calib costs are divided by), got "
                         f"{options['energy']!r}")
    lmbda = options.get("lmbda", 1.0)
    if isinstance(lmbda, bool) or not isinstance(lmbda, (int, float)) or not math.isfinite(lmbda) or lmbda <= 0:
        raise ValueError(f"lmbda must be a finite number > 0 (relative ridge), got {lmbda!r}")


def _check_data(method: str, calibration: Any, stats: Any, blocks: Sequence[AttentionBlock]) -> None:
    calibrated = method in CALIBRATED_HEAD_METHODS
    if not calibrated or stats is None:  # a data-free method refuses stats= as it refuses calibration=
        check_calibration(method, calibrated, calibration if stats is None else stats, CALIBRATED_HEAD_METHODS)
        return
    if calibration is not None:
        raise ValueError("calibration: pass calibration= or stats=, not both")
    fits = (isinstance(st, ActivationStats) and st.n == b.channels and st.count > 0 for st, b in zip(stats, blocks))
    if not isinstance(stats, Sequence) or len(stats) != len(blocks) or not all(fits):
        raise ValueError(f"stats: expected one non-empty ActivationStats per attention block, of widths "
                         f"{[b.channels for b in blocks]} (what each output projection reads)")


def _amounts(blocks: Sequence[AttentionBlock], ratio: float) -> list[int]:
    amounts = [int(round(ratio * block.units)) for block in blocks]
    empty = [(block.name, block.units) for block, a in zip(blocks, amounts) if a >= block.units]
    if empty:
        raise ValueError(f"ratio {ratio} would remove every head of blocks {empty}; use a smaller ratio")
    return amounts


# --------------------------------------------------------------------------- statistics and scores
def collect_head_stats(model: nn.Module, blocks: Sequence[AttentionBlock], calibration: Iterable[Any], *,
                       max_batches: int | None = None, progress: bool = False) -> list[ActivationStats]:
    """Statistics of what every block's output projection reads (the concatenated head outputs)."""
    from tqdm.auto import tqdm

    total = len(calibration) if hasattr(calibration, "__len__") else None
    with tqdm(total=total, desc="calibration batches", disable=not progress, leave=False) as bar:
        return collect_activation_stats(model, [block.output for block in blocks], calibration,
                                        max_batches=max_batches, callback=lambda _i: bar.update(1))


def _weight(block: AttentionBlock) -> torch.Tensor:
    return block.output_weight().double()


def _unit_sums(block: AttentionBlock, per_channel: torch.Tensor) -> torch.Tensor:
    return per_channel.reshape(block.units, block.unit_channels).sum(dim=1)


def _lmbda(method: str, options: Mapping[str, Any]) -> float:
    return float(options.get("lmbda", _DEFAULT_LMBDA.get(method, CALIB_HEADS_LMBDA)))


def _output_energy(V: torch.Tensor, C: torch.Tensor, energy: str = "output") -> float:
    """``tr(V C Vᵀ)``: the variance the layer's output carries (``energy="output"``), or 1 (``"none"``)."""
    if energy == "none":
        return 1.0
    total = float(((V @ C) * V).sum())
    return total if total > 0 else 1.0


def head_costs(blocks: Sequence[AttentionBlock], method: str, stats: Sequence[ActivationStats] | None = None,
               generator: torch.Generator | None = None, energy: str = "output", **options: Any) -> list[torch.Tensor]:
    """Per block, each unit's score if it were removed alone now: ``(units,)`` float64 on the CPU, lowest first.

    Normalised so that blocks compare: ``l2`` and ``act_norm`` divided by their block's sum,
    ``flap`` standardised per block (FLAP's global ranking), ``calib`` the OBS cost divided by
    the block's output variance ``tr(V C Vᵀ)`` (``energy="none"``: the absolute cost, the
    squared error added to the residual stream per token); ``random`` uniform.
    """
    scores = []
    for li, block in enumerate(blocks):
        V = _weight(block).cpu()
        if method == "random":
            scores.append(torch.rand(block.units, generator=generator, dtype=torch.float64))
            continue
        if method == "l2":
            raw = _unit_sums(block, V.square().sum(dim=0)).sqrt()
        elif method in ("flap", "act_norm"):
            raw = _unit_sums(block, fluctuation_scores(V, stats[li]))
            if method == "flap":
                scores.append(standardised(raw))
                continue
            raw = raw.sqrt()
        elif method == "calib":
            C, _, lam = calibration_terms(stats[li], _lmbda(method, options), torch.device("cpu"), torch.float64)
            raw = group_removal_costs(regularised_inverse(C, lam, "the calibration covariance"), V,
                                      block.unit_groups())[0] / _output_energy(V, C, energy)
            scores.append(raw)
            continue
        else:
            raise ValueError(f"method must be one of {sorted(HEAD_METHODS)}, got {method!r}")
        scores.append(raw / raw.sum() if raw.sum() > 0 else raw)
    return scores


def head_curves(blocks: Sequence[AttentionBlock], method: str, stats: Sequence[ActivationStats] | None = None,
                amounts: Sequence[int] | None = None, generator: torch.Generator | None = None,
                progress: bool = False, energy: str = "output", **options: Any) -> list[HeadCurve]:
    """Per block, the first ``amounts[i]`` removals (default: all but one unit) and their normalised costs.

    For the one-shot scores the order is the sorted :func:`head_costs`; for ``calib`` it is the
    greedy group OBS (:func:`projprune.group_obs.greedy_group_obs`), whose costs are marginal: each
    is the cost after the earlier removals were compensated, divided by ``tr(V C Vᵀ)``
    (``energy="none"``: not divided).
    """
    amounts = [block.units - 1 for block in blocks] if amounts is None else list(amounts)
    if method != "calib":
        curves = []
        for block, score, amount in zip(blocks, head_costs(blocks, method, stats, generator, energy, **options),
                                        amounts):
            ranked = torch.sort(score, stable=True)
            curves.append(HeadCurve(ranked.indices[:amount], ranked.values[:amount], block.params_per_unit()))
        return curves
    return [curve for curve, _ in _calib_curves(blocks, stats, amounts, _lmbda(method, options), energy, progress)]


def _calib_curves(blocks, stats, amounts, lmbda: float, energy: str, progress: bool) -> list[tuple[HeadCurve, dict]]:
    """``calib``'s greedy per block: its curve and what planning reuses (``C``, ``μ``, ``λ``, the greedy's result)."""
    from tqdm.auto import tqdm

    out = []
    for block, st, amount in zip(tqdm(blocks, desc="head greedy", disable=not progress, leave=False), stats, amounts):
        V = _weight(block)
        C, mu, lam = calibration_terms(st, lmbda, V.device, torch.float64)
        result = greedy_group_obs(C, V, block.unit_groups().to(V.device), amount, lam)
        curve = HeadCurve(result.order, result.costs / _output_energy(V, C, energy), block.params_per_unit())
        out.append((curve, {"C": C, "mu": mu, "lam": lam, "result": result}))
    return out


def _merge(curves: Sequence[HeadCurve], total: int) -> list[int]:
    """Per-block removal counts taking the ``total`` cheapest next removals over all blocks' curves."""
    counts = [0] * len(curves)
    heap = [(float(c.costs[0]), li) for li, c in enumerate(curves) if len(c.costs)]
    heapq.heapify(heap)
    for _ in range(total):
        if not heap:
            break
        _, li = heapq.heappop(heap)
        counts[li] += 1
        if counts[li] < len(curves[li].costs):
            heapq.heappush(heap, (float(curves[li].costs[counts[li]]), li))
    return counts


# --------------------------------------------------------------------------- plans
def _plan(block: AttentionBlock, keep: torch.Tensor, method: str, st: ActivationStats | None,
          options: Mapping[str, Any], greedy: dict | None = None) -> HeadPlan:
    """The new output-projection weight and bias of one block (nothing is modified).

    ``greedy``: ``calib``'s moments and greedy result for this block (:func:`_calib_curves`), reused.
    """
    if method in ("random", "l2") or bool(keep.all()):  # nothing removed: nothing to compensate
        return HeadPlan(keep)
    channels = torch.zeros(block.channels, dtype=torch.bool)
    channels[block.unit_groups()[keep].flatten()] = True
    V = _weight(block)
    bias = block.output_bias()
    base = torch.zeros(V.shape[0], dtype=torch.float64, device=V.device) if bias is None else bias.double()
    mean_correction = bool(options.get("mean_correction", True))
    if method == "flap" or (method == "calib" and not options.get("compensate", True)):
        # FLAP's bias compensation: the removed channels' mean contribution stays as a constant
        if not mean_correction:
            return HeadPlan(keep)
        removed = ~channels.to(V.device)
        return HeadPlan(keep, None, base + V[:, removed] @ st.mean.to(V)[removed])
    if method == "act_norm":  # FFN act_norm's least-squares refit (kept columns refitted too)
        V_new, delta = refit_next_layer(V, st, channels.to(V.device), _lmbda(method, options), mean_correction)
    else:
        if greedy is None:
            terms = calibration_terms(st, _lmbda(method, options), V.device, torch.float64)
            greedy = dict(zip(("C", "mu", "lam"), terms))
        result = greedy.get("result")
        if result is not None and torch.equal(result.keep, keep):  # the greedy stopped here: its fold is the answer
            V_new = result.weight
            delta = V @ greedy["mu"] - V_new @ greedy["mu"][channels.to(V.device)]
        else:
            V_new, delta = compensate_removed(greedy["C"], greedy["mu"], V, channels, greedy["lam"])
        delta = delta if mean_correction else None
    return HeadPlan(keep, V_new, None if delta is None else base + delta)


def _plans(blocks, method, stats, amounts, total, options, generator, progress) -> list[HeadPlan]:
    start = time.perf_counter()
    needed = [block.units - 1 for block in blocks] if total is not None else amounts
    options = dict(options)
    energy = options.pop("energy", "none")
    if method == "calib":
        pairs = _calib_curves(blocks, stats, needed, _lmbda(method, options), energy, progress)
        curves, cached = [c for c, _ in pairs], [extra for _, extra in pairs]
    else:
        curves = head_curves(blocks, method, stats, needed, generator, progress, energy, **options)
        cached = [None] * len(blocks)
    if total is not None:
        amounts = _merge(curves, total)
    selection_seconds = (time.perf_counter() - start) / len(blocks)
    plans = []
    for li, (block, curve, amount) in enumerate(zip(blocks, curves, amounts)):
        start = time.perf_counter()
        keep = torch.ones(block.units, dtype=torch.bool)
        keep[curve.order[:amount]] = False
        plan = _plan(block, keep, method, None if stats is None else stats[li], options, cached[li])
        plan.seconds = None if total is not None else selection_seconds + time.perf_counter() - start
        plans.append(plan)
    check_head_plans(blocks, plans)
    return plans


# --------------------------------------------------------------------------- entry point
def prune_heads(
    model: nn.Module,
    ratio: float,
    method: str = "l2",
    calibration: Iterable[Any] | None = None,
    *,
    global_mode: bool = False,
    max_batches: int | None = None,
    progress: bool = False,
    amounts: Sequence[int] | None = None,
    stats: Sequence[ActivationStats] | None = None,
    **options: Any,
) -> PruneReport:
    """Remove ``ratio`` of the heads of every attention layer of ``model`` in place.

    Args:
        model: a ``transformers`` model (BERT-style, GPT-2, OPT-style, LLaMA/Mistral/Qwen/ViT
            ``q/k/v/o_proj``) or a module holding one.
        ratio: fraction of units removed, ``0 <= ratio < 1``: each layer loses
            ``round(ratio × units)`` (global mode: ``round(ratio × total units)`` overall,
            every layer keeping at least one). Units are heads, or whole key/value groups with
            grouped-query attention.
        method: a key of :data:`HEAD_METHODS`.
        calibration: model inputs for ``flap``, ``act_norm``, ``calib`` (refused by the others):
            an iterable of token-id tensors or tokenizer outputs (``attention_mask`` excludes padding).
        global_mode: per-layer counts from the method's normalised scores (:func:`head_costs`;
            for ``calib`` the greedy's marginal costs: by default absolute, the squared error each
            removal adds to the residual stream, which every layer writes into; ``energy="output"``
            divides them by the layer's output variance ``tr(V C Vᵀ)``).
        max_batches: use at most this many calibration batches.
        progress: tqdm bars.
        amounts: units to remove per block, overriding ``ratio`` and ``global_mode``.
        stats: precomputed :func:`collect_head_stats` statistics instead of ``calibration``.
        **options: ``random``: ``seed``; ``flap``: ``mean_correction``; ``act_norm``: ``lmbda``
            (relative ridge, default 1e-3), ``mean_correction``; ``calib``: ``lmbda`` (default
            :data:`CALIB_HEADS_LMBDA` = 0.3, chosen on validation text), ``mean_correction``,
            ``compensate`` (False: selection and FLAP's bias term only), ``energy`` (global mode:
            ``"none"``, the default chosen on validation text, or ``"output"``).

    Returns:
        A :class:`~projprune.transformers.PruneReport`; each layer's widths are units, and for
        this call ``ffn_params_before/after`` count the attention projections.
        ``extra["query_heads"]`` lists the query heads kept per layer.

    Raises:
        ValueError: bad ``ratio``/``method``/option/``amounts``, unsupported architecture,
            missing/unwanted/bad ``calibration``, meta, parametrized, tied or non-finite
            projections; raised before the model is modified.
    """
    _check_arguments(ratio, method, global_mode, options)
    ratio = float(ratio)
    blocks = find_attention_blocks(model)
    _check_data(method, calibration, stats, blocks)
    check_attention_blocks(model, blocks)
    if amounts is not None:
        amounts = list(amounts)
        if len(amounts) != len(blocks) or not all(
                isinstance(a, int) and not isinstance(a, bool) and 0 <= a < b.units for a, b in zip(amounts, blocks)):
            raise ValueError(f"amounts: expected one int per attention block in [0, units), units "
                             f"{[b.units for b in blocks]}, got {amounts!r}")
        total = None
    elif global_mode:
        total = int(round(ratio * sum(block.units for block in blocks)))
    else:
        amounts, total = _amounts(blocks, ratio), None
    units_before = [block.units for block in blocks]
    params_before = sum(p.numel() for p in model.parameters())
    attention_before = sum(block.num_parameters() for block in blocks)
    start = time.perf_counter()
    if total == 0 or (total is None and not any(amounts)):
        plans = [HeadPlan(torch.ones(block.units, dtype=torch.bool), seconds=0.0) for block in blocks]
    else:
        if method in CALIBRATED_HEAD_METHODS and stats is None:
            stats = collect_head_stats(model, blocks, calibration, max_batches=max_batches, progress=progress)
        generator = torch.Generator().manual_seed(int(options.pop("seed", 0)))
        with torch.no_grad():
            plans = _plans(blocks, method, stats, amounts, total, options, generator, progress)
        apply_head_plans(model, blocks, plans)
    layers = [LayerReport(b.name, b.family.name, before, b.units, torch.nonzero(p.keep).flatten(), p.seconds)
              for b, before, p in zip(blocks, units_before, plans)]
    return PruneReport(method=method, ratio=ratio, global_mode=bool(global_mode and amounts is None), layers=layers,
                       params_before=params_before, params_after=sum(p.numel() for p in model.parameters()),
                       ffn_params_before=attention_before,
                       ffn_params_after=sum(block.num_parameters() for block in blocks),
                       seconds=time.perf_counter() - start,
                       extra={"part": "heads", "query_heads": [block.query_heads for block in blocks]})
