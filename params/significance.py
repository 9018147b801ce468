"""Student-t statistics over independently trained models: confidence intervals, paired tests, Holm."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None]:
    """Mean and Student-t confidence half-width ``t_{(1+c)/2, n-1} * s / sqrt(n)`` (``s``: ddof 1).

    Returns ``(mean, None)`` for a single value (no interval from one sample).
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or not np.isfinite(arr).all():
        raise ValueError(f"values must be a non-empty 1-D sequence of finite numbers, got {values!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean = float(arr.mean())
    if arr.size < 2:
        return mean, None
    half = float(stats.t.ppf(0.5 + confidence / 2.0, arr.size - 1) * arr.std(ddof=1) / math.sqrt(arr.size))
    return mean, half


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float | None]:
    """Two-sided paired t-test of ``a - b`` (same models): ``(mean difference, p-value)``.

    Constant differences (zero spread, where t is undefined or infinite) fall back to the exact
    two-sided sign test: ``p = 1`` when they are all zero, else ``p = min(1, 2 * 0.5**n)`` (identical
    differences are common on small test sets, and ``p = 0`` would call two models significant).
    Fewer than two pairs give ``p = None``.
    """
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.ndim != 1 or diff.size == 0:
        raise ValueError("a and b must be equally long, non-empty 1-D sequences")
    mean = float(diff.mean())
    if diff.size < 2:
        return mean, None
    spread = float(diff.std(ddof=1))
    if spread <= 1e-12 * max(1.0, abs(mean)):
        return mean, 1.0 if abs(mean) <= 1e-12 else min(1.0, 2.0 * 0.5**diff.size)
    t_value = mean / (spread / math.sqrt(diff.size))
    return mean, float(2.0 * stats.t.sf(abs(t_value), diff.size - 1))


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error control), in the input order."""
    p = np.asarray(pvalues, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = p.size
    adjusted = np.empty(m)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        adjusted[idx] = running
    return adjusted.tolist()
