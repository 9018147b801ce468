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


# --------------------------------------------------------------------------- items 3 and 6: resume
import engine.train  # noqa: E402
from engine.harness import load_checkpoint, save_checkpoint  # noqa: E402


class Killed(Exception):
    pass


def _prune_args(out: Path, ckpt: Path) -> list[str]:
    return ["--mode", "prune", *SMALL, "--restore", str(ckpt), "--finetune", "--speed-up", "2", "--method", "l2",
            "--total-epochs", "2", "--iterative-steps", "10", "--output-dir", str(out)]


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """Checkpoints A and B (A with other weights) and a fine-tuning from A killed in its second epoch."""
    root = tmp_path_factory.mktemp("resume")
    main_module.main(["--mode", "pretrain", *SMALL, "--total-epochs", "1", "--output-dir", str(root)])
    a = root / "digits/pretrain/digits_resnet20.pth"
    tensors, meta = load_checkpoint(a)
    b = root / "other.pth"
    save_checkpoint(b, {k: v + 0.01 if v.is_floating_point() else v for k, v in tensors.items()}, meta)
    return root, a, b


def _kill_second_epoch(root: Path, ckpt: Path, monkeypatch) -> Path:
    real, calls = engine.train.evaluate, {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.train, "evaluate", dies)
    with pytest.raises(Killed):
        main_module.main(_prune_args(root, ckpt))
    monkeypatch.setattr(engine.train, "evaluate", real)
    name = "digits-local-l2-2.0-resnet20"
    last = root / "digits/prune" / name / f"{name}_last.pth"
    assert last.is_file()
    return last


def test_resume_with_another_restore_is_refused(tmp_path, killed_run, monkeypatch):
    _, a, b = killed_run
    last = _kill_second_epoch(tmp_path, a, monkeypatch)
    before = last.read_bytes()
    with pytest.raises(ValueError) as info:
        main_module.main(_prune_args(tmp_path, b))
    message = str(info.value)
    assert str(last) in message and "--restore" in message and "delete" in message and "\n" not in message
    assert last.read_bytes() == before  # the interrupted run is kept for a rerun with its own arguments
    resumed = main_module.main(_prune_args(tmp_path, a))  # the original arguments still resume
    assert "best_acc" in resumed and not last.exists()


@pytest.mark.slow
def test_damaged_last_checkpoint_is_moved_aside_and_the_run_restarts(tmp_path, killed_run, monkeypatch):
    _, a, _ = killed_run
    last = _kill_second_epoch(tmp_path, a, monkeypatch)
    _truncate(last)
    result = main_module.main(_prune_args(tmp_path, a))
    corrupt = last.with_name(last.name + ".corrupt")
    assert corrupt.is_file() and not last.exists() and "best_acc" in result
    log = (last.parent / "digits-local-l2-2.0-resnet20.txt").read_text()
    assert f"{last} is damaged" in log and str(corrupt) in log
    reference = main_module.main(_prune_args(tmp_path / "ref", a))
    assert result["best_acc"] == reference["best_acc"]  # restarted from scratch, same numbers
