"""Module surgery: prune the hidden units between two layers in place.

A *pair* is a layer that produces the units (``nn.Linear`` rows or ``nn.Conv2d`` output
filters) and the layer that reads them (``nn.Linear`` columns or ``nn.Conv2d`` input
channels). All inputs are checked, and every number is computed, before any module is
modified: a bad argument raises one ``ValueError`` and leaves the modules unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from projprune._checks import check_amount, check_finite, check_matrix, check_plain_layer
from projprune.calibration import ActivationStats
from projprune.greedy import PruneResult, StepCallback, apply_pruning, greedy_global
from projprune.options import ProjectionOptions, resolve_options

__all__ = [
    "adapt_to_shapes",
    "install_results",
    "pair_matrices",
    "prune_conv_pair",
    "prune_linear_pair",
    "prune_pairs_global",
    "select_units",
    "slice_conv_pair",
    "slice_linear_pair",
    "tensor_shapes",
]


# --------------------------------------------------------------------------- shapes of a pruned model
def tensor_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Every parameter and buffer shape by state-dict key: with the state dict, what rebuilds a pruned model
    (save both, e.g. ``torch.save({"state_dict": ..., "shapes": ...})``, and load with ``weights_only=True``)."""
    return {key: list(value.shape) for key, value in model.state_dict().items()}


def adapt_to_shapes(model: nn.Module, shapes: Mapping[str, list[int]]) -> nn.Module:
    """Resize ``model``'s tensors (and the layers' width attributes) to ``shapes`` in place; returns ``model``.

    ``model``: a freshly built copy of the architecture that was pruned; ``shapes``: its pruned
    :func:`tensor_shapes`. Values are zero placeholders to be overwritten by ``load_state_dict``.
    Handles Conv, Linear, BatchNorm and LayerNorm, including depthwise convs (``groups`` follows the
    width), and a bias the compensating pruner's mean correction added to a bias-free layer.
    ``ValueError`` before anything is changed for ``shapes`` that do not fit ``model`` (an unknown
    key, another number of dimensions, a negative or non-integer size).
    """
    _check_shapes(model, shapes)
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        changed = False
        if _lacks_bias(module) and f"{prefix}bias" in shapes:
            # the compensating pruner's mean correction may give a bias-free consumer a bias
            module.bias = nn.Parameter(torch.zeros(shapes[f"{prefix}bias"], dtype=module.weight.dtype,
                                                   device=module.weight.device))
        for name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if tensor is None or f"{prefix}{name}" not in shapes:
                continue
            target = torch.Size(shapes[f"{prefix}{name}"])
            if tensor.shape == target:
                continue
            changed = True
            new = torch.zeros(target, dtype=tensor.dtype, device=tensor.device)
            if isinstance(tensor, nn.Parameter):
                setattr(module, name, nn.Parameter(new, requires_grad=tensor.requires_grad))
            else:
                module._buffers[name] = new
        if changed:
            _sync_width_attributes(module)
    return model


def _check_shapes(model: nn.Module, shapes: Mapping[str, list[int]]) -> None:
    """``ValueError`` unless every entry of ``shapes`` sizes a tensor of ``model`` (or a bias it can take)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(shapes, Mapping):
        raise ValueError(f"shapes must be a mapping of state-dict keys to sizes (tensor_shapes of the pruned model), "
                         f"got {type(shapes).__name__}")
    current = model.state_dict()
    addable = {f"{name}.bias" if name else "bias" for name, module in model.named_modules() if _lacks_bias(module)}
    for key, shape in shapes.items():
        if not isinstance(shape, (list, tuple)) or not all(
                isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in shape):
            raise ValueError(f"shapes[{key!r}] must be a list of non-negative ints, got {shape!r}")
        if key in current:
            if len(shape) != current[key].dim():
                raise ValueError(f"shapes[{key!r}] has {len(shape)} dimensions, this model's tensor "
                                 f"{current[key].dim()} ({list(current[key].shape)}): expected the tensor_shapes "
                                 "of a pruned copy of this architecture")
            continue
        if key not in addable or len(shape) != 1:
            raise ValueError(f"shapes has {key!r}, which this model ({type(model).__name__}) does not: expected the "
                             "tensor_shapes of a pruned copy of this architecture")


def _lacks_bias(module: nn.Module) -> bool:
    """A Linear or conv without a bias (a mean correction may have given its pruned copy one)."""
    return isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and module.bias is None


def _sync_width_attributes(module: nn.Module) -> None:
    if isinstance(module, nn.modules.conv._ConvNd):
        out_ch = module.weight.shape[1] if module.transposed else module.weight.shape[0]
        per_group_in = module.weight.shape[0] if module.transposed else module.weight.shape[1]
        depthwise = module.groups > 1 and module.groups == module.out_channels == module.in_channels
        if depthwise:
            module.groups = out_ch
        module.out_channels = out_ch
        module.in_channels = per_group_in * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.num_features = module.weight.shape[0] if module.weight is not None else module.running_mean.shape[0]
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = tuple(module.weight.shape)


# --------------------------------------------------------------------------- checks
def _check_layer(layer: nn.Module, name: str) -> None:
    if not isinstance(layer, (nn.Linear, nn.Conv2d)):
        raise ValueError(f"{name} must be nn.Linear or nn.Conv2d, got {type(layer).__name__}")
    check_plain_layer(layer, name)  # weight norm, pruning masks, meta device: before any value is read
    weight = layer.weight
    expected = 2 if isinstance(layer, nn.Linear) else 4
    if weight.dim() != expected:
        raise ValueError(
            f"{name}.weight must be {expected}-D for {type(layer).__name__}, got shape {tuple(weight.shape)}"
        )
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        raise ValueError(f"{name}: grouped convolutions (groups={layer.groups}) are not supported; expected groups=1")
    check_finite(weight.detach(), f"{name}.weight")
    if layer.bias is not None:
        check_finite(layer.bias.detach(), f"{name}.bias")


def check_pair(layer1: nn.Module, layer2: nn.Module, norm: nn.Module | None, label: str = "") -> None:
    _check_layer(layer1, f"layer1{label}")
    _check_layer(layer2, f"layer2{label}")
    n = layer1.weight.shape[0]
    n_in = layer2.weight.shape[1]
    if n != n_in:
        raise ValueError(
            f"layer1{label} produces {n} units but layer2{label} reads {n_in}; expected layer2's input width "
            f"(weight.shape[1]) to equal layer1's output width (weight.shape[0])"
        )
    if isinstance(layer1, nn.Conv2d) != isinstance(layer2, nn.Conv2d):
        raise ValueError(f"layer1{label} and layer2{label} must both be nn.Linear or both nn.Conv2d")
    tensors = {"layer1.weight": layer1.weight, "layer1.bias": layer1.bias, "layer2.weight": layer2.weight,
               "layer2.bias": layer2.bias}
    devices = {str(t.device) for t in tensors.values() if t is not None}
    dtypes = {t.dtype for t in tensors.values() if t is not None}
    if len(devices) > 1 or len(dtypes) > 1:
        detail = ", ".join(f"{k}: {t.dtype} on {t.device}" for k, t in tensors.items() if t is not None)
        raise ValueError(f"layer1{label} and layer2{label} must share one device and dtype, got {detail}")
    if norm is not None:
        if not isinstance(norm, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
            raise ValueError(f"bn{label} must be BatchNorm1d/2d or LayerNorm, got {type(norm).__name__}")
        if isinstance(norm, nn.LayerNorm) and len(norm.normalized_shape) != 1:
            raise ValueError(f"bn{label}: a LayerNorm over the units must have a 1-D normalized_shape, "
                             f"got {tuple(norm.normalized_shape)}")
        check_plain_layer(norm, f"bn{label}")
        width = norm.num_features if isinstance(norm, (nn.BatchNorm1d, nn.BatchNorm2d)) else norm.normalized_shape[-1]
        if width != n:
            raise ValueError(f"bn{label} normalises {width} features but layer1{label} produces {n}")


def pair_matrices(layer1: nn.Module, layer2: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The pair as matrices: ``W: (n, m)``, ``b: (n,)`` or None, ``V: (k, n)``.

    Conv: ``W = conv1.weight.flatten(1)``; ``V``'s column ``j`` is everything ``conv2`` reads
    from channel ``j``, i.e. ``conv2.weight[:, j]`` flattened (``k = out * kh * kw``).
    """
    W = layer1.weight.detach().flatten(1)
    b = None if layer1.bias is None else layer1.bias.detach()
    weight2 = layer2.weight.detach()
    V = weight2 if weight2.dim() == 2 else weight2.transpose(0, 1).flatten(1).T
    return W, b, V


# --------------------------------------------------------------------------- writing
def _replace(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value.to(old.dtype).contiguous(), requires_grad=old.requires_grad))


def _slice_norm(norm: nn.Module | None, keep: torch.Tensor) -> None:
    if norm is None:
        return
    width = int(keep.sum()) if keep.dtype == torch.bool else int(keep.numel())
    with torch.no_grad():
        if norm.weight is not None:
            _replace(norm, "weight", norm.weight.detach()[keep])
        if norm.bias is not None:
            _replace(norm, "bias", norm.bias.detach()[keep])
        if isinstance(norm, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if norm.running_mean is not None:
                norm.running_mean = norm.running_mean[keep].clone()
                norm.running_var = norm.running_var[keep].clone()
            norm.num_features = width
        else:
            norm.normalized_shape = (width,)


def _write_pair(
    layer1: nn.Module,
    layer2: nn.Module,
    W_new: torch.Tensor,
    b_new: torch.Tensor | None,
    V_new: torch.Tensor,
    bias_delta: torch.Tensor | None,
    keep: torch.Tensor,
    norm: nn.Module | None,
) -> None:
    """Install the smaller tensors (``W_new: (n', m)``, ``V_new: (k, n')``) into the modules."""
    n_new = W_new.shape[0]
    with torch.no_grad():
        _replace(layer1, "weight", W_new.reshape(n_new, *layer1.weight.shape[1:]))
        if layer1.bias is not None and b_new is not None:
            _replace(layer1, "bias", b_new)
        if isinstance(layer2, nn.Conv2d):
            out_c, _, kh, kw = layer2.weight.shape
            _replace(layer2, "weight", V_new.T.reshape(n_new, out_c, kh, kw).transpose(0, 1))
        else:
            _replace(layer2, "weight", V_new)
        if bias_delta is not None:
            delta = bias_delta.to(layer2.weight.dtype)
            if isinstance(layer2, nn.Conv2d):
                # A constant input map: exact away from zero-padded borders.
                delta = delta.reshape(layer2.weight.shape[0], -1).sum(dim=1)
            if layer2.bias is None:  # mean correction needs somewhere to go
                layer2.bias = nn.Parameter(torch.zeros_like(delta), requires_grad=layer2.weight.requires_grad)
            _replace(layer2, "bias", layer2.bias.detach() + delta)
    if isinstance(layer1, nn.Conv2d):
        layer1.out_channels = n_new
        layer2.in_channels = n_new
    else:
        layer1.out_features = n_new
        layer2.in_features = n_new
    _slice_norm(norm, keep)


_SHAPE_ATTRS = ("in_features", "out_features", "in_channels", "out_channels", "num_features", "normalized_shape")


@contextmanager
def transaction(modules: Sequence[nn.Module | None]):
    """Restore every module's parameters, buffers and shape attributes if the block raises.

    Writes replace whole ``Parameter`` objects, so keeping the old dictionaries is enough to
    undo them: a failure half-way through never leaves one layer cut and the next not.
    """
    saved = []
    for module in {id(m): m for m in modules if m is not None}.values():
        attrs = {a: getattr(module, a) for a in _SHAPE_ATTRS if hasattr(module, a)}
        saved.append((module, dict(module._parameters), dict(module._buffers), attrs))
    try:
        yield
    except BaseException:
        for module, params, buffers, attrs in saved:
            module._parameters.clear()
            module._parameters.update(params)
            module._buffers.clear()
            module._buffers.update(buffers)
            for name, value in attrs.items():
                setattr(module, name, value)
        raise


def _check_written(tensors: Sequence[torch.Tensor | None], dtype: torch.dtype, label: str) -> None:
    """The new tensors are finite in the modules' dtype (float32 overflows long before float64)."""
    for t in tensors:
        if t is not None and not bool(torch.isfinite(t.to(dtype)).all()):
            raise ValueError(f"pruning pair{label} produced NaN or Inf weights (redistribution strengths alpha/beta/"
                             "gamma too large?); expected finite results: the modules were left unchanged")


def _keep_mask(keep_idx: torch.Tensor | Sequence[int], n: int, device: torch.device) -> torch.Tensor:
    idx = torch.as_tensor(keep_idx, dtype=torch.long, device=device).flatten()
    if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= n or idx.unique().numel() != idx.numel():
        raise ValueError(f"keep_idx must be distinct unit indices in [0, {n}) and not empty, got {idx.tolist()[:10]}")
    mask = torch.zeros(n, dtype=torch.bool, device=device)
    mask[idx] = True
    return mask


def slice_pair(layer1: nn.Module, layer2: nn.Module, keep_idx, norm: nn.Module | None) -> torch.Tensor:
    check_pair(layer1, layer2, norm)
    W, b, V = pair_matrices(layer1, layer2)
    keep = _keep_mask(keep_idx, W.shape[0], W.device)
    with transaction([layer1, layer2, norm]):
        _write_pair(layer1, layer2, W[keep], None if b is None else b[keep], V[:, keep], None, keep, norm)
    return torch.nonzero(keep, as_tuple=False).flatten()


def slice_linear_pair(fc1: nn.Linear, fc2: nn.Linear, keep_idx: torch.Tensor | Sequence[int],
                      bn: nn.Module | None = None) -> torch.Tensor:
    """Keep only the units ``keep_idx`` of ``fc1 -> fc2`` (no redistribution); returns them sorted."""
    return slice_pair(fc1, fc2, keep_idx, bn)


def slice_conv_pair(conv1: nn.Conv2d, conv2: nn.Conv2d, keep_idx: torch.Tensor | Sequence[int],
                    bn: nn.Module | None = None) -> torch.Tensor:
    """Keep only the filters ``keep_idx`` of ``conv1`` (and the matching input channels of ``conv2``)."""
    return slice_pair(conv1, conv2, keep_idx, bn)


# --------------------------------------------------------------------------- projective surgery
def check_pairs(pairs, bns, stats) -> tuple[list, list]:
    if len(pairs) == 0:
        raise ValueError("pairs must hold at least one (layer1, layer2) pair")
    bns = list(bns) if bns is not None else [None] * len(pairs)
    if len(bns) != len(pairs):
        raise ValueError(f"bns must have one entry per pair ({len(pairs)}), got {len(bns)}")
    stats = list(stats) if stats is not None else [None] * len(pairs)
    if len(stats) != len(pairs):
        raise ValueError(f"stats must have one entry per pair ({len(pairs)}), got {len(stats)}")
    for li, ((layer1, layer2), norm) in enumerate(zip(pairs, bns)):
        check_pair(layer1, layer2, norm, label=f"[{li}]")
    return bns, stats


def install_results(pairs, bns, results: Sequence[PruneResult]) -> None:
    """Write greedy results into the modules, all or nothing.

    Each pair is re-read just before it is written: in a chain ``((fc1, fc2), (fc2, fc3))``
    writing one pair shrinks the next pair's ``W`` columns.
    """
    for li, ((layer1, layer2), norm) in enumerate(zip(pairs, bns)):
        for module, name in ((layer1, "layer1"), (layer2, "layer2"), (norm, "bn")):
            if module is not None:
                check_plain_layer(module, f"{name}[{li}]")
    with transaction([m for pair in pairs for m in pair] + list(bns)):
        for li, ((layer1, layer2), norm, result) in enumerate(zip(pairs, bns, results)):
            W, b, V = pair_matrices(layer1, layer2)
            new = apply_pruning(W, b, V, result)
            _check_written(new, layer1.weight.dtype, f"[{li}]")
            _write_pair(layer1, layer2, *new, result.keep, norm)


def prune_pairs_global(
    pairs: Sequence[tuple[nn.Module, nn.Module]],
    amount: int,
    options: ProjectionOptions | None = None,
    *,
    bns: Sequence[nn.Module | None] | None = None,
    stats: Sequence[ActivationStats | None] | None = None,
    callback: StepCallback | None = None,
    **overrides,
) -> list[torch.Tensor]:
    """Prune ``amount`` units in total across several pairs, chosen globally (docs/algorithm.md §4).

    Args:
        pairs: ``(layer1, layer2)`` pairs of ``nn.Linear`` or ``nn.Conv2d`` (groups=1).
        amount: total units to remove; every pair keeps at least one.
        options: :class:`ProjectionOptions` (``tracking``, strengths, ``compensate``, ...).
        bns: optional normalisation layer after each ``layer1`` (sliced with it).
        stats: calibration statistics of each pair's units (what ``layer2`` reads), from
            :func:`projprune.collect_activation_stats`; all pairs or none.
        callback: called with the step index after every removal.
        **overrides: :class:`ProjectionOptions` fields.

    Returns:
        Per pair, the sorted kept indices (int64).
    """
    opts = resolve_options(options, overrides)
    bns, stats = check_pairs(pairs, bns, stats)
    matrices = [pair_matrices(l1, l2) for l1, l2 in pairs]
    results = greedy_global([W for W, _, _ in matrices], amount, opts, bs=[b for _, b, _ in matrices],
                            Vs=[V for _, _, V in matrices], stats=stats, callback=callback)
    install_results(pairs, bns, results)  # everything is computed: only now touch the modules
    return [result.kept_indices for result in results]


def _prune_single(layer1, layer2, amount, norm, options, stats, callback, overrides) -> torch.Tensor:
    check_pair(layer1, layer2, norm)
    amount = check_amount(amount, layer1.weight.shape[0])
    return prune_pairs_global([(layer1, layer2)], amount, options, bns=[norm], stats=[stats], callback=callback,
                              **overrides)[0]


def prune_linear_pair(
    fc1: nn.Linear,
    fc2: nn.Linear,
    amount: int,
    options: ProjectionOptions | None = None,
    *,
    bn: nn.Module | None = None,
    stats: ActivationStats | None = None,
    callback: StepCallback | None = None,
    **overrides,
) -> torch.Tensor:
    """Prune ``amount`` hidden units of ``fc1 -> fc2`` in place with projective pruning.

    ``fc1.weight`` ``(n, m)`` loses rows, ``fc1.bias`` entries and ``fc2.weight`` ``(k, n)``
    columns; the survivors absorb the pruned units (redistribution α/β/γ, or
    ``compensate``). ``out_features``/``in_features`` are updated; dtype, device and
    ``requires_grad`` are kept. With ``stats`` (what ``fc2`` reads, from
    :func:`projprune.collect_activation_stats`) selection and compensation run on the
    activations, and the mean correction goes into ``fc2.bias`` (created if absent).

    Args:
        fc1, fc2: consecutive layers (any element-wise activation in between).
        amount: units to remove, ``0 <= amount < n``.
        options: :class:`ProjectionOptions`; its fields may also be given as keywords
            (``alpha=.5, beta=.5, gamma=0, tracking="exact", compensate=True, ...``).
        bn: optional normalisation layer on ``fc1``'s output, sliced along.
        stats: calibration statistics of the ``n`` units.
        callback: called with the step index after every removal.

    Returns:
        Sorted indices of the kept units, int64.
    """
    return _prune_single(fc1, fc2, amount, bn, options, stats, callback, overrides)


def prune_conv_pair(
    conv1: nn.Conv2d, conv2: nn.Conv2d, amount: int, options: ProjectionOptions | None = None, **keywords
) -> torch.Tensor:
    """:func:`prune_linear_pair` for ``Conv2d -> Conv2d`` (rows = ``conv1.weight.flatten(1)``); same keywords.

    ``conv2``'s input channels are V's columns. With ``bn`` (BatchNorm2d after ``conv1``)
    the norm layer is sliced too. With ``stats`` every pixel of every calibration image is a
    sample; the mean correction is folded into ``conv2``'s bias as a constant input map (exact
    away from zero-padded borders). Grouped convolutions are rejected.

    Returns:
        Sorted indices of the kept filters, int64.
    """
    return prune_linear_pair(conv1, conv2, amount, options, **keywords)


# --------------------------------------------------------------------------- baselines
def select_units(
    W: torch.Tensor, amount: int, method: str = "l2", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Baseline selection: remove the ``amount`` rows with the smallest norm, or random rows.

    Args:
        W: ``(n, m)``.
        amount: ``0 <= amount < n``.
        method: ``"l1"``, ``"l2"`` or ``"random"``.

    Returns:
        keep: ``(n,)`` bool.
    """
    check_matrix(W, "W")
    amount = check_amount(amount, W.shape[0])
    n = W.shape[0]
    if method == "random":
        perm = torch.randperm(n, generator=generator).to(W.device)
        removed = perm[:amount]
    elif method in ("l1", "l2"):
        scores = torch.linalg.vector_norm(W.double(), ord=1 if method == "l1" else 2, dim=1)
        removed = torch.sort(scores, stable=True).indices[:amount]
    else:
        raise ValueError(f"method must be 'l1', 'l2' or 'random', got {method!r}")
    keep = torch.ones(n, dtype=torch.bool, device=W.device)
    keep[removed] = False
    return keep
