"""A calibration forward ends once every consumer has run as often as in the trace (projprune/compensation.py:
count_consumer_calls, collect_consumer_stats(calls=...), CompensatingPruner(stop_early=...)): the statistics
and the pruned weights are the ones of the full forward, and what follows the last consumer is not run."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from projprune.compensation import (
    CalibratedProjectiveImportance,
    CompensatingPruner,
    collect_consumer_stats,
    count_consumer_calls,
)


class _Tail(nn.Module):
    """Two convs and a Linear, then post-processing that only counts its runs (``calls``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean(dim=(2, 3)))
        self.calls += 1  # after the last consumer: what a detector's box decoding is
        return out


class _TwoLevels(nn.Module):
    """One head conv run on two levels (a detector's RPN head on its pyramid levels), then post-processing."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.head = nn.Conv2d(8, 6, 1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        out = torch.cat([self.head(level).flatten(1) for level in (h, torch.relu(self.down(h)))], dim=1)
        self.calls += 1
        return out


def test_count_consumer_calls_counts_the_last_forward_only():
    """A module run twice counts 2; a failed attempt (an unbatched input: the convs run, the mean fails) is
    forgotten when the model is called again, as Torch-Pruning's ``model(*inputs)`` before ``model(inputs)``."""
    model = _Tail().eval()
    counts, handles = count_consumer_calls(model)
    try:
        with pytest.raises(IndexError):
            model(torch.randn(3, 6, 6))
        assert counts == {model.conv1: 1, model.conv2: 1}
        model(torch.randn(2, 3, 6, 6))
        assert counts == {model.conv1: 1, model.conv2: 1, model.fc: 1}
        levels = _TwoLevels().eval()
        level_counts, level_handles = count_consumer_calls(levels)
        levels(torch.randn(1, 3, 8, 8))
        assert level_counts == {levels.stem: 1, levels.down: 1, levels.head: 2}
    finally:
        for handle in handles + level_handles:
            handle.remove()
    model(torch.randn(1, 3, 6, 6))
    assert counts[model.conv1] == 1  # the hooks are gone


@pytest.mark.parametrize("batches", [1, 3])
def test_a_stopped_forward_gives_the_statistics_of_the_full_one(batches):
    """With ``calls`` the head's statistics still hold both of its runs per batch (the stop comes after the second),
    equal to a full forward's, and the post-processing after it never runs; float64 covariance written here."""
    torch.manual_seed(0)
    model = _TwoLevels().double().eval()
    data = [torch.randn(2, 3, 8, 8, dtype=torch.float64) for _ in range(batches)]
    counts, handles = count_consumer_calls(model)
    model(data[0][:1])  # the trace: one image, one forward
    for handle in handles:
        handle.remove()
    consumers = [model.down, model.head]
    full = collect_consumer_stats(model, consumers, data)
    ran = model.calls
    stopped = collect_consumer_stats(model, consumers, data, calls={m: counts[m] for m in consumers})
    assert model.calls == ran  # nothing after the head's second run
    for module in consumers:
        assert stopped[module].count == full[module].count
        assert torch.equal(stopped[module].covariance(), full[module].covariance())
        assert torch.equal(stopped[module].patch_means(), full[module].patch_means())
    with torch.no_grad():
        maps = [torch.relu(model.stem(x)) for x in data]
        levels = maps + [torch.relu(model.down(h)) for h in maps]
    H = torch.cat([h.permute(0, 2, 3, 1).reshape(-1, 8) for h in levels])
    Hc = H - H.mean(dim=0)
    assert torch.allclose(stopped[model.head].covariance(), Hc.T @ Hc / len(H), atol=1e-12)


def _pruned(stop_early: bool, flops_aware: bool = False) -> tuple[_Tail, CompensatingPruner, int]:
    torch.manual_seed(3)
    model = _Tail().double().eval()
    x = torch.randn(6, 3, 6, 6, dtype=torch.float64)
    importance = CalibratedProjectiveImportance(flops_aware=flops_aware)
    pruner = CompensatingPruner(model, x[:1], importance, calibration=lambda: [x[:3], x[3:]], pruning_ratio=0.5,
                                ignored_layers=[model.fc], stop_early=stop_early)
    before = model.calls
    pruner.step()
    return model, pruner, model.calls - before


@pytest.mark.parametrize("flops_aware", [False, True])
def test_the_pruner_stopping_early_writes_the_same_weights(flops_aware):
    """``stop_early`` (the default) ends each calibration batch after the Linear: the same output positions,
    the same pruned and compensated weights as running every batch to the end."""
    stopped, stopped_pruner, stopped_runs = _pruned(True, flops_aware)
    full, full_pruner, full_runs = _pruned(False, flops_aware)
    assert stopped_runs == 0 and full_runs == 2
    if flops_aware:
        def named(model, positions):
            return {name: positions[m] for name, m in model.named_modules() if m in positions}
        assert named(stopped, stopped_pruner.importance.positions) == named(full, full_pruner.importance.positions)
        assert named(stopped, stopped_pruner.importance.positions) == {"conv1": 36, "conv2": 36, "fc": 1}
    assert stopped.conv2.weight.shape[1] == 4
    for a, b in zip(stopped.state_dict().values(), full.state_dict().values()):
        assert torch.equal(a, b)


def test_a_consumer_missing_from_the_trace_runs_every_forward_to_the_end():
    """No trace count for a consumer (it did not run on the example inputs): nothing says when it is done, so
    the forward runs to the end."""
    torch.manual_seed(4)
    model = _Tail().double().eval()
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    pruner = CompensatingPruner(model, x[:1], CalibratedProjectiveImportance(), calibration=lambda: [x],
                                pruning_ratio=0.5, ignored_layers=[model.fc])
    del pruner._trace_calls[model.fc]
    before = model.calls
    pruner.step()
    assert model.calls == before + 1


def test_stop_early_must_be_a_bool():
    model = _Tail()
    with pytest.raises(ValueError, match="stop_early must be True or False"):
        CompensatingPruner(model, torch.randn(1, 3, 6, 6), CalibratedProjectiveImportance(),
                           calibration=lambda: [torch.randn(2, 3, 6, 6)], stop_early=1)
