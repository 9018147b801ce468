"""Calibration statistics: what the next layer reads, summarised without storing it (docs/algorithm.md §8).

The calibrated method runs the projective machinery on the activations ``H: (n, T)`` a
layer reads (one row per unit, one column per token, pixel position or sample) instead of
on the producing layer's weight. Only ``Σ h hᵀ``, ``Σ h`` and the count are needed;
:class:`ActivationStats` accumulates them batch by batch in float64, and
:func:`collect_activation_stats` fills one accumulator per layer with forward hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from projprune._symmetric import block_edges, gram, mirror_upper_, symmetrised

__all__ = ["ActivationStats", "collect_activation_stats", "recalibrate_batchnorm"]


class ActivationStats:
    """Streaming second moments of ``n`` activations.

    Batch products are formed in the activations' own dtype (float32 or float64) and
    accumulated in float64.

    Args:
        n: number of units (the width the next layer reads).
        device: where the accumulators live (default CPU; moved to the data on first update).
        gram_dtype: OPT-IN faster, less precise products: ``torch.bfloat16`` rounds the
            activations to bfloat16 for ``Σ h hᵀ`` (about 2x faster on CPUs with AMX-bf16) and
            sums each product of ``LOW_PRECISION_CHUNK`` tokens in float32 (a CPU bf16 matmul
            rounds its output to bf16), then in float64. ``Σ h`` and the count stay exact.
            Relative error of ``Σ h hᵀ`` about 1e-3 per batch (tests bound it at 3e-3), below
            the sampling noise of a covariance from tens of thousands of tokens. Default None:
            the activations' own dtype (float32 or float64).

    Attribute ``single_use`` (default False): :meth:`covariance` forms ``C`` in the memory of
    ``Σ h hᵀ`` and returns it (no second ``(n, n)`` buffer; the caller may overwrite it); the
    statistics are then spent: a later update or covariance raises ``ValueError``.
    """

    def __init__(self, n: int, device: torch.device | str | None = None,
                 gram_dtype: torch.dtype | None = None) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int (number of units), got {n!r}")
        if gram_dtype not in (None, torch.bfloat16):
            raise ValueError(f"gram_dtype must be None or torch.bfloat16, got {gram_dtype!r}")
        self.n = n
        self.gram_dtype = gram_dtype
        self.sum_outer = torch.zeros(n, n, dtype=torch.float64, device=device)  # Σ h hᵀ
        self.sum = torch.zeros(n, dtype=torch.float64, device=device)  # Σ h
        self.count = 0
        self.single_use = False
        self._spent = False  # single_use and the covariance was taken: Σ h hᵀ holds it no more

    def update(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add samples.

        Args:
            h: ``(..., n)`` activations; every leading position is a sample.
            mask: ``(...)`` bool (or 0/1), the samples to use (e.g. non-padding tokens).
        """
        rows = rows_of(h, self.n)
        self._require_unspent()
        if mask is not None:
            if tuple(mask.shape) != tuple(h.shape[:-1]):
                raise ValueError(f"mask must have shape {tuple(h.shape[:-1])} (h without its last dim), "
                                 f"got {tuple(mask.shape)}")
            rows = rows[mask.reshape(-1).to(device=rows.device, dtype=torch.bool)]
        if rows.shape[0] == 0:
            return
        batch_sum, batch_gram = batch_products(rows, self.gram_dtype)
        if self.sum.device != rows.device:
            self.sum_outer = self.sum_outer.to(rows.device)
            self.sum = self.sum.to(rows.device)
        _accumulate(self.sum_outer, batch_gram)
        self.sum += batch_sum
        self.count += rows.shape[0]

    def merge(self, other: ActivationStats) -> ActivationStats:
        """Add another accumulator of the same width (e.g. from another process); returns self."""
        if not isinstance(other, ActivationStats) or other.n != self.n:
            raise ValueError(f"other must be an ActivationStats of width {self.n}")
        self._require_unspent()
        other._require_unspent()
        self.sum_outer += other.sum_outer.to(self.sum_outer.device)
        self.sum += other.sum.to(self.sum.device)
        self.count += other.count
        return self

    def _require_unspent(self) -> None:
        if self._spent:
            raise ValueError("these ActivationStats were single_use and their covariance was already taken (it "
                             "overwrote Σ h hᵀ); collect the statistics again")

    def _require_samples(self) -> None:
        if self.count == 0:
            raise ValueError("these ActivationStats hold no samples; expected at least one update")

    @property
    def mean(self) -> torch.Tensor:
        """``μ: (n,)`` float64."""
        self._require_samples()
        return self.sum / self.count

    def covariance(self) -> torch.Tensor:
        """``C = Hc Hcᵀ / T: (n, n)`` float64, ``Hc`` the centred activations."""
        self._require_unspent()
        mu = self.mean
        if self.single_use:
            self._spent = True
            C = self.sum_outer.div_(self.count)
        else:
            C = self.sum_outer / self.count  # the only (n, n) buffer made here: the rest is in place
        C.addr_(mu, mu, alpha=-1.0)
        return symmetrised(C, inplace=True)

    def to(self, device: torch.device | str) -> ActivationStats:
        """A copy on ``device``."""
        self._require_unspent()
        out = ActivationStats(self.n, device=device, gram_dtype=self.gram_dtype)
        out.sum_outer.copy_(self.sum_outer)
        out.sum.copy_(self.sum)
        out.count = self.count
        return out


def rows_of(h: torch.Tensor, n: int) -> torch.Tensor:
    """``h: (..., n)`` as ``(T, n)`` rows (a view where possible); ``ValueError`` for anything else."""
    if not isinstance(h, torch.Tensor) or not h.is_floating_point() or h.dim() < 1 or h.shape[-1] != n:
        shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
        raise ValueError(f"h must be a floating tensor of shape (..., {n}), got {shape}")
    if h.is_meta:
        raise ValueError("h is on the meta device; materialise the model's weights first (meta tensors hold "
                         "no values)")
    return h.reshape(-1, n)


def batch_products(rows: torch.Tensor, gram_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ_t rows[t]: (n,) float64, rowsᵀ rows: (n, n))`` of one batch ``rows: (T, n)``, checked.

    The product is float32 or float64 (float64 for float64 rows; half precision is promoted to
    float32), or with ``gram_dtype=torch.bfloat16`` the opt-in bfloat16 products with float32 sums.
    ``ValueError`` for a NaN or Inf row, :class:`StatisticsOverflowError` for finite rows whose sums
    or products leave the dtype's range.
    """
    if rows.dtype not in (torch.float32, torch.float64):
        rows = rows.float()  # half precision: the product in float32 (CPU matmuls round to the input dtype)
    # A NaN or Inf anywhere makes its column's sum non-finite, so the sum also checks the
    # input without a pass of its own, before anything is accumulated.
    batch_sum = _column_sum(rows)
    if not bool(torch.isfinite(batch_sum).all()):
        if bool(torch.isfinite(rows).all()):
            raise StatisticsOverflowError(_overflow_message(rows, "their sums", rows.dtype))
        raise ValueError("h contains NaN or Inf; expected finite activations")
    if gram_dtype is None:
        batch_gram = gram(rows)  # float32 or float64 product, accumulated in float64 by the caller
    else:
        batch_gram = _gram_low_precision(rows, gram_dtype)  # opt-in bf16 products, float32 sums
    # Finite activations whose squares exceed the product's dtype (|h| > ~1e19 in float32) give an
    # infinite Gram matrix: said here, not later as a singular covariance.
    if not bool(torch.isfinite(batch_gram).all()):
        where = ("the sums of their bfloat16 products (gram_dtype=torch.bfloat16)" if gram_dtype is not None
                 else "their products h hᵀ")
        raise StatisticsOverflowError(_overflow_message(rows, where, batch_gram.dtype))
    return batch_sum, batch_gram


class StatisticsOverflowError(ValueError):
    """Finite activations whose accumulated statistics (sums, second moments) left the floating-point range."""


def _accumulate(total: torch.Tensor, batch: torch.Tensor, rows: int = 512) -> None:
    """``total += batch`` (``(n, n)``) a block of rows at a time: a float32 ``batch`` added to a float64
    ``total`` in one go is first copied whole to float64 (an ``(n, n)`` temporary); in blocks, same sums."""
    for start in range(0, total.shape[0], rows):
        total[start:start + rows] += batch[start:start + rows]


def _overflow_message(rows: torch.Tensor, where: str, dtype: torch.dtype) -> str:
    """Why finite activations ``rows: (T, n)`` gave infinite statistics in ``dtype``, and what to do."""
    largest = float(rows.abs().max())
    remedy = "" if dtype == torch.float64 else ", or calibrate in float64 (model.double(), gram_dtype=None)"
    return (f"h overflows: activations up to |h| = {largest:.3g} are finite, but {where} exceed {dtype}'s largest "
            f"value {torch.finfo(dtype).max:.3g}; expected activations whose squares fit: check the model for "
            f"diverged weights or inputs{remedy}")


def _column_sum(rows: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """``Σ_t rows[t]: (n,)`` float64 for ``rows: (T, n)``.

    Float32 rows are summed in chunks of ``chunk`` rows in float32 and the partial sums in
    float64: about 8x faster than casting every element to float64, and accurate to ~1e-8
    relative (a plain float32 sum of a whole batch loses ten times more).
    """
    if rows.dtype == torch.float64:
        return rows.sum(dim=0)
    T, n = rows.shape
    full = T - T % chunk
    total = rows[full:].sum(dim=0, dtype=torch.float64)
    if full:
        total += rows[:full].reshape(-1, chunk, n).sum(dim=1).sum(dim=0, dtype=torch.float64)
    return total


# Tokens per bfloat16 product in the opt-in low-precision statistics (each product is rounded to bf16).
LOW_PRECISION_CHUNK = 1024


def _gram_low_precision(rows: torch.Tensor, dtype: torch.dtype, chunk: int | None = None) -> torch.Tensor:
    """``rowsᵀ rows: (n, n)`` float32 from products in ``dtype`` (bfloat16) of ``chunk`` tokens each.

    Opt-in (``ActivationStats(gram_dtype=torch.bfloat16)``): the rows are rounded to ``dtype``
    and every chunk's upper block rows (rounded to ``dtype`` by the CPU matmul) are summed in
    float32; the lower blocks are mirrored once at the end.
    """
    chunk = chunk or LOW_PRECISION_CHUNK
    T, n = rows.shape
    low = rows.to(dtype)
    edges = block_edges(n)
    out = torch.zeros(n, n, dtype=torch.float32, device=rows.device)
    for start in range(0, T, chunk):
        part = low[start:start + chunk]
        for lo, hi in zip(edges[:-1], edges[1:]):
            out[lo:hi, lo:] += part[:, lo:hi].T @ part[:, lo:]
    mirror_upper_(out, edges)
    return out


def _reading_width(layer: nn.Module) -> int | None:
    """How many units ``layer`` reads: Linear/Conv in-width, HF ``Conv1D`` rows; None if unknown."""
    if isinstance(layer, nn.Linear):
        return layer.in_features
    if isinstance(layer, nn.modules.conv._ConvNd):
        return layer.in_channels
    weight = getattr(layer, "weight", None)
    if type(layer).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return weight.shape[0]  # transformers' Conv1D stores (in, out)
    return None


def _samples(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``(..., n)``: channels last for convolutions."""
    if isinstance(layer, nn.modules.conv._ConvNd):
        return x.movedim(1, -1)
    return x


def _call(model: nn.Module, batch: Any) -> Any:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if isinstance(batch, torch.Tensor):
        return model(batch.to(device))
    if isinstance(batch, Mapping):
        return model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return model(batch[0].to(device))
    raise ValueError(
        "batches must yield tensors, mappings of tensors (e.g. tokenizer outputs) or (inputs, targets) "
        f"tuples, got {type(batch).__name__}"
    )


def collect_activation_stats(
    model: nn.Module,
    layers: Sequence[nn.Module],
    batches: Iterable[Any],
    *,
    max_batches: int | None = None,
    callback: Callable[[int], None] | None = None,
    gram_dtype: torch.dtype | None = None,
    stop_early: bool = False,
) -> list[ActivationStats]:
    """Statistics of what each of ``layers`` reads while ``model`` runs on ``batches``.

    Give the *second* layer of each pair: its input is the hidden units. Runs in eval mode
    under ``torch.no_grad()``; the training flag is restored and the hooks removed afterwards.

    Args:
        model: any ``nn.Module`` containing ``layers``.
        layers: the consumers (``nn.Linear``, ``nn.Conv2d``, transformers' ``Conv1D``, ...).
        batches: tensors (``model(x)``), mappings (``model(**batch)``; an ``attention_mask``
            excludes padding positions wherever a hooked input has the mask's leading shape) or
            ``(inputs, targets)`` tuples (``model(inputs)``).
        max_batches: stop after this many batches.
        callback: called with the batch index after every batch (progress bars).
        gram_dtype: opt-in ``torch.bfloat16`` products (see :class:`ActivationStats`); default exact.
        stop_early: when the first batch called every layer exactly once, end the later batches'
            forwards as soon as the last of ``layers`` has read its input (the rest of the model
            runs for nothing: the statistics are the same, the output is discarded).

    Returns:
        One :class:`ActivationStats` per layer, in order.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    layers = list(layers)
    if not layers or not all(isinstance(layer, nn.Module) for layer in layers):
        raise ValueError("layers must be a non-empty sequence of nn.Module")
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")
    stats: list[ActivationStats | None] = [
        None if _reading_width(layer) is None else ActivationStats(_reading_width(layer), gram_dtype=gram_dtype)
        for layer in layers
    ]
    current_mask: list[torch.Tensor | None] = [None]
    calls = [0] * len(layers)  # how often each layer was called in the current batch
    cut = [False]  # stop_early and the first batch called every layer once: end forwards early

    def make_hook(index: int):
        def hook(module: nn.Module, args: tuple) -> None:
            calls[index] += 1
            if not args or not isinstance(args[0], torch.Tensor):
                return
            h = _samples(module, args[0].detach())
            if stats[index] is None:
                stats[index] = ActivationStats(h.shape[-1], gram_dtype=gram_dtype)
            mask = current_mask[0]
            use_mask = mask is not None and tuple(mask.shape) == tuple(h.shape[:-1])
            try:
                stats[index].update(h, mask if use_mask else None)
            except ValueError as err:
                raise ValueError(f"layers[{index}] ({type(module).__name__}): {err}") from None
            if cut[0] and all(calls):
                raise _StopForward

        return hook

    def before(batch: Any) -> None:
        if stop_early and not cut[0] and any(calls):  # the first batch is done: was every layer called once?
            cut[0] = all(c == 1 for c in calls)
        calls[:] = [0] * len(layers)
        current_mask[0] = _mask_of(batch)

    run_hooked(model, {layer: make_hook(i) for i, layer in enumerate(layers)}, batches,
               max_batches=max_batches, callback=callback, before_batch=before)
    for i, s in enumerate(stats):
        if s is None or s.count == 0:
            raise ValueError(f"layers[{i}] ({type(layers[i]).__name__}) saw no activations during calibration; "
                             "expected a layer that the model's forward calls")
    return stats  # type: ignore[return-value]


class _StopForward(Exception):
    """Raised by a hook of :func:`collect_activation_stats` to end a forward whose rest is not needed."""


def run_hooked(model: nn.Module, hooks: Mapping[nn.Module, Callable], batches: Iterable[Any], *,
               max_batches: int | None = None, callback: Callable[[int], None] | None = None,
               before_batch: Callable[[Any], None] | None = None) -> int:
    """Run ``batches`` through ``model`` (eval mode, no gradients) with forward pre-hooks installed.

    The training flag is restored and the hooks removed afterwards, whatever happens; a failing
    forward becomes one ``ValueError`` naming the batch. Returns the number of batches run
    (``ValueError`` if none).
    """
    handles = [layer.register_forward_pre_hook(hook) for layer, hook in hooks.items()]
    was_training = model.training
    seen = 0
    try:
        model.eval()
        with torch.no_grad():
            for index, batch in enumerate(batches):
                if max_batches is not None and index >= max_batches:
                    break
                try:
                    if before_batch is not None:
                        before_batch(batch)
                    _call(model, batch)
                except _StopForward:
                    pass  # every hooked layer has read this batch
                except ValueError as err:
                    if str(err).startswith(("layers[", "batches must")):
                        raise
                    raise ValueError(f"batches: the model's forward failed on batch {index}: {err}") from err
                except Exception as err:  # noqa: BLE001 - any failing forward becomes one clear error
                    raise ValueError(
                        f"batches: the model's forward failed on batch {index}: {type(err).__name__}: {err}"
                    ) from err
                seen += 1
                if callback is not None:
                    callback(index)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if seen == 0:
        raise ValueError("batches yielded no batch; expected at least one calibration batch")
    return seen


def _mask_of(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, Mapping):
        mask = batch.get("attention_mask")
        return mask if isinstance(mask, torch.Tensor) else None
    return None


def _check_running_stats(model: nn.Module, norms: Sequence[nn.Module], index: int) -> None:
    """Every recalibrated running mean and variance is still finite after batch ``index``."""
    for norm in norms:
        if not (bool(torch.isfinite(norm.running_mean).all()) and bool(torch.isfinite(norm.running_var).all())):
            name = next((n for n, m in model.named_modules() if m is norm), type(norm).__name__)
            raise ValueError(
                f"batches: batch {index} made the running statistics of BatchNorm {name!r} NaN or Inf (NaN/Inf in "
                f"the batch, or an overflow of {norm.running_var.dtype}); expected finite activations: the old "
                "running statistics were kept"
            )


def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Any], *, max_batches: int | None = None) -> int:
    """Re-estimate every BatchNorm's running statistics on ``batches``; no gradient step.

    After pruning, each BatchNorm's running mean and variance describe channels that no longer
    receive the same input (the producers were cut or compensated); evaluation then normalises
    with stale numbers. This resets them and recomputes them as the plain average over the
    given batches (``momentum=None``), with only the BatchNorms in training mode (dropout and
    the rest stay in eval mode). Modes and momenta are restored afterwards.

    Args:
        model: any ``nn.Module``; its BatchNorm layers (1d/2d/3d, SyncBatchNorm) are updated.
        batches: tensors, mappings of tensors or ``(inputs, targets)`` tuples, as for
            :func:`collect_activation_stats` (use training data, never the evaluation split).
        max_batches: stop after this many batches.

    Returns:
        The number of BatchNorm layers recalibrated (0: the model has none, nothing ran).

    Raises:
        ValueError: a batch fails or makes any running statistic NaN or Inf (NaN/Inf inputs, a
            float16 overflow); every BatchNorm then keeps its old statistics, counter and momentum.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    meta = next((m for m in norms if m.running_mean.is_meta), None)
    if meta is not None:
        name = next(n for n, m in model.named_modules() if m is meta)
        raise ValueError(f"model: BatchNorm {name!r} is on the meta device; materialise the weights first")
    saved = [(m, m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in norms]
    modes = {m: m.training for m in model.modules()}
    seen = 0
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
            m.train()
        with torch.no_grad():
            for index, batch in enumerate(batches):
                if max_batches is not None and index >= max_batches:
                    break
                _call(model, batch)
                _check_running_stats(model, norms, index)
                seen += 1
        if seen == 0:
            raise ValueError("batches yielded no batch; expected at least one calibration batch")
    except BaseException:
        for m, _, mean, var, tracked in saved:  # a failed recalibration leaves the old statistics
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(tracked)
        raise
    finally:
        for m, momentum, *_ in saved:
            m.momentum = momentum
        for m, training in modes.items():
            m.train(training)
    return len(norms)
