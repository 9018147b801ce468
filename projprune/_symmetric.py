"""Symmetric matrices formed and updated on their upper block rows only (private to projprune).

The calibration statistics ``Σ h hᵀ`` and the calibrated greedy's ``P`` and ``P²`` are symmetric:
forming or downdating only the blocks on and above the diagonal takes about half the flops, and
every entry gets the same arithmetic as the full product. Rows are then read from the upper
triangle (:func:`symmetric_row`).
"""

from __future__ import annotations

import torch

# Symmetric products are split into at most 8 blocks of at least this many columns.
_BLOCK_WIDTH = 256


def block_edges(n: int, max_blocks: int = 8, block_width: int = _BLOCK_WIDTH) -> list[int]:
    """Edges of the column blocks of a symmetric ``(n, n)`` product; ``[0, n]`` when too narrow to split."""
    blocks = max(1, min(max_blocks, n // block_width))
    return [round(i * n / blocks) for i in range(blocks + 1)]


def gram(rows: torch.Tensor, max_blocks: int = 8, upper_only: bool = False,
         block_width: int = _BLOCK_WIDTH) -> torch.Tensor:
    """``rowsᵀ rows: (n, n)`` for ``rows: (T, n)``; for wide layers only the upper blocks are multiplied.

    The Gram matrix is symmetric, so with ``B`` column blocks only the block rows' upper
    parts are formed, one wide product per block row, ``rows[:, a]ᵀ rows[:, a:]``
    (``(B + 1) / 2B`` of the flops: 56 % at ``B = 8``, the cost that dominates calibration of
    a large FFN), and the lower blocks are copied from their mirror images. Every entry is
    the same dot product as in ``rows.T @ rows``. Also gives ``P @ P`` for a symmetric ``P``
    (``rows = P``). With ``upper_only`` the mirror copies are skipped: only the entries on and
    above the diagonal are set (the rest are zero or, within diagonal blocks, also correct).
    ``block_width``: the narrowest block (many rows, as calibration samples, make narrower blocks pay).
    """
    n = rows.shape[1]
    edges = block_edges(n, max_blocks, block_width)
    if len(edges) < 3:
        return rows.T @ rows
    out = (torch.zeros if upper_only else torch.empty)(n, n, dtype=rows.dtype, device=rows.device)
    for lo, hi in zip(edges[:-1], edges[1:]):
        out[lo:hi, lo:] = rows[:, lo:hi].T @ rows[:, lo:]
    if not upper_only:
        mirror_upper_(out, edges)
    return out


def mirror_upper_(M: torch.Tensor, edges: list[int]) -> None:
    """Copy the upper off-diagonal blocks of ``M: (n, n)`` (column blocks ``edges``) onto the lower ones, in place."""
    for lo, hi in zip(edges[:-1], edges[1:]):
        M[hi:, lo:hi] = M[lo:hi, hi:].T


def sub_upper_product_(M: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> None:
    """``M -= A Bᵀ`` on the upper block rows only (``M: (r, r)``, ``A, B: (r, K)``), in place.

    For a symmetric update of a matrix of which only the upper triangle is read (see
    :func:`symmetric_row`): about half the flops of the full product, and every updated
    entry gets the same arithmetic as in ``M.addmm_(A, B.T, alpha=-1)``.
    """
    edges = block_edges(M.shape[0])
    for lo, hi in zip(edges[:-1], edges[1:]):
        M[lo:hi, lo:].addmm_(A[lo:hi], B[lo:].T, alpha=-1.0)


def symmetric_row(M: torch.Tensor, r: int) -> torch.Tensor:
    """Row ``r``: ``(n,)`` of a symmetric ``M: (n, n)`` of which only the upper triangle is valid."""
    return torch.cat((M[:r, r], M[r, r:]))


def symmetrised(C: torch.Tensor, blocks: int = 12, inplace: bool = False) -> torch.Tensor:
    """``(C + Cᵀ) / 2: (n, n)``, tile by tile (the transposed read of a whole matrix is cache-hostile).

    Entry for entry the same arithmetic as ``(C + C.T) * 0.5``, about twice as fast at ``n = 3072``.
    With ``inplace`` the result overwrites ``C`` (each tile pair is read before it is written).
    """
    edges = block_edges(C.shape[0], blocks)
    blocks = len(edges) - 1
    if blocks < 2:
        return C.copy_((C + C.T) * 0.5) if inplace else (C + C.T) * 0.5
    out = C if inplace else torch.empty_like(C)
    for a in range(blocks):
        ra = slice(edges[a], edges[a + 1])
        for b in range(a, blocks):
            rb = slice(edges[b], edges[b + 1])
            tile = (C[ra, rb] + C[rb, ra].T).mul_(0.5)
            out[ra, rb] = tile
            if b != a:
                out[rb, ra] = tile.T
    return out


# cholesky: matrices up to this size are factored by LAPACK directly (its potrf is fast enough when small)
_CHOLESKY_BLOCK = 256


def cholesky(M: torch.Tensor, block: int = _CHOLESKY_BLOCK, inplace: bool = False) -> tuple[torch.Tensor, int]:
    """``(L, info)`` as ``torch.linalg.cholesky_ex``: the lower Cholesky factor of a symmetric ``M: (n, n)``
    (one triangle is read), ``info`` 0 or the order of the first non-positive leading minor; ``L`` column-major
    as LAPACK's (``cholesky_inverse`` and ``cholesky_solve`` read it without a transposed copy).

    Above ``block`` the factorisation recurses on halves, ``L₁₁ = chol(M₁₁)``, ``L₂₁ = M₂₁ L₁₁⁻ᵀ``,
    ``L₂₂ = chol(M₂₂ − L₂₁ L₂₁ᵀ)``: the same arithmetic as a blocked Cholesky, its work in triangular
    solves and matrix products, which run near the CPU's peak; LAPACK's potrf did not on one thread
    (measured 1.3x–2.8x slower at n = 1,024–2,048, float64 and float32, MKL). ``inplace``: ``M``'s storage is
    reused for ``L`` (``M`` is overwritten).
    """
    # Mᵀ = M: the transposed view of row-major storage is the same matrix, column-major
    L = (M if inplace else M.clone()).mT
    info = _cholesky_(L, block)
    L.mT.triu_()  # the scratch triangle zeroed on the contiguous storage (a strided tril_ is several times slower)
    return L, info


def _cholesky_(L: torch.Tensor, block: int) -> int:
    """Factor in place: on return the lower triangle of ``L`` holds the factor (upper triangle: scratch)."""
    n = L.shape[0]
    if n <= block:
        factor, info = torch.linalg.cholesky_ex(L)
        L.copy_(factor)
        return int(info)
    h = n // 2
    info = _cholesky_(L[:h, :h], block)
    if info:
        return info
    below = L[h:, :h]
    below.copy_(torch.linalg.solve_triangular(L[:h, :h].T, below, upper=True, left=False))
    L[h:, h:].addmm_(below, below.T, alpha=-1.0)
    info = _cholesky_(L[h:, h:], block)
    return info + h if info else 0
