"""Checkpoints: damaged files and files for another task are refused in one line naming the file (issue 14)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import registry
from engine.train import load_model, save_model


def _model(num_classes: int = 10, in_channels: int = 1) -> torch.nn.Module:
    return registry.get_model("resnet20", num_classes, in_channels, 0.25, 8)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("kind", ["safetensors", "torch"])
def test_damaged_checkpoint_is_one_clear_line(tmp_path, kind):
    path = tmp_path / "ckpt.pth"
    if kind == "safetensors":
        save_model(path, _model())
    else:
        torch.save(_model().state_dict(), path)
    _truncate(path)
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load_model(path, model)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "damaged" in message
    assert "weights_only" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
