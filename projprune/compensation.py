"""A compensating pruner on Torch-Pruning's dependency groups (docs/algorithm.md §8, CNNs).

Torch-Pruning removes channels; the paper's idea is that the channels that stay absorb the
ones that go. :class:`CompensatingPruner` does both: for every group it prunes, it first
folds each removed channel into **every consumer of the group** (the convs and linears that
read the pruned tensor, e.g. all readers of a residual stream), ``V[:, K] += V[:, R] A``,
where ``A: (|R|, |K|)`` expresses the removed channels as a ridge least-squares combination
of the kept ones, then lets Torch-Pruning cut the group.

Two sources for ``A``:

* **data-free** (``calibration=None``): the Gram matrix of the producers' effective rows
  (BatchNorm scale and shift included), the projection of the paper; consumers' weights
  only, no bias term (it would be exact only without an activation).
* **calibrated**: the second moments of the tensor each consumer reads, collected with
  forward hooks on a few calibration batches at the start of a pruning step
  (:func:`collect_consumer_stats`; every spatial position is a sample) and again whenever a
  twentieth of the channels has gone since (``calibrate_drift``); in between, each consumer's
  statistics and the inverse ``P = (C + ρI)⁻¹`` are cut to its kept channels (a Schur
  complement, no new inversion). ``A = C_RK (C_KK + ρI)⁻¹ = −P_RR⁻¹ P_RK`` comes from the
  centred covariance and an empirical mean correction keeps every consumer's mean output
  unchanged on the calibration data: the correction uses the mean of each kernel offset's
  input patch, so zero padding at the borders is accounted for exactly. It is folded into
  the BatchNorm that reads the consumer, else into (or as) the consumer's bias.

A Linear reading a flattened feature map whose dense statistics would exceed
``statistics_budget`` keeps them per channel instead (every position a sample, as a conv's;
docs/algorithm.md §8.1.1). A step is all or nothing: every coefficient of every consumer is
computed before the first weight is written. Example inputs and calibration batches may be
tensors, tuples, lists or dicts, as Torch-Pruning's ``example_inputs``.

:class:`CalibratedProjectiveImportance` scores channels from the same statistics: the
optimal-brain-surgeon cost ``‖v_i‖² / P_ii`` of removing input ``i`` of every consumer with
``P = (C + λI)^{-1}`` (the cached inverse above), relative to the consumer's signal energy so
that scores compare across layers in global pruning.

Example::

    pruner = CompensatingPruner(model, example_inputs, CalibratedProjectiveImportance(),
                                calibration=lambda: [next(iter(train_loader))[0]],
                                pruning_ratio=0.5, ignored_layers=[model.fc])
    pruner.step()
"""

from __future__ import annotations

import copy
import itertools
import logging
import numbers
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp
from torch_pruning.pruner import function

from projprune._checks import check_lmbda, check_not_reparametrized
from projprune._symmetric import cholesky as symmetric_cholesky
from projprune._symmetric import gram as symmetric_gram
from projprune._symmetric import symmetrised
from projprune.calibration import (
    ActivationStats,
    StatisticsOverflowError,
    _StopForward,
    batch_products,
    rows_of,
    run_hooked,
)

__all__ = ["CalibratedProjectiveImportance", "ChannelMoments", "CompensatingPruner", "ConsumerStats",
           "LowRankCoefficients", "channel_macs", "collect_consumer_stats", "count_consumer_calls",
           "fold_removed_inputs", "least_squares_coefficients",
           "output_positions", "refuse_unsupported_layers", "sampled_positions", "spreads_inputs",
           "structured_forward"]

_OUT_FNS = (function.prune_conv_out_channels, function.prune_linear_out_channels)
_DEPTHWISE_OUT = function.prune_depthwise_conv_out_channels
_IN_FNS = (function.prune_conv_in_channels, function.prune_linear_in_channels)
# CompensatingPruner: re-collect statistics once this fraction of the channels was pruned since the last time
DEFAULT_CALIBRATE_DRIFT = 0.05
# A Gram or covariance of rank m <= LOW_RANK_FRACTION · n is used through its (n, m) factor (Woodbury, push-through):
# scores and coefficients then cost ~5 n m² + n² m / 2 flops, against ~1.3 n³ for the dense inverse and solve. The
# factor's flops are matrix products, the dense ones Cholesky / triangular inversion (a few times slower per flop on
# one CPU thread), and a rank-deficient covariance is inverted in float64 (too ill-conditioned for float32). Measured
# on one thread (scores and coefficients of one consumer): at n = 3072 the factor is ~4x faster at m / n = 0.5, ~1.4x
# at 0.78, ~1.2x slower at 0.94 and 1.4x slower at 0.85; at n = 1024 1.2x faster at 0.77, even at 0.84
LOW_RANK_FRACTION = 0.8
# CompensatingPruner: bytes one consumer's dense statistics may take before a flattened map's fall back to channels
DEFAULT_STATISTICS_BUDGET = 256 * 2**20
_LOG = logging.getLogger(__name__)
_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def is_consumer(module: nn.Module) -> bool:
    """Whether ``module`` mixes its input channels (a Linear or an ungrouped, non-transposed conv)."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups == 1 and not module.transposed


# --------------------------------------------------------------------------- statistics
class ChannelMoments:
    """Second moments of one tensor's ``c`` channels, and what is derived from them (covariance,
    precision, its diagonal, coefficients): one object for all the consumers that read the same
    tensor (a bottleneck block's first conv and its downsample, ASPP's branches), so their
    statistics are gathered, inverted and cut once.

    While there are at most ``LOW_RANK_FRACTION · c`` samples (e.g. a classifier's 4096 inputs at
    32 images) they are kept, ``(T, c)`` float64 (less memory than ``C``), and ``P`` is never formed:
    Woodbury with ``U = Xcᵀ/√T``. Their products ``Σ h hᵀ`` are added to the statistics only when
    something reads them (:attr:`channels`, or more samples than that arrive).
    """

    def __init__(self, n: int, device: torch.device | str | None = None) -> None:
        self._stats = _unallocated_stats(n, device)  # read through `channels`, which adds pending samples' products
        self._samples: list[torch.Tensor] | None = []
        self._summed = 0  # the first this many blocks of _samples are in the statistics' Σ h hᵀ
        self._changed()

    def _changed(self) -> None:
        """Forget everything derived from the statistics (they changed)."""
        self._covariance: torch.Tensor | None = None  # cached until the statistics change
        self._precision: torch.Tensor | None = None  # (C + ridge I)^{-1}, cut along with the channels
        self._precision_lmbda: float | None = None  # the relative ridge it was made with
        self._low_rank: tuple[torch.Tensor, float] | None = None  # (U: (c, T), absolute ridge ρ), cut with P
        # Read once per group that cuts this tensor (a DenseNet layer's input: ~40 groups): kept until the
        # statistics change (precision diagonal: (lmbda, (c,)) of the Woodbury form; variances: (c,))
        self._diagonal: tuple[float, torch.Tensor] | None = None
        self._variances: torch.Tensor | None = None
        self._condition: float | None = None  # the Woodbury factor's condition estimate (an upper bound after cuts)
        # the last coefficients solved, (removed, kept, lmbda, factored, A): the next consumer of the tensor reads them
        self._coefficients: tuple | None = None

    @property
    def channels(self) -> ActivationStats:
        """:class:`~projprune.ActivationStats` over the ``c`` channels, ``Σ h hᵀ`` complete."""
        self._sum_outer()
        self._sum_samples()
        return self._stats

    def _sum_outer(self) -> torch.Tensor:
        """The statistics' ``Σ h hᵀ: (c, c)`` float64, allocated on first use: while the samples are kept (the
        Woodbury form, e.g. a ViT's 3072-wide MLP outputs at a few images) it is never needed."""
        stats = self._stats
        if stats.sum_outer.is_meta:
            stats.sum_outer = torch.zeros(stats.n, stats.n, dtype=torch.float64, device=stats.sum.device)
        return stats.sum_outer

    @property
    def n(self) -> int:
        """Number of channels ``c``."""
        return self._stats.n

    @property
    def count(self) -> int:
        """Number of samples (batch elements times positions)."""
        return self._stats.count

    @property
    def mean(self) -> torch.Tensor:
        """``(c,)`` float64 channel means (the products of kept samples are not taken for them)."""
        return self._stats.mean

    def wants_samples(self, k: int) -> bool:
        """Whether ``k`` more samples are kept as rows (the Woodbury form) rather than added as products."""
        return self._samples is not None and self._stats.count + k <= LOW_RANK_FRACTION * self.n

    def add_samples(self, rows: torch.Tensor, total: torch.Tensor) -> None:
        """Keep ``rows: (k, c)`` float64 (their column sums ``total: (c,)``, checked finite by the caller) as
        samples, products not yet taken."""
        self._changed()
        self._move_to(rows.device)
        self._samples.append(rows)
        self._stats.sum += total
        self._stats.count += rows.shape[0]

    def add_products(self, gram: torch.Tensor, total: torch.Tensor, count: int) -> None:
        """Add ``count`` samples given by their products ``gram: (c, c)`` and sums ``total: (c,)`` (checked by the
        caller); samples kept so far are summed and no more are kept."""
        self._changed()
        self._sum_samples(drop=True)
        self._move_to(gram.device)
        if self._stats.sum_outer.is_meta:  # the first products: converted, not added to zeros
            self._stats.sum_outer = gram.to(torch.float64, copy=True)
        else:
            self._stats.sum_outer.add_(gram)  # float32 products summed in float64 (no float64 copy of them)
        self._stats.sum += total.to(self._stats.sum.device)
        self._stats.count += count

    def _move_to(self, device: torch.device) -> None:
        stats = self._stats
        if stats.sum.device != device:
            if not stats.sum_outer.is_meta:
                stats.sum_outer = stats.sum_outer.to(device)
            stats.sum = stats.sum.to(device)

    def _sum_samples(self, drop: bool = False) -> None:
        """Add the products ``Σ h hᵀ`` of the kept samples not yet in the statistics (``drop``: and stop keeping
        samples: more arrive than the Woodbury form is worth)."""
        if self._samples and self._summed < len(self._samples):
            X = torch.cat(self._samples[self._summed:])
            products = symmetric_gram(X).to(self._stats.sum.device)
            _check_no_overflow(products, X)
            self._sum_outer().add_(products)
            self._summed = len(self._samples)
        if drop:
            self._samples, self._summed = None, 0

    def keep(self, kept: torch.Tensor, coefficients: torch.Tensor | None = None) -> None:
        """Restrict to the channels ``kept`` (after the others were pruned); a no-op when ``kept`` are all of them
        (the second consumer of the same tensor cutting it again).

        A cached :meth:`precision` is cut too, by the Schur complement
        ``P_KK − P_KR P_RR⁻¹ P_RK = (C_KK + ρI)⁻¹`` (same absolute ridge ``ρ``, ``O(c²|R|)``);
        ``coefficients``: the ``A = −P_RR⁻¹ P_RK: (|R|, |K|)`` of :meth:`coefficients` for these
        channels, if already computed (saves the solve: the cut is ``P_KK + P_KR A``).
        """
        if len(kept) == self.n:
            return
        device = self._stats.sum.device
        kept = kept.to(device)
        # (C_KK + ρI)⁻¹: the Schur cut of P, or the same Woodbury form on U's kept rows (the condition estimate
        # stays an upper bound: σ_max can only shrink)
        if self._precision is not None:
            self._precision = _schur_cut(self._precision, kept, coefficients)
        if self._low_rank is not None:
            self._low_rank = (self._low_rank[0][kept], self._low_rank[1])
        if self._covariance is not None:
            self._covariance = self._covariance[kept][:, kept]
        if self._variances is not None:
            self._variances = self._variances[kept]
        self._diagonal = self._coefficients = None  # the inverse of the kept block is not the kept part of the inverse
        if self._samples:
            self._samples = [rows[:, kept] for rows in self._samples]
        channels = _unallocated_stats(len(kept), device=device)
        if not self._stats.sum_outer.is_meta:
            channels.sum_outer = self._stats.sum_outer[kept][:, kept]
        channels.sum = self._stats.sum[kept]
        channels.count = self._stats.count
        self._stats = channels

    def covariance(self) -> torch.Tensor:
        """``(c, c)`` float64 centred covariance of the channels (computed once per change)."""
        if self._covariance is None:
            self._covariance = self.channels.covariance()
        return self._covariance

    def variances(self) -> torch.Tensor:
        """``(c,)`` float64 the covariance's diagonal, without forming the covariance (``O(c)``; kept until
        the statistics change)."""
        if self._covariance is not None:
            return self._covariance.diagonal()
        if self._variances is None:
            self._variances = self._sample_variances()
        return self._variances

    def _sample_variances(self) -> torch.Tensor:
        stats = self._stats
        second = (torch.zeros_like(stats.sum) if stats.sum_outer.is_meta else stats.sum_outer.diagonal().clone())
        for rows in (self._samples or [])[self._summed:]:  # samples whose products are not in Σ h hᵀ yet
            second += rows.pow(2).sum(dim=0).to(second.device)
        mean = stats.mean
        return second / stats.count - mean * mean

    def precision(self, lmbda: float) -> torch.Tensor:
        """``(c, c)`` ``P = (C + ρI)⁻¹`` with ``ρ = lmbda · trace(C) / min(c, samples − 1)`` (:func:`_ridge`; float32
        when wide and accurate so, else float64).

        Computed once per collection; :meth:`keep` then cuts it exactly with the same absolute
        ``ρ`` (so between collections the ridge stays the one of the collected statistics). With
        at most ``c`` samples (and ``lmbda > 0``) the pruner never forms it: :meth:`precision_diagonal`
        and :meth:`coefficients` use the Woodbury form; here it is formed from that form.
        """
        if self._woodbury(lmbda):
            U, ridge = self._low_rank
            P = -(U @ torch.cholesky_solve(U.T, _cholesky_or_raise(_ridged_small_gram(U, ridge))))
            P.diagonal().add_(1.0)
            return (P + P.T) * (0.5 / ridge)
        if self._precision is None or self._precision_lmbda != lmbda:
            # rank <= samples − 1: with fewer samples than inputs the ridge is relative to the nonzero spectrum
            P = _ridge_inverse(self.covariance(), lmbda, rank=self.count - 1)
            self._precision, self._precision_lmbda = P, lmbda
        return self._precision

    def _woodbury(self, lmbda: float) -> bool:
        """Whether ``P`` is held as ``(U, ρ)`` (:attr:`_low_rank`, made here from the kept samples if due)."""
        if self._low_rank is not None and self._precision_lmbda == lmbda:
            return True
        if not self._samples or lmbda <= 0 or self._precision is not None and self._precision_lmbda == lmbda:
            return False
        X = torch.cat(self._samples).to(self._stats.sum.device)  # (T, c)
        # C = U Uᵀ; U: (c, T) made contiguous once (its rows are gathered and multiplied many times)
        U = ((X - X.mean(dim=0)).T / X.shape[0] ** 0.5).contiguous()
        # the ridge of the dense path: relative to the nonzero spectrum (rank <= T − 1)
        self._low_rank = U, _ridge_of_trace(float(self.variances().sum()), self.n, lmbda, rank=self.count - 1)
        self._precision, self._precision_lmbda, self._diagonal, self._condition = None, lmbda, None, None
        return True

    def precision_diagonal(self, lmbda: float) -> torch.Tensor:
        """``(c,)`` the diagonal of :meth:`precision` (Woodbury, ``O(c T²)``, with few samples)."""
        if self._woodbury(lmbda):
            if self._diagonal is None or self._diagonal[0] != lmbda:
                diagonal = _woodbury_inverse_diagonal(*self._low_rank, float32=self._float32_possible())
                self._diagonal = (lmbda, diagonal)
            return self._diagonal[1]
        return self.precision(lmbda).diagonal()

    def coefficients(self, removed: torch.Tensor, kept: torch.Tensor, lmbda: float,
                     factored: bool = False) -> torch.Tensor | LowRankCoefficients:
        """``A: (|R|, |K|) = C_RK (C_KK + ρI)⁻¹ = −P_RR⁻¹ P_RK`` (see :meth:`ConsumerStats.coefficients`); the
        last ones are kept until the statistics change (every consumer of the tensor asks for the same)."""
        last = self._coefficients
        if (last is not None and last[2:4] == (lmbda, factored) and torch.equal(last[0], removed)
                and torch.equal(last[1], kept)):
            return last[4]
        A = self._solve_coefficients(removed, kept, lmbda, factored)
        self._coefficients = (removed, kept, lmbda, factored, A)
        return A

    def _solve_coefficients(self, removed: torch.Tensor, kept: torch.Tensor, lmbda: float,
                            factored: bool) -> torch.Tensor | LowRankCoefficients:
        if self._woodbury(lmbda):
            U, ridge = self._low_rank
            removed, kept = removed.to(U.device), kept.to(U.device)
            float32 = self._float32_possible()
            if U.shape[1] < len(kept):
                return _woodbury_coefficients(U[removed], U[kept], ridge, factored, float32=float32)
            # no more kept channels than samples: the |K| × |K| system U_K U_Kᵀ + ρI itself is the smaller one
            # (its condition number is at most U's estimate: a principal block of U Uᵀ + ρI)
            U_kept = U[kept]
            system = symmetric_gram(U_kept.T)
            system.diagonal().add_(ridge)
            return _spd_solve(system, U_kept @ U[removed].T, ridge, try_float32=float32).T
        P = self.precision(lmbda)
        removed, kept = removed.to(P.device), kept.to(P.device)
        rows = P[removed]
        # P_RR: a principal block of P, so cond(P_RR) <= cond(P): a float32 P (made only when well
        # conditioned) is solved in float32 too; a float64 one by Cholesky (P is positive definite:
        # half the cost of LU), LU only if rounding makes that fail
        if P.dtype == torch.float64:
            factor, info = symmetric_cholesky(rows[:, removed])
            if int(info) == 0:
                return -torch.cholesky_solve(rows[:, kept], factor)
        return -_spd_solve(rows[:, removed], rows[:, kept], 0.0, well_conditioned=P.dtype == torch.float32)

    def _float32_possible(self) -> bool:
        """Whether the Woodbury factor's estimated condition number (:func:`_condition_estimate`, once per
        factor; after a cut still an upper bound, as ``σ_max`` can only shrink) allows a float32 attempt."""
        if self._condition is None:
            self._condition = _condition_estimate(*self._low_rank, limit=FLOAT32_CONDITION)
        return self._condition <= FLOAT32_CONDITION


class ConsumerStats:
    """What a consumer reads, summarised: channel second moments and per-kernel-offset means.

    Attributes:
        moments: :class:`ChannelMoments` of the ``c`` input channels (every batch element and
            spatial position is a sample); shared by the consumers that read the same tensor
            (:func:`collect_consumer_stats`).
        patch_sum: ``(c, *kernel)`` float64, the sum over output positions of the (padded)
            input value each kernel offset reads (convs only; a Linear's are ``channels.sum``).
        patch_count: the number of output positions summed.
        max_positions: at most this many positions of each batch element (a conv input's spatial
            positions, a Linear input's middle dimensions, e.g. tokens) enter the second moments
            (None: all; see :func:`sampled_positions`). A conv's per-offset means still use every
            position; a Linear's means are those of the sampled rows.
    """

    def __init__(self, module: nn.Module, blocks: int = 1, max_positions: int | None = None) -> None:
        if not is_consumer(module):
            raise ValueError(f"module must be a Linear or an ungrouped conv, got {type(module).__name__}")
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
            raise ValueError(f"blocks must be a positive int, got {blocks!r}")
        _check_max_positions(max_positions)
        if blocks > 1 and (not isinstance(module, nn.Linear) or module.in_features % blocks):
            raise ValueError(f"blocks={blocks} needs a Linear whose in_features are a multiple of it "
                             f"(channels x positions), got {module}")
        self.module = module
        self.blocks = blocks
        self.max_positions = max_positions
        width = module.in_features // blocks if isinstance(module, nn.Linear) else module.in_channels
        self.moments = ChannelMoments(width)
        if isinstance(module, nn.Linear):
            self.patch_sum = None if blocks == 1 else torch.zeros((width, blocks), dtype=torch.float64)
        else:
            self.patch_sum = torch.zeros((width, *module.kernel_size), dtype=torch.float64)
        self.patch_count = 0

    @property
    def channels(self) -> ActivationStats:
        """:class:`~projprune.ActivationStats` over the ``c`` input channels (every batch element and spatial
        position is a sample), ``Σ h hᵀ`` complete."""
        return self.moments.channels

    @property
    def n(self) -> int:
        """Number of input channels ``c`` the statistics describe (for ``blocks > 1``: flattened-map channels)."""
        return self.moments.n

    @property
    def count(self) -> int:
        """Number of samples (batch elements times positions) the statistics hold."""
        return self.moments.count

    @property
    def width(self) -> int:
        """The consumer's input width these statistics cover: ``c · blocks`` for a Linear, ``c`` for a conv."""
        return self.n * self.blocks

    def update(self, x: torch.Tensor, cache: dict | None = None) -> None:
        """Add one input batch of the consumer: ``(..., c · blocks)`` for a Linear, ``(B, c, *spatial)`` for a conv.

        With ``blocks > 1`` a Linear's input is a flattened ``(c, blocks)`` map: every position of
        a channel is one sample of that channel, and ``patch_sum: (c, blocks)`` keeps per-position sums.
        ``cache``: scratch space of this input tensor, shared with its other consumers: what one consumer
        computed from it (products, sums) the next one reads from there.
        """
        x = x.detach()
        moments = self.moments
        if self.patch_sum is None:  # Linear, one statistic per input
            rows = rows_of(x, self.n)  # ValueError for anything but a floating (..., c) tensor
            limit = self.max_positions
            if limit is not None and x.dim() > 2 and rows.shape[0] > limit * x.shape[0]:
                # the same positions for every consumer of this tensor: the first one samples them
                rows = _cached(cache, ("sampled rows", self.n, limit), lambda: sampled_positions(
                    rows.reshape(x.shape[0], -1, self.n), limit, dim=1).reshape(-1, self.n))
            if moments.wants_samples(rows.shape[0]):
                moments.add_samples(*_cached(cache, ("rows", self.n, limit), lambda: _checked_rows(rows)))
                return

            def products() -> tuple[torch.Tensor, torch.Tensor, int]:
                total, gram = batch_products(rows)  # StatisticsOverflowError when they leave the range
                return gram, total, rows.shape[0]
            gram, total, count = _cached(cache, ("products", self.n, limit), products)
            if count:
                moments.add_products(gram, total, count)
                _check_no_overflow(moments.channels.sum_outer, x)  # a failed collection discards these statistics
            return
        if self.blocks > 1:
            if x.dim() < 1 or x.shape[-1] != self.width:
                raise ValueError(f"x must have shape (..., {self.width}), got {tuple(x.shape)}")
            x = x.reshape(-1, self.n, self.blocks)
        elif x.dim() < 2 or x.shape[1] != self.n:
            raise ValueError(f"x must have shape (B, {self.n}, *spatial), got {tuple(x.shape)}")
        if x.numel() == 0:  # an empty batch: no samples, nothing to add
            return
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        # One batch sum serves the channel means and the patch sums: over the batch in the input's
        # dtype (float32: as ActivationStats' chunked sums, ~1e-7 relative per position), over the
        # positions in float64. The float32 (or float64) Gram of the channels-by-samples matrix is
        # accumulated in float64 as ActivationStats does.
        plane, channel_sum = _cached(cache, ("plane", self.n, self.blocks), lambda: _plane_sums(x, self.n))
        self.patch_sum = self.patch_sum.to(x.device)
        if self.blocks > 1:  # the "kernel" is the whole map, read at one output position
            sums, positions = plane, x.shape[0]
        else:
            sums, positions = _patch_sums(self.module, plane, x.shape[0])
        key = (self.n, self.blocks)
        limit = self.max_positions if self.blocks == 1 else None  # a flattened map's positions are its channels'
        if limit is not None and x.shape[2:].numel() > limit:
            # the second moments of sampled positions (the patch sums above keep every one); the same positions
            # for every consumer of this tensor
            key = (self.n, 1, limit)
            x, channel_sum = _cached(cache, ("sampled",) + key, lambda: _sampled_with_sums(x, self.n, limit))
        samples = x.numel() // self.n
        if moments.wants_samples(samples):
            rows = _cached(cache, ("rows",) + key, lambda: _sample_rows(x, self.n))
            moments.add_samples(rows, channel_sum)
        else:
            moments.add_products(_cached(cache, ("gram",) + key, lambda: _checked_channel_gram(x)),
                                 channel_sum, samples)
        self.patch_sum += sums
        self.patch_count += positions

    def keep(self, kept: torch.Tensor, coefficients: torch.Tensor | None = None) -> None:
        """Restrict to the input channels ``kept`` (after the others were pruned): the patch sums, and the
        :class:`ChannelMoments` (:meth:`ChannelMoments.keep`: the cached precision cut by a Schur complement;
        once for all consumers of the tensor)."""
        if self.patch_sum is not None:
            self.patch_sum = self.patch_sum[kept.to(self.patch_sum.device)]
        self.moments.keep(kept, coefficients)

    def covariance(self) -> torch.Tensor:
        """``(c, c)`` float64 centred covariance of the channels (computed once per change)."""
        return self.moments.covariance()

    def variances(self) -> torch.Tensor:
        """``(c,)`` float64 the covariance's diagonal (:meth:`ChannelMoments.variances`)."""
        return self.moments.variances()

    def precision(self, lmbda: float) -> torch.Tensor:
        """``(c, c)`` ``P = (C + ρI)⁻¹`` (:meth:`ChannelMoments.precision`)."""
        return self.moments.precision(lmbda)

    def precision_diagonal(self, lmbda: float) -> torch.Tensor:
        """``(c,)`` the diagonal of :meth:`precision` (Woodbury, ``O(c T²)``, with few samples)."""
        return self.moments.precision_diagonal(lmbda)

    def coefficients(self, removed: torch.Tensor, kept: torch.Tensor, lmbda: float,
                     factored: bool = False) -> torch.Tensor | LowRankCoefficients:
        """``A: (|R|, |K|) = C_RK (C_KK + ρI)⁻¹ = −P_RR⁻¹ P_RK`` from the cached :meth:`precision`.

        The ridge ``ρ`` is the precision's (relative to all ``c`` channels' mean variance, not
        only the kept ones' as in :func:`least_squares_coefficients`); an ``|R| × |R|`` solve, or
        with few samples (:data:`LOW_RANK_FRACTION`) the ``T × T`` one of the push-through identity
        (``factored``: that one as :class:`LowRankCoefficients`).
        """
        return self.moments.coefficients(removed, kept, lmbda, factored)

    def patch_means(self) -> torch.Tensor:
        """``(c, *kernel)`` mean input per channel and kernel offset (``(c,)`` for a Linear)."""
        if self.patch_sum is None:
            return self.moments.mean
        if self.patch_count == 0:
            raise ValueError("these ConsumerStats hold no samples; expected at least one batch")
        return self.patch_sum / self.patch_count


def _cached(cache: dict | None, key: tuple, make: Callable[[], Any]) -> Any:
    """``cache[key]``, made by ``make()`` on first use (no cache: ``make()``)."""
    if cache is None:
        return make()
    if key not in cache:
        cache[key] = make()
    return cache[key]


def _checked_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, column sums)`` float64 of ``rows: (k, c)``, the sums checked finite."""
    rows = rows.to(torch.float64)
    total = rows.sum(dim=0)
    _check_finite_inputs(total)
    return rows, total


def _sample_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """``(B · positions, n)`` float64 samples of ``x: (B, n, *spatial)``, one per image and position: transposed and
    converted in one pass into a new buffer (no float32 transposed copy in between)."""
    planes = x.reshape(x.shape[0], n, -1).transpose(1, 2)  # (B, positions, n), a view
    return torch.empty(planes.shape, dtype=torch.float64, device=x.device).copy_(planes).reshape(-1, n)


def sampled_positions(x: torch.Tensor, limit: int, dim: int = 2) -> torch.Tensor:
    """``x`` with ``limit`` of the positions along ``dim`` of each batch element, drawn uniformly without
    replacement and independently per element, in increasing order (``x`` itself if it has at most ``limit``).

    ``x: (B, c, P)`` with ``dim=2`` (a conv input's channels first, positions flattened) or ``(B, P, c)`` with
    ``dim=1`` (a Linear's rows). The draw is seeded (seed 0, on the CPU): the same shape gives the same
    positions on every call and machine, so a calibration run is repeatable and every consumer of a tensor
    reads the same samples.
    """
    if limit is None:
        raise ValueError("limit must be a positive int, got None")
    _check_max_positions(limit, "limit")
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or dim not in (1, 2):
        raise ValueError(f"x must be a (B, c, P) tensor with dim=2 or (B, P, c) with dim=1, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__} and dim={dim!r}")
    batch, positions = x.shape[0], x.shape[dim]
    if positions <= limit:
        return x
    generator = torch.Generator(device="cpu").manual_seed(0)
    keys = torch.rand(batch, positions, generator=generator)
    chosen = keys.topk(limit, dim=1).indices.sort(dim=1).values.to(x.device)  # (B, limit)
    shape = [batch, 1, 1]
    shape[dim] = limit
    index = chosen.reshape(shape).expand(*[limit if d == dim else x.shape[d] for d in range(3)])
    return x.gather(dim, index)


def _check_max_positions(max_positions: int | None, name: str = "max_positions") -> None:
    """``ValueError`` naming ``name`` unless ``max_positions`` is None or a positive int."""
    if max_positions is not None and (isinstance(max_positions, bool) or not isinstance(max_positions, int)
                                      or max_positions < 1):
        raise ValueError(f"{name} must be a positive int or None, got {max_positions!r}")


def _sampled_with_sums(x: torch.Tensor, n: int, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x's sampled positions: (B, n, limit), their channel sums: (n,) float64)`` for ``x: (B, n, *spatial)``
    (:func:`sampled_positions`)."""
    sampled = sampled_positions(x.reshape(x.shape[0], n, -1), limit)
    total = sampled.sum(dim=(0, 2), dtype=torch.float64)
    _check_finite_inputs(total)
    return sampled, total


def _plane_sums(x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(plane: (c, *spatial), channel sums: (c,))`` float64 of ``x: (B, c, *spatial)`` summed over the batch
    (NaN and Inf reach the sums: checked here, which the statistics rely on)."""
    plane = x.sum(dim=0).to(torch.float64)
    channel_sum = plane.reshape(n, -1).sum(dim=1)
    _check_finite_inputs(channel_sum)
    return plane, channel_sum


def _checked_channel_gram(x: torch.Tensor) -> torch.Tensor:
    """:func:`_channel_gram` of ``x``, ``StatisticsOverflowError`` if it overflows."""
    gram = _channel_gram(x)
    _check_no_overflow(gram, x)
    return gram


def _check_finite_inputs(total: torch.Tensor) -> None:
    """``ValueError`` if the column sums ``total`` of a consumer's input batch are not finite (a NaN or Inf input)."""
    if not bool(torch.isfinite(total).all()):
        raise ValueError("the consumer's input contains NaN or Inf; expected finite activations")


def _unallocated_stats(n: int, device: torch.device | str | None = None) -> ActivationStats:
    """:class:`~projprune.ActivationStats` of ``n`` units whose ``(n, n)`` ``Σ h hᵀ`` is not allocated yet (a meta
    tensor; :meth:`ConsumerStats._sum_outer` allocates it): ``Σ h`` and the count are real."""
    stats = ActivationStats(n, device="meta")
    stats.sum = torch.zeros(n, dtype=torch.float64, device=device)
    return stats


def _check_no_overflow(gram: torch.Tensor, x: torch.Tensor) -> None:
    """``StatisticsOverflowError`` if the Gram ``(c, c)`` of ``x`` holds Inf or NaN (``x`` is finite).

    Its diagonal suffices: ``|Σ x_i x_j| ≤ max(Σ x_i², Σ x_j²)`` (Cauchy–Schwarz).
    """
    if not bool(torch.isfinite(gram.diagonal()).all()):
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        raise StatisticsOverflowError(
            f"overflow: the second moments of the input overflow {dtype} (activations up to "
            f"{float(x.detach().abs().max()):.3g}, squares above {torch.finfo(dtype).max:.3g}); expected activations "
            "whose squares sum to a finite value: rescale the inputs or run the model in float64")


def _channel_gram(x: torch.Tensor) -> torch.Tensor:
    """``Σ_{b, p} x[b, :, p] x[b, :, p]ᵀ: (c, c)`` in ``x``'s dtype for ``x: (B, c, *spatial)``.

    Large feature maps: one symmetric product per image (no transposed copy of ``x``); small ones:
    one symmetric product of the ``(c, B·positions)`` matrix (fewer, larger multiplications). The
    symmetric products (:func:`projprune._symmetric.gram`, blocks from 128 channels) take 13–38 %
    less time than the full ones from 256 channels on (measured on ResNet-50's and DenseNet's sizes).
    """
    batch, c = x.shape[:2]
    flat = x.reshape(batch, c, -1)
    if flat.shape[2] >= 256:
        total = symmetric_gram(flat[0].T, block_width=_GRAM_BLOCK_WIDTH)
        for image in flat[1:]:
            total += symmetric_gram(image.T, block_width=_GRAM_BLOCK_WIDTH)
        return total
    rows = flat.transpose(0, 1).reshape(c, -1)
    return symmetric_gram(rows.T, block_width=_GRAM_BLOCK_WIDTH)


# _channel_gram: the narrowest block of its symmetric products (calibration samples are many rows: narrow blocks pay)
_GRAM_BLOCK_WIDTH = 128


def _schur_cut(P: torch.Tensor, kept: torch.Tensor, coefficients: torch.Tensor | None = None) -> torch.Tensor:
    """``(|K|, |K|)``: the inverse of ``P⁻¹``'s ``K × K`` block, ``P_KK − P_KR P_RR⁻¹ P_RK``, from ``P: (c, c)``
    (``coefficients``: ``−P_RR⁻¹ P_RK: (|R|, |K|)`` if known, ``R`` the other channels in increasing order)."""
    keep = torch.zeros(P.shape[0], dtype=torch.bool, device=P.device)
    keep[kept] = True
    removed = torch.nonzero(~keep).flatten()
    if len(removed) == 0:
        return P[kept][:, kept]
    P_kr = P[kept][:, removed]
    if coefficients is None:
        coefficients = -torch.linalg.solve(P[removed][:, removed], P_kr.T)
    out = P[kept][:, kept] + P_kr @ coefficients.to(P)
    return (out + out.T) * 0.5


def _patch_sums(conv: nn.modules.conv._ConvNd, plane: torch.Tensor, batch: int) -> tuple[torch.Tensor, int]:
    """Sum over output positions of the input each kernel offset reads: ``(c, *kernel)``, and their count.

    ``plane: (c, *spatial)`` is the input summed over its ``batch`` samples (padding is linear, so
    summing first is exact). The positions an offset reads are a strided box, so the sums separate
    by dimension: each spatial dimension in turn is replaced by its ``k`` strided sums (``O(c · k ·
    positions)`` for the first, less after; no patch matrix). Zero padding adds nothing: the strides
    are clipped to the unpadded input; other padding modes are applied first.
    """
    pads = conv._reversed_padding_repeated_twice  # F.pad order: last dimension first, (before, after) each
    if conv.padding_mode != "zeros" and any(pads):
        plane = F.pad(plane[None], pads, mode=_PAD_MODES[conv.padding_mode])[0]
        pads = [0] * len(pads)
    spatial = plane.dim() - 1
    before = [pads[2 * (spatial - 1 - axis)] for axis in range(spatial)]
    after = [pads[2 * (spatial - 1 - axis) + 1] for axis in range(spatial)]
    positions = batch
    sums = plane
    for axis in range(spatial):
        size, k, s, d = plane.shape[1 + axis], conv.kernel_size[axis], conv.stride[axis], conv.dilation[axis]
        n_out = (size + before[axis] + after[axis] - d * (k - 1) - 1) // s + 1
        positions *= n_out
        parts = []
        for offset in range(k):
            start = offset * d - before[axis]  # the unpadded index the first output position reads
            first = -(start // s) if start < 0 else 0  # outputs reading padding before the input
            last = min(n_out - 1, (size - 1 - start) // s)  # ... and after it
            if last < first:
                parts.append(sums.new_zeros(sums.shape[:1] + sums.shape[2:]))
                continue
            window = sums.narrow(1, start + first * s, (last - first) * s + 1)[:, ::s] if s > 1 else \
                sums.narrow(1, start + first * s, last - first + 1)
            parts.append(window.sum(dim=1))
        sums = torch.stack(parts, dim=-1)  # this axis's k offsets go last: the next spatial axis is at 1 again
    return sums, positions


def collect_consumer_stats(model: nn.Module, consumers: Sequence[nn.Module], batches: Iterable,
                           max_batches: int | None = None, names: dict[nn.Module, str] | None = None, *,
                           blocks: dict[nn.Module, int] | None = None,
                           forward: Callable[[nn.Module, Any], Any] | None = None,
                           calls: Mapping[nn.Module, int] | None = None,
                           max_positions: int | None = None) -> dict[nn.Module, ConsumerStats]:
    """Run ``batches`` through ``model`` (eval mode, no gradients) and summarise every consumer's input.

    Args:
        model: any module.
        consumers: Linear / ungrouped conv modules of ``model``.
        batches: iterable of model inputs: by default a tensor is passed as ``model(batch)``, a
            mapping as ``model(**batch)``, a tuple/list as ``model(batch[0])`` (inputs, targets).
        max_batches: stop after this many batches (None: all).
        names: consumer names for error messages (default: the names in ``model``).
        blocks: per consumer (Linear reading a flattened map), positions per channel: its
            statistics are kept per channel (:class:`ConsumerStats` ``blocks``); default 1.
        forward: ``forward(model, batch)`` runs one batch (e.g. :func:`structured_forward`).
        calls: how often each consumer runs in one forward (:func:`count_consumer_calls` on the example
            inputs): a forward ends as soon as every one of them has run that often, so what follows the
            last consumer (a detector's box decoding and post-processing) is not run. None: to the end.
        max_positions: second moments from at most this many positions of each batch element
            (:class:`ConsumerStats` ``max_positions``; None: every position).

    Returns:
        ``{consumer: ConsumerStats}``; consumers that read the same tensor object in every batch share
        one :class:`ChannelMoments` (its products taken once). Raises ``ValueError`` for no batches, a
        failing forward, a non-consumer or statistics that overflow (naming the consumer).
    """
    blocks = blocks or {}
    _check_max_positions(max_positions)
    stats = {module: ConsumerStats(module, blocks.get(module, 1), max_positions) for module in consumers}
    if names is None:
        names = {module: name for name, module in model.named_modules()}
    inputs = _InputTensors()
    history: dict[nn.Module, list[int]] = {module: [] for module in stats}  # the input tensors each consumer read

    def update(module: nn.Module, args: tuple) -> None:
        serial, cache = inputs.entry(args[0])
        history[module].append(serial)
        try:
            stats[module].update(args[0], cache)
        except StatisticsOverflowError as err:
            raise StatisticsOverflowError(f"consumer {names.get(module, type(module).__name__)!r} "
                                          f"({type(module).__name__}): {err}") from None

    runner, runs = (model, batches) if forward is None else (_Forward(model, forward), ({"batch": b} for b in batches))
    stopper = _StopAfterConsumers(calls) if calls else None
    # registered after any hook of the caller's (e.g. output positions): those still see the last consumer run
    handles = [] if stopper is None else [m.register_forward_hook(stopper.ran) for m in stopper.expected]
    try:
        run_hooked(runner, {module: update for module in stats}, runs, max_batches=max_batches,
                   before_batch=None if stopper is None else stopper.start)
    except ValueError as err:
        if isinstance(err.__cause__, StatisticsOverflowError):  # not "the forward failed": say what overflowed
            raise err.__cause__ from None
        raise
    finally:
        inputs.clear()
        for handle in handles:
            handle.remove()
    _share_moments(stats, history)
    return stats


def count_consumer_calls(model: nn.Module) -> tuple[dict[nn.Module, int], list]:
    """Hooks that count how often each consumer of ``model`` runs in its latest forward: ``(counts, handles)``.

    The counts start again at every call of ``model`` itself (a failed attempt, such as Torch-Pruning's
    ``model(*example_inputs)`` before ``model(example_inputs)``, is forgotten); the caller removes the hooks.
    """
    counts: dict[nn.Module, int] = {}

    def restart(module: nn.Module, args: tuple) -> None:
        counts.clear()

    def count(module: nn.Module, args: tuple, output: Any) -> None:
        counts[module] = counts.get(module, 0) + 1

    handles = [model.register_forward_pre_hook(restart)]
    handles += [m.register_forward_hook(count) for m in model.modules() if is_consumer(m)]
    return counts, handles


class _StopAfterConsumers:
    """Ends a forward (:class:`_StopForward`, caught by ``run_hooked``) once every consumer has run as often
    as ``expected`` says (its forward hook :meth:`ran`; :meth:`start` before every batch)."""

    def __init__(self, expected: Mapping[nn.Module, int]) -> None:
        self.expected = dict(expected)
        self.start()

    def start(self, batch: Any = None) -> None:
        self.counts = dict.fromkeys(self.expected, 0)
        self.remaining = len(self.expected)

    def ran(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.counts[module] += 1
        if self.counts[module] == self.expected[module]:
            self.remaining -= 1
            if self.remaining == 0:
                raise _StopForward


class _InputTensors:
    """The consumer inputs of a running forward, by identity: each distinct tensor (same object, same in-place
    version) gets a serial number and a scratch dict that its consumers share; an entry goes with its tensor
    (a weak reference: nothing is kept alive, and a freed tensor's address reused by another is a new entry)."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref, int, int, dict]] = {}
        self._serials = itertools.count()

    def entry(self, x: Any) -> tuple[int, dict | None]:
        """``(serial, scratch dict)`` of ``x`` (not a tensor: a fresh serial and no dict)."""
        if not isinstance(x, torch.Tensor):
            return next(self._serials), None
        key = id(x)
        found = self._entries.get(key)
        if found is not None and found[0]() is x and found[1] == x._version:
            return found[2], found[3]
        entries = self._entries

        def forget(ref: weakref.ref, key: int = key) -> None:
            if key in entries and entries[key][0] is ref:
                del entries[key]
        found = (weakref.ref(x, forget), x._version, next(self._serials), {})
        entries[key] = found
        return found[2], found[3]

    def clear(self) -> None:
        self._entries.clear()


def _share_moments(stats: dict[nn.Module, ConsumerStats], history: dict[nn.Module, list[int]]) -> None:
    """One :class:`ChannelMoments` for the consumers that read the very same tensors, in the same order, in every
    batch, the same way (kind, width, blocks): their statistics are equal (built from the same cached products),
    so the others' are dropped and every derived quantity is computed once."""
    first: dict[tuple, ConsumerStats] = {}
    for module, consumer in stats.items():
        if not history[module]:
            continue
        key = (tuple(history[module]), consumer.patch_sum is None, consumer.n, consumer.blocks)
        owner = first.setdefault(key, consumer)
        if owner is not consumer:
            consumer.moments = owner.moments


class _Forward(nn.Module):
    """``model`` behind ``forward(model, batch)``, called as ``_Forward(batch=...)`` (how run_hooked
    passes a mapping): lets batches of any structure through the shared hooked loop."""

    def __init__(self, model: nn.Module, forward: Callable[[nn.Module, Any], Any]) -> None:
        super().__init__()
        self.model = model
        self.training = model.training  # run_hooked restores this flag on the whole model
        self._forward = forward

    def forward(self, batch: Any) -> Any:
        return self._forward(self.model, batch)


def to_device(inputs: Any, device: torch.device) -> Any:
    """``inputs`` (a tensor, or tuples / lists / dicts of them, nested) with every tensor on ``device``."""
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, Mapping):
        return {key: to_device(value, device) for key, value in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(to_device(value, device) for value in inputs)
    return inputs


def structured_forward(model: nn.Module, inputs: Any, spread: bool = True) -> Any:
    """``model`` on ``inputs`` as Torch-Pruning calls its ``example_inputs``.

    A mapping: ``model(**inputs)``; a tuple or list: ``model(*inputs)`` if ``spread`` (positional
    arguments), else ``model(inputs)`` (e.g. a detection model's list of images); anything else:
    ``model(inputs)``. Tensors are moved to the model's device first.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs = to_device(inputs, device)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)) and spread:
        return model(*inputs)
    return model(inputs)


def spreads_inputs(model: nn.Module, example_inputs: Any) -> bool:
    """Whether a tuple/list ``example_inputs`` are ``model``'s positional arguments (Torch-Pruning's
    rule: ``model(*inputs)`` if that runs, else ``model(inputs)``); one forward, eval mode, no gradients."""
    if not isinstance(example_inputs, (tuple, list)):
        return False
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            structured_forward(model, example_inputs, spread=True)
        return True
    except Exception:  # noqa: BLE001 - Torch-Pruning's own rule: any failure means "one argument"
        return False
    finally:
        model.train(was_training)


def output_positions(model: nn.Module, example_inputs, forward: Callable[[nn.Module, Any], Any] | None = None
                     ) -> dict[nn.Module, int]:
    """Output positions per sample of every conv and linear of ``model`` on ``example_inputs``.

    A conv's are its output's spatial size (``H_out · W_out`` in 2-D), a Linear's the positions
    it is applied at (1 for ``(B, features)``, the tokens for ``(B, T, features)``). Spatial sizes
    do not change when channels are pruned, so one forward suffices (``forward(model, inputs)``;
    default :func:`structured_forward` with positional tuples).
    """
    positions, handles = _position_hooks(model)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            (forward or structured_forward)(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return positions


def _position_hooks(model: nn.Module) -> tuple[dict[nn.Module, int], list]:
    """Forward hooks on every conv and linear of ``model`` that record their :func:`output_positions` in
    the returned dict as batches run; and their handles (the caller removes them)."""
    positions: dict[nn.Module, int] = {}

    def record(module: nn.Module, inputs, output) -> None:
        if not isinstance(output, torch.Tensor) or output.dim() < 1:
            return
        width = output.shape[1] if isinstance(module, nn.modules.conv._ConvNd) else output.shape[-1]
        batch = output.shape[0] if output.dim() > 1 else 1
        positions[module] = max(1, output.numel() // max(1, width * batch))

    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    return positions, [m.register_forward_hook(record) for m in layers]


def channel_macs(group, positions: dict[nn.Module, int]) -> torch.Tensor:
    """``(n,)`` float64: multiply-accumulates per sample that removing each of ``group``'s channels saves.

    Every producer (conv or linear whose output channel it is, depthwise convs included) costs
    ``weight[0].numel()`` MACs per output position, every consumer (a Linear or ungrouped conv
    reading it) ``weight[:, i].numel()``; ``positions`` comes from :func:`output_positions`.
    Normalisation layers are not counted.
    """
    cost = torch.zeros(len(group[0].idxs), dtype=torch.float64)
    for item in group:
        layer = item.dep.target.module
        if layer not in positions or len(item.idxs) == 0 or None in item.root_idxs:
            continue
        if item.dep.handler in _OUT_FNS or item.dep.handler is _DEPTHWISE_OUT:
            per_channel = layer.weight[0].numel()
        elif item.dep.handler in _IN_FNS and is_consumer(layer):
            per_channel = layer.weight[:, 0].numel()
        else:
            continue
        value = float(per_channel * positions[layer])
        if len(item.root_idxs) == len(cost) and _is_identity(item.root_idxs):
            cost += value
            continue
        roots = torch.as_tensor(item.root_idxs, dtype=torch.int64)
        cost.scatter_add_(0, roots, torch.full((len(roots),), value, dtype=torch.float64))
    return cost


def _is_identity(idxs: Sequence) -> bool:
    """Whether ``idxs`` is ``0, 1, ..., len - 1`` (Torch-Pruning's index lists; checked at C speed)."""
    n = len(idxs)
    if isinstance(idxs, torch.Tensor):
        return n == 0 or bool((idxs == torch.arange(n, device=idxs.device)).all())
    return n == 0 or (idxs[0] == 0 and idxs[-1] == n - 1 and list(idxs) == list(range(n)))


# --------------------------------------------------------------------------- the algebra
def _ridge(G: torch.Tensor, lmbda: float, rank: int | None = None) -> float:
    """Absolute ridge ``λ = lmbda · trace(G) / min(n, rank)`` (scale-free: relative to the mean nonzero
    eigenvalue when ``G`` is known to have rank ``rank < n``, e.g. a covariance of fewer samples than
    inputs), positive even for an all-zero ``G``."""
    return _ridge_of_trace(float(G.diagonal().sum(dtype=torch.float64)), G.shape[0], lmbda, rank)


def _ridge_of_trace(trace: float, n: int, lmbda: float, rank: int | None = None) -> float:
    """:func:`_ridge` of an ``(n, n)`` matrix with trace ``trace`` (known without forming it)."""
    energy = trace / max(min(n, rank or n), 1)
    return lmbda * energy if energy > 0 else max(lmbda, 1e-12)


def _woodbury_cholesky(U: torch.Tensor, ridge: float, float32: bool = True) -> torch.Tensor:
    """Lower Cholesky factor ``L: (m, m)`` of ``ρI + UᵀU`` for ``U: (n, m)``, ``ridge > 0``.

    With ``n >= FLOAT32_PRECISION_WIDTH`` rows and ``float32`` (the caller's condition estimate allows it: a
    centred calibration factor's, :func:`_condition_estimate`, at most ``FLOAT32_CONDITION``) it is made in
    float32 (products and factorisation, about twice as fast) and kept if :func:`_woodbury_accurate`: solves
    with it leave a float64 residual
    ``‖(ρI + UᵀU) x − v‖`` of at most ``FLOAT32_RESIDUAL ‖v‖`` (checked on the float64 ``U``, so the
    float32 products' rounding is covered too); otherwise, or if it fails, float64.
    """
    if U.shape[0] >= FLOAT32_PRECISION_WIDTH and float32:
        factor, info = symmetric_cholesky(_ridged_small_gram(U.to(torch.float32), ridge))
        if int(info) == 0 and _woodbury_accurate(U, ridge, factor):
            return factor
    return _cholesky_or_raise(_ridged_small_gram(U.to(torch.float64), ridge))


def _cholesky_or_raise(M: torch.Tensor) -> torch.Tensor:
    """The lower Cholesky factor of ``M`` (:func:`projprune._symmetric.cholesky`), ``torch.linalg.LinAlgError`` if
    it is not positive definite (as ``torch.linalg.cholesky``)."""
    factor, info = symmetric_cholesky(M)
    if info:
        raise torch.linalg.LinAlgError(f"the leading minor of order {info} is not positive-definite")
    return factor


def _condition_estimate(U: torch.Tensor, ridge: float, iterations: int = 8, limit: float = float("inf")) -> float:
    """``1 + σ²/ρ``: the condition number of ``ρI + UᵀU`` (``U: (n, m)``) when its smallest eigenvalue is ``ρ``
    (a centred covariance factor's: ``U 1 = 0``; otherwise an upper bound), with ``σ²`` the largest eigenvalue
    of ``UᵀU`` estimated by ``iterations`` power steps from a fixed random start (``O(n m)`` each), fewer once
    the estimate exceeds ``limit`` (it only grows). Measured on Torch-Pruning's models: float32 solves pass
    :func:`_woodbury_accurate` up to ~1e4 and fail from ~5e4."""
    U64 = U.to(torch.float64)
    return 1.0 + _largest_eigenvalue(lambda v: U64.T @ (U64 @ v), U.shape[1], U.device, iterations,
                                     above=(limit - 1.0) * ridge) / ridge


def _largest_eigenvalue(product: Callable[[torch.Tensor], torch.Tensor], n: int, device: torch.device,
                        iterations: int = 8, above: float = float("inf")) -> float:
    """The largest eigenvalue of a positive semi-definite ``(n, n)`` operator given by ``product(v)``, by
    ``iterations`` power steps from a fixed random start (a lower bound, close after a few steps when one
    direction dominates, as in activation covariances). The steps end early once the estimate exceeds
    ``above`` (the Rayleigh quotients of power steps never decrease: the caller knows enough)."""
    v = _probe_vectors(n, 1, device)[:, 0]
    v = v / v.norm()
    largest = 0.0
    for _ in range(iterations):
        w = product(v)
        largest = float(v @ w)  # Rayleigh quotient of the unit v
        norm = float(w.norm())
        if not norm > 0 or not torch.isfinite(w).all() or largest > above:
            break
        v = w / norm
    return largest


def _probe_vectors(n: int, probes: int, device: torch.device) -> torch.Tensor:
    """``(n, probes)`` float64 fixed random vectors (seed 0: every check of the same size reads the same ones)."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    return torch.randn(n, probes, generator=generator, dtype=torch.float64).to(device)


def _small_residual(residual: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether ``residual`` is finite with ``‖residual‖ <= FLOAT32_RESIDUAL ‖target‖``: the float32 checks' test."""
    return bool(torch.isfinite(residual).all()) and float(residual.norm()) <= FLOAT32_RESIDUAL * float(target.norm())


def _woodbury_accurate(U: torch.Tensor, ridge: float, factor: torch.Tensor, probes: int = 4) -> bool:
    """Whether ``‖ρx + Uᵀ(U x) − v‖ <= FLOAT32_RESIDUAL ‖v‖`` in float64 for ``x`` solved with ``factor``
    (``L Lᵀ ≈ ρI + UᵀU``) from ``probes`` fixed random ``v`` (``O(n m probes)``, ``ρI + UᵀU`` never formed)."""
    v = _probe_vectors(U.shape[1], probes, U.device)
    x = torch.cholesky_solve(v.to(factor.dtype), factor).to(torch.float64)
    U64 = U.to(torch.float64)
    return _small_residual(ridge * x + U64.T @ (U64 @ x) - v, v)


def _woodbury_inverse_diagonal(U: torch.Tensor, ridge: float, float32: bool = True) -> torch.Tensor:
    """``(n,)`` float64 diagonal of ``(U Uᵀ + ridge I)⁻¹`` for ``U: (n, m)``, ``m < n``, ``ridge > 0``, in ``O(n m²)``:
    Woodbury, ``(U Uᵀ + ρI)⁻¹ = (I − U (ρI + UᵀU)⁻¹ Uᵀ) / ρ``, the diagonal as ``(1 − ‖L⁻¹ u_i‖²) / ρ``
    with ``L Lᵀ = ρI + UᵀU`` (:func:`_woodbury_cholesky`: float32 when wide and accurate so)."""
    factor = _woodbury_cholesky(U, ridge, float32)
    Z = torch.linalg.solve_triangular(factor, U.T.to(factor.dtype), upper=False)  # (m, n)
    # squared column norms as one reduction in Z's dtype (no (m, n) temporary of squares; a float64 reduction of a
    # float32 Z takes a slow path), squared in float64
    return (1.0 - torch.linalg.vector_norm(Z, dim=0).to(torch.float64).square_()) / ridge


def _woodbury_coefficients(U_removed: torch.Tensor, U_kept: torch.Tensor, ridge: float,
                           factored: bool = False, float32: bool = True) -> torch.Tensor | LowRankCoefficients:
    """``A: (|R|, |K|) = U_R U_Kᵀ (U_K U_Kᵀ + ρI)⁻¹ = U_R (ρI + U_KᵀU_K)⁻¹ U_Kᵀ`` (push-through identity):
    ``m × m`` solve for ``U: (·, m)``, ``ridge > 0`` (:func:`_woodbury_cholesky`: float32 when wide and
    accurate so); float64. ``factored``: as :class:`LowRankCoefficients` ``(U_R (ρI + U_KᵀU_K)⁻¹, U_Kᵀ)``,
    the last product not taken."""
    U_kept = U_kept.to(torch.float64)
    factor = _woodbury_cholesky(U_kept, ridge, float32)
    solved = torch.cholesky_solve(U_removed.T.to(factor.dtype), factor)  # (m, |R|)
    if factored:
        return LowRankCoefficients(solved.T.to(torch.float64), U_kept.T)
    if len(U_kept) < FLOAT32_PRECISION_WIDTH:
        return solved.T.to(torch.float64) @ U_kept.T
    # wide: the last product (no solve left in it, ~1e-7 relative to ‖A‖; A is folded into the weights in float32
    # anyway) in float32, twice as fast
    return (solved.T.to(torch.float32) @ U_kept.T.to(torch.float32)).to(torch.float64)


class LowRankCoefficients:
    """Coefficients ``A = left @ right: (|R|, |K|)`` of rank at most ``m``, kept as their factors ``left: (|R|, m)``
    and ``right: (m, |K|)`` float64 (the push-through form of a factored Gram or of few calibration samples:
    ``m`` is the factor's width). A fold applies them as two thin products, ``(V_R · left) · right``, when that
    is cheaper than forming ``A`` (:func:`fold_removed_inputs`); :meth:`dense` forms it."""

    __slots__ = ("left", "right")

    def __init__(self, left: torch.Tensor, right: torch.Tensor) -> None:
        if left.dim() != 2 or right.dim() != 2 or left.shape[1] != right.shape[0]:
            raise ValueError(f"left (|R|, m) and right (m, |K|) must share m, got {tuple(left.shape)} and "
                             f"{tuple(right.shape)}")
        self.left, self.right = left, right

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.left.shape[0], self.right.shape[1]))

    def dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``A: (|R|, |K|)`` (the product in ``dtype``, default the factors')."""
        dtype = dtype or self.left.dtype
        return self.left.to(dtype) @ self.right.to(dtype)

    def to(self, *args, **kwargs) -> LowRankCoefficients:
        return LowRankCoefficients(self.left.to(*args, **kwargs), self.right.to(*args, **kwargs))

    def __matmul__(self, X: torch.Tensor) -> torch.Tensor:
        """``A @ X`` for ``X: (|K|, k)`` without forming ``A``."""
        return self.left @ (self.right @ X.to(self.right))


def _all_finite(A: torch.Tensor | LowRankCoefficients) -> bool:
    """Whether every entry of ``A`` (or of both factors) is finite: NaN and Inf reach the float64 sum
    (a finite sum's overflow would need entries near 1e308), at the cost of one read."""
    parts = (A.left, A.right) if isinstance(A, LowRankCoefficients) else (A,)
    return all(bool(torch.isfinite(part.sum(dtype=torch.float64))) for part in parts)


def _ridged_small_gram(U: torch.Tensor, ridge: float) -> torch.Tensor:
    """``ρI + UᵀU: (m, m)`` for ``U: (n, m)`` (the symmetric product on its upper blocks: ~half the flops)."""
    S = symmetric_gram(U)
    S.diagonal().add_(ridge)
    return S


# _ridge_inverse: from this width on (with a ridge) the inverse is tried as a float32 Cholesky one (about
# 5x faster than float64 LU), kept if its residual on probe vectors is at most FLOAT32_RESIDUAL (a
# condition number below ~1e3: ~1e-4 relative error; tests bound it), else made in float64
FLOAT32_PRECISION_WIDTH = 512
FLOAT32_RESIDUAL = 1e-4
# _woodbury_cholesky: a float32 factor is attempted only up to this estimated condition number (above it the
# residual check fails: ReLU activations of few images reach 1e5)
FLOAT32_CONDITION = 2e4
# _ridged_cholesky: a dense float32 factor is attempted only up to this estimated condition number. Measured on
# Torch-Pruning's torchvision models (calibrated covariances, their smallest eigenvalue ~0 next to the ridge, so the
# estimate is the condition number): passes up to 1.6e5 (512-wide), every attempt from 1.9e5 on failed (512 to
# 2,048 wide: ResNet, VGG, DeepLabV3 ReLU inputs up to 1.1e6)
FLOAT32_DENSE_CONDITION = 2.5e5


def _accurate_in_float32(system: torch.Tensor, ridge: float, factor: torch.Tensor, probes: int = 4,
                         rows: int = 512) -> bool:
    """Whether ``‖(system + ridge I) · x − v‖ <= FLOAT32_RESIDUAL ‖v‖`` in float64 for ``probes`` fixed random
    vectors ``v`` (``O(n²)`` each), ``x`` solved with the float32 Cholesky ``factor``: its solves are as good as
    float64 ones need to be. The product is taken ``rows`` rows at a time (no float64 copy of ``system``)."""
    vectors = _probe_vectors(system.shape[0], probes, system.device)
    solved = torch.cholesky_solve(vectors.to(factor.dtype), factor).to(torch.float64)
    residual = torch.cat([system[a:a + rows].to(torch.float64) @ solved for a in range(0, len(vectors), rows)])
    residual += ridge * solved - vectors
    return _small_residual(residual, vectors)


def _inverse_diagonal_of_factor(factor: torch.Tensor, block: int = 512) -> torch.Tensor:
    """``(n,)`` diagonal of ``(L Lᵀ)⁻¹`` from the lower Cholesky factor ``L: (n, n)``, in ``L``'s dtype: the
    squared column norms of ``L⁻¹``, ``block`` columns at a time, each solved on the trailing triangle only
    (``L⁻¹`` is lower triangular): ``n³ / 3`` flops of triangular solves, about 0.7× the time of
    ``cholesky_inverse``, and no ``(n, n)`` inverse is kept."""
    n = factor.shape[0]
    diagonal = torch.empty(n, dtype=factor.dtype, device=factor.device)
    for a in range(0, n, block):
        b = min(a + block, n)
        unit = torch.zeros(n - a, b - a, dtype=factor.dtype, device=factor.device)
        unit.diagonal().fill_(1.0)
        columns = torch.linalg.solve_triangular(factor[a:, a:], unit, upper=False)  # rows a.. of L⁻¹[:, a:b]
        diagonal[a:b] = torch.linalg.vector_norm(columns, dim=0).square_()  # one reduction, no temporary of squares
    return diagonal


def _ridge_inverse_diagonal_dense(G: torch.Tensor, lmbda: float) -> torch.Tensor:
    """``(n,)`` float64 diagonal of ``(G + ρI)⁻¹`` (:func:`_ridge` ``ρ``) for a dense symmetric ``G: (n, n)``:
    from :func:`_ridged_cholesky`'s factor (:func:`_inverse_diagonal_of_factor`), else :func:`_ridge_inverse`'s."""
    factor, _ = _ridged_cholesky(G, lmbda)
    if factor is not None:
        diagonal = _inverse_diagonal_of_factor(factor).to(torch.float64)
        if _all_finite(diagonal):
            return diagonal
    return _ridge_inverse(G, lmbda).diagonal()


def _solved_accurately(system: torch.Tensor, rhs: torch.Tensor, solution: torch.Tensor, probes: int = 4) -> bool:
    """Whether ``‖system · X v − rhs v‖ <= FLOAT32_RESIDUAL ‖rhs v‖`` in float64 for ``probes`` fixed random
    combinations ``v`` of the columns (``O(n² probes)``): a float32 solve ``X`` of ``system X = rhs`` is as good as
    :func:`_accurate_in_float32` asks of a float32 factor."""
    v = _probe_vectors(rhs.shape[1], probes, system.device)
    target = rhs.to(torch.float64) @ v
    return _small_residual(system.to(torch.float64) @ (solution.to(torch.float64) @ v) - target, target)


def _spd_inverse_or_solve(system: torch.Tensor, rhs: torch.Tensor | None, ridge: float,
                          well_conditioned: bool = False, try_float32: bool = True) -> torch.Tensor:
    """``system⁻¹`` (``rhs`` None) or ``system⁻¹ rhs`` (float64) for a symmetric positive definite
    ``system: (n, n)`` with smallest eigenvalue at least ``ridge``.

    Wide and ridged (or ``well_conditioned``: a block of a float32 precision, solved in float32): a
    Cholesky. A wide ridged solve is tried in float32 first and kept if :func:`_solved_accurately`
    (measured 1.5x faster on 2,048 channels; the residual is checked against the float64 system).
    Otherwise, or if that fails, LU: nearly dead inputs at ``lmbda = 0`` leave ``G + ρI`` positive
    definite only up to rounding, which a Cholesky refuses. (A float32 inverse is tried by :func:`_ridge_inverse`, which
    can check it against the float64 system.)
    """
    wide = system.shape[0] >= FLOAT32_PRECISION_WIDTH
    if ridge > 0 and wide and rhs is not None and not well_conditioned and try_float32:
        factor, info = symmetric_cholesky(system.to(torch.float32))
        if int(info) == 0:
            out = torch.cholesky_solve(rhs.to(torch.float32), factor)
            if _solved_accurately(system, rhs, out):
                return out.to(torch.float64)
    if (ridge > 0 or well_conditioned) and wide:
        dtype = torch.float32 if well_conditioned and rhs is not None else torch.float64
        factor, info = symmetric_cholesky(system.to(dtype))
        if int(info) == 0:
            out = torch.cholesky_inverse(factor) if rhs is None else torch.cholesky_solve(rhs.to(dtype), factor)
            if bool(torch.isfinite(out).all()):
                return out if rhs is None else out.to(torch.float64)
    system = system.to(torch.float64)
    if rhs is None:
        return torch.linalg.inv(system)
    return torch.linalg.solve(system, rhs.to(torch.float64))


def _ridged_cholesky(G: torch.Tensor, lmbda: float, rank: int | None = None) -> tuple[torch.Tensor | None, float]:
    """``(L, ρ)``: the lower Cholesky factor of ``G + ρI`` with the scale-free ridge ``ρ`` of :func:`_ridge`.

    Wide (``n >= FLOAT32_PRECISION_WIDTH``), ridged and of full ``rank`` (None: unknown), it is tried in float32
    and kept if :func:`_accurate_in_float32` accepts its solves (tests/test_compensation_scale.py bounds it).
    A rank below ``n`` (fewer samples than inputs) makes the condition number ~``1 + n / lmbda``: float64
    straight away, as when narrow. ``L`` is None when unridged, or not positive definite in float64 (then LU).
    """
    n = G.shape[0]
    ridge = _ridge(G, lmbda, rank)
    if lmbda <= 0:
        return None, ridge
    # float32 only where it can pass: wide, full rank, and an estimated condition number (1 + λ_max / ρ, an upper
    # bound as G's smallest eigenvalue is at least 0) that float32 factors have passed the check at
    float32 = n >= FLOAT32_PRECISION_WIDTH and (rank is None or rank >= n) and 1.0 + _largest_eigenvalue(
        lambda v: (G @ v.to(G.dtype)).to(torch.float64), n, G.device,
        above=(FLOAT32_DENSE_CONDITION - 1.0) * ridge) / ridge <= FLOAT32_DENSE_CONDITION
    for dtype in (torch.float32, torch.float64) if float32 else (torch.float64,):
        system = G.to(dtype, copy=True)
        system.diagonal().add_(ridge)
        factor, info = symmetric_cholesky(system, inplace=True)
        if int(info) == 0 and (dtype == torch.float64 or _accurate_in_float32(G, ridge, factor)):
            return factor, ridge
    return None, ridge


def _ridge_inverse(G: torch.Tensor, lmbda: float, rank: int | None = None) -> torch.Tensor:
    """``(G + ρI)⁻¹: (n, n)``, exactly symmetric, with the scale-free ridge ``ρ`` of :func:`_ridge`: from
    :func:`_ridged_cholesky`'s factor (float32 when accepted, about 5x faster than float64 LU), else a float64 LU
    inverse (:func:`_spd_inverse_or_solve`), symmetrised."""
    factor, ridge = _ridged_cholesky(G, lmbda, rank)
    if factor is not None:
        inverse = torch.cholesky_inverse(factor)  # LAPACK's: mirrored, so exactly symmetric, and column-major
        if _all_finite(inverse):
            return inverse.mT  # the same matrix, row-major (rows are gathered from it)
    system = G.to(torch.float64, copy=True)
    system.diagonal().add_(ridge)
    return symmetrised(_spd_inverse_or_solve(system, None, ridge if lmbda > 0 else 0.0), inplace=True)


def _spd_solve(system: torch.Tensor, rhs: torch.Tensor, ridge: float, well_conditioned: bool = False,
               try_float32: bool = True) -> torch.Tensor:
    """``system⁻¹ rhs: (n, k)`` in float64 for a positive definite ``system: (n, n)`` whose smallest
    eigenvalue is at least ``ridge`` (0: unknown, float64 LU unless ``well_conditioned``; ``try_float32``
    False: no float32 attempt, the caller knows it would fail)."""
    return _spd_inverse_or_solve(system, rhs, ridge, well_conditioned, try_float32)


def least_squares_coefficients(gram: torch.Tensor | None, removed: torch.Tensor, kept: torch.Tensor,
                               lmbda: float = 1e-3, *, factor: torch.Tensor | None = None,
                               factored: bool = False) -> torch.Tensor | LowRankCoefficients:
    """``A: (|R|, |K|)`` with ``h_R ≈ A h_K``: ``A = G[R, K] (G[K, K] + λ I)^{-1}`` in float64.

    Args:
        gram: ``(n, n)`` symmetric positive semi-definite (covariance or row Gram matrix), or None
            with ``factor``.
        removed, kept: disjoint int64 index vectors into ``0..n-1``.
        lmbda: ridge relative to the kept channels' mean energy (``λ = lmbda · trace(G_KK) / |K|``).
        factor: ``F: (n, m)`` with ``G = F Fᵀ``; with ``m < |K|`` and ``λ > 0`` the solve is the
            ``m × m`` one of the push-through identity, ``A = F_R (λI + F_KᵀF_K)⁻¹ F_Kᵀ`` (same ``A``).
    """
    if gram is None and factor is None:
        raise ValueError("least_squares_coefficients needs gram (n, n) or factor (n, m)")
    if factor is not None:
        if factor.dim() != 2 or (gram is not None and gram.shape[0] != factor.shape[0]):
            raise ValueError(f"factor must be (n, m) with n the gram's size, got {tuple(factor.shape)}")
        check_lmbda(lmbda)
        F = factor.to(torch.float64)
        rows = F[kept]
        ridge = _ridge_of_trace(float(torch.linalg.vector_norm(rows).square()), len(kept), lmbda)
        if lmbda > 0 and F.shape[1] < len(kept):
            return _woodbury_coefficients(F[removed], rows, ridge, factored)
        if gram is None:
            gram = F @ F.T
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be square (n, n), got {tuple(gram.shape)}")
    check_lmbda(lmbda)
    rows = gram[kept].to(torch.float64)  # (|K|, n): only the kept rows converted
    system = rows[:, kept]
    ridge = _ridge(system, lmbda)
    system.diagonal().add_(ridge)
    return _spd_solve(system, rows[:, removed], ridge if lmbda > 0 else 0.0).T


def fold_removed_inputs(weight: torch.Tensor, removed: torch.Tensor, kept: torch.Tensor,
                        A: torch.Tensor | LowRankCoefficients) -> torch.Tensor:
    """A copy of ``weight: (out, c, *kernel)`` with ``W[:, K] += W[:, R] A`` (``A: (|R|, |K|)``, or its factors)."""
    out = weight.clone()
    _fold_into_(out, removed, kept, A)
    return out


def _fold_into_(weight: torch.Tensor, removed: torch.Tensor, kept: torch.Tensor,
                A: torch.Tensor | LowRankCoefficients, removed_slices: torch.Tensor | None = None) -> None:
    """``W[:, K] += W[:, R] A`` in place (``weight: (out, c, *kernel)``, ``A: (|R|, |K|)``), the product
    in the weight's dtype (float32 at least: a float32 weight stores the result in float32 anyway)
    (``removed_slices``: ``W[:, R]`` if the caller already gathered it).

    :class:`LowRankCoefficients` of rank ``m`` are applied as ``(W_R · left) · right`` when its
    ``out · m · (|R| + |K|)`` multiply-adds (per kernel tap) are fewer than forming ``A`` and applying it.
    """
    dtype = torch.promote_types(weight.dtype, torch.float32)
    A = A.to(weight.device)  # data-free coefficients are solved on the CPU
    if removed_slices is None:
        removed_slices = weight[:, removed]
    columns = removed_slices[0].numel() // max(len(removed), 1) * weight.shape[0]  # out · kernel taps
    if isinstance(A, LowRankCoefficients):
        rank = A.left.shape[1]
        if columns * rank * (len(removed) + len(kept)) >= len(removed) * len(kept) * (rank + columns):
            A = A.dense(dtype)
    if weight.dim() == 2:  # a Linear: (out, |R|) @ (|R|, |K|), no transposed copies
        slices = removed_slices.to(dtype)
        update = (slices @ A.left.to(dtype)) @ A.right.to(dtype) if isinstance(A, LowRankCoefficients) \
            else slices @ A.to(dtype)
        weight.index_add_(1, kept, update.to(weight.dtype))
        return
    taps = removed_slices.to(dtype).transpose(0, 1).reshape(len(removed), -1)  # (|R|, out · kernel)
    if isinstance(A, LowRankCoefficients):
        update = A.right.to(dtype).T @ (A.left.to(dtype).T @ taps)
    else:
        update = A.to(dtype).T @ taps
    update = update.reshape(len(kept), weight.shape[0], *weight.shape[2:])
    weight.index_add_(1, kept, update.transpose(0, 1).to(weight.dtype))


# --------------------------------------------------------------------------- importance
class CalibratedProjectiveImportance(tp.importance.Importance):
    """Channel scores from the calibration statistics the :class:`CompensatingPruner` collects.

    Score of channel ``i`` = sum over the group's consumers of ``‖v_i‖² / P_ii / E`` with
    ``P = (C + λI)^{-1}`` (``C``: centred covariance of the consumer's input), ``v_i`` the
    consumer's weight slice reading channel ``i`` and ``E = Σ_j ‖v_j‖² C_jj`` its signal energy.
    ``P`` is :meth:`ConsumerStats.precision`: inverted once per collection (``λ = lmbda ·
    trace(C) / c`` then), cut with the pruned channels in between. Without statistics for any
    consumer of a group the group is not scored (``None``).

    With ``flops_aware=True`` each score is divided by the multiply-accumulates the channel
    costs (:func:`channel_macs`): the error added per operation saved, the greedy answer to a
    FLOPs target. A high-resolution channel costs several times a low-resolution one, so plain
    scores remove many cheap channels and need more steps to reach the same speed-up. The
    :class:`CompensatingPruner` fills :attr:`positions` (output positions per layer) for it: in its first
    calibration forward (per sample: the calibration images' sizes), or without calibration on the example inputs.
    """

    def __init__(self, lmbda: float = 1e-3, data_free: bool = False, flops_aware: bool = False) -> None:
        check_lmbda(lmbda)
        self.lmbda = float(lmbda)
        self.data_free = data_free
        self.flops_aware = flops_aware
        self.stats: dict[nn.Module, ConsumerStats] = {}
        self.positions: dict[nn.Module, int] = {}
        self.gram_cache: dict | None = None  # set by CompensatingPruner for one step (weights unchanged)

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        n_root = len(group[0].idxs)
        total = torch.zeros(n_root, dtype=torch.float64)
        voted = False
        gram = _producer_gram(group, self.gram_cache) if self.data_free else None
        gram_precision = None  # (G + ρI)⁻¹ of the group: inverted once, read by every consumer
        for item in group:
            dep, idxs = item
            layer = dep.target.module
            if dep.handler not in _IN_FNS or not is_consumer(layer) or None in item.root_idxs:
                continue
            if self.data_free:
                view = _data_free_view(item, gram)
                if view is None:
                    continue
                G, first, blocks = view
                if gram_precision is None:
                    gram_precision = _ridge_inverse_diagonal(G, self.lmbda)
                C_diag, P_diag = G.diagonal(), gram_precision
            else:
                stats = self.stats.get(layer)
                if stats is None or stats.width != layer.weight.shape[1] or stats.count == 0:
                    continue
                C_diag, P_diag = stats.variances().cpu(), stats.precision_diagonal(self.lmbda).cpu()
                first, blocks = 0, stats.blocks
            mapped = _item_channels(item, blocks)
            if mapped is None:
                continue
            channels, roots = mapped
            w2 = self._energy(layer, blocks)[first:first + len(C_diag)]  # (n,) ‖v_j‖²
            signal = float((w2 * C_diag).sum())
            scores = w2 / P_diag / (signal if signal > 0 else 1.0)
            if first == 0 and len(scores) == n_root and _is_identity(channels) and _is_identity(roots):
                total += scores  # the common case: the consumer reads the group's channels in order
            else:
                total.scatter_add_(0, roots, scores[channels - first])
            voted = True
        if not voted:
            return None
        if self.flops_aware:
            if not self.positions:
                raise ValueError("flops_aware=True needs importance.positions (output_positions(model, inputs)); "
                                 "CompensatingPruner sets them")
            cost = channel_macs(group, self.positions)
            if bool((cost > 0).any()):
                total = total / torch.where(cost > 0, cost, cost.max())
        return total.to(torch.float32)

    def _energy(self, layer: nn.Module, blocks: int) -> torch.Tensor:
        """:func:`_channel_energy`, once per consumer and step when the pruner provides the step's cache
        (the weights do not change while a step's groups are scored; a consumer is read by every group it cuts)."""
        if self.gram_cache is None:
            return _channel_energy(layer, blocks)
        key = ("energy", layer, blocks)
        if key not in self.gram_cache:
            self.gram_cache[key] = _channel_energy(layer, blocks)
        return self.gram_cache[key]


def _channel_energy(layer: nn.Module, blocks: int) -> torch.Tensor:
    """``(c,)`` float64 on the CPU: ``‖v_j‖²`` of every input channel of ``layer`` (a channel of a
    flattened map, ``blocks`` consecutive inputs of a Linear, counts as one). Summed in the weight's
    dtype (float32: ~1e-6 relative, several times faster than a float64 reduction over the output rows)."""
    weight = _channel_view(layer.weight.detach(), blocks)
    if weight[0, 0].numel() == 1:  # a Linear or a 1x1 conv: column sums of squares (a norm over the strided
        # dimension took up to 10x longer on a 1x1 conv's weight)
        return weight.reshape(weight.shape[:2]).square().sum(dim=0).to(torch.float64).cpu()
    dims = [d for d in range(weight.dim()) if d != 1]  # a conv or a flattened map: no squared copy
    return torch.linalg.vector_norm(weight, dim=dims).square().to(torch.float64).cpu()


def _channel_view(weight: torch.Tensor, blocks: int) -> torch.Tensor:
    """A consumer's weight as ``(out, c, *kernel)``: a Linear reading a flattened ``(c, blocks)`` map
    as ``(out, c, blocks)`` (a view: writes go to the weight)."""
    return weight if blocks == 1 else weight.view(weight.shape[0], -1, blocks)


def _block_size(item) -> int:
    """Consecutive consumer inputs per root channel of a group member (a flatten: the map's positions)."""
    roots = torch.as_tensor(item.root_idxs, dtype=torch.int64)
    distinct = len(torch.unique(roots)) if len(roots) else 0
    if distinct == 0 or len(roots) % distinct:
        return 1
    return len(roots) // distinct


def _item_channels(item, blocks: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(channels, roots)``, int64: the consumer input channels a group member cuts (``blocks``
    consecutive inputs per channel) and each one's root index; None if the inputs are not whole blocks."""
    idxs = torch.as_tensor(item.idxs, dtype=torch.int64)
    roots = torch.as_tensor(item.root_idxs, dtype=torch.int64)
    if blocks == 1:
        return idxs, roots
    if len(idxs) % blocks:
        return None
    rows, root_rows = idxs.view(-1, blocks), roots.view(-1, blocks)
    if (not bool((rows == rows[:, :1] + torch.arange(blocks)).all()) or bool((rows[:, 0] % blocks).any())
            or not bool((root_rows == root_rows[:, :1]).all())):
        return None
    return rows[:, 0] // blocks, root_rows[:, 0]


def _data_free_view(item, gram: ProducerGram | None) -> tuple[ProducerGram, int, int] | None:
    """``(G, first, blocks)``: the producers' Gram ``(n, n)`` on the CPU, describing the consumer's
    input channels ``first .. first + n − 1``, each ``blocks`` consecutive inputs (a flattened map).

    A consumer reads the group's ``n`` channels at a constant offset (0, or its place in a
    concatenation), one input per channel or one block of positions per channel; other layouts are
    left alone.
    """
    if gram is None:
        return None
    blocks = _block_size(item)
    mapped = _item_channels(item, blocks)
    if mapped is None or len(mapped[0]) == 0:
        return None
    offsets = mapped[0] - mapped[1]
    if not bool((offsets == offsets[0]).all()):
        return None
    width = item.dep.target.module.weight.shape[1]
    if width % blocks or int(offsets[0]) + gram.n > width // blocks:
        return None
    return gram.cpu(), int(offsets[0]), blocks


# --------------------------------------------------------------------------- the pruner
class _Fold:
    """One consumer's planned compensation (everything computed, nothing written yet).

    ``removed``/``kept``: input channels of ``layer`` (unpruned coordinates); ``A: (|R|, |K|)``;
    ``shift``: ``(out,)`` mean output to add (calibrated mean correction) or None; ``stats``: the
    consumer's statistics to cut to ``kept`` afterwards, with ``cut``: the ``−P_RR⁻¹ P_RK`` of the
    Schur cut if its precision is cached.
    """

    __slots__ = ("layer", "removed", "kept", "A", "blocks", "shift", "stats", "cut")

    def __init__(self, layer: nn.Module, removed: torch.Tensor, kept: torch.Tensor, A: torch.Tensor, blocks: int = 1,
                 shift: torch.Tensor | None = None, stats: ConsumerStats | None = None,
                 cut: torch.Tensor | None = None) -> None:
        self.layer, self.removed, self.kept, self.A, self.blocks = layer, removed, kept, A, blocks
        self.shift, self.stats, self.cut = shift, stats, cut


class CompensatingPruner(tp.pruner.BasePruner):
    """Torch-Pruning's pruner that folds every removed channel into the group's consumers first.

    A step is all or nothing: the groups of the step are chosen, every coefficient of every
    consumer is computed, and only then are weights written and the groups cut; a failing solve
    (e.g. a singular covariance at ``lmbda=0``) leaves every tensor of the model unchanged.

    Args:
        model, example_inputs, importance, **kwargs: as for ``tp.pruner.BasePruner``
            (``pruning_ratio``, ``iterative_steps``, ``global_pruning``, ``ignored_layers``, ...).
        calibration: ``None`` for data-free compensation, or a callable returning an iterable of
            input batches (training data; called at every collection) for calibrated compensation.
        calibration_batches: use at most this many batches of each call (None: all of them).
        calibrate_every: collect statistics at most every this many steps; in between, the
            statistics of each pruned consumer are cut to its kept channels (exact for that
            consumer, slightly stale downstream of earlier compensation).
        calibrate_drift: and only once this fraction of the consumers' input channels has been
            pruned since the last collection (:attr:`drift`); ``calibrate_every=1,
            calibrate_drift=0`` collects at every step. The default re-collects after every
            twentieth of the remaining channels: every ~5 steps of a 100-step schedule at first,
            more often as the network shrinks and each step removes a larger share of it.
        lmbda: relative ridge of the least-squares coefficients (a finite number >= 0).
        mean_correction: calibrated only: keep every consumer's mean output on the calibration data.
        statistics_budget: bytes one consumer's dense statistics may take: a Linear reading a
            flattened feature map (channels x positions) whose ``(c·s)²`` float64 covariance would
            exceed it keeps per-channel statistics instead (``c²``, docs/algorithm.md §8.1.1;
            logged once). Other consumers' statistics are ``(c, c)`` with ``c`` their input channels.
        stop_early: end each calibration forward as soon as every consumer has run as often as in
            Torch-Pruning's trace of the example inputs (what follows, e.g. a detector's box decoding,
            cannot change the statistics). Set False for a model whose layers run a number of times that
            depends on the batch (a loop over its samples): its later calls would be missed.
        max_positions: calibrated only: second moments from at most this many positions (pixels of a
            feature map, tokens) of each calibration image, drawn at random with a fixed seed; the
            rest of the statistics (per-offset means) keep every position. None (default): all of
            them, exact. An accuracy-for-time trade: the products and, once the samples are fewer
            than a tensor's channels, the solves (the Woodbury form) shrink with it
            (docs/algorithm.md §8.1.2; docs/results.md measures it).

    Example inputs and calibration batches may be tensors, tuples, lists or dicts, as
    Torch-Pruning's ``example_inputs``: a dict is passed as ``model(**batch)``, a tuple/list as
    ``model(*batch)`` if ``model(*example_inputs)`` runs, else as ``model(batch)``; with tensor
    example inputs a tuple/list batch is ``(inputs, targets)`` (``model(batch[0])``). A
    ``forward_fn(model, inputs)`` given to the pruner is used for every batch.

    Refused with a ``ValueError`` before anything changes: weight-normalised (old or
    parametrized) layers, ``torch.nn.utils.prune`` masks, weights tied between layers, and
    circular-padded convs (Torch-Pruning's graph tracing does not terminate on them).
    """

    def __init__(self, model: nn.Module, example_inputs, importance, *,
                 calibration: Callable[[], Iterable] | None = None, calibration_batches: int | None = None,
                 calibrate_every: int = 1, calibrate_drift: float = DEFAULT_CALIBRATE_DRIFT, lmbda: float = 1e-3,
                 mean_correction: bool = True, statistics_budget: int = DEFAULT_STATISTICS_BUDGET,
                 stop_early: bool = True, max_positions: int | None = None, **kwargs) -> None:
        if calibration is not None and not callable(calibration):
            raise ValueError("calibration must be None or a callable returning an iterable of input batches")
        if calibration_batches is not None and (isinstance(calibration_batches, bool)
                                                or not isinstance(calibration_batches, int) or calibration_batches < 1):
            raise ValueError(f"calibration_batches must be a positive int or None, got {calibration_batches!r}")
        if isinstance(calibrate_every, bool) or not isinstance(calibrate_every, int) or calibrate_every < 1:
            raise ValueError(f"calibrate_every must be a positive int, got {calibrate_every!r}")
        if (isinstance(calibrate_drift, bool) or not isinstance(calibrate_drift, numbers.Real)
                or not 0 <= calibrate_drift < 1):
            raise ValueError(f"calibrate_drift must be a fraction in [0, 1), got {calibrate_drift!r}")
        check_lmbda(lmbda)
        if isinstance(statistics_budget, bool) or not isinstance(statistics_budget, int) or statistics_budget < 1:
            raise ValueError(f"statistics_budget must be a positive int (bytes), got {statistics_budget!r}")
        if isinstance(importance, CalibratedProjectiveImportance) and not importance.data_free and calibration is None:
            raise ValueError("CalibratedProjectiveImportance needs calibration batches (calibration=...)")
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(stop_early, bool):
            raise ValueError(f"stop_early must be True or False, got {stop_early!r}")
        _check_max_positions(max_positions)
        refuse_unsupported_layers(model)
        # how often each consumer runs per forward, counted while Torch-Pruning traces the example inputs
        calls, handles = count_consumer_calls(model) if calibration is not None and stop_early else ({}, [])
        try:
            super().__init__(model, example_inputs, importance=importance, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
        self._trace_calls = dict(calls)
        self.calibration = calibration
        self.calibration_batches = calibration_batches
        self.max_positions = max_positions
        self.calibrate_every = calibrate_every
        self.calibrate_drift = float(calibrate_drift)
        self._last_calibration: int | None = None
        self._collected_width = 0  # Σ consumer input widths at the last collection
        self.lmbda = float(lmbda)
        self.mean_correction = mean_correction
        self.stats: dict[nn.Module, ConsumerStats] = {}
        self._names = {module: name for name, module in model.named_modules()}
        self._gram_cache: dict | None = None
        self._forward = self._batch_forward(example_inputs, kwargs.get("forward_fn"))
        # The consumers some prunable group cuts, with their statistics' block size (per-channel
        # statistics for a flattened map whose dense covariance would exceed the budget).
        self._blocks = self._consumer_blocks(statistics_budget) if calibration is not None else {}
        # flops-aware scores need every layer's output positions: recorded by the first calibration forward (no
        # forward of their own), or on the example inputs without calibration
        self._positions_due = bool(getattr(importance, "flops_aware", False))
        if self._positions_due and calibration is None:
            importance.positions = output_positions(model, example_inputs, self._forward)
            self._positions_due = False

    def step(self, interactive: bool = False):
        """One pruning step: (calibrate,) score every group, compensate and prune.

        With ``interactive=True`` a generator of groups whose consumers are already
        compensated: prune every group it yields (``group.prune()``), in order.
        """
        refuse_unsupported_layers(self.model)  # a weight norm or mask may have been added since __init__
        due = self._last_calibration is None or (self.current_step - self._last_calibration >= self.calibrate_every
                                                 and self.drift >= self.calibrate_drift)
        if self.calibration is not None and due:
            positions, handles = _position_hooks(self.model) if self._positions_due else (None, [])
            try:
                self.stats = collect_consumer_stats(self.model, list(self._blocks), self.calibration(),
                                                    self.calibration_batches, names=self._names, blocks=self._blocks,
                                                    forward=self._forward, calls=self._consumer_calls(),
                                                    max_positions=self.max_positions)
            finally:
                for handle in handles:
                    handle.remove()
            if positions is not None:
                self.importance.positions, self._positions_due = positions, False
            self._last_calibration = self.current_step
            self._collected_width = self._consumer_width()
            if isinstance(self.importance, CalibratedProjectiveImportance):
                self.importance.stats = self.stats
        # Every group of the step is chosen on the unpruned model (Torch-Pruning scores all groups
        # before it yields the first), every fold is planned, then written, then the groups are cut.
        # Until the first write the producers' Grams are shared by the scores and the plan.
        self._gram_cache = {}
        if isinstance(self.importance, CalibratedProjectiveImportance):
            self.importance.gram_cache = self._gram_cache
        try:
            groups = list(super().step(interactive=True))
            with torch.no_grad():
                folds = self._plan(groups)  # every solve of the step; raises before anything is written
        finally:
            self._gram_cache = None
            if isinstance(self.importance, CalibratedProjectiveImportance):
                self.importance.gram_cache = None
        with torch.no_grad():
            for fold in folds:
                self._apply(fold)
        regrouped = self._regrouped(groups)
        if interactive:
            return regrouped
        for group in regrouped:
            group.prune()
        return None

    def _consumer_calls(self) -> dict[nn.Module, int] | None:
        """The trace's call count of every consumer with statistics (None: stop no forward early; also when one
        did not run in the trace, as then nothing says when it would be done)."""
        calls = {m: self._trace_calls.get(m, 0) for m in self._blocks}
        return calls if calls and all(calls.values()) else None

    @property
    def drift(self) -> float:
        """The fraction of the consumers' input channels pruned since the last collection (0 before any)."""
        if self._collected_width == 0:
            return 0.0
        return 1.0 - self._consumer_width() / self._collected_width

    def _consumer_width(self) -> int:
        return sum(m.weight.shape[1] for m in self.model.modules() if is_consumer(m))

    def _batch_forward(self, example_inputs: Any, forward_fn: Callable | None) -> Callable[[nn.Module, Any], Any]:
        """How a calibration batch runs, from the structure of ``example_inputs`` (class docstring)."""
        if forward_fn is not None:
            return forward_fn
        if isinstance(example_inputs, Mapping):
            def run(model, batch):
                if not isinstance(batch, Mapping):
                    raise ValueError("calibration batches must be dicts, as example_inputs is; got "
                                     f"{type(batch).__name__}")
                return structured_forward(model, batch)
            return run
        if isinstance(example_inputs, (tuple, list)):
            spread = spreads_inputs(self.model, example_inputs)
            return lambda model, batch: structured_forward(model, batch, spread=spread)

        def run_tensor(model, batch):
            if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
                batch = batch[0]  # (inputs, targets)
            return structured_forward(model, batch)
        return run_tensor

    def _consumer_blocks(self, budget: int) -> dict[nn.Module, int]:
        """``{consumer: blocks}`` for every consumer a prunable group cuts: 1 (one statistic per
        input channel), or, for a Linear reading a flattened ``(c, s)`` map whose dense ``(c·s)²``
        float64 covariance exceeds ``budget`` bytes, ``s`` (per-channel statistics, logged once)."""
        blocks: dict[nn.Module, int] = {}
        for group in self.DG.get_all_groups(ignored_layers=self.ignored_layers,
                                            root_module_types=self.root_module_types):
            for item in group:
                layer = item.dep.target.module
                if item.dep.handler not in _IN_FNS or not is_consumer(layer) or len(item.idxs) == 0:
                    continue
                size = _block_size(item) if isinstance(layer, nn.Linear) else 1
                dense = layer.weight.shape[1] ** 2 * 8
                fits = size > 1 and layer.weight.shape[1] % size == 0 and _item_channels(item, size) is not None
                blocks[layer] = size if fits and dense > budget else blocks.get(layer, 1)
        bounded = [f"{self._name(m)} ({m.weight.shape[1]} = {m.weight.shape[1] // b} x {b})"
                   for m, b in blocks.items() if b > 1]
        if bounded:
            _LOG.warning("CompensatingPruner: per-channel statistics (docs/algorithm.md §8.1.1) for %d consumer(s) "
                         "whose dense covariance would exceed statistics_budget=%d bytes: %s",
                         len(bounded), budget, ", ".join(bounded))
        return blocks

    def _regrouped(self, groups):
        """The step's groups, each re-indexed on the model as pruned by the ones before it (a
        concatenation's offsets move when an earlier group cuts one of its inputs)."""
        for position, group in enumerate(groups):
            if position == 0:
                yield group
                continue
            root = group[0]
            fresh = self.DG.get_pruning_group(root.dep.target.module, root.dep.handler, list(root.idxs))
            for i, item in enumerate(group):  # members Torch-Pruning emptied (grouped-query attention) stay empty
                if len(item.idxs) == 0 and i < len(fresh) and fresh[i].dep.target.module is item.dep.target.module:
                    fresh[i] = (fresh[i].dep, [])
            yield fresh

    def compensate(self, group) -> None:
        """Fold the channels ``group`` removes into every consumer of the group (weights in place):
        every coefficient is computed before the first weight is written."""
        with torch.no_grad():
            for fold in self._plan([group]):
                self._apply(fold)

    def _plan(self, groups: Sequence) -> list[_Fold]:
        """Every consumer's fold for ``groups`` (one step, unpruned coordinates), nothing written.

        Data-free: one fold per (group, consumer), from the group's producer Gram. Calibrated: one
        fold per consumer for the union of the channels every group removes from it (one solve).
        """
        folds: list[_Fold] = []
        removed_by_layer: dict[nn.Module, list[torch.Tensor]] = {}
        for group in groups:
            gram = _producer_gram(group, self._gram_cache) if self.calibration is None else None
            solved: dict[tuple[int, ...], torch.Tensor] = {}
            for item in group:
                layer = item.dep.target.module
                if item.dep.handler not in _IN_FNS or not is_consumer(layer) or len(item.idxs) == 0:
                    continue
                if self.calibration is not None:
                    stats = self.stats.get(layer)
                    mapped = None if stats is None else _item_channels(item, stats.blocks)
                    if mapped is not None:
                        removed_by_layer.setdefault(layer, []).append(mapped[0])
                    continue
                view = _data_free_view(item, gram)
                if view is None:
                    continue
                G, first, blocks = view
                removed = torch.unique(_item_channels(item, blocks)[0])
                keep = torch.ones(G.n, dtype=torch.bool)
                keep[removed - first] = False
                if not keep.any():
                    continue
                rows_r, rows_k = removed - first, torch.nonzero(keep).flatten()
                key = tuple(rows_r.tolist())  # consumers reading the group alike share one solve
                if key not in solved:
                    solved[key] = self._solved(layer, None, least_squares_coefficients, G.dense, rows_r, rows_k,
                                               self.lmbda, factor=G.factor, factored=True)
                folds.append(_Fold(layer, removed, rows_k + first, solved[key], blocks))
        removed_by_layer = {layer: torch.unique(torch.cat(parts)) for layer, parts in removed_by_layer.items()}
        self._unshare_differently_cut(removed_by_layer)
        for layer, removed in removed_by_layer.items():
            fold = self._plan_calibrated(layer, removed)
            if fold is not None:
                folds.append(fold)
        return folds

    def _unshare_differently_cut(self, removed_by_layer: dict[nn.Module, torch.Tensor]) -> None:
        """Consumers of one tensor lose the same channels (one group cuts the tensor for all its readers); should
        a step cut them differently, each gets its own copy of the shared :class:`ChannelMoments` first."""
        cuts: dict[int, torch.Tensor] = {}
        for layer, removed in removed_by_layer.items():
            stats = self.stats.get(layer)
            if stats is None:
                continue
            seen = cuts.setdefault(id(stats.moments), removed)
            if seen is not removed and not torch.equal(seen, removed):
                stats.moments = copy.deepcopy(stats.moments)
                cuts[id(stats.moments)] = removed

    def _plan_calibrated(self, layer: nn.Module, removed: torch.Tensor) -> _Fold | None:
        """The calibrated fold of ``layer`` for its sorted input channels ``removed`` (None: no statistics).

        ``A`` from the cached precision (centred, with the mean correction) or the uncentred second
        moments; the mean correction ``Σ_{r,o} V[:, r, o] (M[r, o] − Σ_k A[r, k] M[k, o])`` (``M``:
        per-offset input means) is the consumer's mean output lost on the calibration data.
        """
        stats = self.stats.get(layer)
        if stats is None or stats.width != layer.weight.shape[1] or len(removed) >= stats.n:
            return None
        if stats.count == 0:  # never ran on the calibration data (e.g. an unused detection branch)
            return None
        width = stats.n
        if stats.count < 2:
            raise ValueError(f"consumer {self._name(layer)!r}: calibration gave {stats.count} sample(s) of "
                             "its input; a covariance needs at least 2 (give more calibration data)")
        if self.lmbda == 0 and stats.count <= stats.n:  # rank <= count - 1 < n: singular for certain
            raise ValueError(self._singular_message(layer, stats, "rank below the width"))
        keep = torch.ones(width, dtype=torch.bool)
        keep[removed] = False
        kept = torch.nonzero(keep).flatten()
        weight = _channel_view(layer.weight.detach(), stats.blocks)
        removed_d, kept_d = removed.to(weight.device), kept.to(weight.device)
        if self.mean_correction:  # centred: A = −P_RR⁻¹ P_RK from the cached precision (or its push-through factors)
            A = self._solved(layer, stats, stats.coefficients, removed, kept, self.lmbda, factored=True)
            A = A.to(weight.device)
            cut = A if isinstance(A, torch.Tensor) else None  # factors: no cached precision to cut
        else:
            C = (stats.channels.sum_outer / stats.channels.count).to(weight.device)
            A = self._solved(layer, stats, least_squares_coefficients, C, removed_d, kept_d, self.lmbda)
            cut = None
            if stats.moments._precision is not None:  # the Schur cut of the cached precision, solved now
                cut = self._solved(layer, stats, stats.coefficients, removed, kept, self.lmbda)
        shift = None
        if self.mean_correction:
            V_r = weight[:, removed_d].to(torch.float64)  # (out, |R|, *kernel), before the fold
            M = stats.patch_means().to(weight.device)  # (c, *kernel)
            residual = M[removed_d] - (A @ M[kept_d].reshape(len(kept), -1)).reshape(M[removed_d].shape)
            shift = (V_r * residual).flatten(1).sum(1)  # (out,) mean output before − after
        return _Fold(layer, removed, kept, A, stats.blocks, shift, stats, cut)

    def _solved(self, layer: nn.Module, stats: ConsumerStats | None, solve: Callable[..., torch.Tensor],
                *args, **kwargs) -> torch.Tensor:
        """``solve(*args, **kwargs)``, with a singular system or non-finite coefficients turned into one
        ValueError that says why (too few calibration samples for the width, or dead/duplicate inputs)."""
        try:
            A = solve(*args, **kwargs)
        except RuntimeError as err:  # torch.linalg.LinAlgError is a RuntimeError
            raise ValueError(self._singular_message(layer, stats, f"{type(err).__name__}: {err}")) from err
        if not _all_finite(A):
            raise ValueError(self._singular_message(layer, stats, "non-finite coefficients"))
        return A

    def _singular_message(self, layer: nn.Module, stats: ConsumerStats | None, detail: str) -> str:
        where = f"consumer {self._name(layer)!r} ({type(layer).__name__})"
        if stats is not None and stats.count <= stats.n:
            return (f"{where}: {stats.count} calibration samples for {stats.n} input channels: the covariance "
                    f"is singular ({detail}); give more calibration samples than input channels, or lmbda > 0")
        source = "input covariance" if stats is not None else "producers' Gram matrix"
        return (f"{where}: the {source} is singular at lmbda={self.lmbda} ({detail}): some inputs are dead or "
                "linearly dependent (e.g. channels a ReLU never activates); use lmbda > 0")

    def _name(self, layer: nn.Module) -> str:
        return self._names.get(layer, type(layer).__name__)

    def _apply(self, fold: _Fold) -> None:
        """Write one planned fold: ``V[:, K] += V[:, R] A``, the mean shift, the statistics' cut."""
        layer = fold.layer
        weight = layer.weight.data
        channels = _channel_view(weight, fold.blocks)
        _fold_into_(channels, fold.removed.to(weight.device), fold.kept.to(weight.device), fold.A)
        if fold.shift is not None:
            bn = _batchnorm_after(self.DG.module2node.get(layer))
            if bn is not None:
                bn.running_mean -= fold.shift.to(bn.running_mean)
            elif layer.bias is not None:
                layer.bias.data += fold.shift.to(layer.bias)
            else:
                layer.bias = nn.Parameter(fold.shift.to(weight), requires_grad=layer.weight.requires_grad)
        # After the schedule's last step the statistics are never read again: not cut (they describe
        # the model before that step)
        if fold.stats is not None and self.current_step < self.iterative_steps:
            fold.stats.keep(fold.kept, fold.cut)


def refuse_unsupported_layers(model: nn.Module) -> None:
    """``ValueError`` naming the first layer the compensating pruner cannot write correctly.

    Weight norm (``torch.nn.utils.weight_norm`` or a parametrization): the pruned tensors are not
    the ones the forward uses; a ``torch.nn.utils.prune`` mask: ``weight`` is recomputed from
    ``weight_orig``; a weight shared by two layers: the fold would silently change (and the cut
    untie) the other layer; circular padding: Torch-Pruning's graph tracing does not terminate.
    """
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for key, param in module._parameters.items():
            if param is not None:
                owners.setdefault(id(param), []).append(f"{name}.{key}" if name else key)
    for name, module in model.named_modules():
        label = f"model: layer {name or '<root>'!r} ({type(module).__name__})"
        check_not_reparametrized(module, label)
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            for key in ("weight", "bias"):
                param = module._parameters.get(key)
                if param is not None and len(owners.get(id(param), [])) > 1:
                    raise ValueError(f"{label} shares its {key} with {owners[id(param)]}; compensating and pruning "
                                     "would change the other layer and untie them silently: expected untied layers")
        if (isinstance(module, nn.modules.conv._ConvNd) and module.padding_mode == "circular"
                and any(module._reversed_padding_repeated_twice)):
            raise ValueError(f"{label} uses padding_mode='circular', on which Torch-Pruning's dependency graph "
                             "does not terminate; expected padding_mode 'zeros', 'reflect' or 'replicate'")


class ProducerGram:
    """The producers' Gram ``G: (n, n)`` of a group: ``dense`` (the weights' dtype for one producer, else float64),
    or, when the producers have at most
    ``LOW_RANK_FRACTION · n`` columns ``m`` (ViT's 3072 MLP units from 769 columns each), its ``factor`` ``F: (n, m)``
    float64 with ``G = F Fᵀ`` (never formed: Woodbury and push-through solves of size ``m``)."""

    __slots__ = ("dense", "factor", "_diagonal")

    def __init__(self, dense: torch.Tensor | None = None, factor: torch.Tensor | None = None) -> None:
        if (dense is None) == (factor is None):
            raise ValueError("ProducerGram needs exactly one of dense (n, n) and factor (n, m)")
        self.dense, self.factor = dense, factor
        self._diagonal: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return (self.dense if self.dense is not None else self.factor).shape[0]

    def cpu(self) -> ProducerGram:
        """This Gram on the CPU (itself if it is there)."""
        if (self.dense if self.dense is not None else self.factor).device.type == "cpu":
            return self
        return ProducerGram(*(None if t is None else t.cpu() for t in (self.dense, self.factor)))

    def diagonal(self) -> torch.Tensor:
        """``(n,)`` float64 ``G_ii`` (computed once: every consumer of the group reads it)."""
        if self._diagonal is None:
            self._diagonal = (self.dense.diagonal().to(torch.float64) if self.dense is not None
                              else torch.linalg.vector_norm(self.factor, dim=1).square())
        return self._diagonal


def _ridge_inverse_diagonal(gram: ProducerGram, lmbda: float) -> torch.Tensor:
    """``(n,)`` diagonal of ``(G + ρI)⁻¹`` with :func:`_ridge` ``ρ``: Woodbury in ``O(n m²)`` for a factored
    ``G`` (``ρ > 0``), else :func:`_ridge_inverse_diagonal_dense`."""
    if gram.factor is not None:
        ridge = _ridge_of_trace(float(gram.diagonal().sum()), gram.n, lmbda)
        if lmbda > 0:
            return _woodbury_inverse_diagonal(gram.factor, ridge)
        return _ridge_inverse(gram.factor @ gram.factor.T, lmbda).diagonal()
    return _ridge_inverse_diagonal_dense(gram.dense, lmbda)


def _producer_gram(group, cache: dict | None = None) -> ProducerGram | None:
    """The :class:`ProducerGram` of the effective producer rows of a group (BatchNorm folded), or None.

    Every ungrouped conv / linear whose output channels are the group's ``n`` channels
    contributes its rows (weights and bias as one more column), scaled and shifted by the
    BatchNorm it feeds; a producer of another width (e.g. one part of a concatenation) does not.
    With ``m > LOW_RANK_FRACTION · n`` columns in all the products are formed in the weights' dtype (float32
    rows: ~1e-6 relative, as the calibrated statistics' products), summed in float64 if there are several
    producers; with fewer the
    rows are kept, in float64, as the factor. ``cache``: Grams by the group's root (valid while no weight
    changes: the pruner keeps one for the scoring and planning of a step).
    """
    key = (group[0].dep.target.module, group[0].dep.handler)
    if cache is not None and key in cache:
        return cache[key]
    blocks = []
    width = None
    for item in group:
        layer = item.dep.target.module
        if item.dep.handler not in _OUT_FNS or not is_consumer(layer):
            continue
        weight = layer.weight.detach()
        dtype = torch.promote_types(weight.dtype, torch.float32)
        rows = weight.flatten(1).to(dtype)
        width = rows.shape[0] if width is None else width
        if rows.shape[0] != width:
            continue
        bias = layer.bias.detach().to(torch.float64) if layer.bias is not None else torch.zeros(
            width, dtype=torch.float64, device=rows.device)
        bn = _batchnorm_after(item.dep.target)
        if bn is not None:
            scale = bn.weight.detach().to(torch.float64) if bn.affine else torch.ones_like(bias)
            scale = scale / (bn.running_var.to(torch.float64) + bn.eps).sqrt()
            beta = bn.bias.detach().to(torch.float64) if bn.affine else 0.0
            shift = beta - scale * bn.running_mean.to(torch.float64)
            rows, bias = rows * scale[:, None].to(dtype), bias * scale + shift
        blocks.append(torch.cat([rows, bias[:, None].to(dtype)], dim=1))
    gram = None
    if blocks and sum(rows.shape[1] for rows in blocks) <= LOW_RANK_FRACTION * width:
        gram = ProducerGram(factor=torch.cat(blocks, dim=1).to(torch.float64))
    elif blocks:
        # symmetric: only the upper block rows are multiplied (VGG's 4096 classifier rows of 25,089 columns)
        # one producer: kept in its dtype (the float64 copy would hold the same values; every reader converts
        # only what it needs); several: summed in float64
        grams = [symmetric_gram(rows.T) for rows in blocks]
        gram = ProducerGram(dense=grams[0] if len(grams) == 1 else sum(g.to(torch.float64) for g in grams))
    if cache is not None:
        cache[key] = gram
    return gram


def _batchnorm_after(node) -> nn.Module | None:
    """The BatchNorm (with running statistics) that alone reads the dependency-graph ``node``'s output."""
    if node is None or len(node.outputs) != 1:
        return None
    nxt = node.outputs[0]
    if (isinstance(nxt.module, nn.modules.batchnorm._BatchNorm) and nxt.module.track_running_stats
            and len(nxt.inputs) == 1):
        return nxt.module
    return None
