"""parse_logs refuses impossible numbers and interleaved logs, reporting them in skipped.csv (issue 14, item 10)."""

from __future__ import annotations

import csv
from pathlib import Path

from scripts import parse_logs
from tests.conftest import write_log

STAMP = "[02/21 07:24:04]"


def _skipped(out: Path) -> dict[str, str]:
    with open(out / "skipped.csv", newline="") as handle:
        return {Path(row["log"]).stem: row["reason"] for row in csv.DictReader(handle)}


def _runs(out: Path) -> list[dict]:
    with open(out / "runs.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_infinite_and_nan_accuracies_are_skipped_with_the_reason(tmp_path):
    root = tmp_path / "run"
    write_log(root, "cifar10", "l2", 2, "resnet56", finetune_accs=(0.90, 0.93))
    bad = write_log(root, "cifar10", "proj", 2, "resnet56", finetune_accs=(0.90, 0.91))
    bad.write_text(bad.read_text().replace("Acc=0.9100, Val", "Acc=inf, Val"))
    nan_best = write_log(root, "cifar10", "random", 2, "resnet56", finetune_accs=(0.5, 0.6))
    nan_best.write_text(nan_best.read_text().replace("Best Acc=0.6000", "Best Acc=nan"))
    big = write_log(root, "cifar10", "lamp", 2, "resnet56", finetune_accs=(0.5, 0.6))
    big.write_text(big.read_text().replace("Acc: 0.9401 =>", "Acc: 1.9401 =>"))
    out = tmp_path / "out"
    parse_logs.main(["--runs", str(root), "--out", str(out), "--quiet"])
    skipped = _skipped(out)
    assert "impossible value Acc=inf" in skipped["cifar10-global-proj-2.0-resnet56"]
    assert "impossible value Best Acc=nan" in skipped["cifar10-global-random-2.0-resnet56"]
    assert "impossible value Acc (before pruning)=1.9401" in skipped["cifar10-global-lamp-2.0-resnet56"]
    assert [r["method"] for r in _runs(out)] == ["l2"]  # only the sound log is counted (and bolded)
    table = (out / "table_best_pruned.md").read_text()
    assert "inf" not in table and "nan" not in table and "1.9401" not in table


def test_interleaved_log_of_two_runs_is_detected(tmp_path):
    root = tmp_path / "run"
    name = "digits-global-l2-2.0-resnet20"
    path = root / "digits" / "prune" / name / f"{name}.txt"
    path.parent.mkdir(parents=True)
    config = [f"{STAMP} {name} INFO: mode: prune", f"{STAMP} {name} INFO: method: l2"]
    prune = [f"{STAMP} {name} INFO: Params: 0.86 M => 0.57 M (66.28%)",
             f"{STAMP} {name} INFO: FLOPs: 127.12 M => 63.32 M (49.81%, 2.01X )",
             f"{STAMP} {name} INFO: Acc: 0.9401 => 0.1410"]
    epochs = [f"{STAMP} {name} INFO: Epoch {i}/3, Acc=0.{5 + i}000, Val Loss=0.3, lr=0.0100" for i in range(3)]
    lines = config + config + prune + prune  # two identical runs started together
    for line in epochs:
        lines += [line, line]
    lines += [f"{STAMP} {name} INFO: Best Acc=0.7000"] * 2
    path.write_text("\n".join(lines) + "\n")
    reason = parse_logs.parse_log(path)
    assert isinstance(reason, str) and "interleaved" in reason and "epoch 0 after epoch 0" in reason
    out = tmp_path / "out"
    parse_logs.main(["--runs", str(root), "--out", str(out), "--quiet"])
    assert "interleaved" in _skipped(out)[name] and _runs(out) == []


def test_resumed_run_is_not_mistaken_for_interleaving(tmp_path):
    root = tmp_path / "run"
    name = "digits-global-l2-2.0-resnet20"
    path = write_log(root, "digits", "l2", 2, "resnet20", finetune_accs=(0.5, 0.6), finished=False)
    resumed = [f"{STAMP} {name} INFO: mode: prune",
               f"{STAMP} {name} INFO: Epoch 2/4, Acc=0.7000, Val Loss=0.3, lr=0.0100",
               f"{STAMP} {name} INFO: Best Acc=0.7000"]
    path.write_text(path.read_text() + "\n".join(resumed) + "\n")
    run = parse_logs.parse_log(path)
    assert not isinstance(run, str) and run.complete


def _block(name: str, **config) -> list[str]:
    return [f"{STAMP} {name} INFO: {key}: {value}" for key, value in config.items()]


def _pruned_run(name: str, one_shot: float, accs: tuple[float, ...], finished: bool = True) -> list[str]:
    lines = [f"{STAMP} {name} INFO: Pruning...",
             f"{STAMP} {name} INFO: Params: 0.86 M => 0.57 M (66.28%)",
             f"{STAMP} {name} INFO: FLOPs: 127.12 M => 63.32 M (49.81%, 2.01X )",
             f"{STAMP} {name} INFO: Acc: 0.9401 => {one_shot:.4f}",
             f"{STAMP} {name} INFO: Finetuning..."]
    lines += [f"{STAMP} {name} INFO: Epoch {i}/{len(accs)}, Acc={a:.4f}, Val Loss=0.3, lr=0.0100"
              for i, a in enumerate(accs)]
    return lines + ([f"{STAMP} {name} INFO: Best Acc={max(accs):.4f}"] if finished else [])


def test_log_of_two_runs_gives_the_last_run_only(tmp_path):
    """Issue 25.9: a completed run re-run with other arguments into the same log (then a refused attempt's
    config block) is one row of the last run, never best_pruned of one and one_shot of the other."""
    root = tmp_path / "run"
    name = "digits-global-l2-2.0-resnet20"
    path = root / "digits" / "prune" / name / f"{name}.txt"
    path.parent.mkdir(parents=True)
    first = _block(name, mode="prune", seed=1, lr=0.01, total_epochs=6, workers=0)
    second = _block(name, mode="prune", seed=2, lr=0.5, total_epochs=1, workers=0)
    refused = _block(name, mode="prune", seed=3, lr=0.01, total_epochs=6, workers=0)
    lines = first + _pruned_run(name, 0.1410, (0.90, 0.95, 0.97)) + second + _pruned_run(name, 0.2020, (0.1020,))
    path.write_text("\n".join(lines + refused) + "\n")
    out = tmp_path / "out"
    parse_logs.main(["--runs", str(root), "--out", str(out), "--quiet"])
    (row,) = _runs(out)
    assert row["status"] == "complete" and row["seed"] == "2" and row["earlier_runs_in_log"] == "1"
    assert float(row["one_shot"]) == 0.202 and float(row["best_pruned"]) == 0.102
    assert float(row["final_best"]) == 0.102 and float(row["paper"]) == 0.102 and row["finetune_epochs"] == "1"
    assert float(row["last_pruned"]) == 0.102
    with open(out / "raw.csv", newline="") as handle:
        assert [r["acc"] for r in csv.DictReader(handle)] == ["0.102"]  # the first run's epochs are gone


def test_resumed_log_counts_a_repeated_epoch_once(tmp_path):
    """Issue 25.9: killed after logging epoch 2 but before its checkpoint, the resumed run logs epoch 2 again."""
    root = tmp_path / "run"
    name = "digits-global-l2-2.0-resnet20"
    path = root / "digits" / "prune" / name / f"{name}.txt"
    path.parent.mkdir(parents=True)
    config = _block(name, mode="prune", seed=1, lr=0.01, workers=0)
    resumed = _block(name, mode="prune", seed=1, lr=0.01, workers=2)  # workers may change on a resume
    lines = config + _pruned_run(name, 0.1410, (0.50, 0.60, 0.99), finished=False) + resumed + [
        f"{STAMP} {name} INFO: Found run/x_last.pth: resuming the fine-tuning",
        f"{STAMP} {name} INFO: Epoch 2/4, Acc=0.7000, Val Loss=0.3, lr=0.0100",
        f"{STAMP} {name} INFO: Epoch 3/4, Acc=0.8000, Val Loss=0.3, lr=0.0100",
        f"{STAMP} {name} INFO: Best Acc=0.8000"]
    path.write_text("\n".join(lines) + "\n")
    run = parse_logs.parse_log(path)
    assert not isinstance(run, str) and run.complete and run.earlier_runs == 0
    assert [(e.epoch, e.acc) for e in run.epochs] == [(0, 0.5), (1, 0.6), (2, 0.7), (3, 0.8)]
    summary = run.summary()
    assert summary["finetune_epochs"] == 4 and summary["best_pruned"] == 0.8 and summary["one_shot"] == 0.141
    assert summary["last_pruned"] == 0.8  # the resumed epoch 3, not the interrupted attempt's epoch 2 (.99)
