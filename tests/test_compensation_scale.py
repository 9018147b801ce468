"""The compensating pruner on real-sized models: bounded statistics, one solve per group, any input structure
(issue 26; docs/algorithm.md §8.1.1). Checked against float64 references written here."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

import projprune.compensation as compensation
from projprune.compensation import CalibratedProjectiveImportance, CompensatingPruner, ConsumerStats


def test_per_channel_statistics_of_a_flattened_map_match_float64_sums():
    """blocks = positions: every position of a channel is a sample of it; per-position sums kept."""
    torch.manual_seed(0)
    C, S, B = 5, 6, 7
    x = torch.randn(B, C * S).relu() + 0.25
    stats = ConsumerStats(nn.Linear(C * S, 3), blocks=S)
    stats.update(x[:3])
    stats.update(x[3:])
    H = x.double().reshape(B, C, S)
    samples = H.permute(0, 2, 1).reshape(-1, C)  # (B·S, C)
    assert stats.n == C and stats.width == C * S and stats.channels.count == B * S
    assert torch.allclose(stats.channels.sum_outer, samples.T @ samples, rtol=1e-6)
    assert torch.allclose(stats.patch_means(), H.mean(dim=0), rtol=1e-6)
    centred = samples - samples.mean(0)
    assert torch.allclose(stats.covariance(), centred.T @ centred / len(samples), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="blocks"):
        ConsumerStats(nn.Linear(C * S + 1, 3), blocks=S)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 30\)"):
        stats.update(torch.randn(2, 29))


def _flatten_model(redundant: bool) -> nn.Sequential:
    """Conv(3 -> 12) -> [ReLU] -> Flatten -> Linear(12·4·4 -> 5); with ``redundant`` the 12 filters
    span 6 dimensions and nothing bends the map: channel 11 is a fixed combination of the others."""
    torch.manual_seed(2)
    first = nn.Conv2d(3, 12, 3, padding=1, bias=False)
    if redundant:
        basis = torch.randn(6, 27)
        with torch.no_grad():
            first.weight.copy_((torch.randn(12, 6) @ basis).reshape(12, 3, 3, 3))
        return nn.Sequential(first, nn.Flatten(), nn.Linear(12 * 16, 5)).double().eval()
    return nn.Sequential(first, nn.ReLU(), nn.Flatten(), nn.Linear(12 * 16, 5)).double().eval()


@pytest.mark.parametrize("calibrated", [False, True])
def test_flatten_consumer_with_channel_statistics_keeps_a_redundant_output_exactly(calibrated, caplog):
    """Exactness where the channel relation holds at every position (§8.1.1): the bounded statistics
    (calibrated, budget exceeded) and the producers' Gram (data-free) both recover it."""
    model = _flatten_model(redundant=True)
    x = torch.randn(40, 3, 4, 4, dtype=torch.float64)
    before = model(x)
    with caplog.at_level(logging.WARNING, logger="projprune.compensation"):
        pruner = CompensatingPruner(model, x[:1], tp.importance.MagnitudeImportance(),
                                    calibration=(lambda: [x]) if calibrated else None, lmbda=1e-10,
                                    pruning_ratio=0.5, ignored_layers=[model[2]], statistics_budget=1000)
        pruner.step()
    assert model[2].in_features == 6 * 16
    assert torch.allclose(model(x), before, atol=1e-5)
    if calibrated:
        assert pruner.stats[model[2]].blocks == 16
        warnings = [r for r in caplog.records if "per-channel statistics" in r.getMessage()]
        assert len(warnings) == 1 and "192 = 12 x 16" in warnings[0].getMessage()


def test_flatten_fold_and_mean_shift_match_a_float64_reference():
    """Calibrated fold of a flatten consumer from per-channel statistics: A = C_RK (C_KK + ρI)⁻¹ with C
    the channel covariance over batch and positions, V[:, K, s] += Σ_r V[:, r, s] A[r, K], and the
    bias gains Σ_{r,s} V[:, r, s] (M[r, s] − Σ_k A[r, k] M[k, s]) (M: per-position means)."""
    model = _flatten_model(redundant=False)
    x = torch.randn(24, 3, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        H = model[:2](x).reshape(24, 12, 16)
    V = model[3].weight.detach().clone().reshape(5, 12, 16)
    bias = model[3].bias.detach().clone()
    pruner = CompensatingPruner(model, x[:1], tp.importance.MagnitudeImportance(), calibration=lambda: [x],
                                pruning_ratio=0.25, ignored_layers=[model[3]], statistics_budget=1000)
    groups = list(pruner.step(interactive=True))
    removed = sorted(groups[0][0].idxs)
    kept = [c for c in range(12) if c not in removed]
    samples = H.permute(0, 2, 1).reshape(-1, 12)
    C = torch.cov(samples.T, correction=0)
    ridge = 1e-3 * float(torch.trace(C)) / 12
    A = C[removed][:, kept] @ torch.linalg.inv(C[kept][:, kept] + ridge * torch.eye(len(kept), dtype=torch.float64))
    expected = V[:, kept] + torch.einsum("ors,rk->oks", V[:, removed], A)
    M = H.mean(dim=0)  # (12, 16)
    shift = (V[:, removed] * (M[removed] - A @ M[kept])).sum(dim=(1, 2))
    for group in groups:
        group.prune()
    assert torch.allclose(model[3].weight.reshape(5, len(kept), 16), expected, atol=1e-10)
    assert torch.allclose(model[3].bias, bias + shift, atol=1e-10)


def test_the_default_budget_bounds_a_wide_flatten_consumer():
    """A Linear reading 8 channels x 784 positions: a dense float64 covariance would take 315 MB, over
    the default budget (256 MiB): 8 x 8 per-channel statistics instead, and the step runs."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 784, 4)).eval()
    x = torch.randn(6, 3, 28, 28)
    pruner = CompensatingPruner(model, x[:1], CalibratedProjectiveImportance(), calibration=lambda: [x],
                                pruning_ratio=0.5, ignored_layers=[model[3]])
    assert pruner._blocks == {model[3]: 784}
    pruner.step()
    stats = pruner.stats[model[3]]
    assert stats.channels.sum_outer.shape == (8, 8) and stats.patch_sum.shape == (8, 784)  # (the last step: not cut)
    assert model[3].in_features == 4 * 784 and torch.isfinite(model(x)).all()
    with pytest.raises(ValueError, match="statistics_budget"):
        CompensatingPruner(model, x[:1], CalibratedProjectiveImportance(), calibration=lambda: [x],
                           statistics_budget=0)


def test_data_free_importance_inverts_each_group_gram_once(monkeypatch):
    """Every consumer of a group reads the same producers' Gram: one inversion per group."""
    torch.manual_seed(4)

    class Fan(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc0 = nn.Linear(4, 8)
            self.heads = nn.ModuleList(nn.Linear(8, 2) for _ in range(3))

        def forward(self, x):
            h = self.fc0(x)
            return sum(head(h) for head in self.heads)

    model = Fan().double()
    calls = []
    original = compensation._ridge_inverse_diagonal
    monkeypatch.setattr(compensation, "_ridge_inverse_diagonal",
                        lambda G, lmbda: calls.append(1) or original(G, lmbda))
    importance = CalibratedProjectiveImportance(data_free=True)
    graph = tp.DependencyGraph().build_dependency(model, torch.randn(1, 4, dtype=torch.float64))
    group = graph.get_pruning_group(model.fc0, tp.prune_linear_out_channels, idxs=list(range(8)))
    scores = importance(group).double()
    assert len(calls) == 1
    W = torch.cat([model.fc0.weight, model.fc0.bias[:, None]], dim=1).detach()
    G = W @ W.T
    P = torch.linalg.inv(G + 1e-3 * float(torch.trace(G)) / 8 * torch.eye(8, dtype=torch.float64))
    expected = torch.zeros(8, dtype=torch.float64)
    for head in model.heads:
        w2 = (head.weight.detach() ** 2).sum(0)
        expected += w2 / P.diagonal() / (w2 * G.diagonal()).sum()
    assert torch.allclose(scores, expected, rtol=1e-5)


# --------------------------------------------------------------------------- inputs of any structure
class _DictModel(nn.Module):
    """Takes keyword tensors (as Torch-Pruning's dict example_inputs): ``model(image=..., scale=...)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, image, scale):
        return self.head(self.conv(image).relu() * scale)


class _ListModel(nn.Module):
    """Takes a list of images of one size (as a detection model's ``model([img, img])``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, images):
        return self.head(self.conv(torch.stack(list(images))).relu())


class _PairModel(nn.Module):
    """Takes two positional tensors: ``model(a, b)`` (a tuple of example inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc_a = nn.Linear(4, 8)
        self.fc_b = nn.Linear(4, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, a, b):
        return self.head((self.fc_a(a) + self.fc_b(b)).relu())


def _structured_case(kind: str, generator: torch.Generator):
    """``(model, example_inputs, calibration batches, samples the consumer ``head`` sees in them)``."""
    if kind == "dict":
        def batch(n):
            return {"image": torch.randn(n, 3, 5, 5, generator=generator), "scale": torch.tensor(2.0)}
        return _DictModel(), batch(1), [batch(3), batch(2)], 5 * 25
    if kind == "list":
        def images(n):
            return [torch.rand(3, 5, 5, generator=generator) for _ in range(n)]
        return _ListModel(), images(2), [images(3), images(4)], 7 * 25

    def pair(n):
        return (torch.randn(n, 4, generator=generator), torch.randn(n, 4, generator=generator))
    return _PairModel(), pair(1), [pair(6), pair(5)], 11


@pytest.mark.parametrize("kind", ["dict", "list", "tuple"])
def test_calibration_batches_of_any_structure(kind):
    """Example inputs and calibration batches as dicts, lists of images or tuples of arguments: the
    statistics see every sample, the step prunes and compensates (mean output of the head kept)."""
    generator = torch.Generator().manual_seed(5)
    model, example, batches, samples = _structured_case(kind, generator)
    model.eval()

    def mean_output() -> torch.Tensor:  # the head's mean output over every calibration sample and position
        with torch.no_grad():
            outs = [model(**b) if kind == "dict" else model(b) if kind == "list" else model(*b) for b in batches]
        return torch.cat([o.transpose(0, 1).reshape(2, -1) for o in outs], dim=1).double().mean(dim=1)

    before = mean_output()
    pruner = CompensatingPruner(model, example, CalibratedProjectiveImportance(), calibration=lambda: batches,
                                pruning_ratio=0.5, ignored_layers=[model.head])
    pruner.step()
    assert pruner.stats[model.head].channels.count == samples
    assert model.head.weight.shape[1] == 4
    assert torch.allclose(mean_output(), before, atol=1e-5)


def test_dict_example_inputs_need_dict_batches():
    generator = torch.Generator().manual_seed(6)
    model, example, _, _ = _structured_case("dict", generator)
    pruner = CompensatingPruner(model.eval(), example, CalibratedProjectiveImportance(),
                                calibration=lambda: [torch.randn(2, 3, 5, 5)], pruning_ratio=0.5,
                                ignored_layers=[model.head])
    weight = model.conv.weight.detach().clone()
    with pytest.raises(ValueError, match="calibration batches must be dicts"):
        pruner.step()
    assert torch.equal(model.conv.weight, weight)


@pytest.mark.parametrize("samples, noise, fast", [(3000, 0.1, True), (3000, 0.001, True), (40, 0.1, False)])
def test_wide_precisions_in_float32_only_where_accurate(samples, noise, fast):
    """From FLOAT32_PRECISION_WIDTH inputs on, (C + ρI)⁻¹ is a float32 Cholesky inverse when its condition
    bound allows (and A = −P_RR⁻¹ P_RK a float32 solve): against float64 the precision, its diagonal (the
    OBS scores) and A differ by < 1e-3 relative. A covariance of fewer samples than inputs (rank 39 of 600:
    condition ~ 1 + 600 / lmbda) stays in float64."""
    torch.manual_seed(7)
    n = compensation.FLOAT32_PRECISION_WIDTH + 88
    W = torch.randn(n, 64, dtype=torch.float64) @ torch.randn(64, 64, dtype=torch.float64) / 8
    X = torch.relu(torch.randn(samples, 64, dtype=torch.float64) @ W.T + noise * torch.randn(samples, n,
                                                                                             dtype=torch.float64))
    C = torch.cov(X.T, correction=0)
    P = compensation._ridge_inverse(C, 1e-3)
    reference = torch.linalg.inv(C + 1e-3 * float(torch.trace(C)) / n * torch.eye(n, dtype=torch.float64))
    assert P.dtype == (torch.float32 if fast else torch.float64)
    P = P.double()
    assert float((P - reference).norm() / reference.norm()) < 1e-3
    assert float(((P.diagonal() - reference.diagonal()).abs() / reference.diagonal()).max()) < 1e-3
    R, K = torch.arange(0, n, 2), torch.arange(1, n, 2)
    A = -compensation._spd_solve(P[R][:, R].to(P.dtype if not fast else torch.float32),
                                 P[R][:, K], 0.0, well_conditioned=fast)  # as ConsumerStats.coefficients
    A_reference = -torch.linalg.solve(reference[R][:, R], reference[R][:, K])
    assert float((A - A_reference).norm() / A_reference.norm()) < 1e-3


def test_data_free_gram_of_float32_producers_matches_float64_and_is_shared_within_a_step(monkeypatch):
    """The producers' Gram (BatchNorm folded) is formed and kept in float32 for one float32 producer, within 1e-5
    of a float64 reference, and computed once per group and step (scores and plan share it)."""
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 4, 3)).eval()
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.uniform_(0.5, 1.5)
    graph = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 6, 6))
    group = graph.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs=list(range(16)))
    G = compensation._producer_gram(group).dense  # 16 rows of 28 columns: dense
    bn = model[1]
    scale = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().double()
    rows = model[0].weight.detach().double().flatten(1) * scale[:, None]
    bias = (model[0].bias.detach().double() - bn.running_mean.double()) * scale + bn.bias.detach().double()
    reference = torch.cat([rows, bias[:, None]], dim=1) @ torch.cat([rows, bias[:, None]], dim=1).T
    assert G.dtype == torch.float32 and torch.allclose(G.double(), reference, rtol=1e-5, atol=1e-5)
    computed = []
    original = compensation._batchnorm_after  # called once per producer whenever a Gram is computed
    monkeypatch.setattr(compensation, "_batchnorm_after", lambda node: computed.append(1) or original(node))
    CompensatingPruner(model, torch.randn(1, 3, 6, 6), CalibratedProjectiveImportance(data_free=True),
                       pruning_ratio=0.5, ignored_layers=[model[3]]).step()
    assert model[0].out_channels == 8 and len(computed) == 1


def test_with_fewer_samples_than_inputs_the_ridge_follows_the_nonzero_spectrum():
    """T = 9 samples of 40 inputs: the covariance has rank 8 and trace / 40 understates its eigenvalues
    five-fold; the ridge is lmbda · trace / 8 (with T > c it stays lmbda · trace / c)."""
    torch.manual_seed(10)
    for samples, divisor in ((9, 8), (200, 40)):
        stats = ConsumerStats(nn.Linear(40, 2))
        X = torch.randn(samples, 40, dtype=torch.float64)
        stats.update(X)
        C = torch.cov(X.T, correction=0)
        expected = torch.linalg.inv(C + 1e-2 * float(torch.trace(C)) / divisor * torch.eye(40, dtype=torch.float64))
        assert torch.allclose(stats.precision(1e-2), expected, rtol=1e-8, atol=1e-8)
