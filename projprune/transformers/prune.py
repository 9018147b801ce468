"""One call to prune the FFN hidden units of any supported Hugging Face transformer.

:func:`prune_ffn` finds every FFN block (:mod:`projprune.transformers.families`), chooses
the units to keep with a named method, then edits the model in place and updates its
config so that ``save_pretrained`` / :func:`projprune.transformers.from_pretrained` give
back the pruned model. Every choice is computed before the first module is modified, so
a bad argument or a failing solver leaves the model as it was.

Methods are the keys of :data:`projprune.PAIR_METHODS` (``random``, ``l1``, ``l2``, the
paper's lazy ``proj*`` variants, ``exact``, ``exact_oac``, and the calibrated ``calib`` and
``act_norm`` of docs/algorithm.md §8, which need ``calibration=`` batches) plus ``prunenet``
(:mod:`projprune.transformers.prunenet`) and the retraining-free LLM baselines ``flap`` and
``wanda_sp`` (calibrated too; see :data:`FFN_METHODS`). Projective options (``alpha``, ``beta``,
``gamma``, ``lmbda``, ``decay``, ``v_uses_beta``, ``output_aware``, ``compensate``)
override the method's row of the table.

A caveat measured while testing: when the FFN is wider than the model (``n > m``, as in
every transformer), every unit's row lies in the span of the others, the projection
distances are set by the ridge term λ alone, and exact duplicate units are *not* reliably
removed first (random 64 x 32 blocks with five duplicate pairs: in most runs some of
the five removed units were not duplicates). With ``n <= m`` every projective method removes duplicates first
(tested), and ``exact_oac`` then leaves the model's output unchanged.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from projprune.calibration import ActivationStats, collect_activation_stats
from projprune.greedy import PruneResult, apply_refit, greedy_global
from projprune.methods import PAIR_METHODS, PairMethod, select_baseline_global
from projprune.options import ProjectionOptions, resolve_options
from projprune.surgery import select_units
from projprune.transformers._planning import (
    FFNPlan,
    apply_ffn_plans,
    check_calibration,
    check_ffn_blocks,
    check_ffn_plans,
    plan_from_result,
    work_dtype,
)
from projprune.transformers.families import WIDTHS_KEY, FFNBlock, find_ffn_blocks
from projprune.transformers.prunenet import PruneNetPolicy, kept_width, load_policy, train_policy

__all__ = ["FFN_METHODS", "WIDTHS_KEY", "LayerReport", "PruneReport", "prune_ffn"]


PRUNENET_METHOD = PairMethod("prunenet", description="PruneNet (ICLR 2025): learned policy, KS spectrum reward")
#: FLAP (An et al., AAAI 2024): smallest fluctuation ``Var(h_i)·‖v_i‖²`` removed, the removed units'
#: mean contribution ``V_R μ_R`` added to the output bias (created if absent); global mode ranks
#: per-layer standardised scores, as FLAP's adaptive structure search.
FLAP_METHOD = PairMethod("flap", options=ProjectionOptions(mean_correction=True), needs_stats=True,
                         description="FLAP: smallest Var(h_i)·‖v_i‖², removed units' mean into the output bias")
#: Structured Wanda (Wanda-sp, as FLAP's baseline): smallest ``‖h_i‖·Σ_k|V[k, i]|`` removed, no compensation.
WANDA_SP_METHOD = PairMethod("wanda_sp", options=ProjectionOptions(mean_correction=False), needs_stats=True,
                             description="Wanda-sp: smallest ‖h_i‖·Σ|v_i| (|W|·‖x‖ over the unit's output "
                                         "column), no compensation")
#: Every method :func:`prune_ffn` accepts: the core table plus PruneNet, FLAP and Wanda-sp.
FFN_METHODS: dict[str, PairMethod] = {**PAIR_METHODS, "prunenet": PRUNENET_METHOD, "flap": FLAP_METHOD,
                                      "wanda_sp": WANDA_SP_METHOD}

_PROJECTIVE_OPTIONS = frozenset(
    {"alpha", "beta", "gamma", "lmbda", "decay", "v_uses_beta", "output_aware", "compensate", "dtype",
     "identity_activation", "mean_correction", "refit"}
)
_OPTIONS_BY_KIND: dict[str, frozenset[str]] = {
    "random": frozenset({"seed"}),
    "norm": frozenset(),
    "lazy": _PROJECTIVE_OPTIONS,
    "exact": _PROJECTIVE_OPTIONS,
    "act_norm": frozenset({"lmbda", "mean_correction"}),
    "flap": frozenset({"mean_correction"}),
    "wanda_sp": frozenset(),
    "prunenet": frozenset({"policy", "episodes", "lr", "weight_decay", "discount", "seed", "draw_seed",
                           "show_progress"}),
}


@dataclass
class LayerReport:
    """What happened to one FFN block.

    Attributes:
        name: qualified module name of the block's owner.
        family: family name (``bert``, ``gpt2``, ``fc``, ``gated``).
        width_before / width_after: hidden units before and after.
        kept: sorted indices (into the original units) that stay, int64.
        seconds: selection time for this layer (None in global mode, where layers are chosen together).
    """

    name: str
    family: str
    width_before: int
    width_after: int
    kept: torch.Tensor
    seconds: float | None = None


@dataclass
class PruneReport:
    """The outcome of :func:`prune_ffn`.

    ``ratio`` counts FFN hidden units only; ``params_before``/``params_after`` are the
    model's real parameter counts (PruneNet's ratio is FFN width too: compare these).
    """

    method: str
    ratio: float
    global_mode: bool
    layers: list[LayerReport]
    params_before: int
    params_after: int
    ffn_params_before: int
    ffn_params_after: int
    seconds: float
    policy: PruneNetPolicy | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def widths(self) -> list[int]:
        return [layer.width_after for layer in self.layers]

    @property
    def param_reduction(self) -> float:
        """Fraction of all model parameters removed."""
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0

    def rows(self) -> list[dict[str, Any]]:
        """One dict per layer (for CSVs and tables)."""
        return [
            {"layer": r.name, "family": r.family, "width_before": r.width_before, "width_after": r.width_after,
             "seconds": "" if r.seconds is None else round(r.seconds, 4)}
            for r in self.layers
        ]


def _count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _check_arguments(ratio: Any, method: Any, global_mode: Any, options: dict[str, Any]) -> PairMethod:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
        raise ValueError(f"ratio must be a number in [0, 1) (fraction of FFN units removed), got {ratio!r}")
    if not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"ratio must be in [0, 1) (fraction of FFN units removed), got {ratio!r}")
    if not isinstance(method, str) or method not in FFN_METHODS:
        raise ValueError(f"method must be one of {sorted(FFN_METHODS)}, got {method!r}")
    spec = FFN_METHODS[method]
    allowed = _OPTIONS_BY_KIND[spec.kind]
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"method {method!r} does not take option(s) {unknown}; it takes {sorted(allowed) or 'none'}")
    if global_mode and spec.kind == "prunenet":
        raise ValueError("global_mode: PruneNet prunes every layer at the same ratio; use global_mode=False")
    return spec


# --------------------------------------------------------------------------- planners
def _projective_inputs(block: FFNBlock) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    W = work_dtype(block.unit_weight())
    V = work_dtype(block.output_weight()).to(W.dtype)
    b = block.unit_bias()
    # The core's bias compensation needs one bias per unit and a bias downstream to absorb it.
    b_core = b if (len(block.inputs) == 1 and b is not None and block.output_bias() is not None) else None
    return W, None if b_core is None else work_dtype(b_core).to(W.dtype), V


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


# Every planner takes (blocks, ratio, amounts, total, spec, options, stats, progress): ``amounts`` the units
# removed per block (per-layer mode), ``total`` the units removed over all blocks (global mode, else None).
def _plan_projective(blocks, ratio, amounts, total, spec, options, stats=None, progress=False):
    overrides = {key: value for key, value in options.items() if key != "dtype"}
    opts = resolve_options(spec.options, overrides)
    dtype = options.get("dtype")
    inputs = [_projective_inputs(block) for block in blocks]
    if stats is not None:  # on activations: the data-free bias term does not apply
        inputs = [(W, None, V) for W, _, V in inputs]
    per_layer = [None] * len(blocks) if stats is None else list(stats)
    if total is not None:
        with _bar(total, "global greedy", progress) as bar:
            results = greedy_global([W for W, _, _ in inputs], total, opts, bs=[b for _, b, _ in inputs],
                                    Vs=[V for _, _, V in inputs], stats=None if stats is None else per_layer,
                                    dtype=dtype, callback=lambda _step: bar.update(1))
        return [plan_from_result(block, W, V, r, None) for block, (W, _, V), r in zip(blocks, inputs, results)], {}
    plans = []
    for block, (W, b, V), st, amount in zip(_progress(blocks, "FFN layers", progress), inputs, per_layer, amounts):
        start = time.perf_counter()
        result = greedy_global([W], amount, opts, bs=[b], Vs=[V], stats=None if st is None else [st],
                               dtype=dtype)[0]
        plans.append(plan_from_result(block, W, V, result, time.perf_counter() - start))
    return plans, {}


def _progress(items: Sequence, desc: str, enabled: bool) -> Iterator:
    from tqdm.auto import tqdm

    return iter(tqdm(items, desc=desc, disable=not enabled, leave=False))


def _select_by_scores(Ws, Vs, amounts, total, spec, stats, generator=None) -> tuple[list[torch.Tensor], list]:
    """Keep masks of a one-shot scoring method, per layer (``amounts``) or over all layers (``total``);
    the second list holds each layer's selection seconds (None in global mode)."""
    if total is not None:
        return select_baseline_global(Ws, total, spec, generator, Vs, stats), [None] * len(Ws)
    keeps, seconds = [], []
    for li, (W, amount) in enumerate(zip(Ws, amounts)):
        start = time.perf_counter()
        keeps.append(select_baseline_global([W], amount, spec, generator, None if Vs is None else [Vs[li]],
                                            None if stats is None else [stats[li]])[0])
        seconds.append(time.perf_counter() - start)
    return keeps, seconds


def _unit_and_output_weights(blocks) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    Ws = [work_dtype(block.unit_weight()) for block in blocks]
    return Ws, [work_dtype(block.output_weight()).to(W.dtype) for block, W in zip(blocks, Ws)]


def _selection_result(keep: torch.Tensor, dtype: torch.dtype) -> PruneResult:
    ones = torch.ones(keep.shape[0], dtype=dtype)
    return PruneResult(keep=keep.cpu(), order=torch.nonzero(~keep.cpu()).flatten(), scale_w=ones, scale_b=ones,
                       scale_v=ones)


def _plan_act_norm(blocks, ratio, amounts, total, spec, options, stats=None, progress=False):
    """Smallest ``‖h_i − μ_i‖·‖v_i‖`` units, then the least-squares refit of the output layer."""
    opts = resolve_options(spec.options, dict(options))
    Ws, Vs = _unit_and_output_weights(blocks)
    keeps, _ = _select_by_scores(Ws, Vs, amounts, total, spec, stats)
    plans = []
    for block, W, V, keep, st in zip(_progress(blocks, "FFN refit", progress), Ws, Vs, keeps, stats):
        start = time.perf_counter()
        result = _selection_result(keep, W.dtype)
        apply_refit(result, V, st, opts)
        plans.append(plan_from_result(block, W, V, result, None if total is not None else time.perf_counter() - start))
    return plans, {}


def _plan_llm_baseline(blocks, ratio, amounts, total, spec, options, stats=None, progress=False):
    """FLAP / Wanda-sp: smallest calibrated scores; FLAP adds the removed units' mean ``V_R μ_R`` to the bias."""
    opts = resolve_options(spec.options, dict(options))
    Ws, Vs = _unit_and_output_weights(blocks)
    keeps, seconds = _select_by_scores(Ws, Vs, amounts, total, spec, stats)
    if not opts.mean_correction:
        return [FFNPlan(keep.cpu(), seconds=sec) for keep, sec in zip(keeps, seconds)], {}
    plans = []
    for block, W, V, keep, st, sec in zip(blocks, Ws, Vs, keeps, stats, seconds):
        result = _selection_result(keep, W.dtype)
        removed = ~result.keep
        # FLAP's bias compensation: what the removed units contributed on average, V_R μ_R
        result.out_bias_delta = (V[:, removed].double() @ st.mean.cpu()[removed]).to(W.dtype)
        plans.append(plan_from_result(block, W, V, result, sec))
    return plans, {}


def _plan_baseline(blocks, ratio, amounts, total, spec, options, stats=None, progress=False):
    generator = torch.Generator().manual_seed(int(options.get("seed", 0)))
    Ws = [work_dtype(block.unit_weight()) for block in blocks]
    if total is not None:
        keeps = select_baseline_global(Ws, total, spec, generator)
        return [FFNPlan(keep.cpu()) for keep in keeps], {}
    name = "random" if spec.kind == "random" else f"l{spec.p}"
    plans = []
    for W, amount in zip(Ws, amounts):
        start = time.perf_counter()
        keep = select_units(W, amount, method=name, generator=generator)
        plans.append(FFNPlan(keep.cpu(), seconds=time.perf_counter() - start))
    return plans, {}


def _plan_prunenet(blocks, ratio, amounts, total, spec, options, stats=None, progress=False):
    weights = [work_dtype(block.policy_weight()) for block in blocks]
    policy = options.get("policy")
    if isinstance(policy, (str, os.PathLike)):
        policy = load_policy(policy)
    if policy is None:
        train_options = {key: options[key] for key in ("episodes", "lr", "weight_decay", "discount", "seed",
                                                       "show_progress") if key in options}
        policy = train_policy(weights, ratio, **train_options)
    if not isinstance(policy, PruneNetPolicy):
        raise ValueError(f"policy: expected a PruneNetPolicy or a checkpoint path, got {type(policy).__name__}")
    generator = torch.Generator().manual_seed(int(options.get("draw_seed", 42)))  # the reference's final draw
    plans = []
    for W in weights:
        start = time.perf_counter()
        kept = policy.select(W, ratio, generator)
        keep = torch.zeros(W.shape[0], dtype=torch.bool)
        keep[kept.cpu()] = True
        plans.append(FFNPlan(keep, seconds=time.perf_counter() - start))
    return plans, {"policy": policy}


_PLANNERS: dict[str, Callable[..., tuple[list[FFNPlan], dict]]] = {
    "random": _plan_baseline,
    "norm": _plan_baseline,
    "lazy": _plan_projective,
    "exact": _plan_projective,
    "act_norm": _plan_act_norm,
    "flap": _plan_llm_baseline,
    "wanda_sp": _plan_llm_baseline,
    "prunenet": _plan_prunenet,
}


def _collect(model, blocks, calibration, max_batches, progress) -> list[ActivationStats]:
    from tqdm.auto import tqdm

    total = len(calibration) if hasattr(calibration, "__len__") else None
    with tqdm(total=total, desc="calibration batches", disable=not progress, leave=False) as bar:
        stats = collect_activation_stats(model, [block.output for block in blocks], calibration,
                                         max_batches=max_batches, callback=lambda _i: bar.update(1))
    for block, st in zip(blocks, stats):
        if st.n != block.width:
            raise ValueError(f"calibration: FFN block {block.name!r} has {block.width} units but its output "
                             f"projection read {st.n} features; expected the hidden units")
    return stats


# --------------------------------------------------------------------------- entry point
def plan_units(blocks: Sequence[FFNBlock], spec: PairMethod, amounts: Sequence[int], total: int | None,
               options: Mapping[str, Any], stats: Sequence[ActivationStats] | None, *, ratio: float = 0.0,
               progress: bool = False) -> tuple[list[FFNPlan], dict]:
    """New tensors for ``blocks`` (nothing modified): ``amounts[i]`` units removed from block ``i``, or
    ``total`` units over all of them chosen globally (when not None). Used by :func:`prune_ffn` and
    :func:`projprune.transformers.prune_blocks`; raises ValueError for non-finite results."""
    with torch.no_grad():
        plans, extra = _PLANNERS[spec.kind](list(blocks), ratio, list(amounts), total, spec, dict(options), stats,
                                            progress)
    check_ffn_plans(blocks, plans)
    return plans, extra


def prune_ffn(
    model: nn.Module,
    ratio: float,
    method: str = "exact",
    *,
    global_mode: bool = False,
    calibration: Iterable[Any] | None = None,
    max_batches: int | None = None,
    progress: bool = False,
    **options: Any,
) -> PruneReport:
    """Prune ``ratio`` of the hidden units of every FFN block of ``model`` in place.

    Args:
        model: a ``transformers`` model (BERT-style, GPT-2, OPT/Phi, LLaMA-style gated) or
            any module holding one (e.g. a sentence-transformers style wrapper).
        ratio: fraction of FFN units removed, ``0 <= ratio < 1``; each layer keeps
            ``n - round(ratio * n)`` units (global mode: ``round(ratio * total)`` removed
            overall). ``0`` changes nothing.
        method: a key of :data:`FFN_METHODS`.
        global_mode: choose the per-layer widths across layers (projective methods: the
            global greedy with per-layer normalised distances; l1/l2/random: per-layer
            normalised scores). Not available for ``prunenet``.
        calibration: model inputs for the calibrated methods (``calib``, ``act_norm``;
            refused by the data-free ones): an iterable of ``(batch, seq)`` token-id tensors or
            tokenizer outputs (an ``attention_mask`` excludes padding). The statistics are what
            each block's output projection reads (for gated blocks ``act(gate) * up``).
        max_batches: use at most this many calibration batches.
        progress: tqdm bars for calibration batches and per-layer selection.
        **options: method options: projective ``alpha``, ``beta``, ``gamma``, ``lmbda``,
            ``decay``, ``v_uses_beta``, ``output_aware``, ``compensate``, ``dtype``;
            ``random``: ``seed``; ``prunenet``: ``policy`` (a trained
            :class:`PruneNetPolicy` or a checkpoint path; trained here when absent),
            ``episodes``, ``lr``, ``weight_decay``, ``discount``, ``seed``, ``draw_seed``,
            ``show_progress``.

    Returns:
        :class:`PruneReport` with one :class:`LayerReport` per block.

    Raises:
        ValueError: bad ``ratio``, unknown ``method`` or option, unsupported architecture,
            missing/unwanted/bad ``calibration``, parametrized, tied or non-finite projections
            (raised before the model is modified; a write failing half-way restores every block).
    """
    spec = _check_arguments(ratio, method, global_mode, options)
    check_calibration(method, spec.needs_stats, calibration, [k for k, v in FFN_METHODS.items() if v.needs_stats])
    ratio = float(ratio)
    blocks = find_ffn_blocks(model)
    check_ffn_blocks(model, blocks)
    widths_before = [block.width for block in blocks]
    if not global_mode:
        too_small = [(b.name, b.width) for b in blocks if kept_width(b.width, ratio) < 1]
        if too_small:
            raise ValueError(f"ratio {ratio} would remove every unit of blocks {too_small}; use a smaller ratio")
    params_before = _count_parameters(model)
    ffn_before = sum(block.num_parameters() for block in blocks)
    start = time.perf_counter()
    extra: dict[str, Any] = {}
    if ratio == 0.0:
        plans = [FFNPlan(torch.ones(block.width, dtype=torch.bool), seconds=0.0) for block in blocks]
    else:
        stats = _collect(model, blocks, calibration, max_batches, progress) if spec.needs_stats else None
        amounts = [block.width - kept_width(block.width, ratio) for block in blocks]
        total = int(round(ratio * sum(widths_before))) if global_mode else None
        plans, extra = plan_units(blocks, spec, amounts, total, options, stats, ratio=ratio, progress=progress)
        apply_ffn_plans(model, blocks, plans)
    seconds = time.perf_counter() - start
    layers = [
        LayerReport(block.name, block.family.name, before, block.width, torch.nonzero(plan.keep).flatten(),
                    plan.seconds)
        for block, before, plan in zip(blocks, widths_before, plans)
    ]
    return PruneReport(
        method=method,
        ratio=ratio,
        global_mode=bool(global_mode),
        layers=layers,
        params_before=params_before,
        params_after=_count_parameters(model),
        ffn_params_before=ffn_before,
        ffn_params_after=sum(block.num_parameters() for block in blocks),
        seconds=seconds,
        policy=extra.get("policy"),
    )
