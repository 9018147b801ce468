"""benchmarks/cnn_one_shot.py: the pruning-run command, the recalibration copies and the timed schedule."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from benchmarks import cnn_one_shot


def _flag(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_seed_run_builds_the_no_recalibration_command_and_skips_finished_runs(tmp_path, monkeypatch):
    calls: list[list[str]] = []
    envs: list[dict[str, str]] = []
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cnn_one_shot.subprocess, "run",
                        lambda argv, **kw: (calls.append(list(argv)), envs.append(kw["env"])))
    sparse = tmp_path / "reg.pth"
    log = cnn_one_shot._seed_run(tmp_path, "resnet20", "slim", 2.0, 1, runs_dir=tmp_path / "noise",
                                 bn_recalibrate=0, sl_restore=sparse)
    (argv,) = calls
    assert "--finetune" not in argv and _flag(argv, "--bn-recalibrate") == "0"
    assert _flag(argv, "--seed") == "1" and _flag(argv, "--output-dir") == str(tmp_path / "noise")
    assert _flag(argv, "--sl-restore") == str(sparse)
    assert envs[0]["OMP_NUM_THREADS"] == "1"  # one thread, as scripts/digits.sh: the Quick start's networks
    assert log == tmp_path / "noise/digits/prune/digits-global-slim-2.0-resnet20/digits-global-slim-2.0-resnet20.txt"
    log.parent.mkdir(parents=True)
    log.write_text("Acc: 0.9911 => 0.4467\n")
    cnn_one_shot._seed_run(tmp_path, "resnet20", "slim", 2.0, 1, runs_dir=tmp_path / "noise", bn_recalibrate=0)
    assert len(calls) == 2  # the log alone is not enough: the pruned checkpoint is missing
    (log.parent / "digits_resnet20_slim.pth").write_bytes(b"x")
    cnn_one_shot._seed_run(tmp_path, "resnet20", "slim", 2.0, 1, runs_dir=tmp_path / "noise", bn_recalibrate=0)
    assert len(calls) == 2
    # the seeds table's runs keep the grid's --bn-recalibrate and need its "BN Acc:" line
    seed_log = cnn_one_shot._seed_run(tmp_path, "resnet20", "l2", 3.0, 4)
    assert _flag(calls[-1], "--bn-recalibrate") == "4" and "--sl-restore" not in calls[-1]
    assert seed_log.parents[3] == tmp_path / "seeds" / "seed4"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # an explicit choice is kept
    cnn_one_shot._seed_run(tmp_path, "resnet20", "l2", 3.0, 5)
    assert envs[-1]["OMP_NUM_THREADS"] == "2"


def test_recalibrated_accuracy_leaves_the_model_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()
    x, y = torch.randn(32, 1, 8, 8) * 3 + 1, torch.randint(0, 10, (32,))
    norm = model[1]
    before = norm.running_mean.clone(), norm.running_var.clone()
    test = [(x, y)]
    plain = cnn_one_shot._recalibrated_accuracy(model, [], test)
    cnn_one_shot._recalibrated_accuracy(model, [(x, y)], test)
    assert torch.equal(norm.running_mean, before[0]) and torch.equal(norm.running_var, before[1])
    assert cnn_one_shot._recalibrated_accuracy(model, [], test) == plain


def test_time_pruning_follows_the_schedule():
    import registry

    model = registry.get_model("resnet20", 10, 1, input_size=8).eval()
    example = torch.randn(1, 1, 8, 8)
    _, reached_short, steps_short = cnn_one_shot.time_pruning(model, example, "l2", None, iterative_steps=4)
    _, _, steps_long = cnn_one_shot.time_pruning(model, example, "l2", None, iterative_steps=40)
    assert steps_short <= 4 < steps_long and reached_short > 1.5


def test_unknown_method_is_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(cnn_one_shot, "run_grid", lambda *a: pytest.fail("the grid ran"))
    with pytest.raises(ValueError, match="--noise-methods: unknown method.*nosuch"):
        cnn_one_shot.main(["--output-dir", str(tmp_path / "out"), "--noise-methods", "l2,nosuch"])
    assert not (tmp_path / "out").exists()


def test_proj_calib_settings_are_chosen_on_validation_not_test(tmp_path, monkeypatch):
    """Issue 24.4: the choice follows the validation split (carved from the training data, disjoint from the
    calibration images), even when the test split would rank the settings the other way."""
    from torch.utils.data import Subset

    import engine.cnn
    import engine.train
    import registry
    from engine import table1_layout as layout

    bundle = registry.get_dataset("digits")
    model = registry.get_model("resnet20", bundle.num_classes, bundle.in_channels, input_size=bundle.input_size)
    engine.train.save_model(layout.pretrain_checkpoint(tmp_path / "run", "digits", "resnet20"), model)
    seen = {}
    real_batches = registry.calibration_batches

    def calibration(dataset, *args):
        seen["calibration"] = dataset
        return real_batches(dataset, *args)

    def prune(pruner, model, speed_up, example):
        model.choice = (pruner.importance.flops_aware, pruner.importance.lmbda)

    def evaluate(model, loader):
        val = isinstance(loader.dataset, Subset)
        if val:
            seen["val"] = loader.dataset
        # validation prefers (False, 1e-2), test prefers (True, 1e-4)
        return (0.9 if model.choice == ((False, 1e-2) if val else (True, 1e-4)) else 0.5), 0.0

    # a stand-in pruner: the settings it was given are all this test needs (no dependency graph to build)
    monkeypatch.setattr(registry, "get_method", lambda name: SimpleNamespace(
        pruner_cls=lambda model, example, importance, **kw: SimpleNamespace(importance=importance)))
    monkeypatch.setattr(registry, "calibration_batches", calibration)
    monkeypatch.setattr(engine.cnn, "progressive_pruning", prune)
    monkeypatch.setattr(engine.train, "evaluate", evaluate)
    text = cnn_one_shot.choose_on_validation(tmp_path, speed_ups=(2.0,), choices=((True, 1e-4), (False, 1e-2)))
    chosen = [line for line in text.splitlines() if "(chosen)" in line]
    assert chosen == ["| False (chosen) | 0.01 | 0.900 | 0.500 |"]
    val, calib = set(seen["val"].indices), set(seen["calibration"].indices)
    assert not val & calib and len(val) + len(calib) == len(bundle.train) and len(val) == round(0.2 * len(val | calib))
    assert seen["calibration"].dataset is seen["val"].dataset  # both carved from the training split


def test_positions_table_passes_each_limit_to_the_pruner_and_reports_each_split(tmp_path, monkeypatch):
    """One row per ``max_positions`` (None shown as every position of the 8x8 map), the limit reaching the
    pruner, accuracy per split and speed-up in the row's cells; a bad --positions list is one ValueError."""
    import engine.cnn
    import engine.train
    import registry
    from engine import table1_layout as layout

    bundle = registry.get_dataset("digits")
    model = registry.get_model("resnet20", bundle.num_classes, bundle.in_channels, input_size=bundle.input_size)
    engine.train.save_model(layout.pretrain_checkpoint(tmp_path / "run", "digits", "resnet20"), model)
    given = []

    def pruner_cls(model, example, importance, **kw):
        given.append(kw["max_positions"])
        model.limit = kw["max_positions"]
        return SimpleNamespace(importance=importance)

    def evaluate(model, loader):  # val: .9 - limit / 100, test: .8 - limit / 100 (None: 0)
        from torch.utils.data import Subset

        return (0.9 if isinstance(loader.dataset, Subset) else 0.8) - (model.limit or 0) / 100, 0.0

    monkeypatch.setattr(registry, "get_method", lambda name: SimpleNamespace(pruner_cls=pruner_cls))
    monkeypatch.setattr(engine.cnn, "progressive_pruning", lambda pruner, model, speed_up, example: None)
    monkeypatch.setattr(engine.train, "evaluate", evaluate)
    text = cnn_one_shot.positions_table(tmp_path, positions=(None, 8), speed_ups=(2.0, 3.0), seeds=(1,))
    assert given == [None, None, 8, 8]
    rows = [line for line in text.splitlines() if line.startswith("| all") or line.startswith("| 8 ")]
    assert rows[0].startswith("| all (64) | 0.900 | 0.900 | 0.800 | 0.800 |")
    assert rows[1].startswith("| 8 | 0.820 | 0.820 | 0.720 | 0.720 |")
    assert cnn_one_shot._spread([0.5, 0.7, 0.6]) == "0.600 [0.500, 0.700]"
    assert cnn_one_shot._positions("0,16") == [None, 16]
    with pytest.raises(ValueError, match="--positions"):
        cnn_one_shot._positions("16,-4")


def test_only_positions_without_a_pretrained_network_is_one_error_and_writes_nothing(tmp_path):
    """--only-positions names the checkpoint it needs and how to make it, before any file or folder is written."""
    with pytest.raises(FileNotFoundError, match="digits.sh"):
        cnn_one_shot.main(["--output-dir", str(tmp_path / "out"), "--only-positions"])
    assert not (tmp_path / "out").exists()
