"""Torch-Pruning side of the Table 1 pipeline: progressive pruning to a FLOPs speed-up,
EigenDamage's Fisher collection, and pruned-shape checkpoints.

Shapes: a pruned model differs from a freshly built one only in tensor shapes, so a
checkpoint stores every parameter/buffer shape in its metadata and ``adapt_to_shapes``
(:mod:`projprune.surgery`) re-slices a new model to them before ``load_state_dict`` (no pickled modules).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp
from torch_pruning.pruner import function
from torch_pruning.utils import op_counter

from engine.harness import progress


# --------------------------------------------------------------------------- EigenDamage
class EigenDamageImportance(tp.importance.OBDCImportance):
    """torch-pruning 1.6's ``OBDCImportance`` with two fixes, same scores otherwise.

    - Its Fisher matrices carry a bias column for layers with a bias; the weight-only score
      ``sum(w^2 * F)`` ignores that column instead of failing on the shape mismatch.
    - Layers without a Fisher matrix (grouped/depthwise convs, whose Kronecker factors the
      library does not compute) do not vote instead of raising ``KeyError``.
    Hooks are installed with :func:`collect_fisher` (1.6's ``_prepare_model`` crashes on
    non-attention groups).
    """

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        scores, root_idxs = [], []
        for i, (dep, idxs) in enumerate(group):
            layer = dep.target.module
            if layer not in self.Fisher or dep.handler not in (function.prune_conv_out_channels,
                                                                function.prune_linear_out_channels):
                continue
            if isinstance(layer, nn.Linear) and layer.out_features == self.num_classes:
                continue
            weight = layer.weight.data
            w = (weight.transpose(1, 0) if getattr(layer, "transposed", False) else weight)[idxs].flatten(1)
            fisher = self.Fisher[layer][idxs, : w.shape[1]] / self.steps + self.eps
            scores.append((w**2 * fisher).sum(1))
            root_idxs.append(group[i].root_idxs)
        if not scores:
            return None
        return self._normalize(self._reduce(scores, root_idxs), self.normalizer)


def fisher_layers(model: nn.Module) -> list[nn.Module]:
    """Layers whose Kronecker-factored Fisher torch-pruning can compute: Linear and ungrouped Conv2d."""
    return [m for m in model.modules()
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)]


def collect_fisher(importance: tp.importance.OBDCImportance, model: nn.Module,
                   batches: Iterable[torch.Tensor], device: torch.device | str = "cpu") -> None:
    """Accumulate EigenDamage's Fisher statistics over ``batches`` of inputs.

    Labels are sampled from the model's own predictive distribution (true Fisher), as the
    paper's runs did.
    """
    importance._clear_buffer()
    handles = []
    for layer in fisher_layers(model):
        importance.modules.append(layer)
        handles.append(layer.register_forward_pre_hook(importance._save_input))
        with warnings.catch_warnings():  # the library's hook reads the layer's own grad_output
            warnings.simplefilter("ignore")
            handles.append(layer.register_backward_hook(importance._save_grad_output))
    was_training = model.training
    model.train()
    try:
        for inputs in batches:
            model.zero_grad()
            with warnings.catch_warnings():  # torch warns about the legacy hooks on every call
                warnings.simplefilter("ignore")
                logits = model(inputs.to(device))
                sampled = torch.multinomial(F.softmax(logits.detach(), dim=1), 1).squeeze(1)
                F.cross_entropy(logits, sampled).backward()
            importance.step()
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)


# --------------------------------------------------------------------------- progressive pruning
def count_flops_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[float, float]:
    """``(FLOPs, params)`` with torch-pruning's op counter (MACs, as the paper's logs report).

    Same hooks and numbers as ``tp.utils.count_ops_and_params``, run on the model itself
    instead of a deep copy (the copy made the progressive loop three times slower); the
    counter's helpers are removed again afterwards.
    """
    was_training = model.training
    model.eval()
    op_counter.add_flops_counting_methods(model)
    try:
        model.start_flops_count(ost=sys.stdout, verbose=False, ignore_list=[])
        with torch.no_grad():
            model(example_inputs)
        flops, params, _, _ = model.compute_average_flops_cost()
    finally:
        model.stop_flops_count()
        for name in _COUNTER_ATTRS:
            model.__dict__.pop(name, None)
        model.train(was_training)
    return float(flops), float(params)


_COUNTER_ATTRS = ("start_flops_count", "stop_flops_count", "reset_flops_count", "compute_average_flops_cost",
                  "__batch_counter__")


def progressive_pruning(pruner: tp.pruner.BasePruner, model: nn.Module, speed_up: float,
                        example_inputs: torch.Tensor, *, fisher_batches=None, target_flops: float | None = None,
                        device: torch.device | str = "cpu") -> float:
    """Step ``pruner`` until FLOPs fall to ``base / speed_up`` (or ``target_flops``), or steps run out.

    Stops at the first step that reaches the target. ``fisher_batches``: a callable returning
    an iterable of input batches, used to refresh EigenDamage's Fisher before every step.

    Returns:
        The speed-up reached, ``base_flops / pruned_flops``.
    """
    if speed_up < 1:
        raise ValueError(f"speed_up must be >= 1, got {speed_up}")
    model.eval()
    base, _ = count_flops_params(model, example_inputs)
    goal = target_flops if target_flops else base / speed_up
    current = base
    bar = progress(total=pruner.iterative_steps, desc="pruning steps", leave=False)
    while current > goal and pruner.current_step < pruner.iterative_steps:
        if isinstance(pruner.importance, tp.importance.OBDCImportance) and fisher_batches is not None:
            collect_fisher(pruner.importance, model, fisher_batches(), device)
            model.eval()
        pruner.step()
        current, _ = count_flops_params(model, example_inputs)
        bar.update(1)
        bar.set_postfix(speed_up=f"{base / current:.2f}")
    bar.close()
    return base / current


