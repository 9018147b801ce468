"""Reruns, damaged checkpoints and file-system errors (issue 25, items 8, 10, 11).

- A finished Table 1 run is refused (one line, exit 2) when rerun with other arguments into its
  directory, and kept when rerun with the same ones; a refused attempt appends nothing to its log.
- Checkpoints carry a content hash: a flipped data byte or a NaN weight is refused naming the file.
- ``run_cli``: an OSError (a file where a directory should be, a read-only directory, a full disk)
  is one line naming the path and what went wrong, exit 2.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from pathlib import Path

import pytest
import torch

import engine.train
import main as main_module
from engine import harness
from engine.harness import CheckpointIntegrityError, load_checkpoint, run_cli, save_checkpoint

SMALL = ["--dataset", "digits", "--model", "resnet20", "--width-mult", "0.25", "--seed", "1", "--batch-size", "64"]


def _pretrain_args(out: Path, *extra: str) -> list[str]:
    return ["--mode", "pretrain", *SMALL, "--total-epochs", "1", "--lr", "0.1", "--output-dir", str(out), *extra]


def _prune_args(out: Path, ckpt: Path, *extra: str) -> list[str]:
    return ["--mode", "prune", *SMALL, "--restore", str(ckpt), "--finetune", "--speed-up", "2", "--method", "l2",
            "--total-epochs", "1", "--iterative-steps", "10", "--output-dir", str(out), *extra]


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    """``main.py argv`` through the shared error handling: ``(exit code, stderr)``."""
    capsys.readouterr()
    try:
        run_cli(lambda: main_module.main(argv), "main.py")
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished pretraining and a finished pruning + fine-tuning from it, in one output directory."""
    out = tmp_path_factory.mktemp("finished")
    main_module.main(_pretrain_args(out))
    ckpt = out / "digits/pretrain/digits_resnet20.pth"
    main_module.main(_prune_args(out, ckpt))
    name = "digits-local-l2-2.0-resnet20"
    run_dir = out / "digits/prune" / name
    return out, ckpt, run_dir / "digits_resnet20_l2.pth", run_dir / f"{name}.txt"


def _snapshot(*paths: Path) -> list[bytes]:
    return [p.read_bytes() for p in paths]


def test_finished_prune_rerun_with_other_arguments_is_refused(finished, capsys):
    out, ckpt, final, log = finished
    before = _snapshot(final, log)
    code, err = _cli(_prune_args(out, ckpt, "--seed", "2", "--lr", "0.5"), capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert str(final) in err and "--seed" in err and "--lr" in err and "finished" in err
    assert _snapshot(final, log) == before  # the model is kept and nothing is appended to its log


def test_finished_pretrain_rerun_with_other_arguments_is_refused(finished, capsys):
    out, ckpt, _, _ = finished
    log = out / "digits/pretrain/digits-resnet20.txt"
    before = _snapshot(ckpt, log)
    code, err = _cli(_pretrain_args(out, "--total-epochs", "2"), capsys)
    assert code == 2 and "--total-epochs" in err and str(ckpt) in err
    assert _snapshot(ckpt, log) == before


def test_finished_rerun_with_the_same_arguments_is_kept(finished, capsys):
    out, ckpt, final, log = finished
    before = _snapshot(final, log)
    result = main_module.main(_prune_args(out, ckpt))
    assert result["skipped"] and result["checkpoint"] == str(final)
    assert "kept, nothing rerun" in capsys.readouterr().out
    assert _snapshot(final, log) == before


class Killed(Exception):
    pass


def test_refused_resume_appends_nothing_to_the_log(tmp_path, finished, monkeypatch, capsys):
    out, ckpt, _, _ = finished
    real = engine.train.evaluate
    calls = {"n": 0}

    def dies_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # train_model's evaluation of fine-tuning epoch 1 (of 0, 1)
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.train, "evaluate", dies_in_second_epoch)
    args = _prune_args(tmp_path, ckpt, "--total-epochs", "2")
    with pytest.raises(Killed):
        main_module.main(args)
    monkeypatch.setattr(engine.train, "evaluate", real)
    name = "digits-local-l2-2.0-resnet20"
    log = tmp_path / "digits/prune" / name / f"{name}.txt"
    assert (log.parent / f"{name}_last.pth").is_file()
    before = _snapshot(log, *sorted(log.parent.glob("*.pth")))
    code, err = _cli([*args, "--lr", "0.5"], capsys)
    assert code == 2 and "--lr" in err and "interrupted run of other arguments" in err
    assert _snapshot(log, *sorted(log.parent.glob("*.pth"))) == before


# --------------------------------------------------------------------------- item 10: checkpoint integrity
def _flip_last_data_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    header = struct.unpack("<Q", data[:8])[0]
    assert len(data) > 8 + header  # the last byte is tensor data, not the header
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_data_byte_is_refused(tmp_path):
    path = tmp_path / "ckpt.pth"
    save_checkpoint(path, {"w": torch.arange(12.0).reshape(3, 4), "b": torch.ones(3)}, {"note": 1})
    tensors, meta = load_checkpoint(path)
    assert meta == {"note": 1} and torch.equal(tensors["w"], torch.arange(12.0).reshape(3, 4))
    _flip_last_data_byte(path)
    with pytest.raises(CheckpointIntegrityError, match="content hash") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_weight_is_refused(tmp_path, bad):
    path = tmp_path / "ckpt.pth"
    weight = torch.zeros(2, 3)
    weight[1, 2] = bad
    save_checkpoint(path, {"layer.weight": weight, "steps": torch.tensor([3])})
    with pytest.raises(CheckpointIntegrityError, match=r"NaN/Inf values in layer\.weight") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_hash_round_trips_every_dtype(tmp_path):
    tensors = {"bf16": torch.randn(3, 2).to(torch.bfloat16), "scalar": torch.tensor(2.5), "mask": torch.rand(4) > 0.5,
               "steps": torch.arange(5), "empty": torch.zeros(0, 3), "half": torch.randn(2).half()}
    path = tmp_path / "ckpt.pth"
    save_checkpoint(path, tensors, {"k": "v"})
    loaded, meta = load_checkpoint(path)
    assert meta == {"k": "v"} and set(loaded) == set(tensors)
    assert all(loaded[k].dtype == v.dtype and torch.equal(loaded[k], v) for k, v in tensors.items())


def test_checkpoint_without_hash_still_loads(tmp_path):
    from safetensors.torch import save

    path = tmp_path / "old.pth"
    path.write_bytes(save({"w": torch.ones(2, 2)}, metadata={"projprune_meta": json.dumps({"acc": 0.5})}))
    tensors, meta = load_checkpoint(path)
    assert meta == {"acc": 0.5} and torch.equal(tensors["w"], torch.ones(2, 2))


def test_restore_of_a_nan_checkpoint_is_one_line(tmp_path, finished, capsys):
    _, ckpt, _, _ = finished
    tensors, meta = load_checkpoint(ckpt)
    key = next(k for k, v in tensors.items() if k.endswith("conv1.weight"))
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")
    bad = tmp_path / "nan.pth"
    save_checkpoint(bad, tensors, meta)
    flipped = tmp_path / "flipped.pth"
    flipped.write_bytes(ckpt.read_bytes())
    _flip_last_data_byte(flipped)
    out = tmp_path / "out"
    for path, reason in ((bad, "NaN/Inf"), (flipped, "content hash")):
        code, err = _cli(["--mode", "test", *SMALL, "--restore", str(path), "--output-dir", str(out)], capsys)
        assert code == 2 and err.count("\n") == 1 and str(path) in err and reason in err
    assert not out.exists()


# --------------------------------------------------------------------------- item 11: OSError in run_cli
def test_output_dir_under_a_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    code, err = _cli(_pretrain_args(blocker / "run"), capsys)
    assert code == 2 and err.startswith("main.py: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert str(blocker) in err and os.strerror(errno.ENOTDIR) in err
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: harness.atomic_write_text(blocker / "run" / "f.txt", "x"), "prog")
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("prog: error: ") and err.count("\n") == 1
    assert str(blocker) in err and os.strerror(errno.ENOTDIR) in err and "Traceback" not in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_dir_is_one_line(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(SystemExit) as info:
            run_cli(lambda: harness.atomic_write_text(folder / "f.txt", "x"), "prog")
    finally:
        folder.chmod(0o700)
    err = capsys.readouterr().err
    assert info.value.code == 2 and str(folder) in err and err.count("\n") == 1


def test_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    import projprune._io

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(projprune._io.os, "fsync", full)
    target = tmp_path / "run" / "model.pth"
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: save_checkpoint(target, {"w": torch.ones(2)}), "prog")
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert str(target) in err and os.strerror(errno.ENOSPC) in err and "[Errno 28]" in err
    assert not target.exists() and not list(target.parent.glob(".*.tmp"))  # nothing half-written


def test_traceback_switch_still_raises(monkeypatch):
    monkeypatch.setenv("PROJPRUNE_TRACEBACK", "1")

    def fails():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/some/file")

    with pytest.raises(OSError):
        run_cli(fails, "prog")


# --------------------------------------------------------------------------- item 13: the batches actually run
def test_bn_line_names_the_batches_that_ran(tmp_path, finished):
    """``--bn-recalibrate 1000`` on digits (22 training batches of 64) logs 22, and says so; parse_logs reads it."""
    import math
    import re

    from engine import table1_layout as layout

    _, ckpt, _, _ = finished
    args = ["--mode", "prune", *SMALL, "--restore", str(ckpt), "--speed-up", "2", "--method", "l2",
            "--iterative-steps", "10", "--bn-recalibrate", "1000", "--output-dir", str(tmp_path)]
    result = main_module.main(args)
    batches = math.ceil(1347 / 64)  # engine.digits' training split, in batches of --batch-size
    text = Path(result["log"]).read_text()
    assert re.search(rf"INFO: BN recalibrated \(\d+ layers, {batches} training batches\)$", text, re.M)
    assert f"--bn-recalibrate 1000: the training split has only {batches} batches" in text
    messages = [layout.LINE_RE.match(line)["msg"] for line in text.splitlines()]
    bn = [layout.BN_ACC_RE.match(m) for m in messages if layout.BN_ACC_RE.match(m)]
    assert len(bn) == 1 and float(bn[0][2]) == pytest.approx(result["bn_acc"], abs=5e-5)
