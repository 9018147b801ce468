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


# --------------------------------------------------------------------------- issue 25 item 12, issue 24 item 6
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _run(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1", **(env or {})})


ENTRY_POINTS = {"vit/main.py": "vit.main", "gpt2/main.py": "gpt2.main", "engine.demo": "engine.demo",
                "params/main.py": "params.main", "benchmarks/transformers_ffn.py": "benchmarks.transformers_ffn",
                "benchmarks/calib_cost.py": "benchmarks.calib_cost"}


@pytest.mark.parametrize("prog, argv, message", [
    ("vit/main.py", ["--amounts", "a,b"], "--amounts"),
    ("vit/main.py", ["--method", "calib", "--calib-size", "0"], "--calib-size"),
    ("gpt2/main.py", ["--method", "proj", "--rate", "1.5"], "--rate"),
    ("gpt2/main.py", ["--mlp-rate", "-0.1"], "--mlp-rate"),
    ("engine.demo", ["--ratio", "1.5"], "--ratio"),
    ("engine.demo", ["--hidden", "1"], "--hidden"),
    ("engine.demo", ["--calib-size", "0"], "--calib-size"),
    ("engine.demo", ["--methods", "foo"], "--methods"),
    ("params/main.py", ["--dataset", "digits", "--stages", "0"], "--stages"),
    ("benchmarks/transformers_ffn.py", ["--methods", "foo"], "--methods"),
    ("benchmarks/calib_cost.py", ["--cases", "foo"], "--cases"),
])
def test_entry_points_refuse_bad_values_in_one_line(tmp_path, capsys, prog, argv, message):
    """Through the shared error handling: exit 2, one ``<prog>: error: ...`` line naming the flag, nothing written."""
    import importlib

    from engine.harness import run_cli

    module = importlib.import_module(ENTRY_POINTS[prog])
    out = [] if prog.startswith("benchmarks") else ["--output-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: module.main([*argv, *out]), prog)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and err.startswith(f"{prog}: error: ") and message in err
    assert not (tmp_path / "out").exists()


# The stub of a moved command (it only prints where the command went).
# not entry points (examples/ are programs to copy: they raise plain ValueErrors, without the harness)
SKIPPED_DIRS = {"tests", "venv", "build", "dist", "run", "data", "logs", "site-packages", "examples"}
NOT_RUN_CLI = {"projprune/transformers/compare.py"}


def test_every_entry_point_goes_through_run_cli():
    """Each ``if __name__ == "__main__":`` block calls ``run_cli`` (one line and exit 2 for bad input)."""
    import ast

    checked = []
    for path in sorted(ROOT.glob("**/*.py")):
        relative = path.relative_to(ROOT).as_posix()
        parts = path.relative_to(ROOT).parts
        if any(part.startswith(".") or part in SKIPPED_DIRS for part in parts[:-1]) or relative in NOT_RUN_CLI:
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
                calls = {ast.unparse(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)}
                assert calls & {"run_cli", "harness.run_cli"}, f"{relative}: __main__ does not call run_cli"
                checked.append(relative)
    assert {"main.py", "vit/main.py", "gpt2/main.py", "params/main.py", "engine/demo.py"} <= set(checked)


def test_flag_names_agree_with_the_registries():
    """The CLIs name the registries' keys without importing them (fast --help): the lists must match."""
    from gpt2 import main as gpt2_main
    from gpt2.model import HF_MODEL_NAMES
    from gpt2.prune import ATTENTION_METHODS
    from gpt2.tiny import TinyConfig
    from params.config import DATASETS
    from params.data import DATASETS as DATA_LOADERS
    from vit import main as vit_main
    from vit.methods import VIT_METHODS
    from vit.models import VIT_MODELS

    assert vit_main.VIT_METHOD_NAMES == tuple(VIT_METHODS) and vit_main.VIT_MODEL_NAMES == tuple(VIT_MODELS)
    assert gpt2_main.HF_MODEL_NAMES == tuple(HF_MODEL_NAMES)
    assert gpt2_main.ATTENTION_METHOD_NAMES == tuple(ATTENTION_METHODS)
    assert gpt2_main.TINY_DEFAULTS == {key: getattr(TinyConfig, key) for key in gpt2_main.TINY_DEFAULTS}
    assert sorted(DATASETS) == sorted(DATA_LOADERS)


def test_missing_torch_pruning_names_the_extra():
    code = ("import sys; sys.modules['torch_pruning'] = None\n"
            "import projprune as pp\n"
            "for name in ('ProjectiveImportance', 'CompensatingPruner', 'CalibratedProjectiveImportance'):\n"
            "    try:\n"
            "        getattr(pp, name)\n"
            "    except ImportError as exc:\n"
            "        print(exc)\n"
            "    else:\n"
            "        print(name, 'imported')\n")
    lines = _run("-c", code).stdout.splitlines()
    assert len(lines) == 3
    assert all("pip install 'projprune[tp]'" in line and "Torch-Pruning" in line for line in lines), lines


def test_demo_help_is_plain_and_the_default_runs_every_pair_method():
    import projprune as pp
    from engine.demo import DemoConfig, run

    result = _run("-m", "engine.demo", "--help")
    assert result.returncode == 0 and "``" not in result.stdout and ":func:" not in result.stdout
    assert DemoConfig().methods == "all"
    rows = run(DemoConfig(hidden=8, epochs=1, calib_size=16))
    assert [row["method"] for row in rows] == list(pp.PAIR_METHODS)


def test_entry_points_say_where_they_wrote(tmp_path, capsys):
    from engine import demo

    out = tmp_path / "demo"
    demo.main(["--hidden", "8", "--epochs", "1", "--calib-size", "16", "--methods", "l2", "--output-dir", str(out)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"wrote {out / 'demo.md'}, {out / 'demo.csv'}"
    assert (out / "demo.md").is_file() and (out / "demo.csv").is_file()


def test_a_log_file_that_cannot_be_written_stops_the_run(tmp_path, monkeypatch):
    """ENOSPC while writing the run's log raises OSError (run_cli's one line), not logging's traceback."""
    import errno
    import logging

    from engine.harness import close_logger, get_logger

    logger = get_logger("enospc-test", tmp_path / "run.log", console=False)
    try:
        handler = next(h for h in logger.handlers if isinstance(h, logging.FileHandler))

        def full_disk(_text):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(handler.stream, "write", full_disk)
        with pytest.raises(OSError, match="No space left"):
            logger.info("an epoch line")
    finally:
        monkeypatch.undo()
        close_logger(logger)
