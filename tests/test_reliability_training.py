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
    """A step size so large that weights overflow to Inf: stopped at the end of that epoch, nothing saved."""
    _, train_loader, test_loader = _loaders()
    model = torch.nn.Linear(4, 3)
    saved = []
    with pytest.raises(FloatingPointError, match="epoch 0"):
        train_model(model, train_loader, test_loader, epochs=2, lr=1e38, milestones="", weight_decay=0.0,
                    logger=logging.getLogger("inf"), on_best=lambda m, acc: saved.append(acc),
                    resume_path=tmp_path / "last.pth")
    assert saved == [] and not (tmp_path / "last.pth").exists()
