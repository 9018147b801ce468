"""Input validation shared by the solvers, the greedy loops and the module surgery.

Every check raises one ``ValueError`` that names the argument and the expected form; the
callers run all checks before modifying anything.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.prune import BasePruningMethod
from torch.nn.utils.weight_norm import WeightNorm

_REMOVE = "remove it first with "


def check_plain_layer(layer: nn.Module, name: str) -> None:
    """``layer``'s own parameters are plain, materialised ``nn.Parameter`` objects that surgery can replace.

    Refused, each with one ``ValueError`` starting ``"{name} ({type})"``: a parametrization
    (``torch.nn.utils.parametrizations.weight_norm``, ...), the deprecated
    ``torch.nn.utils.weight_norm`` (``weight_g``/``weight_v`` and a forward pre-hook) and a
    ``torch.nn.utils.prune`` mask (``weight_orig``/``weight_mask`` and a forward pre-hook): each
    recomputes ``weight`` from tensors a write would not cut, so the layer would silently keep
    its old width or fail on the next forward. Also refused: parameters or buffers on the meta
    device (no values to compute with).
    """
    label = f"{name} ({type(layer).__name__})"
    check_not_reparametrized(layer, label)
    for attr in ("weight", "bias"):
        value = layer.__dict__.get(attr)
        if isinstance(value, torch.Tensor):  # a plain attribute, not a registered parameter: computed by a hook
            raise ValueError(f"{label}.{attr} is a plain tensor attribute, not an nn.Parameter (set by a forward "
                             "hook?); expected plain parameters")
    meta = [key for key, t in [*layer.named_parameters(recurse=False), *layer.named_buffers(recurse=False)]
            if t is not None and t.is_meta]
    if meta:
        raise ValueError(f"{label} is on the meta device; materialise the weights first ({', '.join(meta)} hold "
                         "no values: e.g. module.to_empty(device='cpu') and load_state_dict)")


def check_not_reparametrized(layer: nn.Module, label: str) -> None:
    """``ValueError`` starting ``label`` if ``layer``'s weight is recomputed by a parametrization, the
    deprecated ``torch.nn.utils.weight_norm`` or a ``torch.nn.utils.prune`` mask (a write would not
    reach the tensors the forward uses)."""
    if parametrize.is_parametrized(layer):
        raise ValueError(f"{label} is parametrized (a parametrization such as parametrizations.weight_norm on "
                         f"{sorted(layer.parametrizations.keys())}); expected plain parameters: {_REMOVE}"
                         "torch.nn.utils.parametrize.remove_parametrizations")
    for hook in layer._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm):
            raise ValueError(f"{label} has torch.nn.utils.weight_norm on {hook.name!r} ({hook.name}_g, "
                             f"{hook.name}_v); expected plain parameters: {_REMOVE}"
                             f"torch.nn.utils.remove_weight_norm(layer, {hook.name!r})")
        if isinstance(hook, BasePruningMethod):
            tensor = getattr(hook, "_tensor_name", "weight")
            raise ValueError(f"{label} has a torch.nn.utils.prune mask on {tensor!r} ({tensor}_orig, "
                             f"{tensor}_mask); expected plain parameters: {_REMOVE}"
                             f"torch.nn.utils.prune.remove(layer, {tensor!r})")


def check_matrix(W: torch.Tensor, name: str, rows: int | None = None, cols: int | None = None) -> None:
    """``W`` is a finite floating 2-D tensor, optionally of a given shape."""
    if not isinstance(W, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(W).__name__}")
    if W.dim() != 2:
        raise ValueError(f"{name} must be 2-D (units, features), got shape {tuple(W.shape)}")
    if not W.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {W.dtype}")
    if W.shape[0] < 1:
        raise ValueError(f"{name} must have at least one row, got shape {tuple(W.shape)}")
    if rows is not None and W.shape[0] != rows:
        raise ValueError(f"{name} must have {rows} rows, got shape {tuple(W.shape)}")
    if cols is not None and W.shape[1] != cols:
        raise ValueError(f"{name} must have {cols} columns, got shape {tuple(W.shape)}")
    check_finite(W, name)


def check_vector(b: torch.Tensor, name: str, length: int) -> None:
    """``b`` is a finite floating 1-D tensor of the given length."""
    if not isinstance(b, torch.Tensor) or b.dim() != 1 or b.shape[0] != length:
        shape = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
        raise ValueError(f"{name} must be a 1-D tensor of length {length}, got {shape}")
    if not b.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {b.dtype}")
    check_finite(b, name)


def check_finite(x: torch.Tensor, name: str) -> None:
    if x.is_meta:
        raise ValueError(f"{name} is on the meta device; materialise the weights first (a meta tensor holds no values)")
    # one float64 sum carries any NaN or Inf (one read, no boolean copy); only a sum that is not finite is
    # looked at entry by entry, so huge finite values cannot be mistaken for Inf
    if x.numel() and not bool(torch.isfinite(x.sum(dtype=torch.float64))) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf; expected finite values")


def check_lmbda(lmbda: float) -> None:
    if not isinstance(lmbda, (int, float)) or isinstance(lmbda, bool) or not math.isfinite(lmbda) or lmbda < 0:
        raise ValueError(f"lmbda must be a finite number >= 0, got {lmbda!r}")


def check_amount(amount: int, n: int, name: str = "amount") -> int:
    """``amount`` as a Python int in ``[0, n)``; any integral type (``numpy.int64``, 0-d int tensor) is accepted."""
    if isinstance(amount, torch.Tensor) and amount.dim() == 0 and not amount.is_floating_point():
        amount = int(amount)
    if isinstance(amount, bool) or not isinstance(amount, numbers.Integral):
        raise ValueError(f"{name} must be an int (number of units to remove), got {amount!r}")
    amount = int(amount)
    if amount < 0 or amount >= n:
        raise ValueError(f"{name} must satisfy 0 <= {name} < {n} (units available), got {amount}")
    return amount


def check_same_device_dtype(tensors: dict[str, torch.Tensor | None]) -> None:
    """All given tensors share one device and one dtype."""
    present = {name: t for name, t in tensors.items() if t is not None}
    devices = {str(t.device) for t in present.values()}
    dtypes = {t.dtype for t in present.values()}
    if len(devices) > 1:
        detail = ", ".join(f"{k} on {t.device}" for k, t in present.items())
        raise ValueError(f"tensors must be on one device, got {detail}")
    if len(dtypes) > 1:
        detail = ", ".join(f"{k} {t.dtype}" for k, t in present.items())
        raise ValueError(f"tensors must share one dtype, got {detail}")
