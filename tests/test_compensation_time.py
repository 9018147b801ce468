"""Time bounds of the compensating pruner (issue 26): what the faster paths skip or defer, checked against
plain float64 references written here."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import projprune.compensation as compensation
from projprune.compensation import ConsumerStats


def _population_cov(X: torch.Tensor) -> torch.Tensor:
    Xc = X - X.mean(dim=0)
    return Xc.T @ Xc / X.shape[0]


@pytest.mark.parametrize("conv", [False, True])
def test_kept_samples_defer_their_products_until_read(conv):
    """With at most LOW_RANK_FRACTION · c samples the products Σ h hᵀ are not formed by update (the Woodbury
    path never reads them); variances, Σ h hᵀ read through `channels`, and the precision's diagonal equal
    float64 references; more samples than that sum everything in, once."""
    torch.manual_seed(0)
    c = 40
    module = nn.Conv2d(c, 3, 1) if conv else nn.Linear(c, 3)
    stats = ConsumerStats(module)
    batches = [torch.randn(2, c, 2, 2) if conv else torch.randn(8, c) * torch.linspace(0.5, 2, c) for _ in range(2)]

    def rows(x):
        return (x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]) if conv else x).double()

    for x in batches:
        stats.update(x)
    X = torch.cat([rows(x) for x in batches])  # 16 samples <= 0.75 · 40: kept
    moments = stats.moments
    assert moments._samples is not None and moments._stats.sum_outer.is_meta  # (c, c) products: not even allocated
    C = _population_cov(X)
    assert torch.allclose(stats.variances(), C.diagonal(), rtol=1e-6, atol=0)  # a conv's batch sums: float32
    ridge = 1e-2 * float(torch.trace(C)) / (len(X) - 1)
    P = torch.linalg.inv(C + ridge * torch.eye(c, dtype=torch.float64))
    assert torch.allclose(stats.precision_diagonal(1e-2), P.diagonal(), rtol=1e-8)
    assert stats.moments._stats.sum_outer.is_meta  # the scores' path did not form them either
    assert torch.allclose(stats.channels.sum_outer, X.T @ X, rtol=1e-10, atol=1e-10)  # read: formed now
    assert torch.allclose(stats.channels.sum_outer, X.T @ X, rtol=1e-10, atol=1e-10)  # ... and only once
    kept = torch.arange(0, c, 2)
    stats.keep(kept)
    more = torch.randn(4, len(kept), 4, 4) if conv else torch.randn(40, len(kept))  # beyond the fraction: dropped
    stats.update(more)
    assert stats.moments._samples is None
    X_all = torch.cat([X[:, kept], rows(more)])
    reference = X_all.T @ X_all
    # the last batch's products are float32: ~1e-7 of the largest entry
    assert float((stats.channels.sum_outer - reference).abs().max()) <= 1e-6 * float(reference.abs().max())
    assert torch.allclose(stats.variances(), _population_cov(X_all).diagonal(), rtol=1e-6, atol=1e-8)


def test_kept_samples_are_checked_for_nan():
    stats = ConsumerStats(nn.Linear(6, 2))
    x = torch.randn(3, 6)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        stats.update(x)
    assert stats.count == 0 and not stats.moments._samples


def test_rank_deficient_precision_skips_the_float32_attempt(monkeypatch):
    """A covariance of rank below its width goes to float64 directly (a float32 Cholesky of a condition
    ~1 + n / lmbda would be checked and thrown away); the result equals a float64 inverse."""
    torch.manual_seed(1)
    n = compensation.FLOAT32_PRECISION_WIDTH
    X = torch.randn(n // 2, n, dtype=torch.float64)
    C = _population_cov(X)
    checked = []
    original = compensation._accurate_in_float32
    monkeypatch.setattr(compensation, "_accurate_in_float32", lambda *a, **k: checked.append(1) or original(*a, **k))
    P = compensation._ridge_inverse(C, 1e-3, rank=n // 2 - 1)
    ridge = 1e-3 * float(torch.trace(C)) / (n // 2 - 1)
    reference = torch.linalg.inv(C + ridge * torch.eye(n, dtype=torch.float64))
    assert P.dtype == torch.float64 and not checked
    assert float((P - reference).norm() / reference.norm()) < 1e-8


def test_float32_factor_check_in_row_blocks_equals_the_whole_product():
    """The residual check reads the system a block of rows at a time; it accepts an accurate float32 Cholesky
    factor and refuses one perturbed by 1e-3, whatever the block size."""
    torch.manual_seed(2)
    n = 64
    X = torch.randn(4 * n, n, dtype=torch.float64)
    G, ridge = X.T @ X / (4 * n), 1e-2
    good = torch.linalg.cholesky(G + ridge * torch.eye(n, dtype=torch.float64)).float()
    bad = good * (1 + 1e-3 * torch.randn(n, n)).tril()
    for rows in (7, 64, 1000):
        assert compensation._accurate_in_float32(G, ridge, good, rows=rows)
        assert not compensation._accurate_in_float32(G, ridge, bad, rows=rows)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_linear_fold_is_one_product_and_matches_the_entrywise_sum(dtype):
    """A Linear's W[:, K] += W[:, R] A (the 2-D path without transposed copies) against an entrywise float64 sum."""
    torch.manual_seed(3)
    W = torch.randn(4, 7, dtype=dtype)
    removed, kept = torch.tensor([1, 5, 6]), torch.tensor([0, 2, 3, 4])
    A = torch.randn(3, 4, dtype=torch.float64)
    out = compensation.fold_removed_inputs(W, removed, kept, A)
    expected = W.double().clone()
    for r_pos, r in enumerate(removed.tolist()):
        for k_pos, k in enumerate(kept.tolist()):
            expected[:, k] += A[r_pos, k_pos] * W[:, r].double()
    assert out.dtype == dtype and torch.equal(out[:, removed], W[:, removed])
    assert torch.allclose(out.double(), expected, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-6)


def test_wide_push_through_coefficients_in_float32_match_float64():
    """From FLOAT32_PRECISION_WIDTH kept channels on, the last product of A = U_R (ρI + U_KᵀU_K)⁻¹ U_Kᵀ is
    float32: within 1e-5 (relative, Frobenius) of the float64 formula written here."""
    torch.manual_seed(4)
    n, m = 2 * compensation.FLOAT32_PRECISION_WIDTH, 60
    U = torch.randn(n, m, dtype=torch.float64) * torch.logspace(0, -3, m, dtype=torch.float64)
    R, K = torch.arange(0, n, 2), torch.arange(1, n, 2)
    ridge = 1e-3 * float(U.pow(2).sum()) / n
    A = compensation._woodbury_coefficients(U[R], U[K], ridge)
    reference = U[R] @ U[K].T @ torch.linalg.inv(U[K] @ U[K].T + ridge * torch.eye(len(K), dtype=torch.float64))
    assert A.dtype == torch.float64
    assert float((A - reference).norm() / reference.norm()) < 1e-5


def _entrywise_fold(W: torch.Tensor, removed: torch.Tensor, kept: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``W[:, k] += Σ_r A[r, k] W[:, r]`` one (r, k) pair at a time, float64."""
    expected = W.double().clone()
    for r_pos, r in enumerate(removed.tolist()):
        for k_pos, k in enumerate(kept.tolist()):
            expected[:, k] += A[r_pos, k_pos] * W[:, r].double()
    return expected


@pytest.mark.parametrize("shape", [(3, 9), (12, 9), (3, 9, 3, 3)])
def test_low_rank_coefficients_fold_as_their_product(shape):
    """Factored A = left @ right (rank 2): the fold equals the entrywise float64 fold of the formed A, whether it
    is applied as two thin products (few outputs) or formed first (out · m (|R| + |K|) >= |R| |K| (m + out))."""
    torch.manual_seed(5)
    W = torch.randn(*shape, dtype=torch.float64)
    removed, kept = torch.tensor([0, 4, 7]), torch.tensor([1, 2, 3, 5, 6, 8])
    left, right = torch.randn(3, 2, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    A = compensation.LowRankCoefficients(left, right)
    assert A.shape == (3, 6) and torch.allclose(A.dense(), left @ right, rtol=1e-14)
    X = torch.randn(6, 4, dtype=torch.float64)
    assert torch.allclose(A @ X, left @ right @ X, rtol=1e-12)
    out = compensation.fold_removed_inputs(W, removed, kept, A)
    assert torch.equal(out[:, removed], W[:, removed])
    assert torch.allclose(out, _entrywise_fold(W, removed, kept, left @ right), rtol=1e-12, atol=1e-12)


def test_push_through_coefficients_factored_equal_the_formed_ones():
    """least_squares_coefficients(factor=U, factored=True) and ConsumerStats.coefficients(factored=True) are the
    same A as without the option, against the float64 ridge formula written here."""
    torch.manual_seed(6)
    U = torch.randn(30, 5, dtype=torch.float64)
    R, K = torch.arange(0, 30, 3), torch.tensor([k for k in range(30) if k % 3])
    ridge = 1e-2 * float(U[K].pow(2).sum()) / len(K)
    G = U @ U.T
    reference = G[R][:, K] @ torch.linalg.inv(G[K][:, K] + ridge * torch.eye(len(K), dtype=torch.float64))
    factored = compensation.least_squares_coefficients(None, R, K, 1e-2, factor=U, factored=True)
    assert isinstance(factored, compensation.LowRankCoefficients) and factored.left.shape == (len(R), 5)
    assert torch.allclose(factored.dense(), reference, rtol=1e-8, atol=1e-10)
    stats = ConsumerStats(nn.Linear(30, 2))
    stats.update(torch.randn(12, 30, dtype=torch.float64))  # 12 samples <= 0.8 · 30: the Woodbury form
    low_rank = stats.coefficients(R, K, 1e-3, factored=True)
    assert isinstance(low_rank, compensation.LowRankCoefficients)
    assert torch.allclose(low_rank.dense(), stats.coefficients(R, K, 1e-3), rtol=1e-10, atol=1e-12)


def test_non_finite_factors_are_caught():
    good = torch.ones(3, 2, dtype=torch.float64)
    assert compensation._all_finite(compensation.LowRankCoefficients(good, torch.ones(2, 4, dtype=torch.float64)))
    for bad in (float("nan"), float("inf")):
        right = torch.ones(2, 4, dtype=torch.float64)
        right[1, 2] = bad
        assert not compensation._all_finite(compensation.LowRankCoefficients(good, right))
        dense = torch.ones(3, 4, dtype=torch.float64)
        dense[0, 0] = bad
        assert not compensation._all_finite(dense)


def test_wide_ridged_solve_in_float32_is_checked_and_falls_back_to_float64(monkeypatch):
    """A wide, well-conditioned ridged system is solved in float32 (within 1e-5 of the float64 solve written
    here); an ill-conditioned one (condition 1e6) fails the residual check and is solved in float64 (within 1e-8)."""
    torch.manual_seed(7)
    n = compensation.FLOAT32_PRECISION_WIDTH
    rhs = torch.randn(n, 6, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    attempts = []
    original = compensation._solved_accurately
    monkeypatch.setattr(compensation, "_solved_accurately",
                        lambda *a, **k: attempts.append(original(*a, **k)) or attempts[-1])
    for spread, tolerance, float32_kept in ((1.0, 1e-5, True), (6.0, 1e-8, False)):
        system = Q @ torch.diag(torch.logspace(0, -spread, n, dtype=torch.float64)) @ Q.T
        system = (system + system.T) / 2
        ridge = float(system.diagonal().min()) * 1e-3
        reference = torch.linalg.solve(system, rhs)
        out = compensation._spd_solve(system, rhs, ridge)
        assert out.dtype == torch.float64
        assert float((out - reference).norm() / reference.norm()) < tolerance
        assert attempts[-1] is float32_kept


@pytest.mark.parametrize("spread, float32_kept", [(1.0, True), (4.0, False)])
def test_wide_woodbury_in_float32_is_checked_against_float64(spread, float32_kept):
    """U: (n, m) with n = 2 · FLOAT32_PRECISION_WIDTH rows: the factor of ρI + UᵀU is float32 when its solves are
    accurate on the float64 U (singular values spread over 1 decade) and float64 when not (4 decades, ρ tiny);
    either way the inverse diagonal and the push-through coefficients match the direct float64 inverses written
    here (1e-5 relative)."""
    torch.manual_seed(9)
    n, m = 2 * compensation.FLOAT32_PRECISION_WIDTH, 40
    Q1, _ = torch.linalg.qr(torch.randn(n, m, dtype=torch.float64))
    Q2, _ = torch.linalg.qr(torch.randn(m, m, dtype=torch.float64))
    U = Q1 @ torch.diag(torch.logspace(0, -spread, m, dtype=torch.float64)) @ Q2.T
    ridge = (1e-3 if float32_kept else 1e-6) * float(U.pow(2).sum()) / n
    factor = compensation._woodbury_cholesky(U, ridge)
    assert (factor.dtype == torch.float32) is float32_kept
    P = torch.linalg.inv(U @ U.T + ridge * torch.eye(n, dtype=torch.float64))
    diagonal = compensation._woodbury_inverse_diagonal(U, ridge)
    assert float(((diagonal - P.diagonal()) / P.diagonal()).abs().max()) < 1e-5
    R, K = torch.arange(0, n, 2), torch.arange(1, n, 2)
    G = U @ U.T
    reference = G[R][:, K] @ torch.linalg.inv(G[K][:, K] + ridge * torch.eye(len(K), dtype=torch.float64))
    A = compensation._woodbury_coefficients(U[R], U[K], ridge, factored=True).dense()
    assert float((A - reference).norm() / reference.norm()) < 1e-5


def test_condition_estimate_of_a_centred_factor_decides_the_float32_attempt(monkeypatch):
    """Centred samples (U 1 = 0): the estimate 1 + σ²/ρ matches the float64 condition number of ρI + UᵀU within
    10 %; ConsumerStats makes it once per factor, and below FLOAT32_CONDITION the float32 factor is attempted
    and kept, above it not attempted (float64, nothing checked); the diagonal matches float64 either way."""
    torch.manual_seed(10)
    n, T = 2 * compensation.FLOAT32_PRECISION_WIDTH, 50
    X = torch.randn(T, n, dtype=torch.float64) * torch.logspace(0, -2, n, dtype=torch.float64)
    U = ((X - X.mean(dim=0)).T / T ** 0.5).contiguous()
    checked, estimated = [], []
    original, original_estimate = compensation._woodbury_accurate, compensation._condition_estimate
    monkeypatch.setattr(compensation, "_woodbury_accurate", lambda *a, **k: checked.append(1) or original(*a, **k))
    monkeypatch.setattr(compensation, "_condition_estimate",
                        lambda *a, **k: estimated.append(1) or original_estimate(*a, **k))
    for lmbda in (1e-1, 1e-6):
        ridge = lmbda * float(U.pow(2).sum()) / (T - 1)
        eigenvalues = torch.linalg.eigvalsh(U.T @ U) + ridge
        condition = float(eigenvalues[-1] / eigenvalues[0])
        stats = ConsumerStats(nn.Linear(n, 2))
        stats.update(X)
        checked.clear(), estimated.clear()
        diagonal = stats.precision_diagonal(lmbda)
        R, K = torch.arange(0, n, 2), torch.arange(1, n, 2)
        stats.coefficients(R, K, lmbda)
        estimate = stats.moments._condition
        attempted = estimate <= compensation.FLOAT32_CONDITION
        # the power steps end once the estimate passes the limit: close to the condition number below it, and
        # above it (a lower bound of the eight steps' estimate) only past the limit
        assert len(estimated) == 1 and (abs(estimate - condition) <= 0.1 * condition if attempted else
                                        compensation.FLOAT32_CONDITION < estimate <= condition * (1 + 1e-9))
        full = compensation._condition_estimate(U, ridge)
        assert abs(full - condition) <= 0.1 * condition and (full <= compensation.FLOAT32_CONDITION) is attempted
        assert attempted is (lmbda == 1e-1) and bool(checked) is attempted
        factor = compensation._woodbury_cholesky(U, ridge, float32=attempted)
        assert factor.dtype == (torch.float32 if attempted else torch.float64)  # the well-conditioned one passes
        P = torch.linalg.inv(U @ U.T + ridge * torch.eye(n, dtype=torch.float64))
        assert float(((diagonal - P.diagonal()) / P.diagonal()).abs().max()) < 1e-5


def test_inverse_diagonal_from_the_cholesky_factor_matches_the_explicit_inverse(monkeypatch):
    """diag((L Lᵀ)⁻¹) from block triangular solves (n = 700, blocks of 256: a partial last block) equals the
    explicit float64 inverse's; the dense data-free diagonal is float32 on a well-conditioned wide Gram (its
    check accepts) within 1e-5 and float64 on an ill-conditioned one (~1e6: not even attempted in float32, the
    estimate is above FLOAT32_DENSE_CONDITION) within 1e-8."""
    torch.manual_seed(11)
    M = torch.randn(700, 900, dtype=torch.float64)
    S = M @ M.T
    L = torch.linalg.cholesky(S)
    expected = torch.linalg.inv(S).diagonal()
    assert torch.allclose(compensation._inverse_diagonal_of_factor(L, block=256), expected, rtol=1e-10)
    n = compensation.FLOAT32_PRECISION_WIDTH
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    checked = []
    original = compensation._accurate_in_float32
    monkeypatch.setattr(compensation, "_accurate_in_float32",
                        lambda *a, **k: checked.append(original(*a, **k)) or checked[-1])
    for spread, lmbda, tolerance, float32_checks in ((1.0, 1e-3, 1e-5, [True]), (4.0, 1e-5, 1e-8, [])):
        G = Q @ torch.diag(torch.logspace(0, -spread, n, dtype=torch.float64)) @ Q.T
        G = (G + G.T) / 2
        ridge = lmbda * float(G.diagonal().sum()) / n
        reference = torch.linalg.inv(G + ridge * torch.eye(n, dtype=torch.float64)).diagonal()
        checked.clear()
        diagonal = compensation._ridge_inverse_diagonal_dense(G, lmbda)
        assert diagonal.dtype == torch.float64 and checked == float32_checks  # condition 10 vs ~1e6
        assert float(((diagonal - reference) / reference).abs().max()) < tolerance


@pytest.mark.parametrize("shape", [(2, 300, 20, 20), (3, 300, 5, 5), (2, 40, 3, 3)])
def test_channel_gram_on_symmetric_blocks_matches_the_float64_sum_of_outer_products(shape):
    """Per image (400 positions) or on the stacked samples (25, 9 positions), split into symmetric blocks (300
    channels) or not (40): Σ_{b,p} x x ᵀ equals the float64 einsum written here (float32 rounding) and is symmetric."""
    torch.manual_seed(12)
    x = torch.randn(*shape)
    out = compensation._channel_gram(x)
    x64 = x.double().reshape(shape[0], shape[1], -1)
    expected = torch.einsum("bcp,bdp->cd", x64, x64)
    assert out.dtype == torch.float32 and torch.equal(out, out.T)
    assert torch.allclose(out.double(), expected, rtol=1e-5, atol=1e-4)


def test_woodbury_diagonal_and_variances_are_computed_once_per_collection(monkeypatch):
    """A consumer read by many groups (a DenseNet layer's input): its Woodbury precision diagonal is computed
    once until the statistics change; after keep() it is recomputed (the inverse of the kept block) and the
    cut variances equal those computed afresh; a new batch resets both."""
    torch.manual_seed(13)
    stats = ConsumerStats(nn.Linear(30, 2))
    stats.update(torch.randn(12, 30, dtype=torch.float64))  # 12 <= 0.8 · 30: the Woodbury form
    calls = []
    original = compensation._woodbury_inverse_diagonal
    monkeypatch.setattr(compensation, "_woodbury_inverse_diagonal",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    first = stats.precision_diagonal(1e-2)
    for _ in range(3):
        assert torch.equal(stats.precision_diagonal(1e-2), first)
    assert len(calls) == 1
    kept = torch.arange(1, 30, 2)
    variances = stats.variances()[kept].clone()
    stats.keep(kept)
    assert torch.allclose(stats.variances(), stats.moments._sample_variances(), rtol=1e-12) and torch.equal(
        stats.variances(), variances)
    U, ridge = stats.moments._low_rank
    assert torch.allclose(stats.precision_diagonal(1e-2), original(U, ridge), rtol=1e-12) and len(calls) == 2
    stats.update(torch.randn(2, 15, dtype=torch.float64))
    assert stats.moments._diagonal is None and stats.moments._variances is None
