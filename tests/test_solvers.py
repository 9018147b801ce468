"""The three Q solvers and the closed-form distances against a per-row direct ridge solve."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import projprune as pp
from projprune._checks import check_finite
from tests.reference_impl import DEVICES, brute_distances, ridge_q


def rel_err(Q, Q_ref):
    return float((Q.double().cpu() - Q_ref).abs().max() / Q_ref.abs().max().clamp_min(1e-300))


def random_matrix(n, m, seed, rank=None):
    g = torch.Generator().manual_seed(seed)
    if rank is None:
        return torch.randn(n, m, generator=g, dtype=torch.float64)
    left = torch.randn(n, rank, generator=g, dtype=torch.float64)
    return left @ torch.randn(rank, m, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(16, 40), (30, 30), (64, 48), (50, 20)])
@pytest.mark.parametrize("method", ["closed", "naive"])
def test_closed_and_naive_match_direct_solve(device, shape, method):
    W = random_matrix(*shape, seed=shape[0])
    Q = pp.solve_normal_equations(W.to(device), lmbda=1e-3, method=method)
    assert Q.device.type == device and Q.dtype == torch.float64
    assert torch.all(Q.diagonal() == 0)
    assert rel_err(Q, ridge_q(W, 1e-3)) < 1e-9


@pytest.mark.parametrize("device", DEVICES)
def test_fast_solver_accuracy(device):
    # n <= m: as accurate as the others.
    W = random_matrix(24, 40, seed=1)
    assert rel_err(pp.solve_fast(W.to(device)), ridge_q(W, 1e-3)) < 1e-9
    # n > m: G + λI is conditioned like ||G||/λ and the rank-1 update cancels; docs/algorithm.md §3
    # measured 7e-8 (64x48) and 6e-7 (200x50) absolute. We allow 1e-5 relative.
    W = random_matrix(64, 48, seed=2)
    assert rel_err(pp.solve_fast(W.to(device)), ridge_q(W, 1e-3)) < 1e-5


def test_rank_deficient_rows():
    W = random_matrix(40, 30, seed=3, rank=10)  # n > m and rank 10
    Q_ref = ridge_q(W, 1e-3)
    assert rel_err(pp.solve_closed(W), Q_ref) < 1e-9
    assert rel_err(pp.solve_naive(W), Q_ref) < 1e-9


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 14), m=st.integers(1, 14), seed=st.integers(0, 10_000),
       lmbda=st.sampled_from([1e-3, 1e-2, 1.0]))
def test_closed_form_any_shape(n, m, seed, lmbda):
    W = random_matrix(n, m, seed)
    Q_ref = ridge_q(W, lmbda)
    assert rel_err(pp.solve_closed(W, lmbda), Q_ref) < 1e-9
    d = pp.projection_distances(W, lmbda)
    d_ref = brute_distances(W, lmbda)
    assert float((d - d_ref).abs().max()) < 1e-9 * max(1.0, float(d_ref.max()))


@pytest.mark.parametrize("device", DEVICES)
def test_distances_residual_form(device):
    W = random_matrix(80, 30, seed=5)  # n > m, where the P^2 form would cancel
    d = pp.projection_distances(W.to(device), 1e-3)
    assert float((d.cpu() - brute_distances(W, 1e-3)).abs().max()) < 1e-9


def test_float32_input_returns_float32():
    W = random_matrix(20, 30, seed=6).float()
    Q = pp.solve_closed(W)
    d = pp.projection_distances(W)
    assert Q.dtype == torch.float32 and d.dtype == torch.float32
    assert rel_err(Q, ridge_q(W, 1e-3)) < 1e-5


def test_duplicate_row_has_zero_distance():
    W = random_matrix(10, 20, seed=7)
    W[4] = W[7]
    d = pp.projection_distances(W, 1e-3)
    assert float(d[4]) < 1e-3 * float(d.max()) and int(torch.argmin(d)) in (4, 7)


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.randn(5), "2-D"),
        (torch.randn(2, 3, 4), "2-D"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "NaN"),
        (torch.ones(3, 3, dtype=torch.long), "floating"),
    ],
)
def test_bad_weight(bad, message):
    with pytest.raises(ValueError, match=message):
        pp.solve_normal_equations(bad)


def test_bad_lambda_and_method():
    W = random_matrix(6, 3, seed=8)  # n > m: singular Gram
    with pytest.raises(ValueError, match="singular"):
        pp.solve_closed(W, lmbda=0.0)
    with pytest.raises(ValueError, match="lmbda"):
        pp.projection_distances(W, lmbda=-1.0)
    with pytest.raises(ValueError, match="method"):
        pp.solve_normal_equations(W, method="qr")
    # λ = 0 is fine when the Gram matrix is non-singular
    W = random_matrix(3, 6, seed=9)
    assert rel_err(pp.solve_closed(W, lmbda=0.0), ridge_q(W, 0.0)) < 1e-9


@pytest.mark.parametrize("shape", [(60, 20), (20, 60)])
def test_precision_forms_agree(shape):
    # n > m uses the m x m form; it must match the n x n Cholesky inverse
    W = random_matrix(*shape, seed=10)
    P, R, diag = pp.precision_and_residuals(W, 1e-3)
    G = W @ W.T + 1e-3 * torch.eye(shape[0], dtype=torch.float64)
    P_ref = torch.linalg.inv(G)
    assert rel_err(P, P_ref) < 1e-9
    assert rel_err(R, P_ref @ W) < 1e-9 and rel_err(diag, P_ref.diagonal()) < 1e-9


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_weights_with_one_non_finite_entry_are_refused_and_huge_finite_ones_are_not(bad):
    """check_finite reads one float64 sum: a single NaN/Inf among 10^5 entries is refused; finite entries whose
    sum overflows (1e308 each) are confirmed finite entry by entry and accepted."""
    W = torch.randn(200, 500, dtype=torch.float64)
    W[123, 45] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        pp.projection_distances(W, 1e-3)
    huge = torch.full((4, 3), 1e308, dtype=torch.float64)
    check_finite(huge, "W")  # no error
