"""Planning internals shared by :func:`~projprune.transformers.prune_ffn`, :func:`~projprune.transformers.prune_heads`
and :func:`~projprune.transformers.prune_blocks`.

A plan holds one block's new tensors, computed before anything is modified. The checks run before
planning (blocks, calibration) or between planning and writing (plans); writing a list of plans
changes all blocks and their configs or none (a failure half-way restores everything).
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from projprune._checks import check_plain_layer
from projprune.greedy import PruneResult, apply_pruning
from projprune.transformers.families import (
    HEADS_KEY,
    HEADS_NOTE,
    WIDTHS_KEY,
    AttentionBlock,
    FFNBlock,
    check_projections,
    config_owners,
    guard_config,
    record_heads,
)

__all__ = [
    "FFNPlan",
    "HeadPlan",
    "apply_ffn_plans",
    "apply_head_plans",
    "check_attention_blocks",
    "check_calibration",
    "check_ffn_blocks",
    "check_ffn_plans",
    "check_head_plans",
    "plan_from_result",
    "restore_on_failure",
    "work_dtype",
]


@dataclass
class FFNPlan:
    """New tensors for one FFN block of ``n`` units (``n'`` kept, input width ``M``, output width ``k``)."""

    keep: torch.Tensor  # (n,) bool
    unit_weight: torch.Tensor | None = None  # (n', M); None = plain slicing
    input_biases: list[torch.Tensor | None] | None = None  # per input projection: (n',) or None
    output_weight: torch.Tensor | None = None  # (k, n')
    output_bias: torch.Tensor | None = None  # (k,)
    seconds: float | None = None


@dataclass
class HeadPlan:
    """New output projection of one attention block of ``units`` heads (or key/value groups), ``c'`` channels kept."""

    keep: torch.Tensor  # (units,) bool
    output_weight: torch.Tensor | None = None  # (k, c') float64; None = slice the columns
    output_bias: torch.Tensor | None = None  # (k,) float64; None = unchanged
    seconds: float | None = None


def work_dtype(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in a dtype the planners compute in: half precision becomes float32, others unchanged."""
    # Half-precision models are scored in float32 (the solvers compute in float64 anyway).
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


# --------------------------------------------------------------------------- checks
def check_calibration(method: str, needs_stats: bool, calibration: Any, calibrated: Collection[str]) -> None:
    """``calibration`` given exactly when ``method`` needs statistics, as an iterable of batches.

    ``calibrated``: the names of the calibrated methods (listed in the data-free error).
    """
    if needs_stats and calibration is None:
        raise ValueError(f"calibration: method {method!r} runs on activations; pass calibration= an iterable of "
                         "model inputs (tensors of token ids or tokenizer outputs with attention_mask)")
    if not needs_stats and calibration is not None:
        raise ValueError(f"calibration: method {method!r} is data-free and takes no calibration data; expected "
                         f"calibration=None (calibrated methods: {', '.join(sorted(calibrated))})")
    if calibration is not None and (isinstance(calibration, (torch.Tensor, Mapping, str, bytes))
                                    or not isinstance(calibration, Iterable)):
        raise ValueError("calibration: expected an iterable of batches (e.g. a list of tensors or tokenizer "
                         f"outputs), got a single {type(calibration).__name__}; wrap one batch in a list")


def check_ffn_blocks(model: nn.Module, blocks: Sequence[FFNBlock]) -> None:
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


def check_attention_blocks(model: nn.Module, blocks: Sequence[AttentionBlock]) -> None:
    """Refuse meta, parametrized, tied or non-finite attention projections (one ValueError, nothing changed)."""
    check_projections(model, blocks, "attention block")


def check_ffn_plans(blocks: Sequence[FFNBlock], plans: Sequence[FFNPlan]) -> None:
    """Every new tensor finite in the block's dtype, else one ValueError (nothing has been written)."""
    for block, plan in zip(blocks, plans):
        dtype = block.output.weight.dtype
        tensors = [plan.unit_weight, plan.output_weight, plan.output_bias, *(plan.input_biases or [])]
        if any(t is not None and not bool(torch.isfinite(t.to(dtype)).all()) for t in tensors):
            raise ValueError(f"pruning FFN block {block.name!r} produced NaN or Inf weights (strengths alpha/beta/"
                             "gamma too large?); expected finite results: the model was left unchanged")


def check_head_plans(blocks: Sequence[AttentionBlock], plans: Sequence[HeadPlan]) -> None:
    """Every new output weight and bias finite in the block's dtype, else one ValueError (nothing written)."""
    for block, plan in zip(blocks, plans):
        if any(t is not None and not bool(torch.isfinite(t.to(block.output.weight.dtype)).all())
               for t in (plan.output_weight, plan.output_bias)):
            raise ValueError(f"pruning attention block {block.name!r} produced NaN or Inf weights; expected finite "
                             "results: the model was left unchanged")


# --------------------------------------------------------------------------- FFN plans
def plan_from_result(block: FFNBlock, W: torch.Tensor, V: torch.Tensor, result: PruneResult,
                     seconds: float | None) -> FFNPlan:
    """The plan of a greedy or selection ``result`` on ``block``'s ``W: (n, M)``, ``V: (k, n)`` (work dtype):
    scaled kept rows, sliced input biases, compensated ``V``, output bias plus the mean correction."""
    W_new, _, V_new, bias_delta = apply_pruning(W, None, V, result)
    keep = result.keep
    scale_b = result.scale_b[keep]
    biases = []
    for layer in block.inputs:
        bias = getattr(layer, "bias", None)
        biases.append(None if bias is None else work_dtype(bias.detach())[keep] * scale_b.to(W.dtype))
    out_bias = block.output_bias()
    new_out_bias = None
    if bias_delta is not None:
        # mean correction creates the output bias when the block has none (see _bias_owner)
        base = torch.zeros_like(bias_delta, dtype=W.dtype) if out_bias is None else work_dtype(out_bias)
        new_out_bias = base + bias_delta.to(W.dtype)
    return FFNPlan(keep, W_new, biases, V_new, new_out_bias, seconds)


def _update_ffn_configs(model: nn.Module, blocks: Sequence[FFNBlock]) -> None:
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


def _bias_owner(model: nn.Module, blocks: Sequence[FFNBlock], plans: Sequence[FFNPlan]) -> list:
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
def restore_on_failure(model: nn.Module, blocks: Sequence[FFNBlock] | Sequence[AttentionBlock]) -> Iterator[None]:
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


def apply_ffn_plans(model: nn.Module, blocks: Sequence[FFNBlock], plans: Sequence[FFNPlan],
                    all_blocks: Sequence[FFNBlock] | None = None) -> None:
    """Write every block's plan and the configs; everything or nothing (restored if a write fails).

    ``all_blocks``: every FFN block of the model when ``blocks`` is a subset (the configs record all widths).
    """
    bias_configs = _bias_owner(model, blocks, plans)
    with restore_on_failure(model, blocks), torch.no_grad():
        for block, plan in zip(blocks, plans):
            if plan.unit_weight is None:
                block.slice_units(torch.nonzero(plan.keep).flatten())
            else:
                block.set_weights(plan.unit_weight, plan.input_biases, plan.output_weight, plan.output_bias)
        for config in bias_configs:
            config.mlp_bias = True
        _update_ffn_configs(model, blocks if all_blocks is None else all_blocks)


# --------------------------------------------------------------------------- head plans
def _update_head_configs(model: nn.Module, blocks: Sequence[AttentionBlock]) -> None:
    """Record the kept heads in every owning config; stock loaders then refuse it (:data:`HEADS_NOTE`)."""
    for owner, indices in config_owners(model, blocks):
        config = getattr(owner, "config", None)
        if config is None:
            continue
        mine = [blocks[i] for i in indices]
        setattr(config, HEADS_KEY, record_heads(config, mine, getattr(config, HEADS_KEY, None)))
        keys = dict.fromkeys(k for b in mine for k in b.family.config_keys if hasattr(config, k))
        guard_config(config, list(keys), HEADS_KEY, HEADS_NOTE)


def apply_head_plans(model: nn.Module, blocks: Sequence[AttentionBlock], plans: Sequence[HeadPlan]) -> None:
    """Write every plan and the configs: all blocks or none (restored if a write fails)."""
    attrs = {a for b in blocks for a in (*b.family.count_attrs, *b.family.kv_count_attrs, *b.family.width_attrs)}
    saved = [(b.owner, {a: getattr(b.owner, a) for a in attrs if hasattr(b.owner, a)}) for b in blocks]
    try:
        with restore_on_failure(model, blocks), torch.no_grad():
            for block, plan in zip(blocks, plans):
                if not bool(plan.keep.all()) or plan.output_bias is not None:
                    block.keep_units(torch.nonzero(plan.keep).flatten(), plan.output_weight, plan.output_bias)
            _update_head_configs(model, blocks)
    except BaseException:
        for owner, values in saved:
            for name, value in values.items():
                setattr(owner, name, value)
        raise
