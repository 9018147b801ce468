"""Consumers of one tensor share their statistics; the separable patch sums, the recursive Cholesky and the
dense float32 decision (projprune/compensation.py, projprune/_symmetric.py), each against float64 written here."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import projprune.compensation as compensation
from projprune._symmetric import cholesky
from projprune.compensation import CalibratedProjectiveImportance, CompensatingPruner, collect_consumer_stats


class _Fork(nn.Module):
    """A stem whose output is read by two convs (a bottleneck's conv1 and downsample), then by a third after an
    in-place ReLU (same object, new version: not the same input), and a head of two Linears on one vector."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.left = nn.Conv2d(12, 8, 3, padding=1)
        self.right = nn.Conv2d(12, 8, 1, stride=2)
        self.after = nn.Conv2d(12, 8, 1)
        self.head_a = nn.Linear(16, 4)
        self.head_b = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        a = self.left(h).mean(dim=(2, 3))
        b = self.right(h).mean(dim=(2, 3))
        c = self.after(torch.relu_(h)).mean(dim=(2, 3))
        v = torch.cat([a, b], dim=1)
        return self.head_a(v) + self.head_b(v) + c.sum(dim=1, keepdim=True)


def _population_cov(X: torch.Tensor) -> torch.Tensor:
    Xc = X - X.mean(dim=0)
    return Xc.T @ Xc / X.shape[0]


def test_consumers_of_one_tensor_share_moments_equal_to_float64_statistics():
    """left and right read the same tensor in both batches: one ChannelMoments, whose covariance is the float64
    one of that tensor; after (same object, modified in place) and the Linears (another tensor) do not share
    with them; every consumer keeps its own patch means (different kernels and strides)."""
    torch.manual_seed(0)
    model = _Fork().double().eval()
    batches = [torch.randn(3, 3, 6, 5, dtype=torch.float64) for _ in range(2)]
    consumers = [model.left, model.right, model.after, model.head_a, model.head_b]
    stats = collect_consumer_stats(model, consumers, batches)
    assert stats[model.left].moments is stats[model.right].moments
    assert stats[model.after].moments is not stats[model.left].moments
    assert stats[model.head_a].moments is stats[model.head_b].moments
    maps = [model.stem(x) for x in batches]
    H = torch.cat([h.permute(0, 2, 3, 1).reshape(-1, 12) for h in maps])
    assert torch.allclose(stats[model.left].covariance(), _population_cov(H), atol=1e-12)
    relu = torch.cat([torch.relu(h).permute(0, 2, 3, 1).reshape(-1, 12) for h in maps])
    assert torch.allclose(stats[model.after].covariance(), _population_cov(relu), atol=1e-12)
    for conv in (model.left, model.right):
        cols = torch.cat([F.unfold(h, conv.kernel_size, padding=conv.padding, stride=conv.stride) for h in maps], 2)
        expected = cols.mean(dim=(0, 2)).reshape(12, *conv.kernel_size)
        assert torch.allclose(stats[conv].patch_means(), expected, atol=1e-12)


def test_shared_moments_solve_once_and_the_pruned_model_matches_unshared_statistics(monkeypatch):
    """A pruning step with shared statistics writes the same weights as with every consumer's own (sharing
    turned off): the coefficients are solved once for both readers, the cut is made once, and each
    consumer's patch sums are cut to the kept channels."""
    torch.manual_seed(1)
    x = torch.randn(16, 3, 6, 6, dtype=torch.float64)

    def pruned(share: bool) -> tuple[_Fork, CompensatingPruner]:
        torch.manual_seed(2)
        model = _Fork().double().eval()
        if not share:
            monkeypatch.setattr(compensation, "_share_moments", lambda *a: None)
        pruner = CompensatingPruner(model, x[:1], CalibratedProjectiveImportance(), calibration=lambda: [x],
                                    iterative_steps=2, calibrate_every=10, pruning_ratio=0.5,
                                    ignored_layers=[model.left, model.right, model.after, model.head_a,
                                                    model.head_b])
        solves = []
        original = compensation.ChannelMoments._solve_coefficients
        monkeypatch.setattr(compensation.ChannelMoments, "_solve_coefficients",
                            lambda self, *a: solves.append(1) or original(self, *a))
        pruner.step()
        monkeypatch.undo()
        pruner.solves = len(solves)
        return model, pruner

    shared, shared_pruner = pruned(True)
    alone, alone_pruner = pruned(False)
    assert shared.stem.out_channels == alone.stem.out_channels == 9
    assert shared_pruner.solves == 2 and alone_pruner.solves == 3  # {left, right} once, after once (alone: 3)
    for name in ("stem", "left", "right", "after"):
        assert torch.allclose(getattr(shared, name).weight, getattr(alone, name).weight, atol=1e-12)
        assert torch.allclose(getattr(shared, name).bias, getattr(alone, name).bias, atol=1e-12)
    left, right = shared_pruner.stats[shared.left], shared_pruner.stats[shared.right]
    assert left.moments is right.moments and left.n == 9  # cut once, to the kept channels
    assert left.patch_sum.shape == (9, 3, 3) and right.patch_sum.shape == (9, 1, 1)
    assert torch.allclose(left.covariance(), alone_pruner.stats[alone.left].covariance(), atol=1e-12)


def test_consumers_cut_differently_get_their_own_copy():
    """Should one step cut two readers of one tensor differently, each plans from its own copy of the statistics
    (unchanged values): the first keeps the shared object."""
    torch.manual_seed(3)
    model = _Fork().double().eval()
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    pruner = CompensatingPruner(model, x[:1], CalibratedProjectiveImportance(), calibration=lambda: [x],
                                pruning_ratio=0.5)
    pruner.stats = collect_consumer_stats(model, [model.left, model.right], [x])
    shared = pruner.stats[model.left].moments
    covariance = shared.covariance().clone()
    pruner._unshare_differently_cut({model.left: torch.tensor([0, 1]), model.right: torch.tensor([0, 2])})
    assert pruner.stats[model.left].moments is shared and pruner.stats[model.right].moments is not shared
    assert torch.equal(pruner.stats[model.right].covariance(), covariance)
    pruner.stats[model.right].keep(torch.arange(3, 12))
    assert shared.n == 12 and pruner.stats[model.right].n == 9


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_separable_patch_sums_equal_the_sum_over_output_positions(dims):
    """Strided, dilated, padded (zeros, reflect, replicate, padding past a kernel offset's reach) convs of 1-3
    spatial dimensions: the patch sums equal the float64 sum over every output position and kernel offset."""
    generator = torch.Generator().manual_seed(dims)
    conv_type = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
    settings = [((3,) * dims, (2,) * dims, (1,) * dims, (1,) * dims, "zeros"),
                ((2,) * dims, (1,) * dims, (3,) * dims, (4,) * dims, "zeros"),
                ((3,) * dims, (3,) * dims, (2,) * dims, (2,) * dims, "reflect"),
                ((4,) * dims, (2,) * dims, (1,) * dims, (3,) * dims, "replicate")]
    for kernel, stride, dilation, padding, mode in settings:
        conv = conv_type(2, 1, kernel, stride=stride, dilation=dilation, padding=padding, padding_mode=mode)
        size = (7, 6, 5)[:dims]
        plane = torch.randn(2, *size, generator=generator, dtype=torch.float64)
        got, positions = compensation._patch_sums(conv, plane, batch=3)
        padded = F.pad(plane[None], conv._reversed_padding_repeated_twice,
                       mode="constant" if mode == "zeros" else mode)[0]
        out = [(padded.shape[1 + a] - dilation[a] * (kernel[a] - 1) - 1) // stride[a] + 1 for a in range(dims)]
        expected = torch.zeros(2, *kernel, dtype=torch.float64)
        for position in itertools.product(*(range(n) for n in out)):
            for offset in itertools.product(*(range(k) for k in kernel)):
                index = tuple(position[a] * stride[a] + offset[a] * dilation[a] for a in range(dims))
                expected[(slice(None), *offset)] += padded[(slice(None), *index)]
        assert positions == 3 * int(torch.tensor(out).prod())
        assert torch.allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_recursive_cholesky_matches_lapack_and_reports_the_failing_minor(dtype):
    """n = 700 with blocks of 100 (three levels of halves): the factor equals torch.linalg.cholesky's within
    rounding, lower triangular; a negative pivot in either half is reported at its order, as cholesky_ex does."""
    torch.manual_seed(4)
    A = torch.randn(700, 750, dtype=torch.float64)
    M = (A @ A.T / 750 + 1e-2 * torch.eye(700, dtype=torch.float64)).to(dtype)
    L, info = cholesky(M, block=100)
    expected = torch.linalg.cholesky(M.double())
    tolerance = 1e-12 if dtype == torch.float64 else 1e-4
    assert info == 0 and L.dtype == dtype and torch.equal(L, L.tril())
    assert float((L.double() - expected).abs().max()) <= tolerance * float(expected.abs().max())
    for bad in (120, 611):
        broken = torch.eye(700, dtype=dtype)
        broken[bad, bad] = -1.0
        assert cholesky(broken, block=100)[1] == int(torch.linalg.cholesky_ex(broken)[1]) == bad + 1
    copy = M.clone()
    factor, _ = cholesky(copy, block=100, inplace=True)
    assert factor.data_ptr() == copy.data_ptr() and torch.allclose(factor, L)  # M's storage holds the factor


def test_dense_float32_factor_is_attempted_only_below_the_condition_limit(monkeypatch):
    """The estimate of 1 + λ_max / ρ (power steps; a bound on the condition number) decides the float32 attempt
    of a wide dense factor: ~1e3 is attempted (and kept), ~1e7 is not; a float32 Gram (data-free, weights in
    float32) is read too; the diagonal of the inverse matches float64 either way."""
    n = compensation.FLOAT32_PRECISION_WIDTH
    torch.manual_seed(5)
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    checked = []
    original = compensation._accurate_in_float32
    monkeypatch.setattr(compensation, "_accurate_in_float32", lambda *a, **k: checked.append(original(*a, **k))
                        or checked[-1])
    for spread, lmbda, expected_checks in ((2.0, 1e-1, [True]), (4.0, 1e-5, [])):
        G = Q @ torch.diag(torch.logspace(0, -spread, n, dtype=torch.float64)) @ Q.T
        G = (G + G.T) / 2
        ridge = lmbda * float(G.diagonal().sum()) / n
        eigenvalues = torch.linalg.eigvalsh(G)
        estimate = 1 + compensation._largest_eigenvalue(G.__matmul__, n, G.device) / ridge
        bound = 1 + float(eigenvalues[-1]) / ridge  # the condition number's bound the estimate approaches
        condition = float((eigenvalues[-1] + ridge) / (eigenvalues[0] + ridge))
        assert abs(estimate - bound) <= 0.1 * bound and bound >= condition
        reference = torch.linalg.inv(G + ridge * torch.eye(n, dtype=torch.float64)).diagonal()
        for gram in (G, G.float()):
            checked.clear()
            diagonal = compensation._ridge_inverse_diagonal_dense(gram, lmbda)
            assert checked == expected_checks
            tolerance = 1e-4 if gram.dtype == torch.float32 or expected_checks else 1e-8
            assert float(((diagonal - reference) / reference).abs().max()) < tolerance


def test_a_linear_with_kept_samples_gives_its_means_without_their_products():
    """The mean correction reads a Linear's channel means: with the samples kept (Woodbury form) their (c, c)
    products stay unformed, and the means equal the float64 ones."""
    torch.manual_seed(6)
    layer = nn.Linear(64, 3).double()
    x = torch.randn(5, 7, 64, dtype=torch.float64)
    stats = collect_consumer_stats(layer, [layer], [x])[layer]
    assert torch.allclose(stats.patch_means(), x.reshape(-1, 64).mean(dim=0), atol=1e-12)
    assert stats.moments._samples and stats.moments._stats.sum_outer.is_meta


def test_power_steps_end_once_the_estimate_passes_the_limit_with_the_same_decision():
    """The Rayleigh quotients of power steps never decrease: once one passes ``above`` the steps end (fewer
    products), and the float32 decision (estimate <= limit) is the one the eight steps give; below the limit
    all eight run and give the same estimate. Eigenvalues from float64 eigvalsh."""
    n = 64
    torch.manual_seed(7)
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    G = Q @ torch.diag(torch.logspace(0, -3, n, dtype=torch.float64)) @ Q.T
    largest = float(torch.linalg.eigvalsh(G)[-1])
    counted = []

    def product(v: torch.Tensor) -> torch.Tensor:
        counted.append(1)
        return G @ v

    full = compensation._largest_eigenvalue(product, n, G.device)
    assert len(counted) == 8 and 0.9 * largest <= full <= largest * (1 + 1e-12)
    for above, decision in ((0.01 * largest, False), (2.0 * largest, True)):
        counted.clear()
        early = compensation._largest_eigenvalue(product, n, G.device, above=above)
        assert (early <= above) == decision == (full <= above)
        assert len(counted) == (8 if decision else 1)
        if decision:
            assert early == full
