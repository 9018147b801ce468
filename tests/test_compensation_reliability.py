"""The compensating pruner refuses what it cannot do before it changes anything (issue 25)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

import projprune.compensation as compensation
from projprune.compensation import CalibratedProjectiveImportance, CompensatingPruner
from projprune.importance import ProjectiveImportance


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def _assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert set(after) == set(before)
    for name, tensor in before.items():
        assert after[name].shape == tensor.shape and torch.equal(after[name], tensor), name


class _TwoReaders(nn.Module):
    """fc0 feeds fc_a directly and fc_b through a ReLU; hidden unit 1 never activates (dead)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc0 = nn.Linear(4, 6)
        self.fc_a = nn.Linear(6, 3)
        self.fc_b = nn.Linear(6, 3)
        with torch.no_grad():
            self.fc0.weight[1] = 0.0
            self.fc0.bias[1] = -5.0

    def forward(self, x):
        h = self.fc0(x)
        return self.fc_a(h) + self.fc_b(torch.relu(h))


def test_a_singular_solve_at_the_last_consumer_leaves_every_tensor_unchanged():
    model = _TwoReaders().double()
    x = torch.randn(64, 4, dtype=torch.float64)
    before = _snapshot(model)
    pruner = CompensatingPruner(model, x[:1], tp.importance.MagnitudeImportance(), calibration=lambda: [x],
                                lmbda=0.0, pruning_ratio=0.5, iterative_steps=1,
                                ignored_layers=[model.fc_a, model.fc_b])
    with pytest.raises(ValueError, match=r"consumer 'fc_b'.*singular.*lmbda > 0"):
        pruner.step()
    _assert_unchanged(model, before)
    assert model.fc0.out_features == 6


def _conv_stack() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 4 * 4, 3)).double().eval()


@pytest.mark.parametrize("calibrated", [False, True])
def test_a_failure_injected_at_the_last_solve_of_a_step_leaves_every_tensor_unchanged(monkeypatch, calibrated):
    """A step of three groups: the last consumer's solve raises; no group was cut, no weight folded."""
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    target = "coefficients" if calibrated else "least_squares_coefficients"
    original = (compensation.ConsumerStats.coefficients if calibrated else compensation.least_squares_coefficients)
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    def make(model):
        return CompensatingPruner(model, x[:1], tp.importance.MagnitudeImportance(),
                                  calibration=(lambda: [x]) if calibrated else None, pruning_ratio=0.5,
                                  iterative_steps=1, ignored_layers=[model[8]])

    owner = compensation.ConsumerStats if calibrated else compensation
    monkeypatch.setattr(owner, target, counting)
    probe = _conv_stack()
    make(probe).step()
    assert probe[3].in_channels == 4 and probe[5].in_channels == 4  # the probe ran every fold
    last = len(calls)
    assert last >= 2

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2 * last:
            raise RuntimeError("injected failure at the last consumer")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, target, failing)
    model = _conv_stack()
    before = _snapshot(model)
    pruner = make(model)
    with pytest.raises(ValueError, match="injected failure"):
        pruner.step()
    assert len(calls) == 2 * last
    _assert_unchanged(model, before)
    assert [m.in_channels for m in (model[3], model[5])] == [8, 8]


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -1.0, "a", None, True])
def test_lmbda_must_be_a_finite_non_negative_number(bad):
    model = _TwoReaders()
    x = torch.randn(8, 4)
    with pytest.raises(ValueError, match="lmbda"):
        CompensatingPruner(model, x[:1], tp.importance.MagnitudeImportance(), calibration=lambda: [x], lmbda=bad,
                           pruning_ratio=0.5)
    with pytest.raises(ValueError, match="lmbda"):
        CalibratedProjectiveImportance(lmbda=bad)
    with pytest.raises(ValueError, match="lmbda"):
        ProjectiveImportance(lmbda=bad)


@pytest.mark.parametrize("bad", ["0.1", float("nan"), 1.0, None])
def test_calibrate_drift_must_be_a_fraction(bad):
    model = _TwoReaders()
    x = torch.randn(8, 4)
    with pytest.raises(ValueError, match="calibrate_drift"):
        CompensatingPruner(model, x[:1], tp.importance.MagnitudeImportance(), calibration=lambda: [x],
                           calibrate_drift=bad, pruning_ratio=0.5)


def _weight_norm_old(layer):
    return torch.nn.utils.weight_norm(layer)


def _weight_norm_parametrized(layer):
    return torch.nn.utils.parametrizations.weight_norm(layer)


def _pruning_mask(layer):
    torch.nn.utils.prune.l1_unstructured(layer, "weight", amount=0.25)
    return layer


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("wrap, message", [(_weight_norm_old, "weight_norm"),
                                           (_weight_norm_parametrized, "parametrization"),
                                           (_pruning_mask, "prune mask")])
@pytest.mark.parametrize("when", ["construction", "step"])
def test_weight_norm_and_pruning_masks_are_refused_before_anything_changes(wrap, message, when):
    model = _TwoReaders()
    x = torch.randn(16, 4)
    if when == "construction":
        wrap(model.fc_a)
        before = _snapshot(model)
        with pytest.raises(ValueError, match=rf"'fc_a'.*{message}"):
            CompensatingPruner(model, x[:1], tp.importance.MagnitudeImportance(), calibration=lambda: [x],
                               pruning_ratio=0.5)
    else:
        pruner = CompensatingPruner(model, x[:1], tp.importance.MagnitudeImportance(), calibration=lambda: [x],
                                    pruning_ratio=0.5, ignored_layers=[model.fc_a, model.fc_b])
        wrap(model.fc_a)
        before = _snapshot(model)
        with pytest.raises(ValueError, match=rf"'fc_a'.*{message}"):
            pruner.step()
    _assert_unchanged(model, before)


def test_weight_tied_consumers_are_refused():
    model = _TwoReaders()
    model.fc_b.weight = model.fc_a.weight
    x = torch.randn(16, 4)
    before = _snapshot(model)
    with pytest.raises(ValueError, match=r"shares its weight with \['fc_a.weight', 'fc_b.weight'\]"):
        CompensatingPruner(model, x[:1], tp.importance.MagnitudeImportance(), calibration=lambda: [x],
                           pruning_ratio=0.5)
    _assert_unchanged(model, before)


def test_a_circular_padded_conv_is_refused_before_the_graph_is_built():
    """Torch-Pruning's tracing does not terminate on this residual block (checked by hand: > 30 s)."""

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular")
            self.c = nn.Conv2d(8, 4, 3, padding=1)

        def forward(self, x):
            h = self.a(x).relu()
            return self.c(h + self.b(h))

    model = Residual()
    with pytest.raises(ValueError, match=r"'b'.*padding_mode='circular'"):
        CompensatingPruner(model, torch.randn(1, 3, 8, 8), tp.importance.MagnitudeImportance(), pruning_ratio=0.5)


@pytest.mark.parametrize("conv", [False, True])
def test_overflowing_statistics_say_overflow_and_name_the_consumer(conv):
    torch.manual_seed(2)
    if conv:
        model = nn.Sequential(nn.Conv2d(3, 6, 1), nn.Conv2d(6, 2, 1))
        x = torch.randn(4, 3, 3, 3) * 1e30
    else:
        model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
        x = torch.randn(16, 4) * 1e30
    before = _snapshot(model)
    pruner = CompensatingPruner(model, x[:1] * 1e-30, CalibratedProjectiveImportance(), calibration=lambda: [x],
                                lmbda=0.1, pruning_ratio=0.5, ignored_layers=[model[1]])
    with pytest.raises(ValueError, match=r"consumer '1' \(.*\): .*overflow.*float32"):
        pruner.step()
    _assert_unchanged(model, before)


def test_too_few_calibration_samples_for_the_width_say_so():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    before = _snapshot(model)
    pruner = CompensatingPruner(model, x[:1], tp.importance.MagnitudeImportance(), calibration=lambda: [x],
                                lmbda=0.0, pruning_ratio=0.5, ignored_layers=[model[1]])
    with pytest.raises(ValueError, match="5 calibration samples for 8 input channels"):
        pruner.step()
    _assert_unchanged(model, before)
    single = CompensatingPruner(model, x[:1], tp.importance.MagnitudeImportance(), calibration=lambda: [x[:1]],
                                lmbda=0.1, pruning_ratio=0.5, ignored_layers=[model[1]])
    with pytest.raises(ValueError, match="1 sample.*at least 2"):
        single.step()
    _assert_unchanged(model, before)


class _Concat(nn.Module):
    """Two convs of 6 filters spanning 3 dimensions each, concatenated and read by one conv: a step
    cuts both groups, and the second is re-indexed after the first shrinks the concatenation."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(9)
        self.a = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.b = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        with torch.no_grad():
            for conv in (self.a, self.b):
                conv.weight.copy_((torch.randn(6, 3) @ torch.randn(3, 27)).reshape(6, 3, 3, 3))
        self.c = nn.Conv2d(12, 4, 3, padding=1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], dim=1))


@pytest.mark.parametrize("calibrated", [False, True])
def test_a_step_cutting_both_inputs_of_a_concatenation_keeps_the_output(calibrated):
    model = _Concat().double()
    x = torch.randn(8, 3, 5, 5, dtype=torch.float64)
    before = model(x)
    pruner = CompensatingPruner(model, x[:1], tp.importance.MagnitudeImportance(),
                                calibration=(lambda: [x]) if calibrated else None, lmbda=1e-12,
                                pruning_ratio=0.5, ignored_layers=[model.c])
    pruner.step()
    assert model.a.out_channels == 3 and model.b.out_channels == 3 and model.c.in_channels == 6
    assert torch.allclose(model(x), before, atol=1e-6)
