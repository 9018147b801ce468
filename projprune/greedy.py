"""Greedy selection and redistribution (docs/algorithm.md §2, §4, §5).

Two ways of tracking the coefficients while units leave:

* **lazy** (:func:`greedy_lazy`), the paper's reference behaviour: ``Q`` is solved once; after
  unit ``i`` is pruned, the remaining rows of ``Q`` are divided element-wise by
  ``1 + α' Q[i]`` and never re-projected.
* **exact** (:func:`greedy_exact`, ours): the true precision matrix of the remaining rows is
  kept by rank-1 downdates, so every step uses the exact ridge coefficients and distances
  of the rows that are still there.

Both return a :class:`PruneResult` (kept mask, removal order and the α/β/γ tracks) and
:func:`apply_pruning` turns it into the smaller ``(W', b', V')``. Two options go beyond the
paper: ``output_aware`` multiplies each unit's distance by the norm of its (effective)
column in ``V``; ``compensate`` folds a pruned unit into the next layer,
``v_j += q_ij v_i`` (exact when the activation between the layers is the identity).

Everything here is tensors in, tensors out, computed in float64 unless ``dtype`` says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from projprune._checks import check_amount, check_matrix, check_same_device_dtype, check_vector
from projprune._symmetric import gram, sub_upper_product_, symmetric_row
from projprune.calibration import ActivationStats
from projprune.options import ProjectionOptions, resolve_options
from projprune.solvers import precision_and_residuals, regularised_inverse, solve_closed

__all__ = ["PruneResult", "apply_pruning", "greedy_exact", "greedy_global", "greedy_lazy", "refit_next_layer"]

StepCallback = Callable[[int], None]


@dataclass
class PruneResult:
    """The outcome of a greedy run on one layer with ``n`` units.

    Attributes:
        keep: ``(n,)`` bool, True for the units that stay.
        order: ``(amount,)`` int64, the pruned units in removal order.
        scale_w: ``(n,)`` the α-track ``U_α``: final rows of ``W`` are ``W[keep] * scale_w[keep]``.
        scale_b: ``(n,)`` the β-track ``U_β`` for the bias.
        scale_v: ``(n,)`` the track applied to the columns of ``V`` (``U_γ``, or ``U_β`` with
            ``v_uses_beta``).
        v_delta: ``(k, n)`` compensation added to ``V``'s columns after scaling, or None.
        out_bias_delta: ``(k,)`` compensation added to the next layer's bias, or None.
    """

    keep: torch.Tensor
    order: torch.Tensor
    scale_w: torch.Tensor
    scale_b: torch.Tensor
    scale_v: torch.Tensor
    v_delta: torch.Tensor | None = None
    out_bias_delta: torch.Tensor | None = None

    @property
    def kept_indices(self) -> torch.Tensor:
        """Sorted indices of the kept units, ``(n - amount,)`` int64."""
        return torch.nonzero(self.keep, as_tuple=False).flatten()


# --------------------------------------------------------------------------- shared state
class _PendingTerms:
    """Rank-1 corrections ``X_t = X_f - Σ_s a_s b_sᵀ`` kept between flushes of ``X_f``.

    The exact trackers and the compensation keep matrices that a rank-1 term changes at every
    step; instead of rewriting them each time they collect up to ``block`` terms here (as
    columns of two buffers) and apply them with one matrix product (docs/algorithm.md §5).
    """

    def __init__(self, block: int, symmetric: bool = False) -> None:
        self.block = block
        self.symmetric = symmetric  # every term is a aᵀ: B is A (one buffer written per step)
        self.k = 0
        # terms are stored as rows, (block, rows) and (block, cols): a step writes contiguous memory
        self.A: torch.Tensor | None = None
        self.B: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.k

    def add(self, a: torch.Tensor, b: torch.Tensor) -> bool:
        """Append ``a bᵀ``; True when the block is full and the caller should flush."""
        if self.k == 0 and (self.A is None or self.A.shape[1] != a.shape[0] or self.B.shape[1] != b.shape[0]):
            self.A = a.new_empty(self.block, a.shape[0])
            self.B = self.A if self.symmetric else b.new_empty(self.block, b.shape[0])
        self.A[self.k] = a
        if not self.symmetric:
            self.B[self.k] = b
        self.k += 1
        return self.k >= self.block

    def row(self, flushed_row: torch.Tensor, i: int) -> torch.Tensor:
        """Row ``i`` of ``X_t`` from row ``i`` of ``X_f``: ``X_f[i] - Σ_s a_s[i] b_s``."""
        if self.k == 0:
            return flushed_row.clone()
        return torch.addmv(flushed_row, self.B[: self.k].T, self.A[: self.k, i], alpha=-1.0)

    def times(self, flushed_product: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``X_t x`` from ``X_f x``: ``X_f x - Σ_s a_s (b_s · x)``."""
        if self.k == 0:
            return flushed_product
        return torch.addmv(flushed_product, self.A[: self.k].T, self.B[: self.k] @ x, alpha=-1.0)

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)``: ``(rows, k)``, ``(cols, k)`` with the pending terms as columns (``X_t = X_f - A Bᵀ``);
        views valid until the next add."""
        k, self.k = self.k, 0
        return self.A[:k].T, self.B[:k].T


class _LayerState:
    """What both trackers share: the α/β/γ tracks, the V-side options and the bookkeeping.

    Compensation is kept as a stack of rank-1 terms ``c_s q_sᵀ`` (``c_s``: the effective
    column of the unit removed at step ``s``, ``q_s`` its coefficients), multiplied out once
    at the end instead of updating a ``(k, n)`` matrix at every step. For ``output_aware`` the
    squared norms of the effective columns ``a_j v_j + δ_j`` are kept from three running
    vectors, ``‖v_j‖²``, ``v_j·δ_j`` and ``‖δ_j‖²``: one product with ``V`` per step.
    When the V-track is fixed (its strength is 0, as in ``calib`` and ``exact_oac``) the
    effective columns ``U = V + Δ`` are kept instead, as ``Uᵀ`` with the rank-1 terms applied
    in blocks (:class:`_PendingTerms`): a step then costs one product with ``U`` and no work
    that grows with the number of steps.

    ``bias_source`` (``(n,)`` or None) drives the next layer's bias correction: the removed
    unit's value minus its reconstruction, ``c (s_i - q·s)``, with ``s`` the activation means
    (calibrated mean correction) or, data-free, the bias ``b`` (exact only for an identity
    activation, so used only when the caller says so).
    """

    #: whether the tracking reads ``W`` (a compute-dtype copy is kept; the calibrated state works on ``C``)
    reads_w = True

    def __init__(self, W: torch.Tensor, b: torch.Tensor | None, V: torch.Tensor | None, opts: ProjectionOptions,
                 dtype: torch.dtype, amount: int, bias_source: torch.Tensor | None) -> None:
        self.n = W.shape[0]
        self.device = W.device
        self.dtype = dtype
        self.W = W.to(dtype) if self.reads_w else None
        self.V = None if V is None else V.to(dtype)
        self.alive = torch.ones(self.n, dtype=torch.bool, device=W.device)
        self.n_alive = self.n  # = int(self.alive.sum()), kept without a reduction per step
        # tracks: row 0 = U_α (W rows), 1 = U_β (bias), 2 = the track used for V's columns
        self.tracks = torch.ones(3, self.n, dtype=dtype, device=W.device)
        v_strength = opts.beta if opts.v_uses_beta else opts.gamma
        self.strengths = torch.tensor([opts.alpha, opts.beta, v_strength], dtype=dtype, device=W.device)
        self.fixed_tracks = opts.alpha == 0 and opts.beta == 0 and v_strength == 0  # tracks stay exactly 1
        self.alpha = opts.alpha
        self.output_aware = opts.output_aware
        self.compensate = opts.compensate
        self.order: list[int] = []
        if self.output_aware:
            self.v_sq = (self.V * self.V).sum(dim=0)  # ‖v_j‖²
        self.bias_source = None if bias_source is None else bias_source.to(device=W.device, dtype=dtype)
        k = 0 if self.V is None else self.V.shape[0]
        self.bias_delta = None if self.bias_source is None else torch.zeros(k, dtype=dtype, device=W.device)
        self.fixed_v = self.compensate and float(v_strength) == 0.0
        if self.fixed_v:
            self.UT = self.V.T.contiguous()  # (n, k): row j is the effective column u_j = v_j + δ_j
            self.pending_u = _PendingTerms(32)  # Uᵀ_t = Uᵀ_f - Σ (-q_s) c_sᵀ
            if self.output_aware:
                self.u_sq = self.v_sq.clone()  # ‖u_j‖²
        elif self.compensate:
            rows = max(amount, 1)
            self.comp_c = torch.zeros(rows, k, dtype=dtype, device=W.device)  # effective columns removed
            self.comp_q = torch.zeros(rows, self.n, dtype=dtype, device=W.device)  # their coefficients
            self.n_comp = 0
            self.cross = torch.zeros(self.n, dtype=dtype, device=W.device)  # v_j · δ_j
            self.delta_sq = torch.zeros(self.n, dtype=dtype, device=W.device)  # ‖δ_j‖²

    # Tracking-specific parts ------------------------------------------------------------
    def raw_distances(self) -> torch.Tensor:  # (n,), +inf at removed units
        raise NotImplementedError

    def coefficients(self, i: int) -> torch.Tensor:  # (n,), q_ij, zero at i and removed units
        raise NotImplementedError

    def forget(self, i: int, q: torch.Tensor, ratio: float) -> None:
        raise NotImplementedError

    # Shared parts ----------------------------------------------------------------------
    def _delta_column(self, i: int) -> torch.Tensor:
        """``δ_i``: ``(k,)`` the compensation collected so far by unit ``i``."""
        t = self.n_comp
        return self.comp_q[:t, i] @ self.comp_c[:t]

    def v_column_norms(self) -> torch.Tensor:
        """``(n,)`` norms of the effective columns ``U_V[j] v_j + δ_j``."""
        a = self.tracks[2]
        if self.fixed_v:
            return self.u_sq.clamp_min(0.0).sqrt()
        if not self.compensate:
            return a.abs() * self.v_sq.sqrt()
        return (a * a * self.v_sq + 2.0 * a * self.cross + self.delta_sq).clamp_min(0.0).sqrt()

    def distances(self) -> torch.Tensor:
        d = self.raw_distances()
        if self.output_aware:
            d = d * self.v_column_norms()
        return torch.where(self.alive, d, torch.full_like(d, float("inf")))

    def _effective_column(self, i: int) -> torch.Tensor:
        if self.fixed_v:
            return self.pending_u.row(self.UT[i], i)
        c = self.V[:, i] * self.tracks[2, i]
        return c + self._delta_column(i) if self.compensate else c

    def remove(self, i: int, ratio: float) -> None:
        q = self.coefficients(i)
        c = self._effective_column(i) if (self.compensate or self.bias_delta is not None) else None
        if self.bias_delta is not None:
            source = self.bias_source if self.fixed_tracks else self.bias_source * self.tracks[1]
            reconstruction = q @ source if self.compensate else 0.0
            self.bias_delta += c * (source[i] - reconstruction)
        if self.fixed_v:
            if self.output_aware:  # u_j += q_j c for every j
                u_dot_c, c_sq = self._dots_with_removed(q, c)
                self.u_sq += q * (2.0 * u_dot_c + q * c_sq)
            if self.pending_u.add(-q, c):
                self._flush_u()
        elif self.compensate:
            t = self.n_comp
            if self.output_aware:
                # δ_j += q_j c for every j: update v_j·δ_j and ‖δ_j‖² before appending the term
                delta_dot_c = (self.comp_c[:t] @ c) @ self.comp_q[:t]
                self.cross += q * (c @ self.V)
                self.delta_sq += q * (2.0 * delta_dot_c + q * (c @ c))
            self.comp_c[t] = c
            self.comp_q[t] = q
            self.n_comp += 1
        if not self.fixed_tracks:
            self.tracks *= 1.0 + ratio * self.strengths.unsqueeze(1) * q.unsqueeze(0)
        self.alive[i] = False
        self.n_alive -= 1
        self.order.append(i)
        self.forget(i, q, ratio)

    def _dots_with_removed(self, q: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Uᵀc: (n,), ‖c‖²)`` for the effective column ``c`` of the unit being removed (``q``: its
        coefficients, for trackers that update a Gram matrix of ``U`` here): one product with ``U``."""
        return self.pending_u.times(self.UT @ c, c), c @ c

    def _flush_u(self) -> None:
        if len(self.pending_u):
            A, B = self.pending_u.take()  # (n, K), (k, K)
            self.UT.addmm_(A, B.T, alpha=-1.0)

    def result(self, out_dtype: torch.dtype) -> PruneResult:
        v_delta = None
        if self.fixed_v:
            self._flush_u()
            v_delta = (self.UT.T - self.V).to(out_dtype)  # Σ_s c_s q_sᵀ: (k, n)
        elif self.compensate:
            t = self.n_comp
            v_delta = (self.comp_c[:t].T @ self.comp_q[:t]).to(out_dtype)  # Σ_s c_s q_sᵀ: (k, n)
        return PruneResult(
            keep=self.alive.clone(),
            order=torch.tensor(self.order, dtype=torch.long, device=self.device),
            scale_w=self.tracks[0].to(out_dtype),
            scale_b=self.tracks[1].to(out_dtype),
            scale_v=self.tracks[2].to(out_dtype),
            v_delta=v_delta,
            out_bias_delta=None if self.bias_delta is None else self.bias_delta.to(out_dtype),
        )


class _LazyState(_LayerState):
    """The reference's lazy tracking (docs/algorithm.md §4).

    The reference divides the remaining rows of ``Q`` by ``1 + α' Q[i]`` at every step: a
    scaling of ``Q``'s columns. We keep the original ``Q0`` and the cumulative column scale
    ``e`` instead (``Q_t = Q0 · diag(e)``), so a step costs one product
    ``Q0[rem, rem] @ (e ⊙ W[rem])`` on the remaining units only; rows of removed units
    are zeroed and squeezed out every few steps.
    """

    def __init__(self, W, b, V, opts, dtype, amount, bias_source, lmbda, Q=None):
        super().__init__(W, b, V, opts, dtype, amount, bias_source)
        self.Q0 = (solve_closed(self.W, lmbda, dtype) if Q is None else Q.to(dtype)).clone()
        self.Q0.diagonal().zero_()
        self.e = torch.ones(self.n, dtype=dtype, device=self.device)
        self._reset_compact()

    def _reset_compact(self) -> None:
        self.idx = torch.nonzero(self.alive, as_tuple=False).flatten()
        self.Qc = self.Q0[self.idx][:, self.idx]
        self.Wc = self.W[self.idx].clone()
        self.pos = torch.full((self.n,), -1, dtype=torch.long, device=self.device)
        self.pos[self.idx] = torch.arange(len(self.idx), device=self.device)
        self.dead_in_compact = 0

    def raw_distances(self) -> torch.Tensor:
        Y = self.Wc * self.e[self.idx].unsqueeze(1)
        R = torch.addmm(self.Wc, self.Qc, Y, alpha=1.0, beta=-1.0)  # Q_t W - W on remaining rows
        d = torch.full((self.n,), float("inf"), dtype=self.dtype, device=self.device)
        d[self.idx] = torch.linalg.vector_norm(R, dim=1)
        return d

    def coefficients(self, i: int) -> torch.Tensor:
        # row i of the lazily updated Q: original row, column scales, removed columns zero
        q = self.Q0[i] * self.e * self.alive
        q[i] = 0.0
        return q

    def forget(self, i: int, q: torch.Tensor, ratio: float) -> None:
        self.e /= 1.0 + (ratio * self.alpha) * q
        p = int(self.pos[i])
        self.Qc[:, p] = 0.0
        self.Wc[p] = 0.0
        self.dead_in_compact += 1
        if self.dead_in_compact >= max(8, len(self.idx) // 16):
            self._reset_compact()


class _ExactState(_LayerState):
    """Exact greedy with rank-1 downdates of the precision matrix (docs/algorithm.md §5).

    ``P_t = P_0 - C C^T`` where column ``s`` of ``C`` is ``P_s[:, s] / sqrt(P_s[s, s])`` for
    the unit removed at step ``s``; only the column ``P_t[:, i]`` of the unit being removed
    is ever formed. ``R_t = P_t W`` is updated in blocks: between flushes a row of ``R_t``
    and the products ``R_t r`` are corrected by the pending rank-1 terms, and the squared
    row norms are updated by the exact expansion; every ``block`` steps the pending terms
    are applied with one matrix product and the norms recomputed from scratch.
    """

    def __init__(self, W, b, V, opts, dtype, amount, bias_source, lmbda, block: int = 32):
        super().__init__(W, b, V, opts, dtype, amount, bias_source)
        self.P0, self.R, self.diag0 = precision_and_residuals(self.W, lmbda, dtype)  # (n, n), (n, m), (n,)
        self.C = torch.zeros(max(amount, 1), self.n, dtype=dtype, device=self.device)  # row s: c_s
        self.t = 0
        self.pending = _PendingTerms(block)  # R_t = R_f - Σ c_s r_sᵀ
        self._flush()

    def _flush(self) -> None:
        if len(self.pending):
            Cp, Rp = self.pending.take()  # (n, K), (m, K)
            self.R.addmm_(Cp, Rp.T, alpha=-1.0)
        self.R[~self.alive] = 0.0
        self.sq_norms = (self.R * self.R).sum(dim=1)
        Ct = self.C[: self.t]
        self.diag = self.diag0 - (Ct * Ct).sum(dim=0)

    def _column(self, i: int) -> torch.Tensor:
        """``P_t[:, i]`` (= row ``i``, ``P`` is symmetric) from ``P_0`` and the removed columns."""
        Ct = self.C[: self.t]
        return self.P0[i] - Ct[:, i] @ Ct

    def raw_distances(self) -> torch.Tensor:
        norms = self.sq_norms.clamp_min(0.0).sqrt()
        return norms / self.diag * self.tracks[0].abs()

    def coefficients(self, i: int) -> torch.Tensor:
        p = self._column(i) * self.alive
        self._p = p  # P_t[:, i]: forget(i) applies the downdate with it (remove() calls the two in turn)
        q = -(p / p[i]) * (self.tracks[0, i] / self.tracks[0])
        q = q * self.alive
        q[i] = 0.0
        return q

    def forget(self, i: int, q: torch.Tensor, ratio: float) -> None:
        p = self._p
        pii = p[i]
        r_i = self.pending.row(self.R[i], i)
        c = p / pii  # R_{t+1} = R_t - c r_i^T
        dots = self.pending.times(self.R @ r_i, r_i)
        self.sq_norms += c * (c * (r_i @ r_i) - 2.0 * dots)
        full = self.pending.add(c, r_i)
        self.C[self.t] = p / pii.sqrt()
        self.t += 1
        self.diag = self.diag - p * p / pii
        self.sq_norms[i] = 0.0
        if full:
            self._flush()


class _CalibratedExactState(_LayerState):
    """Exact greedy on activation statistics (docs/algorithm.md §8): greedy structured OBS.

    ``P_t = (C_KK + λI)^{-1}`` over the kept set ``K`` (zero elsewhere) is
    ``P_f - Σ_s c_s c_sᵀ``, ``P_f`` the matrix at the last flush and ``c_s = P_s[:, s] /
    sqrt(P_s[s, s])`` the pending downdates. The distance of unit ``j`` is
    ``d_j² = (P C P)[j, j] / P[j, j]²`` with ``(P C P)[j, j] = P[j, j] - λ (P²)[j, j]``;
    ``diag(P²)`` is downdated with ``P_t p = P_f p - Σ_s c_s (c_sᵀ p)`` and
    ``P_f p = S_f[:, i] - Σ_s e_s c_s[i]`` (``S_f = P_f²``, ``e_s = P_f c_s``), so a step costs
    ``O(n · block)``. Every ``block`` steps the terms are applied with matrix products,
    ``P_f ← P_f - C Cᵀ`` and ``S_f ← S_f - E Cᵀ - C Eᵀ + C (CᵀC) Cᵀ`` (one product of rank
    ``2 · block``), and both matrices are squeezed to the units still there. Output-aware with a
    fixed V (``calib``), the norms ``‖u_j‖`` of the effective columns need ``Uᵀc`` at every step;
    a third symmetric matrix, the Gram ``G = UᵀU``, gives it as one row (rank-2 terms per step,
    flushed and squeezed with ``P`` and ``S``) instead of a pass over the ``(n, k)`` matrix ``U``.
    All three are symmetric:
    ``S_0 = P_0²`` and every flush are formed on the upper block rows only (about half the
    flops) and a row is read from the upper triangle.
    """

    reads_w = False

    def __init__(self, W, b, V, opts, dtype, amount, bias_source, C: torch.Tensor, lam: float, block: int = 64):
        """``C: (n, n)`` the covariance; it is overwritten (it becomes ``P``: one ``(n, n)`` buffer fewer)."""
        super().__init__(W, b, V, opts, dtype, amount, bias_source)
        self.lam = lam
        P = regularised_inverse(C.to(device=self.device, dtype=dtype), lam, "the calibration covariance",
                                CALIBRATION_SINGULAR_HINT, overwrite=True)
        # LAPACK returns P column-major; it is exactly symmetric, so its transpose is the same matrix row-major
        # (rows of P are then contiguous: cheaper row reads and squeezes)
        self.P = P.mT if not P.is_contiguous() and P.mT.is_contiguous() else P
        # P and S are symmetric: only their upper triangles are kept up to date (rows read by _symmetric_row)
        self.S = gram(self.P, upper_only=True)  # P² = PᵀP
        self.diag = self.P.diagonal().clone()
        self.diag2 = self.S.diagonal().clone()
        self.idx = torch.arange(self.n, device=self.device)  # units of the rows of P, S and G
        self.pos = self.idx.clone()  # unit -> row of P, S and G
        self.pending_c = _PendingTerms(block, symmetric=True)  # P_t = P_f - Σ c_s c_sᵀ
        self.pending_e = _PendingTerms(block)  # P_f P_t = S_f - Σ e_s c_sᵀ
        # Output-aware with fixed V: the Gram matrix G = UᵀU of the effective columns replaces the
        # per-step product Uᵀc (n·k reads of U) by a row of G (n reads); u_j += q_j c changes it by
        # G += a qᵀ + q aᵀ with a = G[:, i] + ‖c‖²/2 q, kept as pending terms (two per step).
        self.G = gram(self.V, upper_only=True) if self.fixed_v and self.output_aware else None  # (n, n)
        self.pending_g = _PendingTerms(2 * block)  # G_t = G_f - Σ (-a_s) q_sᵀ - Σ (-q_s) a_sᵀ

    def raw_distances(self) -> torch.Tensor:
        d2 = (self.diag - self.lam * self.diag2).clamp_min(0.0) / (self.diag * self.diag)
        return d2.sqrt()

    def coefficients(self, i: int) -> torch.Tensor:
        r = int(self.pos[i])
        alive = self.alive[self.idx]
        p = self.pending_c.row(symmetric_row(self.P, r), r) * alive  # P_t[:, i] on the rows of P
        self._p, self._r = p, r
        q = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        q[self.idx] = -(p / p[r])
        q[i] = 0.0
        return q * self.alive

    def _dots_with_removed(self, q: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.G is None:
            return super()._dots_with_removed(q, c)
        r = self._r  # coefficients(i) ran first in remove()
        g = self.pending_g.row(symmetric_row(self.G, r), r)  # Uᵀc on the rows of G (c = u_i)
        c_sq = g[r]
        q_rows = q[self.idx]
        a = g + (0.5 * c_sq) * q_rows
        self.pending_g.add(-a, q_rows)
        self.pending_g.add(-q_rows, a)
        dots = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        dots[self.idx] = g
        return dots, c_sq

    def forget(self, i: int, q: torch.Tensor, ratio: float) -> None:
        p, r = self._p, self._r
        pii = p[r]
        Pfp = self.pending_e.row(symmetric_row(self.S, r), r)  # P_f p (p = P_t e_i)
        Ptp = self.pending_c.times(Pfp, p)
        sub = self.idx
        self.diag[sub] -= p * p / pii
        self.diag2[sub] += p * (p * ((p @ p) / (pii * pii)) - 2.0 * Ptp / pii)
        root = pii.sqrt()
        c = p / root
        self.pending_e.add(c, Pfp / root)
        full = self.pending_c.add(c, c)  # symmetric: c is written once
        self.diag[i] = 1.0  # unit i is gone; keeps the distance formula finite
        self.diag2[i] = 0.0
        if full:
            self._flush()

    def _flush(self) -> None:
        Cm, _ = self.pending_c.take()  # (r, K) the c_s on the rows of P
        _, Em = self.pending_e.take()  # (r, K) the e_s = P_f c_s
        X = torch.addmm(Em, Cm, Cm.T @ Cm, alpha=-0.5)  # E - C (CᵀC) / 2
        Ga, Gb = self.pending_g.take() if len(self.pending_g) else (None, None)
        keep = self.alive[self.idx]
        dead = len(self.idx) - int(keep.sum())
        if dead >= max(self.pending_c.block, len(self.idx) // 8):  # squeeze out the removed units
            rows = torch.nonzero(keep, as_tuple=False).flatten()
            Cm, X = Cm[rows], X[rows]
            self.idx = self.idx[rows]
            self.pos[self.idx] = torch.arange(len(self.idx), device=self.device)
            grid = (rows.unsqueeze(1), rows)  # one gather for rows and columns
            self.P = self.P[grid]
            self.S = self.S[grid]
            if self.G is not None:
                self.G = self.G[grid]
                Ga, Gb = (None, None) if Ga is None else (Ga[rows], Gb[rows])
        # S - E Cᵀ - C Eᵀ + C (CᵀC) Cᵀ = S - [X C] [C X]ᵀ: one product of rank 2K, one pass over S
        sub_upper_product_(self.S, torch.cat((X, Cm), dim=1), torch.cat((Cm, X), dim=1))
        sub_upper_product_(self.P, Cm, Cm)
        if Ga is not None:
            sub_upper_product_(self.G, Ga, Gb)

    def result(self, out_dtype: torch.dtype) -> PruneResult:
        """The outcome; ``P``, ``P²`` and ``G`` (``(n, n)`` matrices) are released first: the state is finished."""
        self.P = self.S = self.G = None
        return super().result(out_dtype)


# --------------------------------------------------------------------------- calibration helpers
#: Why a calibration covariance with enough samples is singular (λ there is lmbda × the mean variance).
CALIBRATION_SINGULAR_HINT = (
    "some units' activations are linearly dependent on the calibration data (dead, constant or duplicated "
    "units); use lmbda > 0 (relative: λ = lmbda × mean activation variance) or more varied calibration data"
)


def check_samples(stats: ActivationStats, width: int, lmbda: float, name: str = "") -> None:
    """Enough calibration samples for a covariance of ``width`` units: said before any solve.

    One sample gives a zero covariance (and a λ relative to its trace of zero); at ``lmbda = 0``
    the covariance of ``width`` units from ``count <= width`` samples has rank ``<= count - 1``.
    """
    count = stats.count
    if count == 1:
        raise ValueError(f"stats{name}: {count} calibration samples for width {width}; the covariance of one "
                         "sample is zero: collect more calibration data (tokens, pixels or images: more than "
                         f"{width} samples for a full-rank covariance)")
    if lmbda == 0 and count <= width:
        raise ValueError(f"stats{name}: {count} calibration samples for width {width}; at lmbda=0 the covariance "
                         f"of {width} units needs more than {width} samples (it has rank <= {count - 1}): collect "
                         "more calibration data, or use lmbda > 0")


def calibration_terms(stats: ActivationStats, lmbda: float, device: torch.device, dtype: torch.dtype):
    """``(C, μ, λ)`` from statistics: covariance ``(n, n)``, means ``(n,)``, absolute λ (relative × trace/n)."""
    C = stats.covariance().to(device=device, dtype=dtype)
    mu = stats.mean.to(device=device, dtype=dtype)
    energy = float(C.diagonal().sum()) / C.shape[0]
    lam = lmbda * energy if energy > 0 else lmbda
    return C, mu, lam


def _activation_factor(C: torch.Tensor) -> torch.Tensor:
    """``F: (n, n)`` with ``F Fᵀ = C`` (eigen-decomposition; negative rounding clipped)."""
    s, U = torch.linalg.eigh(C)
    return U * s.clamp_min(0.0).sqrt()


def refit_next_layer(
    V: torch.Tensor,
    stats: ActivationStats,
    keep: torch.Tensor,
    lmbda: float = 1e-3,
    mean_correction: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Least-squares next layer on the kept units (docs/algorithm.md §8).

    ``V' = V C[:, K] (C[K, K] + λI)^{-1}`` (``λ = lmbda · trace(C)/n``) minimises the
    output error ``‖V Hc - V' Hc_K‖²`` on the calibration activations.

    Args:
        V: ``(k, n)`` the next layer's weight.
        stats: statistics of the ``n`` units.
        keep: ``(n,)`` bool.
        mean_correction: also return the bias change ``V μ - V' μ_K``.

    Returns:
        ``V': (k, n')`` and the bias change ``(k,)`` (None without mean correction), in ``V``'s dtype.
    """
    check_samples(stats, int(keep.sum()), lmbda)
    C, mu, lam = calibration_terms(stats, lmbda, V.device, torch.float64)
    K = torch.nonzero(keep, as_tuple=False).flatten()
    Vd = V.to(torch.float64)
    P = regularised_inverse(C[K][:, K], lam, "the kept units' calibration covariance", CALIBRATION_SINGULAR_HINT)
    V_new = (Vd @ C[:, K]) @ P
    delta = Vd @ mu - V_new @ mu[K] if mean_correction else None
    return V_new.to(V.dtype), None if delta is None else delta.to(V.dtype)


def apply_refit(result: PruneResult, V: torch.Tensor, stats: ActivationStats, opts: ProjectionOptions) -> None:
    """Replace ``result``'s next-layer update by the least-squares refit on its kept units (in place)."""
    V_new, delta = refit_next_layer(V, stats, result.keep, opts.lmbda, opts.mean_correction)
    v_delta = torch.zeros_like(V)
    v_delta[:, result.keep] = V_new - V[:, result.keep]
    result.scale_v = torch.ones_like(result.scale_v)
    result.v_delta = v_delta
    result.out_bias_delta = delta


# --------------------------------------------------------------------------- validation
def validate_layer(W: torch.Tensor, b: torch.Tensor | None, V: torch.Tensor | None,
                   stats: ActivationStats | None, opts: ProjectionOptions, name: str = "") -> None:
    check_matrix(W, f"W{name}")
    n = W.shape[0]
    if b is not None:
        check_vector(b, f"b{name}", n)
    if V is not None:
        check_matrix(V, f"V{name}", cols=n)
    check_same_device_dtype({f"W{name}": W, f"b{name}": b, f"V{name}": V})
    if (opts.output_aware or opts.compensate) and V is None:
        raise ValueError("output_aware and compensate need V (the next layer's weight, shape (k, n))")
    if stats is None:
        if opts.refit:
            raise ValueError("refit needs calibration statistics (stats=...)")
        return
    if not isinstance(stats, ActivationStats):
        raise ValueError(f"stats{name} must be an ActivationStats, got {type(stats).__name__}")
    if stats.n != n:
        raise ValueError(f"stats{name} describe {stats.n} units but W{name} has {n} rows; expected the statistics "
                         "of what the next layer reads from these units")
    if stats.count == 0:
        raise ValueError(f"stats{name} hold no samples; expected at least one calibration batch")
    check_samples(stats, n, opts.lmbda, name)
    opts.check_calibrated()
    if (opts.mean_correction or opts.refit) and V is None:
        raise ValueError("mean_correction and refit need V (the next layer's weight, shape (k, n))")


def _step_ratio(step: int, amount: int, decay: bool) -> float:
    """Linear decay of the redistribution strengths: ``r = 1 - step / amount``."""
    return 1.0 - step / amount if decay else 1.0


def _drive(states: Sequence[_LayerState], amount: int, decay: bool, callback: StepCallback | None) -> None:
    """Remove ``amount`` units across ``states``; with several layers, compare per-layer normalised distances."""
    normalise = len(states) > 1
    for step in range(amount):
        ratio = _step_ratio(step, amount, decay)
        best_layer, best_unit, best_value = -1, -1, float("inf")
        for li, state in enumerate(states):
            if state.n_alive <= 1:
                continue  # a layer keeps at least one unit
            d = state.distances()
            if normalise:
                total = d[state.alive].sum()
                if total > 0:
                    d = d / total
            unit = int(torch.argmin(d))  # first minimum: ties go to the lowest index
            value = float(d[unit])
            if best_layer < 0 or value < best_value:
                best_layer, best_unit, best_value = li, unit, value
        states[best_layer].remove(best_unit, ratio)
        if callback is not None:
            callback(step)


def make_layer_state(opts: ProjectionOptions, W, b, V, stats, amount: int, dtype: torch.dtype, Q=None) -> _LayerState:
    """The greedy's state for one layer ``W: (n, m)``, ``V: (k, n)`` (lazy, exact or calibrated from ``opts``
    and ``stats``), ready to remove up to ``amount`` units; used by the greedies and ``prune_blocks``' merge."""
    if stats is None:
        bias_source = b if (opts.compensate and opts.identity_activation and b is not None) else None
        state_cls = _LazyState if opts.tracking == "lazy" else _ExactState
        extra = {"Q": Q} if opts.tracking == "lazy" else {}
        return state_cls(W, b, V, opts, dtype, amount, bias_source, opts.lmbda, **extra)
    C, mu, lam = calibration_terms(stats, opts.lmbda, W.device, dtype)  # C: a fresh matrix, ours to overwrite
    bias_source = mu if opts.mean_correction else None
    if opts.tracking == "exact":
        return _CalibratedExactState(W, b, V, opts, dtype, amount, bias_source, C, lam)
    # lazy tracking on activations: the paper's loop on any factor F with F Fᵀ = C
    return _LazyState(_activation_factor(C), b, V, opts, dtype, amount, bias_source, lam)


def _finish(state: _LayerState, W: torch.Tensor, V, stats, opts: ProjectionOptions) -> PruneResult:
    result = state.result(W.dtype)
    if stats is not None and opts.refit:
        apply_refit(result, V, stats, opts)
    return result


def _greedy_single(W, amount, options, overrides, *, b, V, stats, dtype, callback, Q=None) -> PruneResult:
    opts = resolve_options(options, overrides)
    validate_layer(W, b, V, stats, opts)
    amount = check_amount(amount, W.shape[0])
    if Q is not None and stats is not None:
        raise ValueError("Q and stats are exclusive: Q is computed from the statistics")
    state = make_layer_state(opts, W, b, V, stats, amount, dtype or torch.float64, Q)
    _drive([state], amount, opts.decay, callback)
    return _finish(state, W, V, stats, opts)


def greedy_lazy(
    W: torch.Tensor,
    amount: int,
    options: ProjectionOptions | None = None,
    *,
    b: torch.Tensor | None = None,
    V: torch.Tensor | None = None,
    stats: ActivationStats | None = None,
    Q: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    callback: StepCallback | None = None,
    **overrides,
) -> PruneResult:
    """The paper's greedy pruning with lazy coefficient tracking (docs/algorithm.md §4).

    Args:
        W: ``(n, m)`` the layer's weight, one row per unit.
        amount: number of units to remove, ``0 <= amount < n``.
        options: :class:`ProjectionOptions` (``tracking`` is forced to ``"lazy"``).
        b: ``(n,)`` bias (redistributed by β; data-free bias correction with ``identity_activation``).
        V: ``(k, n)`` next layer's weight, needed for ``output_aware``, ``compensate`` and calibration.
        stats: calibration statistics of the ``n`` units (docs/algorithm.md §8): the greedy then
            runs on the activations instead of ``W``.
        Q: a precomputed ``(n, n)`` coefficient matrix (default: the closed-form solver).
        dtype: compute dtype (default float64).
        callback: called with the step index after every removal (progress bars).
        **overrides: :class:`ProjectionOptions` fields (``alpha=...``, ``lmbda=...``).

    Returns:
        :class:`PruneResult` with tracks in ``W``'s dtype.
    """
    return _greedy_single(W, amount, options, {**overrides, "tracking": "lazy"}, b=b, V=V, stats=stats,
                          dtype=dtype, callback=callback, Q=Q)


def greedy_exact(W: torch.Tensor, amount: int, options: ProjectionOptions | None = None, **keywords) -> PruneResult:
    """Exact greedy pruning with rank-1 downdates of the precision matrix (docs/algorithm.md §5).

    Every step prunes the remaining unit with the smallest projection distance among the
    remaining (redistributed) rows and redistributes it with exact ridge coefficients
    ``q_ij = -(P[i, j] / P[i, i]) · U_α[i] / U_α[j]``. With ``stats`` the same runs on the
    activations' covariance: greedy structured optimal-brain-surgeon (docs/algorithm.md §8).
    Keywords as :func:`greedy_lazy` except ``Q`` (``tracking`` is forced to ``"exact"``).

    Returns:
        :class:`PruneResult` with tracks in ``W``'s dtype.
    """
    if "Q" in keywords:
        raise ValueError("Q is only used by the lazy tracking (greedy_lazy); the exact greedy solves its own")
    fixed = {name: keywords.pop(name, None) for name in ("b", "V", "stats", "dtype", "callback")}
    return _greedy_single(W, amount, options, {**keywords, "tracking": "exact"}, **fixed)


def _per_layer(values, count: int, name: str) -> list:
    values = list(values) if values is not None else [None] * count
    if len(values) != count:
        raise ValueError(f"{name} must have one entry per layer ({count}), got {len(values)}")
    return values


def greedy_global(
    Ws: Sequence[torch.Tensor],
    amount: int,
    options: ProjectionOptions | None = None,
    *,
    bs: Sequence[torch.Tensor | None] | None = None,
    Vs: Sequence[torch.Tensor | None] | None = None,
    stats: Sequence[ActivationStats | None] | None = None,
    dtype: torch.dtype | None = None,
    callback: StepCallback | None = None,
    **overrides,
) -> list[PruneResult]:
    """Global greedy over several layers (docs/algorithm.md §4, "global mode").

    Each step normalises every layer's remaining distances by their sum, takes each layer's
    minimum and prunes in the layer whose minimum is smallest; decay runs over the global
    step count. Every layer keeps at least one unit.

    Args:
        Ws: layer weights ``(n_l, m_l)``.
        amount: total number of units to remove, ``0 <= amount <= sum(n_l) - len(Ws)``.
        options: :class:`ProjectionOptions`; ``tracking`` picks lazy or exact.
        bs, Vs: per-layer biases ``(n_l,)`` and next-layer weights ``(k_l, n_l)`` (or None).
        stats: per-layer calibration statistics (all or none).
        Other arguments as :func:`greedy_lazy`.

    Returns:
        One :class:`PruneResult` per layer.
    """
    opts = resolve_options(options, overrides)
    if len(Ws) == 0:
        raise ValueError("Ws must hold at least one weight matrix")
    bs, Vs, stats = (_per_layer(v, len(Ws), name) for v, name in ((bs, "bs"), (Vs, "Vs"), (stats, "stats")))
    if any(s is None for s in stats) and any(s is not None for s in stats):
        raise ValueError("stats must be given for every layer or for none")
    for li, (W, b, V, st) in enumerate(zip(Ws, bs, Vs, stats)):
        validate_layer(W, b, V, st, opts, name=f"[{li}]")
    capacity = sum(W.shape[0] for W in Ws) - len(Ws)
    amount = check_amount(amount, capacity + 1)
    # The exact state pre-allocates room for the most units one layer can lose.
    states = [make_layer_state(opts, W, b, V, st, min(amount, W.shape[0] - 1), dtype or torch.float64)
              for W, b, V, st in zip(Ws, bs, Vs, stats)]
    _drive(states, amount, opts.decay, callback)
    return [_finish(state, W, V, st, opts) for state, W, V, st in zip(states, Ws, Vs, stats)]


def apply_pruning(
    W: torch.Tensor, b: torch.Tensor | None, V: torch.Tensor | None, result: PruneResult
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Apply a :class:`PruneResult` (docs/algorithm.md §4).

    Args:
        W: ``(n, m)``; b: ``(n,)`` or None; V: ``(k, n)`` or None.

    Returns:
        ``W' = W[keep] ⊙ U_α``: ``(n', m)``; ``b' = b[keep] ⊙ U_β``: ``(n',)``;
        ``V' = V[:, keep] ⊙ U_V + v_delta[:, keep]``: ``(k, n')``; and the next layer's
        bias correction ``(k,)`` (None without compensation).
    """
    keep = result.keep
    if keep.shape[0] != W.shape[0]:
        raise ValueError(f"result is for {keep.shape[0]} units but W has {W.shape[0]} rows")
    W_new = W[keep] * result.scale_w[keep].to(W.dtype).unsqueeze(1)
    b_new = None if b is None else b[keep] * result.scale_b[keep].to(b.dtype)
    V_new = None
    if V is not None:
        V_new = V[:, keep] * result.scale_v[keep].to(V.dtype)
        if result.v_delta is not None:
            V_new = V_new + result.v_delta[:, keep].to(V.dtype)
    bias_delta = None if result.out_bias_delta is None else result.out_bias_delta
    return W_new, b_new, V_new, bias_delta
