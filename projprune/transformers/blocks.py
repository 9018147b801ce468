"""Prune whole transformer blocks: attention heads and FFN units in one call (docs/algorithm.md §8.3).

    >>> from projprune.transformers import prune_blocks
    >>> report = prune_blocks(model, 0.5, "calib", calibration=batches, global_mode=True)

``ratio`` is the fraction of the parameters of the attention and FFN projections removed (both
counted, whatever ``parts`` prunes, so ``parts=("ffn",)`` and ``parts=("heads", "ffn")`` at one
ratio remove the same number of parameters). A head owns its query/key/value rows and its
output-projection columns (:meth:`AttentionBlock.params_per_unit`); an FFN unit its input rows (and
biases) and its output-projection column.

Per-layer counts:

- uniform (``global_mode=False``): every layer loses ``round(ratio × heads)`` heads and the FFN
  units fill the rest of the budget, spread over the layers in proportion to their FFN sizes
  (cumulative rounding), so the total is within half an FFN unit of the target unless the heads
  alone overshoot it.
- global (``global_mode=True``): all (layer, part) removal sequences are merged cheapest-first until
  the budget is met, every block staying within ``max_shift`` (default :data:`MAX_SHIFT` = 0.2) of
  its units from its uniform count. For ``calib`` a removal's cost is its OBS cost ``tr(V_R (P_RR)⁻¹ V_Rᵀ)``
  (heads: groups of output-projection inputs; FFN units: ``|R| = 1``, ``‖u_i‖²/P[i, i]`` with the
  compensated column ``u_i``), marginal along the greedy (after the earlier removals'
  compensation), divided by its block's output energy ``tr(V C Vᵀ)`` (the centred variance the
  output projection adds to the residual stream per token; ``normalise="layer"``: by the layer's
  attention + FFN energy) and by the parameters the unit owns: relative squared output error per
  parameter removed.
  One-shot baselines rank their per-(layer, part) normalised scores (``l2``, ``act_norm``: divided
  by the sum, per parameter; ``flap``, ``wanda_sp``: standardised, FLAP's adaptive structure search).

``sequential=True`` (the default): the statistics of layer ``l`` are collected on the model whose
layers ``< l`` (and, for the FFN, layer ``l``'s heads) are already pruned, as SparseGPT and ZipLM do;
the global allocation itself comes from one pass over the unpruned model. On MiniLM validation text
it kept more than one pass (50 %: .866 vs .863 uniform) for one calibration forward per pruned block.
Those forwards end once the hooked projection has read its input (``stop_early``), and in global
mode the one pass's statistics serve until the first block is pruned.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from projprune.calibration import ActivationStats, collect_activation_stats
from projprune.greedy import make_layer_state
from projprune.methods import baseline_scores, standardised, wanda_scores
from projprune.options import resolve_options
from projprune.transformers._planning import (
    FFNPlan,
    HeadPlan,
    apply_ffn_plans,
    apply_head_plans,
    check_attention_blocks,
    check_calibration,
    check_ffn_blocks,
    check_ffn_plans,
    plan_from_result,
    work_dtype,
)
from projprune.transformers.families import AttentionBlock, FFNBlock, find_attention_blocks, find_ffn_blocks
from projprune.transformers.heads import head_curves, prune_heads
from projprune.transformers.prune import FFN_METHODS, plan_units

__all__ = ["BLOCK_METHODS", "BlocksReport", "prune_blocks"]

#: Methods of :func:`prune_blocks` (each names the method used for heads and for FFN units).
BLOCK_METHODS: dict[str, str] = {
    "l2": "smallest output-projection column norms (heads) / input-row norms (FFN units)",
    "flap": "FLAP: fluctuation scores, removed units' mean into the output biases",
    "wanda_sp": "structured Wanda: ‖h_i‖·Σ|v_i| summed over the unit's output-projection columns, no compensation",
    "act_norm": "activation-norm scores, least-squares refit of the output projections, mean correction",
    "calib": "greedy (group) OBS with compensation and mean correction, heads and FFN units",
}
PARTS = ("heads", "ffn")
_OPTIONS = frozenset({"gram_dtype", "max_unit_ratio", "max_shift", "normalise", "dtype"})
#: ``normalise``: what a global ``calib`` cost is divided by, its block's output energy or its layer's.
NORMALISE = ("part", "layer")
#: Global mode: how far (in fractions of its units) a block's count may move from the uniform one.
#: Chosen on MiniLM validation text (docs/algorithm.md §8.3): unbounded costs over-prune some layers.
MAX_SHIFT = 0.2


@dataclass
class BlocksReport:
    """The outcome of :func:`prune_blocks`.

    ``heads_*`` count units of :func:`prune_heads` (heads, or key/value groups); ``block_params_*``
    the attention + FFN projection parameters actually present (mean correction may create
    output biases); ``removed_params`` the parameters of the removed units and ``target_params``
    ``ratio`` times ``block_params_before``.
    """

    method: str
    ratio: float
    parts: tuple[str, ...]
    global_mode: bool
    sequential: bool
    heads_before: list[int]
    heads_after: list[int]
    ffn_before: list[int]
    ffn_after: list[int]
    target_params: int
    removed_params: int
    block_params_before: int
    block_params_after: int
    params_before: int
    params_after: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def param_reduction(self) -> float:
        """Fraction of all model parameters removed."""
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0


@dataclass
class _Part:
    """The blocks of one part and per block: units, parameters per unit."""

    name: str
    blocks: list
    units: list[int]
    sizes: list[int]


def _ffn_unit_params(block: FFNBlock) -> int:
    per_input = sum(p.numel() for layer in block.inputs for p in layer.parameters(recurse=False)) // block.width
    return per_input + block.output.weight.numel() // block.width


# --------------------------------------------------------------------------- checks
def _check_arguments(ratio, method, parts, global_mode, sequential, options) -> tuple[str, ...]:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) \
            or not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"ratio must be a number in [0, 1) (fraction of the attention + FFN parameters removed), "
                         f"got {ratio!r}")
    if not isinstance(method, str) or method not in BLOCK_METHODS:
        raise ValueError(f"method must be one of {sorted(BLOCK_METHODS)}, got {method!r}")
    if isinstance(parts, str) or not isinstance(parts, Iterable):
        raise ValueError(f"parts must be a tuple of {PARTS} (e.g. ('heads', 'ffn')), got {parts!r}")
    parts = tuple(parts)
    if not parts or len(set(parts)) != len(parts) or any(p not in PARTS for p in parts):
        raise ValueError(f"parts must be a non-empty tuple of distinct names from {PARTS}, got {parts!r}")
    for name, value in (("global_mode", global_mode), ("sequential", sequential)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    if "energy" in options:  # prune_heads' energy= ("none"/"output") is another choice: say where this one went
        raise ValueError(f"energy: prune_blocks' option is now normalise= ('part', the default, or 'layer': what "
                         f"global calib costs are divided by), got energy={options['energy']!r}")
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise ValueError(f"prune_blocks does not take option(s) {unknown}; it takes {sorted(_OPTIONS)}")
    if options.get("gram_dtype") not in (None, torch.bfloat16):
        raise ValueError(f"gram_dtype must be None or torch.bfloat16, got {options['gram_dtype']!r}")
    if options.get("dtype") not in (None, torch.float32, torch.float64) or \
            (options.get("dtype") is not None and method != "calib"):
        raise ValueError(f"dtype (the calib FFN greedy's compute dtype) must be None, torch.float64 or torch.float32 "
                         f"and is taken by method 'calib' only, got {options.get('dtype')!r} for {method!r}")
    cap = options.get("max_unit_ratio", 0.9)
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not 0.0 < cap < 1.0:
        raise ValueError(f"max_unit_ratio must be in (0, 1) (most of a layer's units global mode removes), got {cap!r}")
    if options.get("normalise", "part") not in NORMALISE:
        raise ValueError(f"normalise must be 'part' or 'layer' (what global calib costs are divided by), got "
                         f"{options['normalise']!r}")
    shift = options.get("max_shift", MAX_SHIFT)
    if shift is not None and (isinstance(shift, bool) or not isinstance(shift, (int, float)) or not 0 <= shift <= 1):
        raise ValueError(f"max_shift must be None (unbounded) or in [0, 1] (how far global mode moves a block's "
                         f"count from the uniform one, in fractions of its units), got {shift!r}")
    return tuple(p for p in PARTS if p in parts)


def _find_parts(model: nn.Module, parts: Sequence[str]) -> tuple[_Part | None, _Part | None, int]:
    """Attention and FFN parts (None when not pruned) and the attention + FFN parameter count."""
    ffn = find_ffn_blocks(model)
    try:
        attention = find_attention_blocks(model)
    except ValueError:
        if "heads" in parts:
            raise
        attention = []
    total = sum(b.num_parameters() for b in ffn) + sum(b.num_parameters() for b in attention)
    heads = _Part("heads", attention, [b.units for b in attention], [b.params_per_unit() for b in attention])
    units = _Part("ffn", ffn, [b.width for b in ffn], [_ffn_unit_params(b) for b in ffn])
    return (heads if "heads" in parts else None), (units if "ffn" in parts else None), total


# --------------------------------------------------------------------------- allocation
def _spread(target: float, part: _Part) -> list[int]:
    """Units per block removing about ``target`` parameters, in proportion to the blocks' sizes
    (cumulative rounding: the total is within half a unit of the target)."""
    weights = [u * s for u, s in zip(part.units, part.sizes)]
    amounts, done, acc = [], 0, 0.0
    for w, size in zip(weights, part.sizes):
        acc += target * w / sum(weights) / size
        amounts.append(max(0, int(round(acc)) - done))
        done += amounts[-1]
    return amounts


def _uniform(ratio: float, heads: _Part | None, ffn: _Part | None, target: float) -> tuple[list[int], list[int]]:
    if heads is None:
        return [], _spread(target, ffn)
    if ffn is None:
        return _spread(target, heads), []
    head_amounts = [int(round(ratio * u)) for u in heads.units]
    # the heads alone must not overshoot the budget: drop heads from the last layers
    while sum(a * s for a, s in zip(head_amounts, heads.sizes)) > target and any(head_amounts):
        last = max(i for i, a in enumerate(head_amounts) if a)
        head_amounts[last] -= 1
    removed = sum(a * s for a, s in zip(head_amounts, heads.sizes))
    return head_amounts, _spread(target - removed, ffn)


class _Scores:
    """A (layer, part)'s removals in order with precomputed keys (one-shot scores or a head curve)."""

    def __init__(self, keys: torch.Tensor) -> None:
        self.keys, self.taken = keys, 0

    def peek(self) -> float | None:
        return float(self.keys[self.taken]) if self.taken < len(self.keys) else None

    def take(self) -> None:
        self.taken += 1


class _Greedy:
    """An FFN block's ``calib`` greedy (§8), advanced only as far as the merge takes it.

    The key of its next removal is that unit's OBS cost ``‖u_i‖²/P[i, i]`` (``u_i`` its compensated
    column) times ``scale``; the unit is the greedy's own choice, the smallest ``d_i‖u_i‖``.
    """

    def __init__(self, block: FFNBlock, st: ActivationStats, limit: int, scale: float,
                 dtype: torch.dtype | None = None) -> None:
        self.block, self.limit, self.scale, self.taken = block, limit, scale, 0
        self.W = work_dtype(block.unit_weight())
        self.V = work_dtype(block.output_weight()).to(self.W.dtype)
        self.state = make_layer_state(resolve_options(FFN_METHODS["calib"].options, {}), self.W, None, self.V, st,
                                      limit, dtype or torch.float64)
        self._next: tuple[int, float] | None = None

    def peek(self) -> float | None:
        if self.taken >= self.limit:
            return None
        if self._next is None:
            i = int(torch.argmin(self.state.distances()))  # as the greedy's driver chooses
            self._next = (i, float(self.state.u_sq[i] / self.state.diag[i]) * self.scale)
        return self._next[1]

    def take(self) -> None:
        self.state.remove(self._next[0], 1.0)
        self._next = None
        self.taken += 1

    def plan(self) -> FFNPlan:
        """The block's new tensors after the removals taken (compensation and mean correction included)."""
        if not self.taken:
            return FFNPlan(torch.ones(self.block.width, dtype=torch.bool))
        return plan_from_result(self.block, self.W, self.V, self.state.result(self.W.dtype), None)


def _merge(sources: Sequence, sizes: Sequence[int], target: float, floors: Sequence[int] | None = None) -> list[int]:
    """How many removals to take from each source, cheapest key first, until ``target`` parameters.

    ``floors[i]`` removals are taken from source ``i`` first, whatever their keys. A removal that would
    leave the total farther from the target than skipping it closes its source.
    """
    counts = [0] * len(sources)
    for i, floor in enumerate(floors or ()):
        for _ in range(floor):
            if sources[i].peek() is None:
                break
            sources[i].take()
            counts[i] += 1
    heap = [(key, i) for i, src in enumerate(sources) if (key := src.peek()) is not None]
    heapq.heapify(heap)
    removed = sum(c * size for c, size in zip(counts, sizes))
    while heap and removed < target:
        _, i = heapq.heappop(heap)
        if removed + sizes[i] - target > target - removed:
            continue  # overshoots by more than it would miss: this source is done
        sources[i].take()
        counts[i] += 1
        removed += sizes[i]
        key = sources[i].peek()
        if key is not None:
            heapq.heappush(heap, (key, i))
    return counts


def _energy(V: torch.Tensor, st: ActivationStats) -> float:
    """``tr(V C Vᵀ)``: the centred variance a layer's output carries per token."""
    C = st.covariance()
    Vd = V.double().to(C.device)
    return max(float(((Vd @ C) * Vd).sum()), 1e-300)


def _wanda_head_scores(block: AttentionBlock, st: ActivationStats) -> torch.Tensor:
    per_channel = wanda_scores(block.output_weight(), st)
    return per_channel.reshape(block.units, block.unit_channels).sum(dim=1)


def _head_sources(method, heads: _Part, stats, energies: list[tuple[float, float]], limits: list[int]) -> list[_Scores]:
    if method == "wanda_sp":
        scores = [standardised(_wanda_head_scores(b, st)) for b, st in zip(heads.blocks, stats)]
        return [_Scores(torch.sort(s).values[:limit]) for s, limit in zip(scores, limits)]
    sources = []
    for li, (curve, size) in enumerate(zip(head_curves(heads.blocks, method, stats, limits), heads.sizes)):
        keys = curve.costs.double()
        if method == "calib":  # head_curves divides by the attention energy: bring it to the layer's
            keys = keys * energies[li][0] / energies[li][1] / size
        elif method in ("l2", "act_norm"):
            keys = keys / size
        sources.append(_Scores(keys))
    return sources


def _ffn_sources(method, ffn: _Part, stats, energies: list[tuple[float, float]], limits: list[int],
                 dtype: torch.dtype | None = None) -> list:
    if method == "calib":
        return [_Greedy(block, st, limit, 1.0 / (energy[1] * size), dtype)
                for block, st, limit, energy, size in zip(ffn.blocks, stats, limits, energies, ffn.sizes)]
    Ws = [work_dtype(b.unit_weight()) for b in ffn.blocks]
    Vs = [work_dtype(b.output_weight()) for b in ffn.blocks]
    scores = baseline_scores(Ws, FFN_METHODS[method], None, Vs, stats)
    per_param = method in ("l2", "act_norm")
    return [_Scores(torch.sort(s / size if per_param else s).values[:limit])
            for s, size, limit in zip(scores, ffn.sizes, limits)]


def _global(method, heads, ffn, head_stats, ffn_stats, target, cap: float, bounds: tuple[list[int], list[int]],
            shift: float | None, normalise: str = "part", dtype: torch.dtype | None = None
            ) -> tuple[list[int], list[int], list | None]:
    """Per-block head and FFN-unit counts of the global split; for ``calib`` also the FFN plans (the
    joint greedy has already made them). With ``shift``, every block removes within ``shift × units``
    of its uniform count ``bounds``."""
    floors, limits = [], []
    for part, uniform in ((heads, bounds[0]), (ffn, bounds[1])):
        if part is None:
            continue
        for li, units in enumerate(part.units):
            limit = units - 1 if part is heads else min(units - 1, int(math.ceil(cap * units)))
            if shift is None:
                floors.append(0)
                limits.append(limit)
            else:
                floors.append(max(0, uniform[li] - int(math.floor(shift * units))))
                limits.append(min(limit, uniform[li] + int(math.ceil(shift * units))))
    split = len(heads.blocks) if heads else 0
    # calib: per block (its own output energy, the energy its costs are divided by); the layer's energy
    # is the sum of its attention and FFN energies when the blocks pair up layer by layer
    att, mlp = ([], [])
    if method == "calib":
        att = [_energy(b.output_weight(), st) for b, st in zip(heads.blocks, head_stats)] if heads else []
        mlp = [_energy(b.output_weight(), st) for b, st in zip(ffn.blocks, ffn_stats)] if ffn else []
    paired = len(att) == len(mlp) and normalise == "layer"

    def divisor(own: float, other: list[float], li: int) -> float:
        return own + other[li] if paired else own

    head_sources = _head_sources(method, heads, head_stats, [(e, divisor(e, mlp, li)) for li, e in enumerate(att)],
                                 limits[:split]) if heads else []
    ffn_sources = _ffn_sources(method, ffn, ffn_stats, [(e, divisor(e, att, li)) for li, e in enumerate(mlp)],
                               limits[split:], dtype) if ffn else []
    sizes = (heads.sizes if heads else []) + (ffn.sizes if ffn else [])
    counts = _merge(head_sources + ffn_sources, sizes, target, floors)
    plans = [src.plan() for src in ffn_sources] if method == "calib" and ffn else None
    return counts[:split], counts[split:], plans


# --------------------------------------------------------------------------- writing
def _bar(items: Sequence, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=not enabled, leave=False)


def _placeholder(n: int) -> ActivationStats:
    """Statistics of a block that loses nothing in this call (prune_heads wants one per block)."""
    st = ActivationStats(n)
    st.update(torch.zeros(1, n, dtype=torch.float64))
    return st


def _prune_heads(model, method, heads: _Part, amounts, stats) -> None:
    if method == "wanda_sp":  # no compensation: slice the lowest-scoring heads
        plans = []
        for block, amount, st in zip(heads.blocks, amounts, stats):
            keep = torch.ones(block.units, dtype=torch.bool)
            if amount:
                keep[torch.sort(_wanda_head_scores(block, st), stable=True).indices[:amount]] = False
            plans.append(HeadPlan(keep))
        with torch.no_grad():
            apply_head_plans(model, heads.blocks, plans)
        return
    prune_heads(model, 0.0, method, amounts=list(amounts), stats=None if method == "l2" else list(stats))


def _prune_ffn(model, method, ffn: _Part, indices: Sequence[int], amounts, stats, dtype=None) -> None:
    """Prune ``amounts[i]`` units of the blocks ``indices`` (``stats``: one per index); blocks losing none
    are left alone (mean correction would otherwise give a bias-free block a zero bias)."""
    chosen = [(i, st) for i, st in zip(indices, stats or [None] * len(indices)) if amounts[i]]
    blocks = [ffn.blocks[i] for i, _ in chosen]
    options = {} if dtype is None else {"dtype": dtype}
    plans, _ = plan_units(blocks, FFN_METHODS[method], [amounts[i] for i, _ in chosen], None, options,
                          None if method == "l2" else [st for _, st in chosen])
    apply_ffn_plans(model, blocks, plans, ffn.blocks)


def _collect(model, layers, calibration, options, max_batches, progress) -> list[ActivationStats]:
    from tqdm.auto import tqdm

    total = len(calibration) if hasattr(calibration, "__len__") else None
    with tqdm(total=total, desc="calibration batches", disable=not progress, leave=False) as bar:
        return collect_activation_stats(model, layers, calibration, max_batches=max_batches, stop_early=True,
                                        gram_dtype=options.get("gram_dtype"), callback=lambda _i: bar.update(1))


# --------------------------------------------------------------------------- entry point
def prune_blocks(
    model: nn.Module,
    ratio: float,
    method: str = "calib",
    calibration: Iterable[Any] | None = None,
    *,
    parts: Sequence[str] = PARTS,
    global_mode: bool = False,
    sequential: bool = True,
    max_batches: int | None = None,
    progress: bool = False,
    **options: Any,
) -> BlocksReport:
    """Remove ``ratio`` of the attention + FFN projection parameters of ``model`` in place.

    Args:
        model: a ``transformers`` model supported by both :func:`prune_heads` and :func:`prune_ffn`.
        ratio: fraction of the attention + FFN projection parameters removed, ``0 <= ratio < 1``.
        method: a key of :data:`BLOCK_METHODS` (the same method for heads and FFN units).
        calibration: model inputs for the calibrated methods (all but ``l2``, which refuses them).
        parts: what to prune, ``("heads", "ffn")`` or one of them (the budget is the same).
        global_mode: per-(layer, part) counts from comparable costs (module docstring); else uniform.
        sequential: collect each block's statistics after the blocks before it were pruned (default;
            ``False``: one pass over the unpruned model, one calibration forward in all).
        max_batches: use at most this many calibration batches per collection.
        progress: tqdm bars.
        **options: ``gram_dtype`` (``torch.bfloat16``: opt-in low-precision statistics products,
            :class:`~projprune.ActivationStats`); global mode: ``max_shift`` (a block's count stays
            within this fraction of its units of the uniform count; default :data:`MAX_SHIFT`, None:
            unbounded), ``max_unit_ratio`` (at most this fraction of a block's FFN units, default
            0.9; heads: all but one), ``normalise`` (``"part"``, default: ``calib`` costs divided by
            their block's output energy; ``"layer"``: by the layer's attention + FFN energy; formerly
            ``energy=``, which is now refused);
            ``dtype`` (``calib``: the FFN greedy's compute dtype, default float64; ``torch.float32``
            halves its (n, n) matrices).

    Returns:
        :class:`BlocksReport`.

    Raises:
        ValueError: bad ``ratio``/``method``/``parts``/option, missing/unwanted calibration,
            unsupported, tied, parametrized or non-finite projections, or a budget the parts cannot
            meet (every block keeps one unit); raised before the model is modified.
    """
    parts = _check_arguments(ratio, method, parts, global_mode, sequential, options)
    needs_stats = method != "l2"
    check_calibration(method, needs_stats, calibration, [m for m in BLOCK_METHODS if m != "l2"])
    ratio = float(ratio)
    heads, ffn, total = _find_parts(model, parts)
    if heads is not None:
        check_attention_blocks(model, heads.blocks)
    if ffn is not None:
        check_ffn_blocks(model, ffn.blocks)
    target = ratio * total
    capacity = sum((u - 1) * s for p in (heads, ffn) if p is not None for u, s in zip(p.units, p.sizes))
    if target > capacity:
        raise ValueError(f"ratio {ratio} removes {target:.0f} of {total} attention + FFN parameters but parts "
                         f"{parts} hold only {capacity} removable ones (every block keeps a unit); use a smaller "
                         "ratio or more parts")
    heads_before = [b.units for b in heads.blocks] if heads else []
    ffn_before = [b.width for b in ffn.blocks] if ffn else []
    params_before = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    head_stats = ffn_stats = None
    if needs_stats and (global_mode or not sequential):
        layers = ([b.output for b in heads.blocks] if heads else []) + ([b.output for b in ffn.blocks] if ffn else [])
        stats = _collect(model, layers, calibration, options, max_batches, progress)
        split = len(heads.blocks) if heads else 0
        head_stats, ffn_stats = stats[:split], stats[split:]
    ffn_plans = None
    if global_mode and ratio > 0:
        head_amounts, ffn_amounts, ffn_plans = _global(method, heads, ffn, head_stats, ffn_stats, target,
                                                       float(options.get("max_unit_ratio", 0.9)),
                                                       _uniform(ratio, heads, ffn, target),
                                                       options.get("max_shift", MAX_SHIFT),
                                                       options.get("normalise", "part"), options.get("dtype"))
    else:
        head_amounts, ffn_amounts = _uniform(ratio, heads, ffn, target)
    too_many = [(p.name, b.name, a, u) for p, amounts in ((heads, head_amounts), (ffn, ffn_amounts)) if p
                for b, a, u in zip(p.blocks, amounts, p.units) if a >= u]
    if too_many:
        raise ValueError(f"ratio {ratio} would remove every unit of {too_many} (part, block, removed, units) in "
                         "uniform mode; use a smaller ratio, more parts or global_mode=True")
    removed = sum(a * s for p, amounts in ((heads, head_amounts), (ffn, ffn_amounts)) if p
                  for a, s in zip(amounts, p.sizes))
    if not sequential:
        if heads is not None and any(head_amounts):
            _prune_heads(model, method, heads, head_amounts, head_stats)
        if ffn_plans is not None:  # the global calib greedy made them
            check_ffn_plans(ffn.blocks, ffn_plans)
            apply_ffn_plans(model, ffn.blocks, ffn_plans)
        elif ffn is not None and any(ffn_amounts):
            _prune_ffn(model, method, ffn, range(len(ffn.blocks)), ffn_amounts, ffn_stats, options.get("dtype"))
    else:
        layers = max(len(heads.blocks) if heads else 0, len(ffn.blocks) if ffn else 0)
        pruned = False  # until a block is pruned, the one pass's statistics (global mode) are the current ones

        def current(part_stats, block, li):
            if not needs_stats:
                return [None]
            if part_stats is not None and not pruned:
                return [part_stats[li]]
            return _collect(model, [block.output], calibration, options, max_batches, False)

        for li in _bar(range(layers), "layers (sequential)", progress):
            if heads is not None and li < len(heads.blocks) and head_amounts[li]:
                fresh = current(head_stats, heads.blocks[li], li)
                stats = [fresh[0] if i == li else _placeholder(b.channels) for i, b in enumerate(heads.blocks)]
                _prune_heads(model, method, heads, [a if i == li else 0 for i, a in enumerate(head_amounts)], stats)
                pruned = True
            if ffn is not None and li < len(ffn.blocks) and ffn_amounts[li]:
                fresh = current(ffn_stats, ffn.blocks[li], li)
                if method == "calib" and fresh[0] is not (ffn_stats[li] if ffn_stats else None):
                    fresh[0].single_use = True  # read once, by the greedy: C formed in Σ h hᵀ's memory
                _prune_ffn(model, method, ffn, [li], ffn_amounts, fresh if needs_stats else None, options.get("dtype"))
                pruned = True
    attention_after = sum(b.num_parameters() for b in heads.blocks) if heads else 0
    ffn_after = sum(b.num_parameters() for b in ffn.blocks) if ffn else 0
    untouched = 0 if heads is not None else sum(b.num_parameters() for b in _safe_attention(model))
    untouched += 0 if ffn is not None else sum(b.num_parameters() for b in find_ffn_blocks(model))
    return BlocksReport(
        method=method, ratio=ratio, parts=parts, global_mode=global_mode, sequential=sequential,
        heads_before=heads_before, heads_after=[b.units for b in heads.blocks] if heads else [],
        ffn_before=ffn_before, ffn_after=[b.width for b in ffn.blocks] if ffn else [],
        target_params=int(round(target)), removed_params=removed, block_params_before=total,
        block_params_after=attention_after + ffn_after + untouched,
        params_before=params_before, params_after=sum(p.numel() for p in model.parameters()),
        seconds=time.perf_counter() - start,
        extra={"head_amounts": list(head_amounts), "ffn_amounts": list(ffn_amounts)},
    )


def _safe_attention(model: nn.Module) -> list[AttentionBlock]:
    try:
        return find_attention_blocks(model)
    except ValueError:
        return []
