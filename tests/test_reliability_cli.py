"""Command lines refuse impossible input at parsing time with one clear message (issue 14: items 4, 5, 9, 12)."""

from __future__ import annotations

import dataclasses

import pytest

from engine.harness import config_parser, parse_config


@dataclasses.dataclass
class _PercentConfig:
    stages: int = dataclasses.field(default=10, metadata={"help": "keep 100%, then down to 100/stages %"})
    label: str = "50%"


def test_help_with_percent_signs_renders():
    text = config_parser(_PercentConfig).format_help()
    assert "keep 100%, then down to 100/stages %" in text and "(default: 50%)" in text


@pytest.mark.parametrize("module", ["params.analysis:ParamsConfig", "params.vgg:VGGConfig", "main:CNNConfig"])
def test_entry_point_help_renders(module):
    import importlib

    mod_name, cls_name = module.split(":")
    cls = getattr(importlib.import_module(mod_name), cls_name)
    text = config_parser(cls).format_help()
    assert "--seed" in text or "--stages" in text


# --------------------------------------------------------------------------- item 4: impossible numbers
import main as main_module  # noqa: E402

SMALL = ["--dataset", "digits", "--model", "resnet20", "--width-mult", "0.25", "--seed", "1", "--batch-size", "64"]


@pytest.mark.parametrize("flag", ["--speed-up", "--lr", "--target-flops", "--reg", "--width-mult"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_floats_rejected_by_the_parser(flag, value, capsys):
    with pytest.raises(SystemExit) as info:
        parse_config(main_module.CNNConfig, [f"{flag}={value}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: expected a finite number, got {value!r}" in err


def test_finite_floats_still_parse():
    cfg = parse_config(main_module.CNNConfig, ["--speed-up", "3", "--lr", "1e-3", "--target-flops", "0.5"])
    assert (cfg.speed_up, cfg.lr, cfg.target_flops) == (3.0, 1e-3, 0.5)


@pytest.mark.parametrize("args, message", [
    (["--mode", "prune", "--method", "l2", "--speed-up", "1"], r"--speed-up must be > 1"),
    (["--mode", "prune", "--method", "l2", "--speed-up", "0.5"], r"--speed-up must be > 1"),
    (["--mode", "prune", "--method", "l2", "--target-flops", "-1"], r"--target-flops must be >= 0"),
    (["--mode", "pretrain", "--lr", "0"], r"--lr must be > 0"),
    (["--mode", "pretrain", "--lr", "-0.1"], r"--lr must be > 0"),
    (["--mode", "pretrain", "--total-epochs", "-1"], r"--total-epochs must be >= 1"),
    (["--mode", "pretrain", "--weight-decay", "-1"], r"--weight-decay must be >= 0"),
    (["--mode", "pretrain", "--width-mult", "0"], r"--width-mult must be > 0"),
    (["--mode", "pretrain", "--lr-decay-gamma", "0"], r"--lr-decay-gamma must be > 0"),
    (["--mode", "pretrain", "--lr-decay-milestones", "a,b"], r"milestones"),
    (["--mode", "prune", "--method", "l2", "--max-pruning-ratio", "1.5"], r"--max-pruning-ratio must be in \(0, 1\]"),
    (["--mode", "prune", "--method", "l2", "--reg", "-1"], r"--reg must be >= 0"),
    (["--mode", "prune", "--method", "l2", "--sl-lr", "0"], r"--sl-lr must be > 0"),
])
def test_impossible_numbers_rejected_before_writing(tmp_path, args, message):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        main_module.main([*SMALL, *args, "--output-dir", str(out)])
    assert not out.exists()


# --------------------------------------------------------------------------- item 9: zero epochs
@pytest.mark.parametrize("args, message", [
    (["--mode", "pretrain", "--total-epochs", "0"], r"--mode pretrain.*--total-epochs must be >= 1, got 0"),
    (["--mode", "prune", "--method", "l2", "--finetune", "--total-epochs", "0"],
     r"--finetune.*--total-epochs must be >= 1, got 0"),
    (["--mode", "prune", "--method", "proj_sl", "--sl-total-epochs", "0"], r"--sl-total-epochs must be >= 1, got 0"),
])
def test_zero_epochs_refused(tmp_path, args, message):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        main_module.main([*SMALL, *args, "--output-dir", str(out)])
    assert not out.exists()


def test_prune_without_finetune_ignores_total_epochs():
    from engine.table1 import validate

    cfg = parse_config(main_module.CNNConfig, [*SMALL, "--mode", "prune", "--method", "l2", "--total-epochs", "0"])
    validate(cfg)  # no fine-tuning: the epoch count is unused and not an error


def test_train_model_refuses_zero_epochs(tmp_path):
    import logging

    import torch
    from torch.utils.data import TensorDataset

    from engine.train import make_loader, train_model

    data = TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,)))
    loader = make_loader(data, 4, True)
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        train_model(torch.nn.Linear(4, 2), loader, loader, epochs=0, lr=0.1, milestones="",
                    logger=logging.getLogger("zero"))


# --------------------------------------------------------------------------- one line on the command line
@pytest.mark.slow
def test_command_line_error_is_one_line(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00" * 100)
    proc = subprocess.run([sys.executable, "main.py", "--mode", "test", *SMALL, "--restore", str(corrupt),
                           "--output-dir", str(tmp_path / "out")], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(repo)}, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("main.py: error: checkpoint ") and str(corrupt) in lines[0]
    assert "damaged" in lines[0] and not (tmp_path / "out").exists()
