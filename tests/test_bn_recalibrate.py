"""BatchNorm recalibration after pruning: projprune.recalibrate_batchnorm against a float64 computation,
the --bn-recalibrate flag end to end on digits, and parse_logs' one_shot_bn."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import main as main_module
from projprune import recalibrate_batchnorm
from scripts.parse_logs import parse_log


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(6, 4, 3),
                         nn.BatchNorm2d(4))


def _batches(count: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(5, 3, 7, 7, generator=generator) * 2 + 1, torch.zeros(5)) for _ in range(count)]


def test_statistics_equal_a_float64_average_of_batch_moments():
    model = _net().eval()
    batches = _batches()
    conv1, bn1, conv2 = (m.double() for m in (_net()[0], _net()[1], _net()[4]))
    moments: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {1: [], 5: []}
    with torch.no_grad():
        for x, _ in batches:
            # plain float64: while recalibrating, a BatchNorm normalises with its batch's own moments
            h1 = conv1(x.double())
            mean1, var1 = h1.mean(dim=(0, 2, 3)), h1.var(dim=(0, 2, 3), unbiased=False)
            moments[1].append((mean1, h1.var(dim=(0, 2, 3), unbiased=True)))
            z = (h1 - mean1[:, None, None]) / torch.sqrt(var1[:, None, None] + bn1.eps)
            h2 = conv2(torch.relu(z * bn1.weight[:, None, None] + bn1.bias[:, None, None]))  # dropout: eval
            moments[5].append((h2.mean(dim=(0, 2, 3)), h2.var(dim=(0, 2, 3), unbiased=True)))
    assert recalibrate_batchnorm(model, batches) == 2
    for index, pairs in moments.items():  # momentum=None: the plain average over batches
        mean = torch.stack([m for m, _ in pairs]).mean(0)
        var = torch.stack([v for _, v in pairs]).mean(0)
        torch.testing.assert_close(model[index].running_mean.double(), mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model[index].running_var.double(), var, rtol=1e-5, atol=1e-5)


def test_modes_and_momenta_are_restored_and_a_failure_changes_nothing():
    model = _net().train()
    model[3].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="no batch"):
        recalibrate_batchnorm(model, [])
    with pytest.raises(RuntimeError):
        recalibrate_batchnorm(model, [*_batches(1), (torch.randn(2, 5, 7, 7), None)])  # wrong channel count
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert recalibrate_batchnorm(model, _batches(), max_batches=1) == 2
    assert [m.training for m in model] == [True, True, True, False, True, True]
    assert model[1].momentum == 0.1 and not torch.equal(model[1].running_mean, before["1.running_mean"])
    assert recalibrate_batchnorm(nn.Linear(2, 2), _batches()) == 0
    with pytest.raises(ValueError, match="max_batches"):
        recalibrate_batchnorm(model, _batches(), max_batches=0)


SMALL = ["--dataset", "digits", "--model", "resnet20", "--width-mult", "0.25", "--seed", "1", "--batch-size", "64"]


def test_flag_logs_the_recalibrated_accuracy_and_parse_logs_reads_it(tmp_path):
    main_module.main(["--mode", "pretrain", *SMALL, "--total-epochs", "2", "--lr", "0.1",
                      "--lr-decay-milestones", "1", "--output-dir", str(tmp_path)])
    ckpt = tmp_path / "digits" / "pretrain" / "digits_resnet20.pth"
    logs = {}
    for recalibrate in ("0", "4"):
        out = tmp_path / f"bn{recalibrate}"
        result = main_module.main(["--mode", "prune", *SMALL, "--restore", str(ckpt), "--global-pruning",
                                   "--speed-up", "2", "--method", "l2", "--iterative-steps", "10",
                                   "--bn-recalibrate", recalibrate, "--output-dir", str(out)])
        name = "digits-global-l2-2.0-resnet20"
        logs[recalibrate] = (out / "digits" / "prune" / name / f"{name}.txt", result)
    path0, result0 = logs["0"]
    path4, result4 = logs["4"]
    assert "BN Acc" not in path0.read_text() and "bn_acc" not in result0
    match = re.search(r"INFO: BN Acc: (\d\.\d{4}) => (\d\.\d{4})$", path4.read_text(), re.M)
    assert match and float(match[2]) == pytest.approx(result4["bn_acc"], abs=5e-5)
    assert result4["pruned_acc"] == result0["pruned_acc"]  # the same pruning, recalibrated after
    run0, run4 = parse_log(Path(path0)), parse_log(Path(path4))
    assert math.isnan(run0.summary()["one_shot_bn"])
    assert run4.summary()["one_shot_bn"] == pytest.approx(float(match[2]))
    assert run4.summary()["one_shot"] == pytest.approx(result4["pruned_acc"], abs=5e-5)


def test_negative_count_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--bn-recalibrate"):
        main_module.main(["--mode", "prune", *SMALL, "--speed-up", "2", "--method", "l2", "--bn-recalibrate", "-1",
                          "--output-dir", str(tmp_path)])
    assert not (tmp_path / "digits").exists()
