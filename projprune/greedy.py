"""Greedy selection and redistribution (ALGORITHM.md §2, §4, §5).

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

from projprune._checks import (
    check_amount,
    check_coefficient,
    check_lmbda,
    check_matrix,
    check_same_device_dtype,
    check_vector,
)
from projprune.solvers import precision_and_residuals, solve_closed

__all__ = ["PruneResult", "apply_pruning", "greedy_exact", "greedy_global", "greedy_lazy"]

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
class _LayerState:
    """What both trackers share: the α/β/γ tracks, the V-side options and the bookkeeping.

    Compensation is kept as a stack of rank-1 terms ``c_s q_sᵀ`` (``c_s``: the effective
    column of the unit removed at step ``s``, ``q_s`` its coefficients), multiplied out once
    at the end instead of updating a ``(k, n)`` matrix at every step. For ``output_aware`` the
    squared norms of the effective columns ``a_j v_j + δ_j`` are kept from three running
    vectors, ``‖v_j‖²``, ``v_j·δ_j`` and ``‖δ_j‖²``: one product with ``V`` per step.
    """

    def __init__(
        self,
        W: torch.Tensor,
        b: torch.Tensor | None,
        V: torch.Tensor | None,
        alpha: float,
        beta: float,
        gamma: float,
        v_uses_beta: bool,
        output_aware: bool,
        compensate: bool,
        dtype: torch.dtype,
        amount: int,
    ) -> None:
        self.n = W.shape[0]
        self.device = W.device
        self.dtype = dtype
        self.W = W.to(dtype)
        self.b = None if b is None else b.to(dtype)
        self.V = None if V is None else V.to(dtype)
        self.alive = torch.ones(self.n, dtype=torch.bool, device=W.device)
        # tracks: row 0 = U_α (W rows), 1 = U_β (bias), 2 = the track used for V's columns
        self.tracks = torch.ones(3, self.n, dtype=dtype, device=W.device)
        v_strength = beta if v_uses_beta else gamma
        self.strengths = torch.tensor([alpha, beta, v_strength], dtype=dtype, device=W.device)
        self.alpha = alpha
        self.output_aware = output_aware
        self.compensate = compensate
        self.order: list[int] = []
        if output_aware:
            self.v_sq = (self.V * self.V).sum(dim=0)  # ‖v_j‖²
        self.bias_delta = None
        if compensate:
            k, rows = self.V.shape[0], max(amount, 1)
            self.comp_c = torch.zeros(rows, k, dtype=dtype, device=W.device)  # effective columns removed
            self.comp_q = torch.zeros(rows, self.n, dtype=dtype, device=W.device)  # their coefficients
            self.n_comp = 0
            self.cross = torch.zeros(self.n, dtype=dtype, device=W.device)  # v_j · δ_j
            self.delta_sq = torch.zeros(self.n, dtype=dtype, device=W.device)  # ‖δ_j‖²
            if self.b is not None:
                self.bias_delta = torch.zeros(k, dtype=dtype, device=W.device)

    # Solver-specific parts ------------------------------------------------------------
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
        if not self.compensate:
            return a.abs() * self.v_sq.sqrt()
        return (a * a * self.v_sq + 2.0 * a * self.cross + self.delta_sq).clamp_min(0.0).sqrt()

    def distances(self) -> torch.Tensor:
        d = self.raw_distances()
        if self.output_aware:
            d = d * self.v_column_norms()
        return torch.where(self.alive, d, torch.full_like(d, float("inf")))

    def remove(self, i: int, ratio: float) -> None:
        q = self.coefficients(i)
        if self.compensate:
            t = self.n_comp
            c = self.V[:, i] * self.tracks[2, i] + self._delta_column(i)  # unit i's effective column
            if self.bias_delta is not None:
                b_eff = self.b * self.tracks[1]
                self.bias_delta += c * (b_eff[i] - q @ b_eff)
            if self.output_aware:
                # δ_j += q_j c for every j: update v_j·δ_j and ‖δ_j‖² before appending the term
                delta_dot_c = (self.comp_c[:t] @ c) @ self.comp_q[:t]
                self.cross += q * (c @ self.V)
                self.delta_sq += q * (2.0 * delta_dot_c + q * (c @ c))
            self.comp_c[t] = c
            self.comp_q[t] = q
            self.n_comp += 1
        self.tracks *= 1.0 + ratio * self.strengths.unsqueeze(1) * q.unsqueeze(0)
        self.alive[i] = False
        self.order.append(i)
        self.forget(i, q, ratio)

    def result(self, out_dtype: torch.dtype) -> PruneResult:
        v_delta = None
        if self.compensate:
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
    """The reference's lazy tracking (ALGORITHM.md §4).

    The reference divides the remaining rows of ``Q`` by ``1 + α' Q[i]`` at every step: a
    scaling of ``Q``'s columns. We keep the original ``Q0`` and the cumulative column scale
    ``e`` instead (``Q_t = Q0 · diag(e)``), so a step costs one product
    ``Q0[rem, rem] @ (e ⊙ W[rem])`` on the remaining units only; rows of removed units
    are zeroed and squeezed out every few steps.
    """

    def __init__(self, W, b, V, alpha, beta, gamma, v_uses_beta, output_aware, compensate, dtype, lmbda, amount, Q):
        super().__init__(W, b, V, alpha, beta, gamma, v_uses_beta, output_aware, compensate, dtype, amount)
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
    """Exact greedy with rank-1 downdates of the precision matrix (ALGORITHM.md §5).

    ``P_t = P_0 - C C^T`` where column ``s`` of ``C`` is ``P_s[:, s] / sqrt(P_s[s, s])`` for
    the unit removed at step ``s``; only the column ``P_t[:, i]`` of the unit being removed
    is ever formed. ``R_t = P_t W`` is updated in blocks: between flushes a row of ``R_t``
    and the products ``R_t r`` are corrected by the pending rank-1 terms, and the squared
    row norms are updated by the exact expansion; every ``block`` steps the pending terms
    are applied with one matrix product and the norms recomputed from scratch.
    """

    def __init__(self, W, b, V, alpha, beta, gamma, v_uses_beta, output_aware, compensate, dtype, lmbda, amount,
                 block: int = 32):
        super().__init__(W, b, V, alpha, beta, gamma, v_uses_beta, output_aware, compensate, dtype, amount)
        self.P0, self.R, self.diag0 = precision_and_residuals(self.W, lmbda, dtype)  # (n, n), (n, m), (n,)
        self.C = torch.zeros(max(amount, 1), self.n, dtype=dtype, device=self.device)  # row s: c_s
        self.t = 0
        self.block = block
        self.pending_c: list[torch.Tensor] = []  # (n,) factors of the pending rank-1 terms
        self.pending_r: list[torch.Tensor] = []  # (m,) rows of the pending rank-1 terms
        self._flush()

    def _flush(self) -> None:
        if self.pending_c:
            Cp = torch.stack(self.pending_c, dim=1)  # (n, K)
            Rp = torch.stack(self.pending_r, dim=0)  # (K, m)
            self.R.addmm_(Cp, Rp, alpha=-1.0)
            self.pending_c.clear()
            self.pending_r.clear()
        self.R[~self.alive] = 0.0
        self.sq_norms = (self.R * self.R).sum(dim=1)
        Ct = self.C[: self.t]
        self.diag = self.diag0 - (Ct * Ct).sum(dim=0)

    def _row(self, i: int) -> torch.Tensor:
        r = self.R[i].clone()
        for c, rp in zip(self.pending_c, self.pending_r):
            r -= c[i] * rp
        return r

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
        r_i = self._row(i)
        c = p / pii  # R_{t+1} = R_t - c r_i^T
        dots = self.R @ r_i
        for cp, rp in zip(self.pending_c, self.pending_r):
            dots -= cp * (rp @ r_i)
        self.sq_norms += c * (c * (r_i @ r_i) - 2.0 * dots)
        self.pending_c.append(c)
        self.pending_r.append(r_i)
        self.C[self.t] = p / pii.sqrt()
        self.t += 1
        self.diag = self.diag - p * p / pii
        self.sq_norms[i] = 0.0
        if len(self.pending_c) >= self.block:
            self._flush()


# --------------------------------------------------------------------------- validation
def _validate_layer(
    W: torch.Tensor, b: torch.Tensor | None, V: torch.Tensor | None, name: str = ""
) -> None:
    check_matrix(W, f"W{name}")
    n = W.shape[0]
    if b is not None:
        check_vector(b, f"b{name}", n)
    if V is not None:
        check_matrix(V, f"V{name}", cols=n)
    check_same_device_dtype({f"W{name}": W, f"b{name}": b, f"V{name}": V})


def _validate_options(alpha, beta, gamma, lmbda, output_aware, compensate, V_present: bool) -> None:
    for value, label in ((alpha, "alpha"), (beta, "beta"), (gamma, "gamma")):
        check_coefficient(value, label)
    check_lmbda(lmbda)
    if (output_aware or compensate) and not V_present:
        raise ValueError("output_aware and compensate need V (the next layer's weight, shape (k, n))")


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
            if int(state.alive.sum()) <= 1:
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


def _make_state(solver, W, b, V, amount, alpha, beta, gamma, lmbda, v_uses_beta, output_aware, compensate, dtype, Q):
    if solver == "lazy":
        return _LazyState(W, b, V, alpha, beta, gamma, v_uses_beta, output_aware, compensate, dtype, lmbda, amount, Q)
    if solver == "exact":
        return _ExactState(W, b, V, alpha, beta, gamma, v_uses_beta, output_aware, compensate, dtype, lmbda, amount)
    raise ValueError(f"solver must be 'lazy' or 'exact', got {solver!r}")


def _greedy_single(solver: str, W, amount, *, alpha, beta, gamma, lmbda, decay, v_uses_beta, b, V, output_aware,
                   compensate, dtype, callback, Q=None) -> PruneResult:
    _validate_layer(W, b, V)
    check_amount(amount, W.shape[0])
    _validate_options(alpha, beta, gamma, lmbda, output_aware, compensate, V is not None)
    state = _make_state(solver, W, b, V, amount, alpha, beta, gamma, lmbda, v_uses_beta, output_aware, compensate,
                        dtype or torch.float64, Q)
    _drive([state], amount, decay, callback)
    return state.result(W.dtype)


def greedy_lazy(
    W: torch.Tensor,
    amount: int,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    gamma: float = 0.0,
    lmbda: float = 1e-3,
    decay: bool = True,
    v_uses_beta: bool = False,
    b: torch.Tensor | None = None,
    V: torch.Tensor | None = None,
    output_aware: bool = False,
    compensate: bool = False,
    Q: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    callback: StepCallback | None = None,
) -> PruneResult:
    """The paper's greedy pruning with lazy coefficient tracking (ALGORITHM.md §4).

    Args:
        W: ``(n, m)`` the layer's weight, one row per unit.
        amount: number of units to remove, ``0 <= amount < n``.
        alpha, beta, gamma: redistribution strengths for ``W``, ``b`` and ``V``.
        lmbda: ridge regulariser λ.
        decay: scale the strengths by ``1 - step / amount`` (the reference's ``fast_minimal``).
        v_uses_beta: scale ``V`` by the β-track (the reference's ViT/GPT-2 code) instead of γ.
        b: ``(n,)`` bias, needed only for bias compensation.
        V: ``(k, n)`` next layer's weight, needed for ``output_aware`` and ``compensate``.
        output_aware: multiply each distance by the norm of the unit's effective column of ``V``.
        compensate: fold each pruned unit into ``V`` by its coefficients (``v_j += q_ij v_i``).
        Q: a precomputed ``(n, n)`` coefficient matrix (default: the closed-form solver).
        dtype: compute dtype (default float64).
        callback: called with the step index after every removal (progress bars).

    Returns:
        :class:`PruneResult` with tracks in ``W``'s dtype.
    """
    return _greedy_single("lazy", W, amount, alpha=alpha, beta=beta, gamma=gamma, lmbda=lmbda, decay=decay,
                          v_uses_beta=v_uses_beta, b=b, V=V, output_aware=output_aware, compensate=compensate,
                          dtype=dtype, callback=callback, Q=Q)


def greedy_exact(
    W: torch.Tensor,
    amount: int,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    gamma: float = 0.0,
    lmbda: float = 1e-3,
    decay: bool = True,
    v_uses_beta: bool = False,
    b: torch.Tensor | None = None,
    V: torch.Tensor | None = None,
    output_aware: bool = False,
    compensate: bool = False,
    dtype: torch.dtype | None = None,
    callback: StepCallback | None = None,
) -> PruneResult:
    """Exact greedy pruning with rank-1 downdates of the precision matrix (ALGORITHM.md §5).

    Every step prunes the remaining unit with the smallest projection distance among the
    remaining (redistributed) rows and redistributes it with exact ridge coefficients
    ``q_ij = -(P[i, j] / P[i, i]) · U_α[i] / U_α[j]``. Arguments as :func:`greedy_lazy`.

    Returns:
        :class:`PruneResult` with tracks in ``W``'s dtype.
    """
    return _greedy_single("exact", W, amount, alpha=alpha, beta=beta, gamma=gamma, lmbda=lmbda, decay=decay,
                          v_uses_beta=v_uses_beta, b=b, V=V, output_aware=output_aware, compensate=compensate,
                          dtype=dtype, callback=callback)


def greedy_global(
    Ws: Sequence[torch.Tensor],
    amount: int,
    *,
    solver: str = "lazy",
    alpha: float = 0.5,
    beta: float = 0.5,
    gamma: float = 0.0,
    lmbda: float = 1e-3,
    decay: bool = True,
    v_uses_beta: bool = False,
    bs: Sequence[torch.Tensor | None] | None = None,
    Vs: Sequence[torch.Tensor | None] | None = None,
    output_aware: bool = False,
    compensate: bool = False,
    dtype: torch.dtype | None = None,
    callback: StepCallback | None = None,
) -> list[PruneResult]:
    """Global greedy over several layers (ALGORITHM.md §4, "global mode").

    Each step normalises every layer's remaining distances by their sum, takes each layer's
    minimum and prunes in the layer whose minimum is smallest; decay runs over the global
    step count. Every layer keeps at least one unit.

    Args:
        Ws: layer weights ``(n_l, m_l)``.
        amount: total number of units to remove, ``0 <= amount <= sum(n_l) - len(Ws)``.
        solver: ``"lazy"`` or ``"exact"``.
        bs, Vs: per-layer biases ``(n_l,)`` and next-layer weights ``(k_l, n_l)`` (or None).
        Other arguments as :func:`greedy_lazy`.

    Returns:
        One :class:`PruneResult` per layer.
    """
    if len(Ws) == 0:
        raise ValueError("Ws must hold at least one weight matrix")
    bs = list(bs) if bs is not None else [None] * len(Ws)
    Vs = list(Vs) if Vs is not None else [None] * len(Ws)
    if len(bs) != len(Ws) or len(Vs) != len(Ws):
        raise ValueError(f"bs and Vs must have one entry per layer ({len(Ws)}), got {len(bs)} and {len(Vs)}")
    for li, (W, b, V) in enumerate(zip(Ws, bs, Vs)):
        _validate_layer(W, b, V, name=f"[{li}]")
        _validate_options(alpha, beta, gamma, lmbda, output_aware, compensate, V is not None)
    capacity = sum(W.shape[0] for W in Ws) - len(Ws)
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0 or amount > capacity:
        raise ValueError(
            f"amount must be an int with 0 <= amount <= {capacity} (every layer keeps a unit), got {amount!r}"
        )
    if solver not in ("lazy", "exact"):
        raise ValueError(f"solver must be 'lazy' or 'exact', got {solver!r}")
    # The exact state pre-allocates room for the most units one layer can lose.
    states = [
        _make_state(solver, W, b, V, min(amount, W.shape[0] - 1), alpha, beta, gamma, lmbda, v_uses_beta,
                    output_aware, compensate, dtype or torch.float64, None)
        for W, b, V in zip(Ws, bs, Vs)
    ]
    _drive(states, amount, decay, callback)
    return [state.result(W.dtype) for state, W in zip(states, Ws)]


def apply_pruning(
    W: torch.Tensor, b: torch.Tensor | None, V: torch.Tensor | None, result: PruneResult
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Apply a :class:`PruneResult` (ALGORITHM.md (8-10)).

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
