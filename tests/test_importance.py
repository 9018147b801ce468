"""ProjectiveImportance (Torch-Pruning plug-in) against a brute-force float64 projection distance."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from projprune.importance import ProjectiveImportance


def brute_distances(W: torch.Tensor, lmbda: float = 1e-3) -> torch.Tensor:
    """d_i = ||q_i^T W_{-i} - w_i|| with q_i the ridge solution, one row at a time (float64)."""
    W = W.detach().to(torch.float64).flatten(1)
    n = W.shape[0]
    out = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        others = torch.cat([W[:i], W[i + 1:]])
        if len(others) == 0:
            out[i] = W[i].norm()
            continue
        gram = others @ others.T + lmbda * torch.eye(n - 1, dtype=torch.float64)
        q = torch.linalg.solve(gram, others @ W[i])
        out[i] = (q @ others - W[i]).norm()
    return out


class ConvNet(nn.Module):
    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _randomised(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, -2.0, 2.0)  # negative gammas: |gamma| must be used
    return model.eval()


def _group(model: nn.Module, layer: nn.Module):
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 6, 6))
    return graph.get_pruning_group(layer, tp.prune_conv_out_channels, idxs=list(range(layer.out_channels)))


@pytest.mark.parametrize("normalizer", ["mean", "max", None])
def test_conv_group_matches_brute_force(normalizer):
    model = _randomised(ConvNet())
    scores = ProjectiveImportance(normalizer=normalizer)(_group(model, model.conv1))
    out_rows = brute_distances(model.conv1.weight)
    in_rows = brute_distances(model.conv2.weight.transpose(0, 1))
    expected = (out_rows + model.bn1.weight.detach().abs().double() + in_rows) / 3
    if normalizer == "mean":
        expected = expected / expected.mean()
    elif normalizer == "max":
        expected = expected / expected.max()
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-7)


def test_grouped_conv_in_channels_repeat_over_groups():
    model = _randomised(ConvNet(groups=2))
    scores = ProjectiveImportance(normalizer=None)(_group(model, model.conv1))
    in_rows = brute_distances(model.conv2.weight.transpose(0, 1)).repeat(2)  # (4,) per group -> (8,)
    expected = (brute_distances(model.conv1.weight) + model.bn1.weight.detach().abs().double() + in_rows) / 3
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-7)


def test_linear_and_layernorm_members():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(7, 5), nn.LayerNorm(5), nn.Linear(5, 3)).eval()
    nn.init.uniform_(model[1].weight, -1.0, 1.0)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(2, 7))
    group = graph.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=[0, 1, 2, 3, 4])
    scores = ProjectiveImportance(normalizer=None)(group)
    expected = (brute_distances(model[0].weight) + model[1].weight.detach().abs().double()
                + brute_distances(model[2].weight.T)) / 3
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-7)


def test_redundant_filter_is_pruned_first():
    """A filter that is a combination of two others has ~zero projection distance: pruned first."""
    model = _randomised(ConvNet())
    with torch.no_grad():
        model.conv1.weight[5] = 0.7 * model.conv1.weight[1] - 0.4 * model.conv1.weight[3]
        model.conv2.weight[:, 5] = 0.5 * model.conv2.weight[:, 2] + 0.2 * model.conv2.weight[:, 4]
        model.bn1.weight.fill_(1.0)
    importance = ProjectiveImportance()
    assert importance(_group(model, model.conv1)).argmin().item() == 5
    pruner = tp.pruner.MagnitudePruner(model, torch.randn(1, 3, 6, 6), importance=importance, pruning_ratio=1 / 8,
                                       ignored_layers=[model.fc, model.conv2])
    before = model.conv1.weight.detach().clone()
    pruner.step()
    assert model.conv1.out_channels == 7
    kept = torch.cat([before[:5], before[6:]])
    torch.testing.assert_close(model.conv1.weight.detach(), kept)


def test_rejects_negative_lambda():
    with pytest.raises(ValueError, match="lmbda"):
        ProjectiveImportance(lmbda=-1.0)


@pytest.mark.parametrize("shape", [(40, 6), (64, 9), (12, 11)])
def test_tall_matrices_match_brute_force(shape):
    """More rows than dimensions (e.g. 3x3 depthwise filters, 1x1 convs on few inputs)."""
    from projprune.importance import _distances

    torch.manual_seed(3)
    W = torch.randn(*shape, dtype=torch.float64)
    W[5] = 0.3 * W[1] + 0.2 * W[2]  # an exactly redundant row (distance ~ sqrt(lambda) scale)
    expected = brute_distances(W)
    torch.testing.assert_close(_distances(W, 1e-3).double(), expected, rtol=1e-5, atol=1e-7)


def test_eigendamage_scores_match_a_direct_fisher():
    """EigenDamageImportance (torch-pruning's OBDC with the bias-column fix) against a float64 Fisher."""
    import registry
    from engine.cnn import collect_fisher

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).eval()
    x = torch.randn(6, 5)
    importance = registry.get_method("obdc").importance_factory(3)
    torch.manual_seed(1)
    collect_fisher(importance, model, [x])
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x[:1])
    group = graph.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=list(range(7)))
    scores = importance(group).double()

    torch.manual_seed(1)  # the same sampled labels as inside collect_fisher
    hidden = model[0](x)
    hidden.retain_grad()
    logits = model[2](torch.relu(hidden))
    sampled = torch.multinomial(torch.softmax(logits.detach(), 1), 1).squeeze(1)
    nn.functional.cross_entropy(logits, sampled).backward()
    per_sample_grad = hidden.grad.double() * len(x)  # (B, 7): gradients of each sample's own loss
    fisher = (per_sample_grad[:, :, None] * x.double()[:, None, :]).pow(2).sum(0)  # (7, 5), bias column dropped
    expected = (model[0].weight.detach().double() ** 2 * (fisher + 1e-10)).sum(1)
    torch.testing.assert_close(scores, expected / expected.mean(), rtol=1e-4, atol=1e-6)
