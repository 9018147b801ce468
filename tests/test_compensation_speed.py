"""Low-rank shortcuts of the compensating pruner (issue 26, time): Woodbury precisions and push-through
coefficients where a Gram or covariance has rank below its width, checked against plain float64 inverses."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

import projprune.compensation as compensation
from projprune.compensation import CalibratedProjectiveImportance, CompensatingPruner, ConsumerStats


def _direct_inverse(G: torch.Tensor, ridge: float) -> torch.Tensor:
    return torch.linalg.inv(G + ridge * torch.eye(G.shape[0], dtype=torch.float64))


def test_woodbury_diagonal_and_push_through_coefficients_match_direct_inverses():
    torch.manual_seed(0)
    U = torch.randn(40, 7, dtype=torch.float64) * torch.linspace(0.1, 3.0, 7, dtype=torch.float64)
    G, ridge = U @ U.T, 0.05
    P = _direct_inverse(G, ridge)
    assert torch.allclose(compensation._woodbury_inverse_diagonal(U, ridge), P.diagonal(), rtol=1e-8, atol=0)
    R, K = torch.arange(0, 40, 3), torch.tensor([k for k in range(40) if k % 3])
    expected = G[R][:, K] @ _direct_inverse(G[K][:, K], ridge)
    A = compensation._woodbury_coefficients(U[R], U[K], ridge)
    assert torch.allclose(A, expected, rtol=1e-8, atol=1e-10)
    # least_squares_coefficients from the factor (m = 7 < |K|) equals the one from the dense Gram
    dense = compensation.least_squares_coefficients(G, R, K, 1e-2)
    assert torch.allclose(compensation.least_squares_coefficients(None, R, K, 1e-2, factor=U), dense, rtol=1e-8,
                          atol=1e-10)


def test_a_wide_expansion_is_kept_as_its_factor_and_prunes_as_the_dense_gram():
    """Linear(5 -> 24): 24 producer rows of 6 columns; the Gram stays factored, and the data-free scores
    and the compensated consumer equal a dense float64 reference."""
    torch.manual_seed(1)

    def model():
        torch.manual_seed(2)
        return nn.Sequential(nn.Linear(5, 24), nn.ReLU(), nn.Linear(24, 3)).double()

    net = model()
    graph = tp.DependencyGraph().build_dependency(net, torch.randn(1, 5, dtype=torch.float64))
    group = graph.get_pruning_group(net[0], tp.prune_linear_out_channels, idxs=list(range(24)))
    gram = compensation._producer_gram(group)
    F = torch.cat([net[0].weight, net[0].bias[:, None]], dim=1).detach()
    assert gram.dense is None and torch.allclose(gram.factor, F, atol=0)
    G = F @ F.T
    P = _direct_inverse(G, 1e-3 * float(torch.trace(G)) / 24)
    w2 = (net[2].weight.detach() ** 2).sum(0)
    expected_scores = w2 / P.diagonal() / (w2 * G.diagonal()).sum()
    scores = CalibratedProjectiveImportance(data_free=True)(group).double()
    assert torch.allclose(scores, expected_scores, rtol=1e-5)

    V = net[2].weight.detach().clone()
    CompensatingPruner(net, torch.randn(1, 5, dtype=torch.float64), CalibratedProjectiveImportance(data_free=True),
                       pruning_ratio=0.5, ignored_layers=[net[2]]).step()
    removed = torch.sort(torch.topk(expected_scores, 12, largest=False).indices).values
    kept = torch.tensor([k for k in range(24) if k not in set(removed.tolist())])
    ridge = 1e-3 * float(torch.trace(G[kept][:, kept])) / 12
    A = G[removed][:, kept] @ _direct_inverse(G[kept][:, kept], ridge)
    assert torch.allclose(net[2].weight, V[:, kept] + V[:, removed] @ A, rtol=1e-6, atol=1e-8)


def test_with_at_most_width_samples_the_precision_is_woodbury_and_cut_with_the_channels():
    """T = 12 samples of 30 inputs (Linear) and 2·3 = 6 positions of 16 channels (conv), at most
    LOW_RANK_FRACTION · c: diagonal, dense precision and coefficients equal direct float64 inverses with
    ρ = lmbda · trace / (T − 1); cutting the channels keeps the absolute ρ; more samples: dense path."""
    torch.manual_seed(3)
    X = torch.randn(12, 30, dtype=torch.float64) @ torch.randn(30, 30, dtype=torch.float64)
    cases = [(ConsumerStats(nn.Linear(30, 2)), X, X)]
    images = torch.randn(1, 16, 2, 3, dtype=torch.float64)
    cases.append((ConsumerStats(nn.Conv2d(16, 4, 1)), images, images.permute(0, 2, 3, 1).reshape(-1, 16)))
    for stats, batch, samples in cases:
        stats.update(batch)
        n, T = samples.shape[1], samples.shape[0]
        C = torch.cov(samples.T, correction=0)
        ridge = 1e-2 * float(torch.trace(C)) / (T - 1)
        P = _direct_inverse(C, ridge)
        assert torch.allclose(stats.precision_diagonal(1e-2), P.diagonal(), rtol=1e-8)
        moments = stats.moments
        assert moments._low_rank is not None and moments._precision is None  # never formed by the pruner's calls
        assert torch.allclose(stats.precision(1e-2), P, rtol=1e-8, atol=1e-8 * float(P.abs().max()))
        R, K = torch.arange(0, n, 2), torch.arange(1, n, 2)
        A = stats.coefficients(R, K, 1e-2)
        assert torch.allclose(A, -torch.linalg.solve(P[R][:, R], P[R][:, K]), rtol=1e-7, atol=1e-9)
        stats.keep(K, A)
        P_cut = _direct_inverse(C[K][:, K], ridge)  # same absolute ridge
        assert torch.allclose(stats.precision_diagonal(1e-2), P_cut.diagonal(), rtol=1e-8)
    stats = ConsumerStats(nn.Linear(30, 2))
    stats.update(X)
    more = torch.randn(int(compensation.LOW_RANK_FRACTION * 30) - 11, 30, dtype=torch.float64)
    stats.update(more)  # beyond LOW_RANK_FRACTION · 30 samples: not kept; the dense inverse, ridge of rank T − 1
    assert stats.moments._samples is None
    X_all = torch.cat([X, more])
    C = torch.cov(X_all.T, correction=0)
    P = _direct_inverse(C, 1e-2 * float(torch.trace(C)) / (len(X_all) - 1))
    assert torch.allclose(stats.precision_diagonal(1e-2), P.diagonal(), rtol=1e-8) and stats.moments._low_rank is None


def test_woodbury_statistics_with_fewer_kept_channels_than_samples_solve_the_kept_system():
    """12 samples of 30 inputs, 20 removed: |K| = 10 <= T, so the coefficients come from the |K| × |K| system
    U_K U_Kᵀ + ρI; equal to −P_RR⁻¹ P_RK of the direct float64 inverse (and to the push-through form)."""
    torch.manual_seed(8)
    X = torch.randn(12, 30, dtype=torch.float64) @ torch.randn(30, 30, dtype=torch.float64)
    stats = ConsumerStats(nn.Linear(30, 2))
    stats.update(X)
    C = torch.cov(X.T, correction=0)
    P = _direct_inverse(C, 1e-2 * float(torch.trace(C)) / (len(X) - 1))
    R, K = torch.arange(0, 20), torch.arange(20, 30)
    A = stats.coefficients(R, K, 1e-2, factored=True)
    assert isinstance(A, torch.Tensor) and A.shape == (20, 10)
    assert torch.allclose(A, -torch.linalg.solve(P[R][:, R], P[R][:, K]), rtol=1e-7, atol=1e-9)
    U, ridge = stats.moments._low_rank
    assert torch.allclose(A, compensation._woodbury_coefficients(U[R], U[K], ridge), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("shape, channels_last", [((3, 5, 4, 6), False), ((3, 5, 4, 6), True), ((2, 7, 9), False),
                                                  ((2, 4, 3, 2, 5), False)])
def test_sample_rows_are_every_image_and_position_in_float64(shape, channels_last):
    """Kept samples (the Woodbury form): one float64 row per image and position, in one pass, contiguous."""
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    rows = compensation._sample_rows(x, shape[1])
    batch, n = shape[:2]
    expected = torch.stack([x[b].reshape(n, -1)[:, p].double() for b in range(batch)
                            for p in range(x[0, 0].numel())])  # image-major, then positions
    assert rows.dtype == torch.float64 and rows.is_contiguous()
    torch.testing.assert_close(rows, expected, rtol=0, atol=0)
