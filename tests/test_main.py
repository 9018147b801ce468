"""main.py end to end on digits: pretrain -> prune (proj_sl, l2) -> fine-tune, log format, run layout,
checkpoints, resume after a kill, reproducibility and argument errors."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

import engine.train
import main as main_module
from engine.harness import config_parser

STAMP = r"\[\d\d/\d\d \d\d:\d\d:\d\d\] "
SMALL = ["--dataset", "digits", "--model", "resnet20", "--width-mult", "0.25", "--seed", "1", "--batch-size", "64"]



def _pretrain(out: Path, epochs: int = 2) -> Path:
    main_module.main(["--mode", "pretrain", *SMALL, "--total-epochs", str(epochs), "--lr", "0.1",
                      "--lr-decay-milestones", "1", "--output-dir", str(out)])
    return out / "digits" / "pretrain" / "digits_resnet20.pth"


def _prune_args(out: Path, ckpt: Path, method: str, epochs: int = 1) -> list[str]:
    return ["--mode", "prune", *SMALL, "--restore", str(ckpt), "--finetune", "--global-pruning", "--reg", "1e-5",
            "--speed-up", "2", "--method", method, "--total-epochs", str(epochs), "--sl-total-epochs", "1",
            "--iterative-steps", "20", "--output-dir", str(out)]


def _lines(path: Path) -> list[str]:
    return [re.sub("^" + STAMP, "", line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    _pretrain(out)
    return out


def test_pretrain_layout_and_log(pretrained):
    folder = pretrained / "digits" / "pretrain"
    assert sorted(p.name for p in folder.iterdir()) == ["digits-resnet20.txt", "digits_resnet20.pth"]
    text = (folder / "digits-resnet20.txt").read_text()
    assert re.search("^" + STAMP + r"digits-resnet20 INFO: dataset: digits$", text, re.M)
    assert re.search("^" + STAMP + r"digits-resnet20 INFO: delta_reg: 0.0001$", text, re.M)
    epochs = re.findall(r"INFO: Epoch (\d+)/2, Acc=(\d\.\d{4}), Val Loss=(\d+\.\d{4}), lr=(\d\.\d{4})$", text, re.M)
    assert [e[0] for e in epochs] == ["0", "1"] and [e[3] for e in epochs] == ["0.1000", "0.0100"]
    best = re.findall(r"INFO: Best Acc=(\d\.\d{4})$", text, re.M)
    assert best == [max(e[1] for e in epochs)]


@pytest.mark.parametrize("method", ["proj_sl", "l2", "proj_calib"])
def test_prune_finetune_log_lines(pretrained, method):
    result = main_module.main(_prune_args(pretrained, pretrained / "digits/pretrain/digits_resnet20.pth", method))
    name = f"digits-global-{method}-2.0-resnet20"
    run_dir = pretrained / "digits" / "prune" / name
    log = (run_dir / f"{name}.txt").read_text()
    prefix = "^" + STAMP + re.escape(name) + " INFO: "
    params = re.search(prefix + r"Params: (\d+\.\d\d) M => (\d+\.\d\d) M \((\d+\.\d\d)%\)$", log, re.M)
    flops = re.search(prefix + r"FLOPs: (\d+\.\d\d) M => (\d+\.\d\d) M \((\d+\.\d\d)%, (\d+\.\d\d)X \)$", log, re.M)
    accs = re.search(prefix + r"Acc: (\d\.\d{4}) => (\d\.\d{4})$", log, re.M)
    assert params and flops and accs and re.search(prefix + r"Val Loss: \d+\.\d{4} => \d+\.\d{4}$", log, re.M)
    assert float(flops.group(4)) >= 2.0 and float(flops.group(3)) <= 50.0
    assert result["speed_up"] >= 2.0 and f"{result['ori_acc']:.4f}" == accs.group(1)
    epochs = re.findall(prefix + r"Epoch (\d+)/(\d+), Acc=\d\.\d{4}, Val Loss=\d+\.\d{4}, lr=\d\.\d{4}$", log, re.M)
    sl = method == "proj_sl"
    assert epochs == ([("0", "1")] if not sl else [("0", "1"), ("0", "1")])  # SL phase then fine-tuning
    assert ("INFO: Regularizing..." in log) == sl
    assert len(re.findall(prefix + r"Best Acc=\d\.\d{4}$", log, re.M)) == (2 if sl else 1)
    # the pruned checkpoint rebuilds the pruned shapes and is evaluated by --mode test
    ckpt = run_dir / f"digits_resnet20_{method}.pth"
    tested = main_module.main(["--mode", "test", *SMALL, "--restore", str(ckpt), "--output-dir", str(pretrained)])
    assert tested["flops"] == pytest.approx(result["flops"])
    assert f"{tested['acc']:.4f}" == re.findall(r"Best Acc=(\d\.\d{4})", log)[-1]
    assert not list(run_dir.glob("*_last.pth")) and not list(run_dir.glob(".*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["l2", "proj_calib"])
def test_seeded_runs_give_identical_logs(tmp_path, pretrained, method):
    ckpt = pretrained / "digits/pretrain/digits_resnet20.pth"
    name = f"digits-global-{method}-2.0-resnet20"
    logs = []
    for folder in ("a", "b"):
        main_module.main(_prune_args(tmp_path / folder, ckpt, method, epochs=2))
        logs.append(_lines(tmp_path / folder / "digits/prune" / name / f"{name}.txt"))
    assert logs[0] == [line.replace(f"{tmp_path}/b", f"{tmp_path}/a") for line in logs[1]]
    kept = main_module.main(_prune_args(tmp_path / "a", ckpt, method, epochs=2))  # finished: kept, not rerun
    assert kept["skipped"] and _lines(tmp_path / "a/digits/prune" / name / f"{name}.txt") == logs[0]


class Killed(Exception):
    pass


@pytest.mark.slow
def test_killed_finetuning_resumes(tmp_path, pretrained, monkeypatch):
    ckpt = pretrained / "digits/pretrain/digits_resnet20.pth"
    reference = main_module.main(_prune_args(tmp_path / "ref", ckpt, "l2", epochs=3))
    calls = {"n": 0}
    real = engine.train.evaluate

    def dies_in_third_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.train, "evaluate", dies_in_third_epoch)
    with pytest.raises(Killed):
        main_module.main(_prune_args(tmp_path / "run", ckpt, "l2", epochs=3))
    monkeypatch.setattr(engine.train, "evaluate", real)
    name = "digits-global-l2-2.0-resnet20"
    run_dir = tmp_path / "run/digits/prune" / name
    assert (run_dir / f"{name}_last.pth").is_file() and not list(run_dir.glob(".*.tmp"))
    resumed = main_module.main(_prune_args(tmp_path / "run", ckpt, "l2", epochs=3))
    log = _lines(run_dir / f"{name}.txt")
    assert any("resuming the fine-tuning" in line for line in log)
    ref_epochs = [line for line in _lines(tmp_path / "ref/digits/prune" / name / f"{name}.txt") if "Epoch" in line]
    assert [line for line in log if "Epoch" in line] == ref_epochs  # epochs 0, 1 then 2 after the restart
    assert resumed["best_acc"] == reference["best_acc"]
    assert not (run_dir / f"{name}_last.pth").exists()


def test_every_paper_flag_and_default():
    parser = config_parser(main_module.CNNConfig)
    flags = {s for action in parser._actions for s in action.option_strings}
    expected = {"--mode": "prune", "--model": None, "--dataset": None, "--dataroot": "data", "--batch-size": 128,
                "--total-epochs": 100, "--lr-decay-milestones": "60,80", "--lr-decay-gamma": 0.1, "--lr": 0.01,
                "--restore": None, "--output-dir": "run", "--finetune": False, "--method": None, "--speed-up": 2.0,
                "--max-pruning-ratio": 1.0, "--soft-keeping-ratio": 0.0, "--reg": 5e-4, "--delta_reg": 1e-4,
                "--weight-decay": 5e-4, "--seed": None, "--global-pruning": False, "--sl-total-epochs": 100,
                "--sl-lr": 0.01, "--sl-lr-decay-milestones": "60,80", "--sl-reg-warmup": 0, "--sl-restore": None,
                "--iterative-steps": 400, "--verbose": False}
    assert set(expected) <= flags
    defaults = {f.name: f.default for f in dataclasses.fields(main_module.CNNConfig)}
    for flag, value in expected.items():
        if flag not in ("--model", "--dataset"):
            key = flag.lstrip("-").replace("-", "_")
            assert defaults[key] == value, flag
    cfg = parser.parse_args(["--delta_reg", "0.5", "--speed-up", "3", "--global-pruning"])
    assert cfg.delta_reg == 0.5 and cfg.speed_up == 3.0 and cfg.global_pruning is True


def test_flags_parse_without_torch():
    """``main.py --help`` answers from engine.table1_config, whose default drift is the library's."""
    import subprocess
    import sys

    from engine.table1_config import DEFAULT_CALIBRATE_DRIFT
    from projprune.compensation import DEFAULT_CALIBRATE_DRIFT as LIBRARY_DRIFT

    assert DEFAULT_CALIBRATE_DRIFT == LIBRARY_DRIFT
    code = ("import sys, main; main.CNNConfig; from engine.harness import parse_config; "
            "parse_config(main.CNNConfig, ['--mode', 'test']); print(sorted({'torch', 'numpy'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "[]"


def test_bad_arguments_fail_before_writing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="unknown method 'magic'.*proj_sl"):
        main_module.main(["--mode", "prune", *SMALL, "--method", "magic", "--output-dir", str(out)])
    with pytest.raises(FileNotFoundError, match="--restore"):
        main_module.main(["--mode", "prune", *SMALL, "--method", "l2", "--restore", str(tmp_path / "none.pth"),
                          "--output-dir", str(out)])
    with pytest.raises(ValueError, match="unknown model"):
        main_module.main(["--mode", "pretrain", "--model", "resnet7", "--output-dir", str(out)])
    with pytest.raises(ValueError, match="needs --method"):
        main_module.main(["--mode", "prune", *SMALL, "--output-dir", str(out)])
    with pytest.raises(ValueError, match="--calib-size must be >= 1"):
        main_module.main(["--mode", "prune", *SMALL, "--method", "proj_calib", "--calib-size", "0",
                          "--output-dir", str(out)])
    with pytest.raises(ValueError, match=r"--calib-drift must be in \[0, 1\)"):
        main_module.main(["--mode", "prune", *SMALL, "--method", "proj_calib", "--calib-drift", "1.5",
                          "--output-dir", str(out)])
    assert not out.exists()
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="corrupt"):
        main_module.main(["--mode", "test", *SMALL, "--restore", str(corrupt), "--output-dir", str(out)])


def test_plain_state_dict_restore_is_weights_only(tmp_path):
    """A torch.save'd state dict (e.g. from another pipeline) loads through weights_only=True."""
    import registry

    model = registry.get_model("resnet20", 10, 1, 0.25, 8)
    path = tmp_path / "plain.pth"
    torch.save(model.state_dict(), path)
    other = registry.get_model("resnet20", 10, 1, 0.25, 8)
    engine.train.load_model(path, other)
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["pointnet", "dgcnn", "vgg11", "mobilenetv2"])
def test_other_families_on_digits(tmp_path, model):
    """Point-cloud models read digits as 64-pixel clouds; every family pretrains and prunes from the CLI."""
    common = ["--dataset", "digits", "--model", model, "--width-mult", "0.125", "--seed", "1",
              "--output-dir", str(tmp_path)]
    main_module.main(["--mode", "pretrain", *common, "--total-epochs", "1"])
    ckpt = tmp_path / "digits" / "pretrain" / f"digits_{model}.pth"
    result = main_module.main(["--mode", "prune", *common, "--restore", str(ckpt), "--method", "proj",
                               "--speed-up", "2", "--global-pruning", "--iterative-steps", "10"])
    assert result["speed_up"] >= 2.0
    name = f"digits-global-proj-2.0-{model}"
    log = (tmp_path / "digits" / "prune" / name / f"{name}.txt").read_text()
    assert re.search(r"INFO: FLOPs: \d+\.\d\d M => \d+\.\d\d M \(\d+\.\d\d%, \d+\.\d\dX \)$", log, re.M)
    assert "Epoch" not in log  # no --finetune: pruning only
    assert (tmp_path / "digits" / "prune" / name / f"digits_{model}_proj.pth").is_file()
