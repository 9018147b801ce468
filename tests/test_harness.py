"""The shared experiment harness and the embedded demo."""

import os
from dataclasses import dataclass, field

import pytest
import torch

from engine import demo, harness
from engine.digits import digits_tensors


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "table.csv"
    harness.atomic_write_csv(path, [{"a": 1, "b": 2}, {"a": 3, "c": 4}])
    rows = harness.read_csv(path)
    assert rows == [{"a": "1", "b": "2", "c": ""}, {"a": "3", "b": "", "c": "4"}]
    harness.atomic_write_text(path, "x\n")
    assert path.read_text() == "x\n"
    assert sorted(os.listdir(path.parent)) == ["table.csv"]


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    harness.atomic_write_text(path, "old")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        harness.atomic_write_text(path, "new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]


def test_results_csv_resume(tmp_path):
    path = tmp_path / "r.csv"
    results = harness.ResultsCSV(path)
    results.append({"step": 0, "acc": 0.5})
    results.append({"step": 1, "acc": 0.75})
    resumed = harness.ResultsCSV(path, resume=True)
    assert len(resumed) == 2 and resumed.rows[1]["acc"] == "0.75"


def test_checkpoint_roundtrip_and_errors(tmp_path):
    weight = torch.randn(3, 4)
    state = {"w": weight, "tied": weight, "b": torch.arange(3)}
    path = harness.save_checkpoint(tmp_path / "m.pth", state, {"widths": [3, 2], "name": "mlp"})
    loaded, meta = harness.load_checkpoint(path)
    assert torch.equal(loaded["w"], weight) and torch.equal(loaded["tied"], weight)
    assert torch.equal(loaded["b"], torch.arange(3)) and meta == {"widths": [3, 2], "name": "mlp"}
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        harness.load_checkpoint(tmp_path / "missing.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="corrupt"):
        harness.load_checkpoint(corrupt)


@dataclass
class _Cfg:
    total_epochs: int = 100
    lr: float = 0.01
    delta_reg: float = field(default=1e-4, metadata={"flag": "--delta_reg"})
    global_pruning: bool = False
    method: str = field(default="l2", metadata={"choices": ["l2", "proj"]})


def test_config_parser_flags_and_defaults():
    cfg = harness.parse_config(_Cfg, ["--total-epochs", "3", "--delta_reg", "0.5", "--global-pruning"])
    assert cfg == _Cfg(total_epochs=3, lr=0.01, delta_reg=0.5, global_pruning=True, method="l2")
    with pytest.raises(SystemExit):
        harness.parse_config(_Cfg, ["--method", "magic"])


def test_logger_format(tmp_path):
    logger = harness.get_logger("run-x", tmp_path / "log.txt", console=False)
    logger.info("Epoch 0/2, Acc=0.5000")
    harness.close_logger(logger)
    line = (tmp_path / "log.txt").read_text().strip()
    assert line.startswith("[") and line.endswith("] run-x INFO: Epoch 0/2, Acc=0.5000".split("]", 1)[1])


def test_digits_split_is_fixed():
    a = digits_tensors(seed=0)
    b = digits_tensors(seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a[0].shape[1:] == (1, 8, 8) and len(a[0]) + len(a[2]) == 1797
    assert float(a[0].max()) <= 1.0 and set(a[3].tolist()) == set(range(10))
    with pytest.raises(ValueError, match="test_fraction"):
        digits_tensors(test_fraction=1.5)


def test_demo_end_to_end(tmp_path):
    rows = demo.main(["--epochs", "3", "--hidden", "32", "--methods", "l2,proj550,exact_oac",
                      "--output-dir", str(tmp_path)])
    assert [r["method"] for r in rows] == ["l2", "proj550", "exact_oac"]
    assert all(r["params"] == 64 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10 for r in rows)
    assert rows[0]["acc_before"] > 0.3  # well above chance (0.1) after three epochs
    assert (tmp_path / "demo.md").read_text().count("\n| ") == 4
    again = demo.main(["--epochs", "3", "--hidden", "32", "--methods", "l2,proj550,exact_oac",
                       "--output-dir", str(tmp_path)])
    assert [r["acc_after"] for r in again] == [r["acc_after"] for r in rows]  # seeded
    with pytest.raises(ValueError, match="unknown"):
        demo.main(["--methods", "magic", "--output-dir", str(tmp_path)])


@pytest.mark.parametrize("options", [{}, {"optimizer": "adamw", "weight_decay": 1e-4, "cosine": True}])
def test_train_classifier_learns_and_is_seeded(options):
    from engine.classify import evaluate_accuracy, train_classifier

    x, y, _, _ = digits_tensors(seed=0)

    def run():
        torch.manual_seed(0)
        model = demo.make_mlp(16)
        losses = train_classifier(model, x, y, epochs=3, lr=3e-3, batch_size=64, seed=1, **options)
        return model, losses

    model, losses = run()
    again, losses_again = run()
    assert losses[-1] < losses[0] and losses == losses_again
    assert evaluate_accuracy(model, x, y) == evaluate_accuracy(again, x, y) > 0.25  # chance is 0.1
    with pytest.raises(ValueError, match="optimizer"):
        train_classifier(model, x, y, epochs=1, lr=1e-3, batch_size=8, seed=0, optimizer="sgd")


def test_machine_description_names_the_kernels_threads_and_versions():
    import datetime

    from engine.harness import machine_description

    line = machine_description()
    capability = torch.backends.cpu.get_cpu_capability()
    assert line.startswith(datetime.date.today().isoformat() + ", ")
    assert f"torch kernels: {capability})" in line and f"{torch.get_num_threads()} torch thread(s)" in line
    assert line.endswith(f"torch {torch.__version__}") and "\n" not in line
