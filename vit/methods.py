"""Every pruning method the ViT experiments compare, in one registry.

A method prunes MLP hidden units of chosen encoder blocks in place:
``VIT_METHODS[name].prune(model, {layer_index: amount}, ctx)``. Families:

- ``projprune``: the core's named pair methods (:data:`projprune.PAIR_METHODS`: l1, l2, random,
  proj000/500/550/5n50/555 (lazy, the paper's), exact, exact_oac (ours); the calibrated ``calib``
  and ``act_norm`` run on statistics of what ``mlp[3]`` reads, i.e. ``dropout(GELU(mlp[0](x)))``,
  collected on calibration images from the training split (docs/algorithm.md §8)).
- ``torch_pruning``: Torch-Pruning importances scored on the MLP's own dependency group
  (``mlp[0]`` out-channels + ``mlp[3]`` in-channels), lowest scores removed: ``lamp``
  (LAMPImportance), ``obdc`` (EigenDamage, OBDCImportance), ``group_norm`` (DepGraph's group
  L2 magnitude). Only MLP hidden units are touched.
- ``svd``: ``svd3`` replaces ``W`` and ``V`` by truncated three-factor SVDs (U Σ Vᵀ, Σ split
  evenly into both factors) with the largest rank whose parameter count does not exceed the
  structurally pruned MLP's at the same amount.
- ``mask``: ``torch.nn.utils.prune`` masks on ``mlp[0].weight`` (random / L1, unstructured /
  structured). Shapes do not change, so masks cut no MACs and no time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torch.nn.utils.prune as torch_prune
import torch_pruning as tp
from torch import nn

from engine.harness import progress
from projprune import PAIR_METHODS, ActivationStats, collect_activation_stats, prune_pair, slice_linear_pair

from .models import mlp_pairs

__all__ = ["VIT_METHODS", "PruneContext", "ViTMethod", "get_method", "svd_rank_for"]


@dataclass
class PruneContext:
    """What some methods need besides the model.

    Attributes:
        seed: seeds the random methods (one generator per call, so a run is reproducible).
        calibration: ``(x, y)`` training batches for gradient-based criteria (EigenDamage).
        overrides: option overrides for the core's projective methods (e.g. ``{"lmbda": 1e-2}``).
        stats_batches: training images ``(B, 3, H, W)`` whose activations the calibrated methods
            (``calib``, ``act_norm``) summarise; empty = the images of ``calibration``. A context
            serves one model and the models pruned from it (its statistics are cached by layer widths).
    """

    seed: int = 1
    calibration: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    overrides: dict = field(default_factory=dict)
    stats_batches: list[torch.Tensor] = field(default_factory=list)
    # (layer, widths of layers 0..layer) -> statistics: what mlp[3] of a layer reads depends only on the
    # blocks up to it, and the calibrated methods only slice mlp[0]; a uniform run computes them once.
    _stats_cache: dict = field(default_factory=dict, repr=False)

    def activation_stats(self, model: nn.Module, layers: list[int]) -> list[ActivationStats]:
        """Statistics of the input of ``mlp[3]`` of each of ``layers`` on the calibration images.

        Raises:
            ValueError: no calibration images.
        """
        batches = self.stats_batches or [x for x, _ in self.calibration]
        if not batches:
            raise ValueError("the calibrated methods need calibration images (PruneContext.stats_batches "
                             "or .calibration is empty)")
        pairs = mlp_pairs(model)
        widths = [fc1.weight.shape[0] for fc1, _ in pairs]
        keys = [(layer, tuple(widths[: layer + 1])) for layer in range(len(pairs))]
        if any(keys[layer] not in self._stats_cache for layer in layers):
            device = pairs[0][0].weight.device
            bar = progress(total=len(batches), desc="calibration batches", leave=False)
            try:
                stats = collect_activation_stats(model, [fc2 for _, fc2 in pairs],
                                                 [x.to(device) for x in batches], callback=lambda _: bar.update(1))
            finally:
                bar.close()
            for key, st in zip(keys, stats):
                self._stats_cache.setdefault(key, st)
        return [self._stats_cache[keys[layer]] for layer in layers]


PruneFn = Callable[[nn.Module, Mapping[int, int], PruneContext], None]


@dataclass(frozen=True)
class ViTMethod:
    """A named method.

    Attributes:
        family: ``projprune``, ``torch_pruning``, ``svd`` or ``mask``.
        prune: ``prune(model, {layer: amount}, ctx)``, in place.
        repeatable: can prune a layer it already pruned (needed by the adaptive schedule).
        shrinks: the model really gets smaller (False for masks).
        description: one line for tables and ``--help``.
        needs_stats: runs on activation statistics of calibration images (``PruneContext.stats_batches``).
    """

    family: str
    prune: PruneFn
    repeatable: bool = True
    shrinks: bool = True
    description: str = ""
    needs_stats: bool = False


def _blocks(model: nn.Module, amounts: Mapping[int, int]) -> list[tuple[int, int]]:
    """Validated ``(layer, amount)`` items with ``amount > 0``."""
    num_layers = len(mlp_pairs(model))
    items = []
    for layer, amount in sorted(amounts.items()):
        if not 0 <= layer < num_layers:
            raise ValueError(f"layer index must be in [0, {num_layers}), got {layer}")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise ValueError(f"amount for layer {layer} must be a non-negative int, got {amount!r}")
        if amount > 0:
            items.append((layer, amount))
    return items


# --------------------------------------------------------------------------- the core's methods
def _layer_workers() -> int:
    """Layers pruned at once: the cores that torch's own intra-op threads leave idle (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // torch.get_num_threads())


def _pair_method(name: str) -> PruneFn:
    spec = PAIR_METHODS[name]
    greedy = spec.kind in ("lazy", "exact")
    deterministic = greedy or spec.needs_stats

    def prune(model: nn.Module, amounts: Mapping[int, int], ctx: PruneContext) -> None:
        pairs = mlp_pairs(model)
        generator = torch.Generator().manual_seed(ctx.seed)
        overrides = ctx.overrides if deterministic else {}
        items = _blocks(model, amounts)
        stats = dict(zip([layer for layer, _ in items],
                         ctx.activation_stats(model, [layer for layer, _ in items]))) if spec.needs_stats else {}
        quiet = {} if greedy else {"disable": True}  # one-shot methods take no steps
        bar = progress(total=sum(amount for _, amount in items), desc=f"{name}: units", leave=False, **quiet)

        def prune_layer(item: tuple[int, int]) -> None:
            fc1, fc2 = pairs[item[0]]
            prune_pair(fc1, fc2, item[1], name, generator=generator, stats=stats.get(item[0]),
                       callback=(lambda _: bar.update(1)) if greedy else None, **overrides)

        workers = min(_layer_workers(), len(items)) if deterministic else 1
        if workers > 1:
            # Layers are independent and the greedy loops are memory-bound matrix-vector products that
            # release the GIL: with one intra-op thread, two layers at once use both cores. Random
            # methods stay sequential, so their shared generator is drawn in a fixed order.
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(prune_layer, items))
        else:
            for item in items:
                prune_layer(item)
        bar.close()

    return prune


# --------------------------------------------------------------------------- Torch-Pruning importances
def _mlp_group(model: nn.Module, layer: int) -> tp.dependency.Group:
    """Torch-Pruning's group of ``mlp[0]``'s output channels, traced on the MLP block alone."""
    fc1, _ = mlp_pairs(model)[layer]
    block = model.encoder.layers[layer].mlp
    example = torch.zeros(1, 1, fc1.in_features, device=fc1.weight.device, dtype=fc1.weight.dtype)
    graph = tp.DependencyGraph().build_dependency(block, example_inputs=example)
    return graph.get_pruning_group(fc1, tp.prune_linear_out_channels, idxs=list(range(fc1.out_features)))


def _remove_lowest(model: nn.Module, layer: int, scores: torch.Tensor, amount: int) -> None:
    """Slice away the ``amount`` units with the lowest scores (ties: lowest index first)."""
    fc1, fc2 = mlp_pairs(model)[layer]
    if amount >= fc1.out_features:
        raise ValueError(f"layer {layer} has {fc1.out_features} units; cannot remove {amount}")
    order = torch.argsort(scores.detach().double().cpu(), stable=True)
    keep = torch.sort(order[amount:]).values
    slice_linear_pair(fc1, fc2, keep.to(fc1.weight.device))


def _fisher_diagonals(
    model: nn.Module, layers: list[int], calibration: list[tuple[torch.Tensor, torch.Tensor]]
) -> dict[nn.Module, torch.Tensor]:
    """Diagonal empirical Fisher of ``mlp[0].weight`` (``(n, m)`` per layer), tokens as samples.

    Equals what Torch-Pruning's OBDC accumulates (squared per-sample gradients, scaled by the batch
    size) but as ``(g²)ᵀ (x²)``: its own per-sample route materialises ``tokens × n × m`` numbers
    (60 GB per ViT-B batch) and does not take 3-D token inputs.
    """
    if not calibration:
        raise ValueError("obdc needs calibration batches (PruneContext.calibration is empty)")
    fc1s = [mlp_pairs(model)[layer][0] for layer in layers]
    inputs: dict[nn.Module, torch.Tensor] = {}
    fisher = {fc1: torch.zeros_like(fc1.weight, dtype=torch.float64) for fc1 in fc1s}
    def save_input(module: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        inputs[module] = inp[0].detach()

    def accumulate(module: nn.Module, grad_in: tuple, grad_out: tuple) -> None:
        # Undo the loss's batch mean (as Torch-Pruning's OBDC does), then sum over every token.
        grad = (grad_out[0].detach() * grad_out[0].shape[0]).flatten(0, -2).double()  # (tokens, n)
        x = inputs[module].flatten(0, -2).double()  # (tokens, m)
        fisher[module].add_((grad**2).T @ (x**2))

    handles = []
    for fc1 in fc1s:
        handles.append(fc1.register_forward_hook(save_input))
        handles.append(fc1.register_full_backward_hook(accumulate))
    device = next(model.parameters()).device
    try:
        model.eval()
        model.zero_grad(set_to_none=True)
        for x, y in calibration:
            F.cross_entropy(model(x.to(device)), y.to(device)).backward()
    finally:
        for handle in handles:
            handle.remove()
    return {fc1: value.to(fc1.weight.dtype) for fc1, value in fisher.items()}


def _tp_method(importance_factory: Callable[[], tp.importance.Importance], needs_fisher: bool = False) -> PruneFn:
    def prune(model: nn.Module, amounts: Mapping[int, int], ctx: PruneContext) -> None:
        items = _blocks(model, amounts)
        fisher = _fisher_diagonals(model, [layer for layer, _ in items], ctx.calibration) if needs_fisher else {}
        scores = {}
        try:
            for layer, _ in items:  # score every layer before any surgery (as a pruner does)
                importance = importance_factory()
                if needs_fisher:
                    fc1 = mlp_pairs(model)[layer][0]
                    fc2 = mlp_pairs(model)[layer][1]
                    # OBDC reads a Fisher entry for every Linear of the group before checking that it
                    # scores it; fc2 (in-channels) is never scored, so a placeholder suffices.
                    importance.modules = [fc1]
                    importance.Fisher = {fc1: fisher[fc1], fc2: torch.zeros(())}
                    importance.steps = len(ctx.calibration)
                scores[layer] = importance(_mlp_group(model, layer))
        finally:
            model.zero_grad(set_to_none=True)
        for layer, amount in items:
            _remove_lowest(model, layer, scores[layer], amount)

    return prune


# --------------------------------------------------------------------------- SVD factorisation
def svd_rank_for(n: int, m: int, k: int, amount: int) -> int:
    """Largest rank ``r`` with SVD-factorised ``W (n, m)``, ``V (k, n)`` no bigger than the pruned MLP.

    Pruned MLP: ``(n - amount)(m + 1 + k) + k`` parameters; factorised: ``r(m + n) + n + r(n + k) + k``.
    """
    budget = (n - amount) * (m + 1 + k) - n
    return max(1, min(budget // (m + 2 * n + k), min(n, m), min(n, k)))


def _factorised(weight: torch.Tensor, bias: torch.Tensor | None, rank: int) -> nn.Sequential:
    """``Linear(in, rank, no bias) -> Linear(rank, out)`` approximating ``weight (out, in)`` by its SVD."""
    U, S, Vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    root = S[:rank].sqrt()
    first = nn.Linear(weight.shape[1], rank, bias=False)
    second = nn.Linear(rank, weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        first.weight.copy_(root[:, None] * Vh[:rank])
        second.weight.copy_(U[:, :rank] * root[None, :])
        if bias is not None:
            second.bias.copy_(bias)
    return nn.Sequential(first, second).to(device=weight.device, dtype=weight.dtype)


def _svd_prune(model: nn.Module, amounts: Mapping[int, int], ctx: PruneContext) -> None:
    for layer, amount in _blocks(model, amounts):
        mlp = model.encoder.layers[layer].mlp
        fc1, fc2 = mlp[0], mlp[3]
        if not (isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)):
            raise ValueError(f"svd3 factorises an unpruned MLP; layer {layer} is already factorised")
        if amount >= fc1.out_features:
            raise ValueError(f"layer {layer} has {fc1.out_features} units; cannot remove {amount}")
        rank = svd_rank_for(fc1.out_features, fc1.in_features, fc2.out_features, amount)
        mlp[0] = _factorised(fc1.weight, fc1.bias, rank)
        mlp[3] = _factorised(fc2.weight, fc2.bias, rank)


# --------------------------------------------------------------------------- torch.nn.utils.prune masks
# name -> (torch.nn.utils.prune function, whether its amount counts rows); unstructured masks remove
# as many single weights as `amount` rows hold, so both kinds zero the same number of weights.
_MASKS: dict[str, tuple[Callable[..., nn.Module], bool]] = {
    "mask_random": (torch_prune.random_unstructured, False),
    "mask_l1": (torch_prune.l1_unstructured, False),
    "mask_random_structured": (lambda module, name, amount: torch_prune.random_structured(module, name, amount, dim=0),
                               True),
    "mask_l1_structured": (lambda module, name, amount: torch_prune.ln_structured(module, name, amount, n=1, dim=0),
                           True),
}


def _mask_method(name: str) -> PruneFn:
    mask_fn, counts_rows = _MASKS[name]

    def prune(model: nn.Module, amounts: Mapping[int, int], ctx: PruneContext) -> None:
        pairs = mlp_pairs(model)
        # torch.nn.utils.prune draws from the global RNG: seed it locally and restore it after. Without
        # grad, the masked weight it stores is not a graph node, so the model stays deep-copyable.
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(ctx.seed)
            for layer, amount in _blocks(model, amounts):
                fc1 = pairs[layer][0]
                mask_fn(fc1, "weight", amount=amount if counts_rows else amount * fc1.in_features)

    return prune


VIT_METHODS: dict[str, ViTMethod] = {
    **{
        name: ViTMethod("projprune", _pair_method(name), description=spec.description, needs_stats=spec.needs_stats)
        for name, spec in PAIR_METHODS.items()
    },
    "lamp": ViTMethod("torch_pruning", _tp_method(lambda: tp.importance.LAMPImportance(p=2)),
                      description="Torch-Pruning LAMPImportance(p=2) on the MLP group"),
    "obdc": ViTMethod("torch_pruning", _tp_method(lambda: tp.importance.OBDCImportance(num_classes=-1), True),
                      description="Torch-Pruning OBDCImportance (EigenDamage) with a calibration Fisher"),
    "group_norm": ViTMethod("torch_pruning", _tp_method(lambda: tp.importance.GroupMagnitudeImportance(p=2)),
                            description="Torch-Pruning group L2 magnitude (DepGraph) on the MLP group"),
    "svd3": ViTMethod("svd", _svd_prune, repeatable=False,
                      description="three-factor truncated SVD of W and V, parameter-matched rank"),
    **{
        name: ViTMethod("mask", _mask_method(name), shrinks=False,
                        description="torch.nn.utils.prune mask on mlp[0].weight (no speed-up)")
        for name in _MASKS
    },
}


def get_method(name: str) -> ViTMethod:
    """The registry entry for ``name``; unknown names raise, listing the known ones."""
    if name not in VIT_METHODS:
        raise ValueError(f"method must be one of {sorted(VIT_METHODS)}, got {name!r}")
    return VIT_METHODS[name]
