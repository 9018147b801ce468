"""Training that diverges stops with a clear error and never saves non-finite weights (issue 14, item 4)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.utils.data import TensorDataset

from engine.train import make_loader, train_model


def _loaders(poison_epoch_batch: bool = True):
    torch.manual_seed(0)
    inputs = torch.randn(16, 4)
    targets = torch.randint(0, 3, (16,))
    train = TensorDataset(inputs.clone(), targets)
    return train, make_loader(train, 8, True, seed=1), make_loader(TensorDataset(inputs, targets), 8, False)


def test_nan_loss_stops_training_and_saves_nothing(tmp_path):
    train, train_loader, test_loader = _loaders()
    calls = []
    model = torch.nn.Linear(4, 3)

    class PoisonAfterFirstEpoch(torch.nn.Module):
        """Forward that turns NaN from the second epoch's first training step on."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = model
            self.steps = 0

        def forward(self, x):
            if self.training:
                self.steps += 1
                if self.steps > 2:  # 2 steps per epoch
                    x = x * float("nan")
            return self.inner(x)

    net = PoisonAfterFirstEpoch()
    resume = tmp_path / "last.pth"
    with pytest.raises(FloatingPointError, match=r"training loss became nan at epoch 1 \(step 0\).*lower --lr"):
        train_model(net, train_loader, test_loader, epochs=3, lr=0.1, milestones="", logger=logging.getLogger("nan"),
                    on_best=lambda m, acc: calls.append([p.detach().clone() for p in m.parameters()]),
                    resume_path=resume)
    assert len(calls) == 1 and all(torch.isfinite(p).all() for p in calls[0])  # epoch 0's weights only
    from engine.harness import load_checkpoint

    tensors, meta = load_checkpoint(resume)
    assert meta["epoch"] == 0 and all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


def test_exploding_weights_stop_before_saving(tmp_path):
    """A step size so large that the first update overflows the weights to Inf (inputs ~100, lr 1e38, no clipping):
    the next step's NaN loss is skipped, and the epoch's end stops the run before anything is saved."""
    torch.manual_seed(0)
    data = TensorDataset(100 * torch.randn(16, 4), torch.randint(0, 3, (16,)))
    model = torch.nn.Linear(4, 3)
    saved = []
    with pytest.raises(FloatingPointError, match=r"the weights became NaN/Inf at epoch 0"):
        train_model(model, make_loader(data, 8, True, seed=1), make_loader(data, 8, False), epochs=2, lr=1e38,
                    milestones="", weight_decay=0.0, logger=logging.getLogger("inf"),
                    on_best=lambda m, acc: saved.append(acc), resume_path=tmp_path / "last.pth",
                    warmup_epochs=0, max_grad_norm=None)
    assert saved == [] and not (tmp_path / "last.pth").exists()


class _PoisonSteps(torch.nn.Module):
    """A linear model whose forward returns NaN at the given (0-based, counted over the run) training steps."""

    def __init__(self, poisoned: set[int]) -> None:
        super().__init__()
        self.inner = torch.nn.Linear(4, 3)
        self.poisoned, self.steps, self.weights_seen = poisoned, 0, []

    def forward(self, x):
        if self.training:
            self.weights_seen.append(self.inner.weight.detach().clone())  # the weights this step starts from
            self.steps += 1
            if self.steps - 1 in self.poisoned:
                x = x * float("nan")
        return self.inner(x)


def test_one_nan_step_is_skipped_logged_and_training_goes_on(caplog):
    """Issue 24.6: a fine-tuning step with a NaN loss is skipped (weights unchanged), said in the log, and the run
    completes with finite weights; the log line is not read as an epoch or config line by parse_logs."""
    from engine import table1_layout as layout
    from engine.train import SKIPPED_STEP_LINE

    _, train_loader, test_loader = _loaders()
    net = _PoisonSteps({1})  # epoch 0, step 1 (2 steps per epoch)
    with caplog.at_level(logging.INFO, logger="skip"):
        best = train_model(net, train_loader, test_loader, epochs=3, lr=0.1, milestones="",
                           logger=logging.getLogger("skip"))
    assert 0.0 <= best <= 1.0 and net.steps == 6
    assert all(torch.isfinite(p).all() for p in net.parameters())
    # the skipped step (1) left the weights as they were: step 2 starts from step 1's weights
    assert torch.equal(net.weights_seen[1], net.weights_seen[2])
    assert not torch.equal(net.weights_seen[2], net.weights_seen[3])  # the next steps train again
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Non-finite")]
    assert skipped == [SKIPPED_STEP_LINE.format(what="loss nan", epoch=0, step=1, lr=0.1, count=1)]
    assert any("1 of 2 step(s) of epoch 0 skipped" in r.getMessage() for r in caplog.records)
    for message in skipped:
        assert not layout.EPOCH_RE.match(message) and not layout.CONFIG_RE.match(message)


def test_warmup_ramps_the_lr_and_clipping_bounds_the_first_update():
    """lr of step s in epoch e < W: base * (e*S + s + 1) / (W*S); the first SGD update's norm is at most
    lr * max_grad_norm (momentum buffer = gradient at step 0, no weight decay)."""
    from engine.train import _warmup_factor

    assert [_warmup_factor(e, s, 4, 2) for e in range(3) for s in range(4)] == [
        1 / 8, 2 / 8, 3 / 8, 4 / 8, 5 / 8, 6 / 8, 7 / 8, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert _warmup_factor(0, 0, 4, 0) == 1.0
    _, train_loader, test_loader = _loaders()
    net = _PoisonSteps(set())
    with torch.no_grad():
        net.inner.weight.mul_(1e4)  # a huge gradient: the clipping must bind
    train_model(net, train_loader, test_loader, epochs=1, lr=0.5, milestones="", weight_decay=0.0,
                logger=logging.getLogger("clip"), max_grad_norm=0.25, warmup_epochs=1)
    first = (net.weights_seen[1] - net.weights_seen[0]).double().norm()
    # step 0 of 2 in the warm-up epoch: lr 0.5 * 1/2, gradient norm clipped to 0.25 (weight and bias together)
    assert 0 < first <= 0.5 * 0.5 * 0.25 + 1e-6
    with pytest.raises(ValueError, match="max_grad_norm"):
        train_model(net, train_loader, test_loader, epochs=1, lr=0.5, milestones="",
                    logger=logging.getLogger("clip"), max_grad_norm=0.0)
