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


# --------------------------------------------------------------------------- item 2: another task's checkpoint
import main as main_module  # noqa: E402

SMALL = ["--dataset", "digits", "--model", "resnet20", "--width-mult", "0.25", "--seed", "1", "--batch-size", "64"]


@pytest.mark.parametrize("meta", [True, False])
@pytest.mark.parametrize("classes, channels, what", [(100, 1, "classes"), (10, 3, "input channels")])
def test_checkpoint_for_another_task_is_refused(tmp_path, meta, classes, channels, what):
    path = tmp_path / "other.pth"
    other = _model(classes, channels)
    if meta:
        save_model(path, other, {"model": "resnet20", "dataset": "cifar100" if classes == 100 else "cifar10",
                                 "num_classes": classes, "in_channels": channels})
    else:
        torch.save(other.state_dict(), path)  # no metadata: the shapes alone must give it away
    out = tmp_path / "out"
    for mode in (["--mode", "test"], ["--mode", "prune", "--method", "l2"]):
        with pytest.raises(ValueError) as info:
            main_module.main([*mode, *SMALL, "--restore", str(path), "--output-dir", str(out)])
        message = str(info.value)
        assert "\n" not in message and str(path) in message and what in message and "--dataset digits" in message
    assert not out.exists()


def test_matching_checkpoint_still_loads(tmp_path):
    path = tmp_path / "mine.pth"
    model = _model()
    save_model(path, model, {"model": "resnet20", "dataset": "digits", "num_classes": 10, "in_channels": 1})
    result = main_module.main(["--mode", "test", *SMALL, "--restore", str(path), "--output-dir", str(tmp_path / "o")])
    assert 0.0 <= result["acc"] <= 1.0
