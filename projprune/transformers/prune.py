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

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from projprune._checks import check_plain_layer
from projprune.calibration import ActivationStats, collect_activation_stats
from projprune.greedy import PruneResult, apply_pruning, apply_refit, greedy_global
from projprune.methods import PAIR_METHODS, PairMethod, select_baseline_global
from projprune.options import ProjectionOptions, resolve_options
from projprune.surgery import select_units
from projprune.transformers.families import WIDTHS_KEY, FFNBlock, config_owners, find_ffn_blocks, guard_config
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


@dataclass
class _Plan:
    """New tensors for one block, computed before anything is modified."""

    keep: torch.Tensor  # (n,) bool
    unit_weight: torch.Tensor | None = None  # (n', M); None = plain slicing
    input_biases: list[torch.Tensor | None] | None = None
    output_weight: torch.Tensor | None = None  # (k, n')
    output_bias: torch.Tensor | None = None  # (k,)
    seconds: float | None = None


def _count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _work_dtype(tensor: torch.Tensor) -> torch.Tensor:
    # Half-precision models are scored in float32 (the solvers compute in float64 anyway).
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


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
    W = _work_dtype(block.unit_weight())
    V = _work_dtype(block.output_weight()).to(W.dtype)
    b = block.unit_bias()
    # The core's bias compensation needs one bias per unit and a bias downstream to absorb it.
    b_core = b if (len(block.inputs) == 1 and b is not None and block.output_bias() is not None) else None
    return W, None if b_core is None else _work_dtype(b_core).to(W.dtype), V


def _plan_from_result(block: FFNBlock, W: torch.Tensor, V: torch.Tensor, result, seconds: float | None) -> _Plan:
    W_new, _, V_new, bias_delta = apply_pruning(W, None, V, result)
    keep = result.keep
    scale_b = result.scale_b[keep]
    biases = []
    for layer in block.inputs:
        bias = getattr(layer, "bias", None)
        biases.append(None if bias is None else _work_dtype(bias.detach())[keep] * scale_b.to(W.dtype))
    out_bias = block.output_bias()
    new_out_bias = None
    if bias_delta is not None:
        # mean correction creates the output bias when the block has none (see _bias_owner)
        base = torch.zeros_like(bias_delta, dtype=W.dtype) if out_bias is None else _work_dtype(out_bias)
        new_out_bias = base + bias_delta.to(W.dtype)
    return _Plan(keep, W_new, biases, V_new, new_out_bias, seconds)


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
        return [_plan_from_result(block, W, V, r, None) for block, (W, _, V), r in zip(blocks, inputs, results)], {}
    plans = []
    for block, (W, b, V), st, amount in zip(_progress(blocks, "FFN layers", progress), inputs, per_layer, amounts):
        start = time.perf_counter()
        result = greedy_global([W], amount, opts, bs=[b], Vs=[V], stats=None if st is None else [st],
                               dtype=dtype)[0]
        plans.append(_plan_from_result(block, W, V, result, time.perf_counter() - start))
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
    Ws = [_work_dtype(block.unit_weight()) for block in blocks]
    return Ws, [_work_dtype(block.output_weight()).to(W.dtype) for block, W in zip(blocks, Ws)]


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
        plans.append(_plan_from_result(block, W, V, result, None if total is not None else time.perf_counter() - start))
    return plans, {}


def _plan_llm_baseline(blocks, ratio, amounts, total, spec, options, stats=None, progress=False):
    """FLAP / Wanda-sp: smallest calibrated scores; FLAP adds the removed units' mean ``V_R μ_R`` to the bias."""
    opts = resolve_options(spec.options, dict(options))
    Ws, Vs = _unit_and_output_weights(blocks)
    keeps, seconds = _select_by_scores(Ws, Vs, amounts, total, spec, stats)
    if not opts.mean_correction:
        return [_Plan(keep.cpu(), seconds=sec) for keep, sec in zip(keeps, seconds)], {}
    plans = []
    for block, W, V, keep, st, sec in zip(blocks, Ws, Vs, keeps, stats, seconds):
        result = _selection_result(keep, W.dtype)
        removed = ~result.keep
        # FLAP's bias compensation: what the removed units contributed on average, V_R μ_R
        result.out_bias_delta = (V[:, removed].double() @ st.mean.cpu()[removed]).to(W.dtype)
        plans.append(_plan_from_result(block, W, V, result, sec))
    return plans, {}


def _plan_baseline(blocks, ratio, amounts, total, spec, options, stats=None, progress=False):
    generator = torch.Generator().manual_seed(int(options.get("seed", 0)))
    Ws = [_work_dtype(block.unit_weight()) for block in blocks]
    if total is not None:
        keeps = select_baseline_global(Ws, total, spec, generator)
        return [_Plan(keep.cpu()) for keep in keeps], {}
    name = "random" if spec.kind == "random" else f"l{spec.p}"
    plans = []
    for W, amount in zip(Ws, amounts):
        start = time.perf_counter()
        keep = select_units(W, amount, method=name, generator=generator)
        plans.append(_Plan(keep.cpu(), seconds=time.perf_counter() - start))
    return plans, {}


def _plan_prunenet(blocks, ratio, amounts, total, spec, options, stats=None, progress=False):
    weights = [_work_dtype(block.policy_weight()) for block in blocks]
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
        plans.append(_Plan(keep, seconds=time.perf_counter() - start))
    return plans, {"policy": policy}


_PLANNERS: dict[str, Callable[..., tuple[list[_Plan], dict]]] = {
    "random": _plan_baseline,
    "norm": _plan_baseline,
    "lazy": _plan_projective,
    "exact": _plan_projective,
    "act_norm": _plan_act_norm,
    "flap": _plan_llm_baseline,
    "wanda_sp": _plan_llm_baseline,
    "prunenet": _plan_prunenet,
}


# --------------------------------------------------------------------------- config
def _update_configs(model: nn.Module, blocks: Sequence[FFNBlock]) -> None:
    """Record the new widths in every owning ``PreTrainedModel``'s config.

    Uniform widths go to the family's width attribute (``intermediate_size``, ``n_inner``,
    ``ffn_dim``), so plain ``from_pretrained`` rebuilds the model; otherwise the list goes to
    ``config.projprune_ffn_widths`` and :func:`projprune.transformers.from_pretrained`
    resizes the blocks before loading the weights.
    """
    for owner, indices in config_owners(model, blocks):
        config = getattr(owner, "config", None)
        if config is None:
            continue
        widths = [blocks[i].width for i in indices]
        families = {blocks[i].family.name for i in indices}
        key = None
        if len(families) == 1:
            key = next((k for k in blocks[indices[0]].family.width_keys if hasattr(config, k)), None)
        if len(set(widths)) == 1 and key is not None:
            setattr(config, key, widths[0])
            if hasattr(config, WIDTHS_KEY):
                delattr(config, WIDTHS_KEY)
        else:
            setattr(config, WIDTHS_KEY, widths)
            guard_config(config, [k for i in indices for k in blocks[i].family.width_keys if hasattr(config, k)])


# --------------------------------------------------------------------------- checks and rollback
def _check_blocks(model: nn.Module, blocks: Sequence[FFNBlock]) -> None:
    """Refuse what a write could not handle: parametrized, weight-normed, masked, meta, tied, non-finite projections."""
    counts: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        counts.setdefault(id(param), []).append(name)
    module_names = {id(module): name for name, module in model.named_modules(remove_duplicate=False)}
    for block in blocks:
        for layer in (*block.inputs, block.output):
            # parametrizations, weight_norm, pruning masks, meta device: before any value is read
            check_plain_layer(layer, f"model: FFN block {block.name!r} projection {module_names.get(id(layer))!r}")
            for kind in ("weight", "bias"):
                param = getattr(layer, kind, None)
                if param is None:
                    continue
                names = counts.get(id(param), [])
                if len(names) > 1:
                    raise ValueError(f"model: FFN block {block.name!r} shares its {kind} with {names}; pruning would "
                                     "untie it silently: expected untied FFN projections")
                if not bool(torch.isfinite(param.detach()).all()):
                    raise ValueError(f"model: FFN block {block.name!r} has NaN or Inf in a projection's {kind}; "
                                     "expected finite weights")


def _check_plans(blocks: Sequence[FFNBlock], plans: Sequence[_Plan]) -> None:
    for block, plan in zip(blocks, plans):
        dtype = block.output.weight.dtype
        tensors = [plan.unit_weight, plan.output_weight, plan.output_bias, *(plan.input_biases or [])]
        if any(t is not None and not bool(torch.isfinite(t.to(dtype)).all()) for t in tensors):
            raise ValueError(f"pruning FFN block {block.name!r} produced NaN or Inf weights (strengths alpha/beta/"
                             "gamma too large?); expected finite results: the model was left unchanged")


def _bias_owner(model: nn.Module, blocks: Sequence[FFNBlock], plans: Sequence[_Plan]) -> list:
    """Configs that must learn ``mlp_bias=True`` because mean correction creates output biases.

    A block without an output bias (LLaMA-style ``down_proj``) gets one, and its input
    projections get zero biases, so that ``mlp_bias=True`` rebuilds it; a family whose config
    cannot say so is refused (pass ``mean_correction=False``).
    """
    created = [i for i, (b, p) in enumerate(zip(blocks, plans))
               if p.output_bias is not None and b.output_bias() is None]
    if not created:
        return []
    owners = config_owners(model, blocks)
    configs = []
    for index in created:
        config = next((getattr(o, "config", None) for o, idx in owners if index in idx), None)
        if config is None or not hasattr(config, "mlp_bias"):
            raise ValueError(f"mean correction needs an output bias on FFN block {blocks[index].name!r}, which has "
                             "none and whose config cannot hold one (no mlp_bias); pass mean_correction=False")
        plan = plans[index]
        plan.input_biases = [torch.zeros(plan.unit_weight.shape[0], dtype=plan.unit_weight.dtype) if b is None else b
                             for b in plan.input_biases]
        configs.append(config)
    return list({id(c): c for c in configs}.values())


@contextlib.contextmanager
def _restore_on_failure(model: nn.Module, blocks: Sequence[FFNBlock]):
    """Put every projection and config back if a write fails half-way (all blocks or none)."""
    layers = {id(layer): layer for block in blocks for layer in (*block.inputs, block.output)}.values()
    attrs = ("in_features", "out_features", "nf", "nx")
    saved = [(layer, dict(layer._parameters), {a: getattr(layer, a) for a in attrs if hasattr(layer, a)})
             for layer in layers]
    configs = [(o.config, dict(vars(o.config))) for o, _ in config_owners(model, blocks) if hasattr(o, "config")]
    try:
        yield
    except BaseException:
        for layer, params, values in saved:
            layer._parameters.clear()
            layer._parameters.update(params)
            for name, value in values.items():
                setattr(layer, name, value)
        for config, values in configs:
            vars(config).clear()
            vars(config).update(values)
        raise


def _check_calibration(method: str, spec: PairMethod, calibration: Any) -> None:
    calibrated = sorted(k for k, v in FFN_METHODS.items() if v.needs_stats)
    if spec.needs_stats and calibration is None:
        raise ValueError(f"calibration: method {method!r} runs on activations; pass calibration= an iterable of "
                         "model inputs (tensors of token ids or tokenizer outputs with attention_mask)")
    if not spec.needs_stats and calibration is not None:
        raise ValueError(f"calibration: method {method!r} is data-free and takes no calibration data; expected "
                         f"calibration=None (calibrated methods: {', '.join(calibrated)})")
    if calibration is not None and (isinstance(calibration, (torch.Tensor, Mapping, str, bytes))
                                    or not isinstance(calibration, Iterable)):
        raise ValueError("calibration: expected an iterable of batches (e.g. a list of tensors or tokenizer "
                         f"outputs), got a single {type(calibration).__name__}; wrap one batch in a list")


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
               progress: bool = False) -> tuple[list[_Plan], dict]:
    """New tensors for ``blocks`` (nothing modified): ``amounts[i]`` units removed from block ``i``, or
    ``total`` units over all of them chosen globally (when not None). Used by :func:`prune_ffn` and
    :func:`projprune.transformers.prune_blocks`; raises ValueError for non-finite results."""
    with torch.no_grad():
        plans, extra = _PLANNERS[spec.kind](list(blocks), ratio, list(amounts), total, spec, dict(options), stats,
                                            progress)
    _check_plans(blocks, plans)
    return plans, extra


def _apply_plans(model: nn.Module, blocks: list, plans: list, all_blocks: list | None = None) -> None:
    """Write every block's plan and the configs; everything or nothing (restored if a write fails).

    ``all_blocks``: every FFN block of the model when ``blocks`` is a subset (the configs record all widths).
    """
    bias_configs = _bias_owner(model, blocks, plans)
    with _restore_on_failure(model, blocks), torch.no_grad():
        for block, plan in zip(blocks, plans):
            if plan.unit_weight is None:
                block.slice_units(torch.nonzero(plan.keep).flatten())
            else:
                block.set_weights(plan.unit_weight, plan.input_biases, plan.output_weight, plan.output_bias)
        for config in bias_configs:
            config.mlp_bias = True
        _update_configs(model, blocks if all_blocks is None else all_blocks)


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
    _check_calibration(method, spec, calibration)
    ratio = float(ratio)
    blocks = find_ffn_blocks(model)
    _check_blocks(model, blocks)
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
        plans = [_Plan(torch.ones(block.width, dtype=torch.bool), seconds=0.0) for block in blocks]
    else:
        stats = _collect(model, blocks, calibration, max_batches, progress) if spec.needs_stats else None
        amounts = [block.width - kept_width(block.width, ratio) for block in blocks]
        total = int(round(ratio * sum(widths_before))) if global_mode else None
        plans, extra = plan_units(blocks, spec, amounts, total, options, stats, ratio=ratio, progress=progress)
        _apply_plans(model, blocks, plans)
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
