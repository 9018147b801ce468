"""Plain, obviously-correct float64 implementations used as references by the tests.

Written line by line from docs/algorithm.md, with no attention to speed.
"""

from __future__ import annotations

import pytest
import torch

#: Devices for the agreement tests; CUDA is skipped, with the reason, where it is absent.
_NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=_NO_CUDA)]


def ridge_q(W: torch.Tensor, lmbda: float) -> torch.Tensor:
    """Q by a direct ridge solve per row (docs/algorithm.md §1), float64."""
    W = W.double()
    n = W.shape[0]
    Q = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        Wo = W[others]
        A = Wo @ Wo.T + lmbda * torch.eye(n - 1, dtype=torch.float64)
        Q[i, others] = torch.linalg.solve(A, Wo @ W[i])
    return Q


def brute_distances(W: torch.Tensor, lmbda: float) -> torch.Tensor:
    """``d_i = ||q_i^T W_{-i} - w_i||`` from the per-row solve."""
    W = W.double()
    return torch.linalg.vector_norm(ridge_q(W, lmbda) @ W - W, dim=1)


def plain_lazy(Ws, bs, Vs, amount, alpha, beta, gamma, lmbda, decay, v_uses_beta):
    """docs/algorithm.md §4, line by line, single (one layer) or global mode.

    Returns per layer ``(keep, Ua, Ub, Ug, W', b', V')``.
    """
    layers = []
    for W in Ws:
        n = W.shape[0]
        layers.append(
            {
                "M": torch.ones(n, dtype=torch.bool),
                "Q": ridge_q(W, lmbda),
                "Ua": torch.ones(n, dtype=torch.float64),
                "Ub": torch.ones(n, dtype=torch.float64),
                "Ug": torch.ones(n, dtype=torch.float64),
                "W": W.double().clone(),
            }
        )
    for a in range(amount):
        r = 1 - a / amount if decay else 1.0
        best = None
        for li, s in enumerate(layers):
            M = s["M"]
            if int(M.sum()) <= 1:
                continue
            remaining = torch.nonzero(M).flatten()
            D = torch.linalg.vector_norm(s["Q"][M] @ s["W"] - s["W"][M], dim=1)
            if len(layers) > 1:
                D = D / D.sum()
            k = int(torch.argmin(D))
            if best is None or float(D[k]) < best[0]:
                best = (float(D[k]), li, int(remaining[k]))
        _, li, i = best
        s = layers[li]
        s["W"][i] = 0
        s["M"][i] = False
        s["Q"][:, i] = 0
        s["Q"][s["M"]] = s["Q"][s["M"]] / (1 + alpha * r * s["Q"][i])
        s["Ua"] = s["Ua"] * (1 + alpha * r * s["Q"][i])
        s["Ub"] = s["Ub"] * (1 + beta * r * s["Q"][i])
        s["Ug"] = s["Ug"] * (1 + gamma * r * s["Q"][i])
    out = []
    for s, W, b, V in zip(layers, Ws, bs, Vs):
        M = s["M"]
        Uv = s["Ub"] if v_uses_beta else s["Ug"]
        out.append(
            (
                M,
                s["Ua"],
                s["Ub"],
                s["Ug"],
                W.double()[M] * s["Ua"][M, None],
                b.double()[M] * s["Ub"][M],
                V.double()[:, M] * Uv[M],
            )
        )
    return out


def brute_exact(W, amount, alpha, beta, gamma, lmbda, decay):
    """Exact greedy by recomputing every distance from scratch after each removal.

    The remaining rows are taken with their current α-scale; returns ``(keep, order, U)``
    with ``U`` the ``(3, n)`` tracks for W, b and V (γ).
    """
    W = W.double()
    n = W.shape[0]
    alive = torch.ones(n, dtype=torch.bool)
    U = torch.ones(3, n, dtype=torch.float64)
    phi = torch.tensor([alpha, beta, gamma], dtype=torch.float64)[:, None]
    order = []
    for a in range(amount):
        r = 1 - a / amount if decay else 1.0
        idx = torch.nonzero(alive).flatten()
        current = W[idx] * U[0, idx, None]
        Qc = ridge_q(current, lmbda)
        D = torch.linalg.vector_norm(Qc @ current - current, dim=1)
        k = int(torch.argmin(D))
        i = int(idx[k])
        q = torch.zeros(n, dtype=torch.float64)
        q[idx] = Qc[k]
        q[i] = 0
        U = U * (1 + r * phi * q[None, :])
        alive[i] = False
        order.append(i)
    return alive, order, U


def brute_exact_compensated(W, b, V, c, amount, lmbda, output_aware):
    """Exact greedy with alpha = beta = gamma = 0 and compensation, all recomputed from scratch.

    Returns ``(order, V_eff (k, n), c_eff (k,))``: ``V_eff`` holds every unit's effective column
    (``v_j`` plus what it absorbed), ``c_eff`` the next layer's bias with the folded constants.
    """
    W, b, V, c = W.double(), b.double(), V.double().clone(), c.double().clone()
    n = W.shape[0]
    alive = torch.ones(n, dtype=torch.bool)
    order = []
    for _ in range(amount):
        idx = torch.nonzero(alive).flatten()
        Qc = ridge_q(W[idx], lmbda)
        D = torch.linalg.vector_norm(Qc @ W[idx] - W[idx], dim=1)
        if output_aware:
            D = D * torch.linalg.vector_norm(V[:, idx], dim=0)
        k = int(torch.argmin(D))
        i = int(idx[k])
        q = torch.zeros(n, dtype=torch.float64)
        q[idx] = Qc[k]
        q[i] = 0
        v_i = V[:, i].clone()
        c += v_i * (b[i] - q @ b)
        V += torch.outer(v_i, q)
        alive[i] = False
        order.append(i)
    return order, V, c


def plain_lazy_compensated(W, b, V, c, amount, lmbda, output_aware):
    """§4 with alpha = beta = gamma = 0 plus compensation by the lazily tracked coefficients."""
    W, b, V, c = W.double(), b.double(), V.double().clone(), c.double().clone()
    n = W.shape[0]
    M = torch.ones(n, dtype=torch.bool)
    Q = ridge_q(W, lmbda)
    Wk = W.clone()
    order = []
    for _ in range(amount):
        remaining = torch.nonzero(M).flatten()
        D = torch.linalg.vector_norm(Q[M] @ Wk - Wk[M], dim=1)
        if output_aware:
            D = D * torch.linalg.vector_norm(V[:, M], dim=0)
        i = int(remaining[int(torch.argmin(D))])
        Wk[i] = 0
        M[i] = False
        Q[:, i] = 0
        q = Q[i]
        v_i = V[:, i].clone()
        c += v_i * (b[i] - q @ b)
        V += torch.outer(v_i, q)
        order.append(i)
    return order, V, c


def plain_calibrated_greedy(H, V, amount, lmbda_rel, output_aware=True, compensate=True, mean_correction=True):
    """The §8 greedy from scratch at every step: ridge on centred activations, residual-form distances."""
    n, T = H.shape
    mu = H.mean(dim=1)
    Hc = (H - mu[:, None]) / T**0.5
    C = Hc @ Hc.T
    lam = lmbda_rel * float(C.trace()) / n
    V = V.clone()
    bias = torch.zeros(V.shape[0], dtype=torch.float64)
    alive = list(range(n))
    order = []
    for _ in range(amount):
        P = torch.linalg.inv(C[alive][:, alive] + lam * torch.eye(len(alive), dtype=torch.float64))
        R = P @ Hc[alive]
        d = torch.linalg.vector_norm(R, dim=1) / P.diagonal()
        if output_aware:
            d = d * torch.linalg.vector_norm(V[:, alive], dim=0)
        pos = int(torch.argmin(d))
        i = alive[pos]
        q = -P[pos] / P[pos, pos]
        q[pos] = 0.0
        c = V[:, i].clone()
        if mean_correction:
            bias += c * (mu[i] - (q @ mu[alive] if compensate else 0.0))
        if compensate:
            V[:, alive] += torch.outer(c, q)
        order.append(i)
        alive.remove(i)
    return order, V[:, alive], bias
