"""Second moments from sampled positions (projprune/compensation.py: sampled_positions, ConsumerStats /
collect_consumer_stats / CompensatingPruner ``max_positions``): which positions are drawn, that the statistics
are the float64 ones of exactly those positions, that per-offset means keep every position, and that a limit at
or above the positions changes nothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from projprune.compensation import (
    CalibratedProjectiveImportance,
    CompensatingPruner,
    ConsumerStats,
    collect_consumer_stats,
    sampled_positions,
)


def _population_cov(X: torch.Tensor) -> torch.Tensor:
    Xc = X - X.mean(dim=0)
    return Xc.T @ Xc / X.shape[0]


def _chosen(batch: int, positions: int, limit: int) -> torch.Tensor:
    """``(batch, limit)`` the positions :func:`sampled_positions` keeps, read off an index-valued input."""
    index = torch.arange(positions, dtype=torch.float64).expand(batch, 1, positions)
    return sampled_positions(index, limit)[:, 0].long()


def test_sampled_positions_are_distinct_increasing_repeatable_and_uniform():
    """Each element keeps ``limit`` distinct positions in increasing order; elements draw independently; the same
    shape draws the same positions; every position is kept about ``limit / positions`` of the time; dim=1 takes
    the same positions from ``(B, positions, c)``; at most ``limit`` positions: the input itself."""
    chosen = _chosen(4000, 10, 3)
    assert chosen.shape == (4000, 3)
    assert bool((chosen[:, 1:] > chosen[:, :-1]).all()) and int(chosen.min()) >= 0 and int(chosen.max()) <= 9
    assert torch.equal(chosen, _chosen(4000, 10, 3))
    assert len({tuple(row) for row in chosen[:50].tolist()}) > 20  # not one subset for every element
    frequency = torch.bincount(chosen.flatten(), minlength=10).double() / 4000
    assert float((frequency - 0.3).abs().max()) < 0.03  # binomial sd ~0.007

    x = torch.randn(3, 5, 40, dtype=torch.float64)
    picked = sampled_positions(x, 7)
    index = _chosen(3, 40, 7)
    for b in range(3):
        assert torch.equal(picked[b], x[b][:, index[b]])
    assert torch.equal(sampled_positions(x.transpose(1, 2), 7, dim=1), picked.transpose(1, 2))
    assert sampled_positions(x, 40) is x


def test_conv_statistics_are_the_float64_ones_of_the_sampled_positions():
    """A conv's covariance, mean and count are those of the sampled positions over two batches (its products
    then taken as such); its per-kernel-offset means are those of every position (unfold over all of them)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, 3, padding=1).double()
    batches = [torch.randn(3, 6, 7, 5, dtype=torch.float64) for _ in range(2)]
    stats = ConsumerStats(conv, max_positions=9)
    for x in batches:
        stats.update(x)
    rows = []
    for x in batches:
        index = _chosen(3, 35, 9)
        flat = x.reshape(3, 6, 35)
        rows += [flat[b][:, index[b]].T for b in range(3)]
    H = torch.cat(rows)
    assert stats.count == 2 * 3 * 9
    assert torch.allclose(stats.covariance(), _population_cov(H), atol=1e-12)
    assert torch.allclose(stats.moments.mean, H.mean(dim=0), atol=1e-12)
    cols = torch.cat([F.unfold(x, 3, padding=1) for x in batches], 2)
    assert torch.allclose(stats.patch_means(), cols.mean(dim=(0, 2)).reshape(6, 3, 3), atol=1e-12)


def test_linear_statistics_sample_tokens_and_a_2d_input_is_kept_whole():
    """A Linear on ``(B, tokens, c)`` keeps ``max_positions`` tokens of each sequence; on ``(B, c)`` (no positions)
    every row, as without a limit."""
    torch.manual_seed(1)
    layer = nn.Linear(5, 3).double()
    x = torch.randn(4, 30, 5, dtype=torch.float64)
    stats = ConsumerStats(layer, max_positions=6)
    stats.update(x)
    index = _chosen(4, 30, 6)
    H = torch.cat([x[b, index[b]] for b in range(4)])
    assert stats.count == 24
    assert torch.allclose(stats.covariance(), _population_cov(H), atol=1e-12)
    assert torch.allclose(stats.patch_means(), H.mean(dim=0), atol=1e-12)

    flat = torch.randn(50, 5, dtype=torch.float64)
    limited, whole = ConsumerStats(layer, max_positions=1), ConsumerStats(layer)
    limited.update(flat)
    whole.update(flat)
    assert limited.count == 50 and torch.equal(limited.covariance(), whole.covariance())


class _Fork(nn.Module):
    """A stem read by two convs (one tensor, shared moments) and a Linear on its tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.left = nn.Conv2d(12, 8, 3, padding=1)
        self.right = nn.Conv2d(12, 8, 1, stride=2)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        tokens = (self.left(h) + F.interpolate(self.right(h), size=h.shape[2:])).flatten(2).transpose(1, 2)
        return self.head(torch.relu(tokens)).mean(dim=1)


def test_consumers_of_one_tensor_share_the_same_sampled_positions():
    """left and right read one tensor: one moments object, the statistics of the same sampled positions (the
    float64 ones); a limit at or above every tensor's positions gives the statistics of no limit, bit for bit."""
    torch.manual_seed(2)
    model = _Fork().double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    consumers = [model.left, model.right, model.head]
    stats = collect_consumer_stats(model, consumers, [x], max_positions=10)
    assert stats[model.left].moments is stats[model.right].moments
    h = torch.relu(model.stem(x)).reshape(2, 12, 36)
    index = _chosen(2, 36, 10)
    H = torch.cat([h[b][:, index[b]].T for b in range(2)])
    assert torch.allclose(stats[model.right].covariance(), _population_cov(H), atol=1e-12)
    assert stats[model.head].count == 20

    whole = collect_consumer_stats(model, consumers, [x])
    high = collect_consumer_stats(model, consumers, [x], max_positions=36)
    for module in consumers:
        assert torch.equal(high[module].covariance(), whole[module].covariance())
        assert torch.equal(high[module].patch_means(), whole[module].patch_means())


def _cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))


def _pruned(max_positions: int | None, data: torch.Tensor) -> nn.Sequential:
    torch.manual_seed(3)
    model = _cnn().eval()
    pruner = CompensatingPruner(model, data[:1], CalibratedProjectiveImportance(), calibration=lambda: [data],
                                pruning_ratio=0.5, ignored_layers=[model[8]], max_positions=max_positions)
    pruner.step()
    return model


def test_pruner_with_sampled_positions_prunes_and_a_high_limit_changes_nothing():
    """The pruner passes ``max_positions`` on: at the maps' 64 positions the pruned weights are those of no limit,
    bit for bit; at 8 the model is pruned to the same shapes with other weights, still close to its output."""
    data = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    whole, high, low = _pruned(None, data), _pruned(64, data), _pruned(8, data)
    for a, b in zip(whole.state_dict().values(), high.state_dict().values()):
        assert torch.equal(a, b)
    assert low[3].weight.shape == whole[3].weight.shape == (8, 8, 3, 3)
    assert not torch.equal(low[3].weight, whole[3].weight)
    torch.manual_seed(3)
    reference = _cnn().eval()
    with torch.no_grad():
        before, after = reference(data), low(data)
    assert float((after - before).norm() / before.norm()) < 1.0


@pytest.mark.parametrize("bad", [0, -3, True, 2.0, "8"])
def test_max_positions_is_refused_unless_a_positive_int(bad):
    """One ValueError naming max_positions, from every entry point, before the model or any statistic changes."""
    model = _cnn().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = torch.randn(4, 3, 8, 8)
    with pytest.raises(ValueError, match="max_positions"):
        ConsumerStats(model[0], max_positions=bad)
    with pytest.raises(ValueError, match="max_positions"):
        collect_consumer_stats(model, [model[3]], [data], max_positions=bad)
    with pytest.raises(ValueError, match="max_positions"):
        CompensatingPruner(model, data[:1], CalibratedProjectiveImportance(), calibration=lambda: [data],
                           pruning_ratio=0.5, max_positions=bad)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("limit", [None, 3])
def test_an_empty_batch_adds_nothing(limit):
    """A batch of no images (conv) or no sequences (Linear) leaves the statistics as without it (it used to fail
    reshaping zero elements)."""
    torch.manual_seed(5)
    for layer, x in ((nn.Conv2d(3, 4, 3).double(), torch.randn(2, 3, 5, 5, dtype=torch.float64)),
                     (nn.Linear(3, 2).double(), torch.randn(2, 7, 3, dtype=torch.float64))):
        with_empty, plain = ConsumerStats(layer, max_positions=limit), ConsumerStats(layer, max_positions=limit)
        with_empty.update(x[:0])
        with_empty.update(x)
        plain.update(x)
        assert with_empty.count == plain.count
        assert torch.equal(with_empty.covariance(), plain.covariance())
        assert torch.equal(with_empty.patch_means(), plain.patch_means())


@pytest.mark.parametrize("x, limit, dim", [(torch.zeros(2, 3, 4), 0, 2), (torch.zeros(2, 3, 4), None, 2),
                                           (torch.zeros(2, 3, 4), 2.5, 2), (torch.zeros(2, 3, 4, 5), 2, 2),
                                           (torch.zeros(2, 3, 4), 2, 0), ([[1.0]], 2, 2)])
def test_sampled_positions_refuses_what_it_cannot_sample(x, limit, dim):
    """One ValueError naming the argument: a limit that is not a positive int, x not 3-d, dim not 1 or 2."""
    with pytest.raises(ValueError, match="limit|x must be"):
        sampled_positions(x, limit, dim=dim)
