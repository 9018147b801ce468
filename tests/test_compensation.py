"""The compensating pruner on Torch-Pruning groups (projprune/compensation.py), checked in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from projprune.compensation import (
    CalibratedProjectiveImportance,
    CompensatingPruner,
    ConsumerStats,
    channel_macs,
    collect_consumer_stats,
    fold_removed_inputs,
    least_squares_coefficients,
    output_positions,
)


def _reference_coefficients(G: torch.Tensor, removed: list[int], kept: list[int], lmbda: float) -> torch.Tensor:
    G = G.double()
    Gkk = G[kept][:, kept]
    lam = lmbda * float(torch.trace(Gkk)) / len(kept)
    return G[removed][:, kept] @ torch.linalg.inv(Gkk + lam * torch.eye(len(kept), dtype=torch.float64))


def test_least_squares_coefficients_match_explicit_inverse():
    torch.manual_seed(0)
    H = torch.randn(7, 50, dtype=torch.float64)
    G = H @ H.T
    removed, kept = [1, 4], [0, 2, 3, 5, 6]
    A = least_squares_coefficients(G, torch.tensor(removed), torch.tensor(kept), lmbda=1e-2)
    assert torch.allclose(A, _reference_coefficients(G, removed, kept, 1e-2), atol=1e-12)


def test_fold_removed_inputs_adds_the_removed_slices():
    torch.manual_seed(0)
    W = torch.randn(3, 5, 2, 2, dtype=torch.float64)
    removed, kept = torch.tensor([0, 3]), torch.tensor([1, 2, 4])
    A = torch.randn(2, 3, dtype=torch.float64)
    out = fold_removed_inputs(W, removed, kept, A)
    expected = W.clone()
    for r_pos, r in enumerate(removed.tolist()):
        for k_pos, k in enumerate(kept.tolist()):
            expected[:, k] += A[r_pos, k_pos] * W[:, r]
    assert torch.allclose(out, expected, atol=1e-12)
    assert torch.equal(out[:, removed], W[:, removed])


def test_patch_means_match_unfold():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, kernel_size=3, stride=2, padding=1).double()
    stats = ConsumerStats(conv)
    batches = [torch.randn(5, 3, 7, 6, dtype=torch.float64) for _ in range(2)]
    for x in batches:
        stats.update(x)
    cols = torch.cat([F.unfold(x, 3, padding=1, stride=2) for x in batches], dim=2)  # (B, C*9, L)
    expected = cols.mean(dim=(0, 2)).reshape(3, 3, 3)
    assert torch.allclose(stats.patch_means(), expected, atol=1e-12)
    H = torch.cat([x.permute(0, 2, 3, 1).reshape(-1, 3) for x in batches])
    assert torch.allclose(stats.channels.sum_outer, H.T @ H, atol=1e-9)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_patch_means_of_1d_and_padded_convs_match_explicit_patches(padding_mode):
    torch.manual_seed(0)
    conv1d = nn.Conv1d(3, 2, kernel_size=3, stride=2, padding=1, dilation=2, padding_mode=padding_mode).double()
    stats = ConsumerStats(conv1d)
    x = torch.randn(4, 3, 11, dtype=torch.float64)
    stats.update(x)
    padded = F.pad(x, (1, 1), mode="constant" if padding_mode == "zeros" else padding_mode)
    out_len = (11 + 2 - 2 * 2 - 1) // 2 + 1
    expected = torch.stack([torch.stack([padded[:, c, k * 2: k * 2 + (out_len - 1) * 2 + 1: 2].mean()
                                         for k in range(3)]) for c in range(3)])
    assert torch.allclose(stats.patch_means(), expected, atol=1e-12)
    conv2d = nn.Conv2d(3, 2, kernel_size=3, padding=1, padding_mode=padding_mode).double()
    stats2d = ConsumerStats(conv2d)
    y = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    stats2d.update(y)
    padded2d = F.pad(y, (1, 1, 1, 1), mode="constant" if padding_mode == "zeros" else padding_mode)
    expected2d = F.unfold(padded2d, 3).mean(dim=(0, 2)).reshape(3, 3, 3)
    assert torch.allclose(stats2d.patch_means(), expected2d, atol=1e-12)


def test_consumer_stats_refuse_non_finite_or_misshapen_input():
    stats = ConsumerStats(nn.Conv2d(3, 2, 3))
    with pytest.raises(ValueError, match="NaN or Inf"):
        stats.update(torch.full((1, 3, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="shape"):
        stats.update(torch.randn(1, 4, 4, 4))
    assert stats.channels.count == 0 and stats.patch_count == 0


def _bn_conv_chain() -> tuple[nn.Sequential, torch.Tensor]:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 4, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(4 * 4 * 3, 5))
    return model.eval(), torch.randn(2, 3, 8, 6)


def test_output_positions_and_channel_macs_count_by_hand():
    model, x = _bn_conv_chain()
    positions = output_positions(model, x[:1])
    assert positions == {model[0]: 8 * 6, model[3]: 4 * 3, model[5]: 1}
    graph = tp.DependencyGraph().build_dependency(model, x[:1])
    group = graph.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs=list(range(6)))
    # producer: 3 inputs x 9 taps at 48 positions; consumer: 4 outputs x 9 taps at 12 positions
    expected = torch.full((6,), 3 * 9 * 48 + 4 * 9 * 12, dtype=torch.float64)
    assert torch.equal(channel_macs(group, positions), expected)
    second = graph.get_pruning_group(model[3], tp.prune_conv_out_channels, idxs=list(range(4)))
    # producer 6 x 9 taps at 12 positions; the Linear reads 12 flattened features per channel
    expected = torch.full((4,), 6 * 9 * 12 + 12 * 5, dtype=torch.float64)
    assert torch.equal(channel_macs(second, positions), expected)


def test_flops_aware_scores_are_plain_scores_per_mac():
    model, x = _bn_conv_chain()
    model = model.double()
    x = x.double()
    plain, aware = CalibratedProjectiveImportance(), CalibratedProjectiveImportance(flops_aware=True)
    plain.stats = aware.stats = collect_consumer_stats(model, [model[3], model[5]], [x])
    graph = tp.DependencyGraph().build_dependency(model, x[:1])
    group = graph.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs=list(range(6)))
    with pytest.raises(ValueError, match="positions"):
        aware(group)
    aware.positions = output_positions(model, x[:1])
    macs = channel_macs(group, aware.positions)
    assert torch.allclose(aware(group).double(), plain(group).double() / macs, rtol=1e-6)
    pruner = CompensatingPruner(model, x[:1], CalibratedProjectiveImportance(flops_aware=True),
                                calibration=lambda: [x], pruning_ratio=0.5, ignored_layers=[model[5]])
    assert pruner.importance.positions == {}  # recorded by the calibration forward, not by one of their own
    pruner.step()
    assert pruner.importance.positions == aware.positions
    data_free = CompensatingPruner(model, x[:1], CalibratedProjectiveImportance(data_free=True, flops_aware=True),
                                   pruning_ratio=0.5, ignored_layers=[model[5]])
    assert data_free.importance.positions == output_positions(model, x[:1])  # no calibration: the example's


def _linear_chain() -> nn.Sequential:
    """Linear(5, 8) -> Linear(8, 3): eight hidden units in a 6-dim (weights + bias) row space."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 8), nn.Linear(8, 3)).double()


def _conv_chain() -> nn.Sequential:
    """Conv(3 -> 12, no bias) -> Conv(12 -> 4): the 12 filters span only 6 dimensions."""
    torch.manual_seed(2)
    first = nn.Conv2d(3, 12, 3, padding=1, bias=False)
    basis = torch.randn(6, 27)
    with torch.no_grad():
        first.weight.copy_((torch.randn(12, 6) @ basis).reshape(12, 3, 3, 3))
    return nn.Sequential(first, nn.Conv2d(12, 4, 3, padding=1)).double()


@pytest.mark.parametrize("calibrated", [False, True])
def test_linear_chain_keeps_its_output_exactly(calibrated):
    model = _linear_chain()
    x = torch.randn(64, 5, dtype=torch.float64)
    before = model(x)
    calibration = (lambda: [x]) if calibrated else None
    pruner = CompensatingPruner(model, x[:1], tp.importance.MagnitudeImportance(p=2), calibration=calibration,
                                lmbda=1e-12, pruning_ratio=0.25, ignored_layers=[model[1]])
    pruner.step()
    assert model[0].out_features == 6 and model[1].in_features == 6
    assert torch.allclose(model(x), before, atol=1e-5)


@pytest.mark.parametrize("calibrated", [False, True])
def test_conv_chain_keeps_its_output_exactly(calibrated):
    model = _conv_chain()
    x = torch.randn(8, 3, 6, 6, dtype=torch.float64)
    before = model(x)
    calibration = (lambda: [x]) if calibrated else None
    pruner = CompensatingPruner(model, x[:1], tp.importance.MagnitudeImportance(p=2), calibration=calibration,
                                lmbda=1e-12, pruning_ratio=0.5, ignored_layers=[model[1]])
    pruner.step()
    assert model[1].in_channels == 6
    assert torch.allclose(model(x), before, atol=1e-5)


def test_without_compensation_the_chain_changes():
    """The exactness above is the compensation's doing: plain pruning of the same chain moves the output."""
    model = _linear_chain()
    x = torch.randn(64, 5, dtype=torch.float64)
    before = model(x)
    tp.pruner.MagnitudePruner(model, x[:1], importance=tp.importance.MagnitudeImportance(p=2),
                              pruning_ratio=0.25, ignored_layers=[model[1]]).step()
    assert (model(x) - before).abs().max() > 1e-2


def test_mean_correction_keeps_the_batchnorm_output_mean():
    """With a nonlinearity and zero padding, the consumer's mean output on the calibration data is kept."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 10, 3, padding=1), nn.ReLU(), nn.Conv2d(10, 4, 3, padding=1),
                          nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 5 * 5, 2)).double().eval()
    with torch.no_grad():
        model[3].running_mean.normal_()
        model[3].running_var.uniform_(0.5, 2.0)
    x = torch.randn(16, 3, 5, 5, dtype=torch.float64)
    mean_before = model[:4](x).mean(dim=(0, 2, 3))
    pruner = CompensatingPruner(model, x[:1], tp.importance.MagnitudeImportance(p=2), calibration=lambda: [x],
                                pruning_ratio=0.4, ignored_layers=[model[2], model[5]])
    pruner.step()
    assert model[2].in_channels == 6
    assert torch.allclose(model[:4](x).mean(dim=(0, 2, 3)), mean_before, atol=1e-8)


def test_calibrated_importance_matches_obs_formula():
    model = _linear_chain()
    x = torch.randn(40, 5, dtype=torch.float64)
    importance = CalibratedProjectiveImportance(lmbda=1e-2)
    importance.stats = collect_consumer_stats(model, [model[1]], [x])
    graph = tp.DependencyGraph().build_dependency(model, x[:1])
    group = graph.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=list(range(8)))
    scores = importance(group).double()
    with torch.no_grad():
        H = model[0](x)
    Hc = H - H.mean(0)
    C = Hc.T @ Hc / len(x)
    P = torch.linalg.inv(C + 1e-2 * torch.trace(C) / 8 * torch.eye(8, dtype=torch.float64))
    V = model[1].weight.detach()
    w2 = (V**2).sum(0)
    expected = w2 / P.diagonal() / (w2 * C.diagonal()).sum()
    assert torch.allclose(scores, expected, rtol=1e-5)


def test_bad_arguments_are_refused_before_anything_changes():
    model = _linear_chain()
    x = torch.randn(4, 5, dtype=torch.float64)
    weight = model[0].weight.detach().clone()
    with pytest.raises(ValueError, match="calibration"):
        CompensatingPruner(model, x[:1], CalibratedProjectiveImportance(), pruning_ratio=0.5)
    with pytest.raises(ValueError, match="calibration must be"):
        CompensatingPruner(model, x[:1], tp.importance.MagnitudeImportance(), calibration=[x], pruning_ratio=0.5)
    with pytest.raises(ValueError, match="calibration_batches"):
        CompensatingPruner(model, x[:1], tp.importance.MagnitudeImportance(), calibration=lambda: [x],
                           calibration_batches=0, pruning_ratio=0.5)
    with pytest.raises(ValueError, match="batches yielded no batch"):
        collect_consumer_stats(model, [model[1]], [])
    with pytest.raises(ValueError, match="module must be"):
        ConsumerStats(nn.ReLU())
    assert torch.equal(model[0].weight, weight)


def test_data_free_importance_prunes_the_redundant_units():
    """Two hidden units duplicated exactly cost nothing to remove: data-free OBS scores them lowest."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 2)).double()
    with torch.no_grad():
        model[0].weight[4:] = model[0].weight[:2] * 2.0
        model[0].bias[4:] = model[0].bias[:2] * 2.0
    x = torch.randn(8, 6, dtype=torch.float64)
    before = model(x)
    pruner = CompensatingPruner(model, x[:1], CalibratedProjectiveImportance(lmbda=1e-10, data_free=True),
                                lmbda=1e-10, pruning_ratio=1 / 3, ignored_layers=[model[1]])
    pruner.step()
    assert model[0].out_features == 4
    assert torch.allclose(model(x), before, atol=1e-6)


def test_statistics_cut_between_collections_equal_fresh_ones():
    """With calibrate_every > 1 the pruned consumer's statistics are cut to the kept channels: the
    same as collecting them again on the pruned model (nothing upstream of the cut changed)."""
    model = _linear_chain()
    x = torch.randn(32, 5, dtype=torch.float64)
    pruner = CompensatingPruner(model, x[:1], CalibratedProjectiveImportance(), calibration=lambda: [x],
                                calibrate_every=10, iterative_steps=2, pruning_ratio=0.5, ignored_layers=[model[1]])
    pruner.step()
    assert model[1].in_features == 6
    fresh = collect_consumer_stats(model, [model[1]], [x])[model[1]]
    cut = pruner.stats[model[1]]
    assert torch.allclose(cut.channels.sum_outer, fresh.channels.sum_outer, atol=1e-10)
    assert torch.allclose(cut.patch_means(), fresh.patch_means(), atol=1e-12)
    pruner.step()  # the second step uses the cut statistics (no collection) and still compensates
    assert model[1].in_features == 4 and pruner._last_calibration == 0


def test_every_calibration_batch_is_used_by_default():
    """The callable decides how many images calibrate (main.py --calib-size): none is dropped."""
    model = _linear_chain()
    x = torch.randn(30, 5, dtype=torch.float64)
    pruner = CompensatingPruner(model, x[:1], CalibratedProjectiveImportance(), calibration=lambda: x.split(10),
                                pruning_ratio=0.25, ignored_layers=[model[1]])
    pruner.step()
    assert pruner.stats[model[1]].channels.count == 30
    capped = CompensatingPruner(_linear_chain(), x[:1], CalibratedProjectiveImportance(),
                                calibration=lambda: x.split(10), calibration_batches=1, pruning_ratio=0.25)
    capped.step()
    assert next(iter(capped.stats.values())).channels.count == 10


def test_pruned_checkpoint_with_a_created_bias_reloads(tmp_path):
    """The mean correction gives a bias-free consumer without a BatchNorm after it a bias; a fresh
    model adapted to the checkpoint's shapes gets it too."""
    from projprune.surgery import adapt_to_shapes, tensor_shapes

    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 3, padding=1, bias=False)).eval()
    x = torch.randn(4, 2, 5, 5)
    CompensatingPruner(model, x[:1], tp.importance.MagnitudeImportance(p=2), calibration=lambda: [x],
                       pruning_ratio=0.5, ignored_layers=[model[2]]).step()
    assert model[2].bias is not None and model[2].in_channels == 3
    fresh = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 3, padding=1, bias=False))
    adapt_to_shapes(fresh, tensor_shapes(model))
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x), model(x))


def _reference_precision(C: torch.Tensor, ridge: float) -> torch.Tensor:
    return torch.linalg.inv(C + ridge * torch.eye(C.shape[0], dtype=torch.float64))


def test_precision_is_cut_with_the_channels_by_the_schur_complement():
    """ConsumerStats.keep cuts the cached (C + ρI)⁻¹ to the kept channels: the inverse of C_KK + ρI,
    same absolute ρ (the collected statistics'), without a new inversion."""
    torch.manual_seed(6)
    conv = nn.Conv2d(7, 3, 3, padding=1).double()
    stats = ConsumerStats(conv)
    stats.update(torch.randn(6, 7, 5, 5, dtype=torch.float64) @ torch.randn(5, 5, dtype=torch.float64))
    C = stats.covariance().clone()
    ridge = 1e-2 * float(torch.trace(C)) / 7
    assert torch.allclose(stats.precision(1e-2), _reference_precision(C, ridge), atol=1e-10)
    kept = torch.tensor([0, 2, 3, 6])
    stats.keep(kept)
    expected = _reference_precision(C[kept][:, kept], ridge)
    assert torch.allclose(stats.precision(1e-2), expected, rtol=1e-9, atol=1e-10)
    assert torch.allclose(stats.covariance(), C[kept][:, kept], atol=1e-12)
    A = stats.coefficients(torch.tensor([0, 2]), torch.tensor([1, 3]), 1e-2)
    stats.keep(torch.tensor([1, 3]), A)  # twice: the cut of a cut, with the coefficients already solved
    assert torch.allclose(stats.precision(1e-2), _reference_precision(C[[2, 6]][:, [2, 6]], ridge), rtol=1e-9)
    stats.update(torch.randn(2, 2, 5, 5, dtype=torch.float64))  # new samples: inverted afresh
    fresh = stats.covariance()
    assert torch.allclose(stats.precision(1e-2), _reference_precision(fresh, 1e-2 * float(torch.trace(fresh)) / 2))


def test_coefficients_from_the_precision_are_ridge_least_squares():
    """A = −P_RR⁻¹ P_RK is C_RK (C_KK + ρI)⁻¹ with the precision's ρ (relative to all channels)."""
    torch.manual_seed(7)
    stats = ConsumerStats(nn.Linear(6, 2))
    stats.update(torch.randn(40, 6, dtype=torch.float64) @ torch.randn(6, 6, dtype=torch.float64))
    C = stats.covariance()
    ridge = 1e-3 * float(torch.trace(C)) / 6
    removed, kept = [1, 4], [0, 2, 3, 5]
    expected = C[removed][:, kept] @ _reference_precision(C[kept][:, kept], ridge)
    A = stats.coefficients(torch.tensor(removed), torch.tensor(kept), 1e-3)
    assert torch.allclose(A, expected, atol=1e-10)


def test_calibrated_fold_and_mean_shift_match_a_float64_reference():
    """One compensation of a conv read by a BatchNorm: V[:, K] += V[:, R] A and the BatchNorm's running
    mean moves by the exact change of the conv's mean output on the calibration data (zero padding)."""
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1),
                          nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 2)).double().eval()
    x = torch.randn(10, 3, 5, 5, dtype=torch.float64)
    V = model[2].weight.detach().clone()
    running_mean = model[3].running_mean.clone()
    with torch.no_grad():
        H = model[:2](x)  # (B, 8, 5, 5): what the second conv reads
    Hc = H.permute(0, 2, 3, 1).reshape(-1, 8)
    C = torch.cov(Hc.T, correction=0)
    pruner = CompensatingPruner(model, x[:1], tp.importance.MagnitudeImportance(p=2), calibration=lambda: [x],
                                pruning_ratio=0.25, ignored_layers=[model[2], model[6]])
    groups = list(pruner.step(interactive=True))
    removed = sorted(groups[0][0].idxs)
    kept = [i for i in range(8) if i not in removed]
    A = C[removed][:, kept] @ _reference_precision(C[kept][:, kept], 1e-3 * float(torch.trace(C)) / 8)
    expected = V[:, kept] + torch.einsum("orhw,rk->okhw", V[:, removed], A)
    patches = F.unfold(H, 3, padding=1).mean(dim=(0, 2)).reshape(8, 3, 3)  # mean input per kernel offset
    shift = (V * patches).sum(dim=(1, 2, 3)) - (expected * patches[kept]).sum(dim=(1, 2, 3))
    for group in groups:
        group.prune()
    assert torch.allclose(model[2].weight, expected, atol=1e-10)
    assert torch.allclose(model[3].running_mean, running_mean - shift, atol=1e-10)


def test_statistics_are_collected_again_once_the_drift_is_reached():
    """calibrate_drift: statistics are re-collected at the first step where at least that fraction of
    the consumers' input channels was pruned since the last collection; drift counts it."""
    model = _linear_chain()
    x = torch.randn(32, 5, dtype=torch.float64)
    calls = []

    def calibration():
        calls.append(model[1].in_features)
        return [x]

    pruner = CompensatingPruner(model, x[:1], CalibratedProjectiveImportance(), calibration=calibration,
                                calibrate_drift=0.15, iterative_steps=8, pruning_ratio=0.75, ignored_layers=[model[1]])
    widths = []
    for _ in range(8):
        pruner.step()
        widths.append(model[1].in_features)
        # both consumers count: Linear(5, 8) keeps its 5 inputs, Linear(8, 3) loses one per step
        assert pruner.drift == pytest.approx(1 - (5 + model[1].in_features) / (5 + calls[-1]))
    expected, last = [8], 8
    for before in widths[:-1]:  # the width each later step starts from
        if 1 - (5 + before) / (5 + last) >= 0.15:
            expected.append(before)
            last = before
    assert calls == expected and len(calls) > 2
    with pytest.raises(ValueError, match="calibrate_drift"):
        CompensatingPruner(_linear_chain(), x[:1], CalibratedProjectiveImportance(), calibration=lambda: [x],
                           calibrate_drift=1.0, pruning_ratio=0.5)


def test_importance_between_collections_uses_the_cut_precision():
    """With statistics cut (no new collection) the OBS scores use (C_KK + ρI)⁻¹, ρ of the collection."""
    model = _linear_chain()
    x = torch.randn(40, 5, dtype=torch.float64)
    with torch.no_grad():
        H = model[0](x)
    C = torch.cov(H.T, correction=0)
    importance = CalibratedProjectiveImportance()
    pruner = CompensatingPruner(model, x[:1], importance, calibration=lambda: [x], calibrate_every=10,
                                iterative_steps=2, pruning_ratio=0.5, ignored_layers=[model[1]])
    groups = list(pruner.step(interactive=True))
    kept = [i for i in range(8) if i not in groups[0][0].idxs]
    for group in groups:
        group.prune()
    graph_group = pruner.DG.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=list(range(6)))
    scores = importance(graph_group).double()
    Ckk = C[kept][:, kept]
    P = _reference_precision(Ckk, 1e-3 * float(torch.trace(C)) / 8)
    w2 = (model[1].weight.detach() ** 2).sum(0)
    expected = w2 / P.diagonal() / (w2 * Ckk.diagonal()).sum()
    assert torch.allclose(scores, expected, rtol=1e-5)


@pytest.mark.parametrize("side", [4, 16])
def test_conv_statistics_of_float32_maps_match_float64_sums(side):
    """Small maps (one product of the channels-by-samples matrix) and large ones (a product per image,
    batch sums in float32): second moments, channel sums and patch sums as a float64 computation's."""
    torch.manual_seed(9)
    conv = nn.Conv2d(5, 2, 3, padding=1)
    x = torch.randn(6, 5, side, side).relu() + 0.5
    stats = ConsumerStats(conv)
    stats.update(x)
    H = x.double().permute(0, 2, 3, 1).reshape(-1, 5)
    assert torch.allclose(stats.channels.sum_outer, H.T @ H, rtol=1e-6)
    assert torch.allclose(stats.channels.sum, H.sum(0), rtol=1e-6)
    assert stats.channels.count == 6 * side * side
    patches = F.unfold(x.double(), 3, padding=1).mean(dim=(0, 2)).reshape(5, 3, 3)
    assert torch.allclose(stats.patch_means(), patches, rtol=1e-6)
