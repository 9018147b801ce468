"""Solvers for the projection coefficients Q and the projection distances (docs/algorithm.md §1-3).

For a weight ``W: (n, m)`` (one row per unit), row ``i`` of ``Q: (n, n)`` holds the ridge
coefficients that express ``w_i`` through the other rows,

    q_i = (W_{-i} W_{-i}^T + λI)^{-1} W_{-i} w_i,        Q[i, i] = 0,

and the projection distance is ``d_i = ||q_i^T W_{-i} - w_i||``. Three solvers compute Q and
must agree; ``closed`` is the one every other module uses.

All functions compute in float64 by default (``dtype=None``) and return tensors in the
dtype and on the device of ``W``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from projprune._checks import check_lmbda, check_matrix

__all__ = [
    "SOLVERS",
    "gram_inverse",
    "precision_and_residuals",
    "projection_distances",
    "regularised_inverse",
    "solve_closed",
    "solve_fast",
    "solve_naive",
    "solve_normal_equations",
]


def _compute_dtype(W: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float64
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32, torch.float64 or None, got {dtype}")
    return dtype


#: Why a weight Gram matrix is singular, and what to do (the default of :func:`regularised_inverse`).
WEIGHT_SINGULAR_HINT = "use lmbda > 0 (rows are linearly dependent, or n > m)"


def _cholesky(A: torch.Tensor, lmbda: float, what: str, hint: str = WEIGHT_SINGULAR_HINT,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """Lower Cholesky factor of the SPD matrix ``A``; a clear error (ending with ``hint``) when it is singular.

    With ``lmbda = 0`` a singular Gram matrix sometimes factors anyway, rounding leaving a
    tiny positive pivot; pivots below ``n · eps`` of the largest are treated as singular, so
    the outcome does not depend on rounding.
    """
    if out is None:
        L, info = torch.linalg.cholesky_ex(A)
    else:  # ``out``: a column-major buffer (may be ``A`` itself) LAPACK factors in place
        L, info = torch.linalg.cholesky_ex(A, out=(out, torch.empty((), dtype=torch.int32, device=A.device)))
    singular = int(info.max() if info.dim() else info) != 0
    if not singular and lmbda == 0:
        pivots = L.diagonal() ** 2
        singular = bool(pivots.min() <= pivots.max() * A.shape[0] * torch.finfo(A.dtype).eps * 16)
    if singular:
        raise ValueError(
            f"lmbda={lmbda}: the regularised Gram matrix of {what} is singular or not positive definite; {hint}"
        )
    return L


def _prepare(W: torch.Tensor, lmbda: float, dtype: torch.dtype | None) -> torch.Tensor:
    """Check ``W`` and ``lmbda``; return ``W`` in the compute dtype."""
    check_matrix(W, "W")
    check_lmbda(lmbda)
    return W.to(_compute_dtype(W, dtype))


def _wide_form(W: torch.Tensor, lmbda: float) -> bool:
    """Use the ``m x m`` form when there are more units than features (every transformer MLP)."""
    return W.shape[0] > W.shape[1] and lmbda > 0


def _feature_inverse(Wc: torch.Tensor, lmbda: float) -> torch.Tensor:
    """``K = (W^T W + λI)^{-1}``: ``(m, m)``, one Cholesky of the small side."""
    A = Wc.T @ Wc
    A.diagonal().add_(lmbda)
    return torch.cholesky_inverse(_cholesky(A, lmbda, "W^T W"))


def precision_and_residuals(
    W: torch.Tensor, lmbda: float = 1e-3, dtype: torch.dtype | None = None, need_precision: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """``P = (W W^T + λI)^{-1}``, ``R = P W`` and ``diag(P)``, by the cheaper of two exact forms.

    With ``n <= m``: one Cholesky of ``W W^T + λI`` (``n x n``). With ``n > m`` and ``λ > 0``
    (docs/algorithm.md §5), from ``K = (W^T W + λI)^{-1}`` (``m x m``): ``R = W K`` exactly,
    ``P = (I - W K W^T) / λ`` and ``diag(P) = (1 - rowsum(R ⊙ W)) / λ``. The subtraction in
    ``diag(P)`` only loses digits for units far from the span of the others (``d_j^2 >> λ``),
    whose distances are never close to the minimum; the tests hold both forms to 1e-9.

    Args:
        W: ``(n, m)``.
        need_precision: False skips forming the ``n x n`` matrix ``P`` where possible.

    Returns:
        ``(P (n, n) or None, R (n, m), diag(P) (n,))`` in the compute dtype (float64 default).
    """
    Wc = _prepare(W, lmbda, dtype)
    if _wide_form(Wc, lmbda):
        R = Wc @ _feature_inverse(Wc, lmbda)
        diag = (1.0 - (R * Wc).sum(dim=1)) / lmbda
        P = None
        if need_precision:
            P = R @ Wc.T
            P.mul_(-1.0 / lmbda)
            P.diagonal().copy_(diag)
        return P, R, diag
    P = regularised_inverse(Wc @ Wc.T, lmbda)
    return P, P @ Wc, P.diagonal().clone()


def regularised_inverse(G: torch.Tensor, lmbda: float, what: str = "W", hint: str = WEIGHT_SINGULAR_HINT,
                        overwrite: bool = False) -> torch.Tensor:
    """``(G + λI)^{-1}`` for a symmetric PSD ``G: (n, n)`` by one Cholesky (``G`` is not modified).

    With ``overwrite`` a contiguous ``G`` becomes the inverse (factored and inverted in its own
    memory, no other ``(n, n)`` buffer; on a failure its contents are undefined) and is returned.
    Raises ``ValueError`` naming ``what`` when ``G + λI`` is singular; ``hint`` says why and what to do.
    """
    if overwrite and G.is_contiguous():
        G.diagonal().add_(lmbda)
        column_major = G.mT  # the same symmetric matrix, in the layout LAPACK works on in place
        L = _cholesky(column_major, lmbda, what, hint, out=column_major)
        return torch.cholesky_inverse(L, out=L).mT
    A = G.clone()
    A.diagonal().add_(lmbda)
    return torch.cholesky_inverse(_cholesky(A, lmbda, what, hint))


def gram_inverse(W: torch.Tensor, lmbda: float = 1e-3, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``P = (W W^T + λI)^{-1}`` (see :func:`precision_and_residuals` for how).

    Args:
        W: ``(n, m)``.
        lmbda: ridge regulariser ``λ >= 0`` (0 only when ``W W^T`` is non-singular).
        dtype: compute dtype (default float64).

    Returns:
        ``P: (n, n)`` symmetric positive definite, in the compute dtype.
    """
    return precision_and_residuals(W, lmbda, dtype)[0]


def solve_closed(W: torch.Tensor, lmbda: float = 1e-3, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Closed form: ``Q[i, j] = -P[i, j] / P[i, i]`` (``j != i``), one Cholesky, no loop.

    Args:
        W: ``(n, m)``.

    Returns:
        ``Q: (n, n)``, zero diagonal, dtype/device of ``W``.
    """
    P = gram_inverse(W, lmbda, dtype)
    Q = P / (-P.diagonal()).unsqueeze(1)
    Q.diagonal().zero_()
    return Q.to(W.dtype)


def solve_fast(W: torch.Tensor, lmbda: float = 1e-3, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The reference's "fast" solver: ``P`` once, then a rank-1 update per row.

    For row ``i``, with ``P`` partitioned as ``[[a, c], [c^T, d]]`` (row/column ``i`` last),
    ``(Ĝ_{-i,-i})^{-1} = a - c c^T / d`` and ``q_i = (a - c c^T / d) G[-i, i]``. ``n``
    iterations of ``O(n^2)`` work with pre-allocated buffers and block copies. Less accurate
    than :func:`solve_closed` when ``n > m`` (the update subtracts two numbers of size
    ``~1/λ``), see docs/algorithm.md §3.

    Args:
        W: ``(n, m)``.

    Returns:
        ``Q: (n, n)``, zero diagonal, dtype/device of ``W``.
    """
    Wc = _prepare(W, lmbda, dtype)
    G = Wc @ Wc.T
    P = regularised_inverse(G, lmbda)  # the reference's n x n inverse, also when n > m
    n = W.shape[0]
    Q = torch.zeros(n, n, dtype=P.dtype, device=P.device)
    a = torch.empty(n - 1, n - 1, dtype=P.dtype, device=P.device)
    c = torch.empty(n - 1, dtype=P.dtype, device=P.device)
    g = torch.empty(n - 1, dtype=P.dtype, device=P.device)
    for i in range(n):
        j = i + 1
        # a = P[-i, -i] by four block copies (no boolean masks).
        a[:i, :i] = P[:i, :i]
        a[:i, i:] = P[:i, j:]
        a[i:, :i] = P[j:, :i]
        a[i:, i:] = P[j:, j:]
        c[:i] = P[:i, i]
        c[i:] = P[j:, i]
        g[:i] = G[:i, i]
        g[i:] = G[j:, i]
        a.addr_(c, c, alpha=-1.0 / P[i, i])
        q = a @ g
        Q[i, :i] = q[:i]
        Q[i, j:] = q[i:]
    return Q.to(W.dtype)


def solve_naive(W: torch.Tensor, lmbda: float = 1e-3, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Per-row direct ridge solve: for every ``i``, factorise ``W_{-i} W_{-i}^T + λI`` and solve.

    ``n`` Cholesky factorisations of size ``n - 1``: ``O(n^4)``, for checking the others.
    ``W: (n, m)`` in, ``Q: (n, n)`` out (zero diagonal, dtype/device of ``W``).
    """
    Wc = _prepare(W, lmbda, dtype)
    G = Wc @ Wc.T
    n = W.shape[0]
    Q = torch.zeros(n, n, dtype=Wc.dtype, device=W.device)
    eye = torch.eye(n - 1, dtype=Wc.dtype, device=W.device)
    for i in range(n):
        others = torch.cat([torch.arange(i, device=W.device), torch.arange(i + 1, n, device=W.device)])
        A = G[others][:, others] + lmbda * eye
        L = _cholesky(A, lmbda, f"W without row {i}")
        q = torch.cholesky_solve(G[others, i].unsqueeze(1), L).squeeze(1)
        Q[i, others] = q
    return Q.to(W.dtype)


SOLVERS: dict[str, Callable[..., torch.Tensor]] = {
    "naive": solve_naive,
    "fast": solve_fast,
    "closed": solve_closed,
}


def solve_normal_equations(
    W: torch.Tensor, lmbda: float = 1e-3, method: str = "closed", dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The coefficient matrix ``Q`` of docs/algorithm.md §1 by the named solver.

    Args:
        W: ``(n, m)`` weight, one row per unit (conv weights flattened with ``flatten(1)``).
        lmbda: ridge regulariser ``λ`` (reference default 1e-3).
        method: ``"closed"`` (one Cholesky), ``"fast"`` (reference rank-1 loop) or
            ``"naive"`` (per-row direct solve).
        dtype: compute dtype, float64 by default.

    Returns:
        ``Q: (n, n)`` with zero diagonal; ``Q[i]`` expresses ``w_i`` through the other rows.
    """
    if method not in SOLVERS:
        raise ValueError(f"method must be one of {sorted(SOLVERS)}, got {method!r}")
    return SOLVERS[method](W, lmbda, dtype)


def projection_distances(W: torch.Tensor, lmbda: float = 1e-3, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Projection distances ``d_i = ||(P W)[i]|| / P[i, i]`` without forming ``Q``.

    This residual form is accurate when ``n > m`` (the ``P[i,i] - λ(P^2)[i,i]`` form cancels).

    Args:
        W: ``(n, m)``.

    Returns:
        ``d: (n,)`` non-negative, dtype/device of ``W``.
    """
    _, R, diag = precision_and_residuals(W, lmbda, dtype, need_precision=False)
    return (torch.linalg.vector_norm(R, dim=1) / diag).to(W.dtype)
