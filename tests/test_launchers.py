"""The launchers in scripts/: dry runs list exactly the paper's commands; gridrun runs, skips and resumes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import gridrun
from tests.conftest import DigitsGrid

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ALL_METHODS = ["random", "l1", "l2", "fpgm", "obdc", "lamp", "slim", "group_norm", "group_sl", "proj", "proj_sl"]
SPARSITY = {"slim", "group_sl", "proj_sl"}


def launch(script: str, *args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    full_env = {key: value for key, value in os.environ.items() if key not in gridrun.ENV_OVERRIDES.values()}
    full_env.update({"PYTHON": PY, "GRID_BACKEND": "bash", **(env or {})})
    return subprocess.run(["bash", str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=120)


def paper_commands(dataset: str, models: list[str], pretrain: str, finetune: str) -> list[str]:
    """docs/reproduction.md's command lines, written out by hand."""
    lines = [f"{PY} main.py --seed 1 --mode pretrain --dataset {dataset} --model {m} {pretrain}" for m in models]
    for model in models:
        for method in ALL_METHODS:
            for speed_up in (2, 3):
                reg = " --reg 1e-05" if method in SPARSITY else ""
                lines.append(
                    f"{PY} main.py --seed 1 --mode prune --dataset {dataset} --model {model} "
                    f"--restore run/{dataset}/pretrain/{dataset}_{model}.pth --finetune --global-pruning{reg} "
                    f"--speed-up {speed_up} --method {method} {finetune}"
                )
    return lines


CIFAR_PRETRAIN = "--total-epochs 200 --lr 0.1 --lr-decay-milestones 120,160,180"
CIFAR_FINETUNE = "--total-epochs 100 --lr 0.01 --lr-decay-milestones 60,80"


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_dry_run_lists_the_paper_grid(dataset: str) -> None:
    out = launch(f"{dataset}.sh", "--dry-run")
    assert out.returncode == 0, out.stderr
    expected = paper_commands(dataset, ["vgg19", "resnet56", "mobilenetv2"], CIFAR_PRETRAIN, CIFAR_FINETUNE)
    assert out.stdout.splitlines() == expected
    assert len(expected) == 3 + 3 * 11 * 2
    assert not (ROOT / "run" / dataset).exists()  # a dry run writes nothing


def test_modelnet_and_master_dry_runs() -> None:
    out = launch("modelnet40.sh", "--dry-run")
    expected = paper_commands("modelnet40", ["pointnet", "dgcnn"],
                              "--total-epochs 250 --lr 0.1 --lr-decay-milestones 100,160,200 --batch-size 32",
                              CIFAR_FINETUNE + " --batch-size 32")
    assert out.stdout.splitlines() == expected
    master = launch("master.sbatch", "--dry-run").stdout.splitlines()
    cifar10 = paper_commands("cifar10", ["vgg19", "resnet56", "mobilenetv2"], CIFAR_PRETRAIN, CIFAR_FINETUNE)
    cifar100 = paper_commands("cifar100", ["vgg19", "resnet56", "mobilenetv2"], CIFAR_PRETRAIN, CIFAR_FINETUNE)
    # stage order: every pretraining run first, then every pruning run
    assert master == cifar10[:3] + cifar100[:3] + expected[:2] + cifar10[3:] + cifar100[3:] + expected[2:]


def test_digits_dry_run_and_subset_flags() -> None:
    out = launch("digits.sh", "--dry-run", "--methods", "l2,proj_sl", "--finetune-epochs", "1", "--sl-epochs", "1",
                 "--pretrain-epochs", "2", "--output-dir", "/tmp/o")
    base = f"{PY} main.py --seed 1"
    assert out.stdout.splitlines() == [
        f"{base} --mode pretrain --dataset digits --model resnet20 --total-epochs 2 --lr 0.1 "
        "--lr-decay-milestones 20,25 --batch-size 64 --output-dir /tmp/o",
        f"{base} --mode prune --dataset digits --model resnet20 --restore /tmp/o/digits/pretrain/digits_resnet20.pth "
        "--finetune --global-pruning --speed-up 2 --method l2 --total-epochs 1 --lr 0.01 --lr-decay-milestones 4 "
        "--batch-size 64 --iterative-steps 100 --bn-recalibrate 4 --output-dir /tmp/o",
        f"{base} --mode prune --dataset digits --model resnet20 --restore /tmp/o/digits/pretrain/digits_resnet20.pth "
        "--finetune --global-pruning --reg 1e-05 --speed-up 2 --method proj_sl --total-epochs 1 --lr 0.01 "
        "--lr-decay-milestones 4 --batch-size 64 --iterative-steps 100 --sl-total-epochs 1 --sl-lr-decay-milestones 3 "
        "--bn-recalibrate 4 --output-dir /tmp/o",
    ]
    bad = launch("digits.sh", "--dry-run", "--methods", "l2,nonsense")
    assert bad.returncode != 0 and "method 'nonsense'" in bad.stderr


@pytest.mark.slow
def test_digits_default_grid_adds_ours_and_per_model_pretraining() -> None:
    """The digits grid runs the compensating pruner's rows too; VGG-19 pretrains at lr 0.01 and
    MobileNetV2 for 60 epochs at lr 0.05, batch 32 (the ResNet schedule leaves it at .61)."""
    out = launch("digits.sh", "--dry-run", "--models", "vgg19,resnet20,mobilenetv2", "--output-dir", "/tmp/o")
    lines = out.stdout.splitlines()
    assert out.returncode == 0, out.stderr
    pretrain = [line for line in lines if "--mode pretrain" in line]
    assert [("--lr 0.01 " in line, "--model vgg19 " in line) for line in pretrain] == [
        (True, True), (False, False), (False, False)]
    assert "--total-epochs 60 --lr 0.05 --lr-decay-milestones 40,50 --batch-size 32" in pretrain[2]
    assert "--model mobilenetv2 " in pretrain[2] and "--total-epochs 30 " in pretrain[1]
    methods = [line.split("--method ")[1].split()[0] for line in lines if "--mode prune" in line]
    assert methods[-2:] == ["proj_comp", "proj_calib"] and len(methods) == 3 * 13
    resnet56 = launch("digits.sh", "--dry-run", "--models", "resnet56", "--output-dir", "/tmp/o").stdout
    assert "--model resnet56 " in resnet56 and "--lr 0.02 " in resnet56  # diverges at the ResNet-20 lr 0.1


def test_finished_runs_are_skipped(tmp_path: Path) -> None:
    name = "digits-global-l2-2.0-resnet20"
    log = tmp_path / "run" / "digits" / "prune" / name / f"{name}.txt"
    log.parent.mkdir(parents=True)
    log.write_text("[02/21 07:24:04] x INFO: Acc: 0.9000 => 0.5000\n"
                   "[02/21 07:24:04] x INFO: Epoch 0/1, Acc=0.9, Val Loss=0.3, lr=0.01\n")  # still running
    args = ("--dry-run", "--methods", "l1,l2", "--output-dir", str(tmp_path / "run"))
    lines = launch("digits.sh", *args).stdout.splitlines()
    assert len(lines) == 3 and not any(line.startswith("#") for line in lines)
    log.write_text(log.read_text() + "[02/21 07:25:04] x INFO: Best Acc=0.9000\n")
    lines = launch("digits.sh", *args).stdout.splitlines()
    assert lines[2] == f"# done, skipped: {name}" and "--method l1" in lines[1]


@pytest.mark.slow
def test_slurm_dry_run_headers_and_environment_overrides() -> None:
    env = {"SBATCH_GRES": "none", "SBATCH_PARTITION": "debug", "SBATCH_TIMELIMIT": "1:00:00"}
    out = launch("cifar10.sh", "--dry-run", "--backend", "slurm", "--methods", "l2", "--models", "resnet56",
                 "--max-parallel", "4", env=env)
    assert out.returncode == 0, out.stderr
    scripts = [block for block in out.stdout.split("#!/bin/bash\n")[1:]]
    assert len(scripts) == 2
    pretrain, prune = (block.splitlines() for block in scripts)
    assert "#SBATCH --job-name=cifar10-pretrain" in pretrain and "#SBATCH --array=0-0%4" in pretrain
    assert "#SBATCH --job-name=cifar10-prune" in prune and "#SBATCH --array=0-1%4" in prune
    assert "#SBATCH --dependency=afterok:<cifar10-pretrain>" in prune
    for headers in (pretrain, prune):
        assert "#SBATCH --gres=none" in headers and "#SBATCH --partition=debug" in headers
        assert "#SBATCH --time=1:00:00" in headers and "#SBATCH --cpus-per-task=8" in headers
        assert "#SBATCH --output=logs/%A_%a-%x.out" in headers
    plain = launch("cifar10.sh", "--dry-run", "--backend", "slurm", "--models", "resnet56", "--methods", "l2",
                   "--dependency", "afterok:77")
    assert "#SBATCH --gres=gpu:1" in plain.stdout and "#SBATCH --time=2-00:00:00" in plain.stdout
    assert "#SBATCH --dependency=afterok:77" in plain.stdout.split("#!/bin/bash\n")[1]


# --------------------------------------------------------------------------- gridrun itself
FAKE_RUN = """
import pathlib, sys
root, name, code, marker = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
counter = root / f"{name}.count"
counter.write_text(str(int(counter.read_text()) + 1 if counter.exists() else 1))
if marker:
    (root / f"{name}.log").write_text("started\\nB done\\n")
sys.exit(code)
"""


def fake_task(tmp: Path, name: str, code: int = 0, marker: bool = True) -> gridrun.Task:
    """A task that counts its executions in <name>.count and writes its completion line (or not)."""
    helper = tmp / "fake_run.py"
    helper.write_text(FAKE_RUN)
    return gridrun.Task(name, (PY, str(helper), str(tmp), name, str(code), "1" if marker else "0"),
                        str(tmp / f"{name}.log"), r"^B done$")


def count(tmp: Path, name: str) -> int:
    path = tmp / f"{name}.count"
    return int(path.read_text()) if path.exists() else 0


def test_bash_backend_runs_stops_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = gridrun.Stage("first", (fake_task(tmp_path, "a"), fake_task(tmp_path, "broken", code=3, marker=False),
                                    fake_task(tmp_path, "nomarker", marker=False)))
    second = gridrun.Stage("second", (fake_task(tmp_path, "c"),))
    options = gridrun.GridOptions(backend="bash", task_log_dir=str(tmp_path / "out"))
    assert gridrun.run_stages([first, second], options) == 1
    assert [count(tmp_path, n) for n in ("a", "broken", "nomarker", "c")] == [1, 1, 1, 0]  # stage 2 held back
    fixed = gridrun.Stage("first", (fake_task(tmp_path, "a"), fake_task(tmp_path, "broken")))
    assert gridrun.run_stages([fixed, second], options) == 0
    assert [count(tmp_path, n) for n in ("a", "broken", "c")] == [1, 2, 1]  # "a" was done: not rerun
    assert gridrun.run_stages([fixed, second], options) == 0
    assert [count(tmp_path, n) for n in ("a", "broken", "c")] == [1, 2, 1]
    assert (tmp_path / "out" / "broken.out").exists()


def test_task_files_exec_and_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    tasks = [fake_task(tmp_path, "x"), fake_task(tmp_path, "y", marker=False)]
    jsonl = tmp_path / "tasks.jsonl"
    jsonl.write_text("\n".join(json.dumps(t.to_dict()) for t in tasks) + "\n")
    stages = gridrun.load_stages(jsonl)
    assert [t.name for t in stages[0].tasks] == ["x", "y"] and stages[0].tasks[0] == tasks[0]
    written = gridrun.write_stages(tmp_path / "tasks.json", stages)
    assert gridrun.load_stages(written) == stages
    assert gridrun.main(["exec", str(written), "0"]) == 0 and count(tmp_path, "x") == 1
    assert gridrun.main(["exec", str(written), "0"]) == 0 and count(tmp_path, "x") == 1  # done: skipped
    assert gridrun.main(["exec", str(written), "1"]) == 1  # exit 0 without its completion file
    with pytest.raises(ValueError, match="index 5"):
        gridrun.main(["exec", str(written), "5"])
    with pytest.raises(FileNotFoundError, match="task file not found"):
        gridrun.load_stages(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="no spaces"):
        gridrun.Task("a b", ("true",), "x")
    with pytest.raises(ValueError, match="appears twice"):
        gridrun.run_stages([gridrun.Stage("s", (tasks[0], tasks[0]))], gridrun.GridOptions(backend="bash"))
    with pytest.raises(ValueError, match="dependency"):
        gridrun.GridOptions(dependency="after ok")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"name": "a", "cmd": "true"}]')
    with pytest.raises(ValueError, match="expected keys"):
        gridrun.load_stages(bad)


def test_read_headers_stops_at_first_command(tmp_path: Path) -> None:
    launcher = tmp_path / "l.sh"
    launcher.write_text("#!/bin/bash\n#SBATCH --gres=gpu:2\n#SBATCH -p long\n#SBATCH --job-name=x\n"
                        "# comment\n#SBATCH --time 5:00\necho hi\n#SBATCH --mem=1G\n")
    assert gridrun.read_headers(launcher) == {"gres": "gpu:2", "partition": "long", "time": "5:00"}


def test_auto_backend_inside_an_allocation_is_bash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRID_BACKEND", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "5")
    assert gridrun.resolve_backend("auto") == "bash"
    monkeypatch.setenv("GRID_BACKEND", "slurm")
    assert gridrun.resolve_backend("auto") == "slurm" and gridrun.resolve_backend("bash") == "bash"


def test_imagenet_dry_run_uses_torchrun() -> None:
    out = launch("imagenet.sh", "--dry-run", "--methods", "proj_sl", "--dataroot", "/data/ilsvrc", env={"GPUS": "8"})
    settings = "--total-epochs 90 --lr 0.08 --lr-decay-milestones 30,60,80 --batch-size 256"
    run = f"{PY} -m torch.distributed.run --nproc_per_node=8 main.py --seed 1"
    assert out.stdout.splitlines() == [
        f"{run} --mode pretrain --dataset imagenet --model resnet50 {settings} --dataroot /data/ilsvrc",
        f"{run} --mode prune --dataset imagenet --model resnet50 --restore run/imagenet/pretrain/imagenet_resnet50.pth "
        f"--finetune --global-pruning --reg 1e-05 --speed-up 2 --method proj_sl {settings} --target-flops 2 "
        "--dataroot /data/ilsvrc",
    ]


@pytest.mark.slow
def test_digits_grid_runs_under_bash_and_resumes(digits_grid: DigitsGrid) -> None:
    first, second = digits_grid.first, digits_grid.second
    assert first.returncode == 0, f"{first.stdout}\n{first.stderr}"
    for name in ("digits-global-l2-2.0-resnet20", "digits-global-proj_sl-2.0-resnet20"):
        assert "Best Acc=" in (digits_grid.runs / "digits" / "prune" / name / f"{name}.txt").read_text()
        assert (digits_grid.folder / "out" / f"{name}.out").exists()  # per-run console output
    # the table printed at the end: the docs' shape, methods against the accuracies and the speed-up reached
    assert "| method | best_pruned | paper | one_shot | one_shot_bn | speed-up reached |" in first.stdout
    assert "Digits RN20 2×: seed 1" in first.stdout
    assert second.returncode == 0 and second.stderr.count("already done, skipped") == 3, second.stderr
    assert ": running" not in second.stderr


@pytest.mark.slow
def test_parse_logs_reads_the_digits_grid(digits_grid: DigitsGrid) -> None:
    from scripts import parse_logs

    assert digits_grid.first.returncode == 0, digits_grid.first.stderr
    results = digits_grid.results
    rows = {r["method"]: r for r in read_rows(results / "runs.csv")}
    assert set(rows) == {"l2", "proj_sl"}
    for row in rows.values():
        assert row["status"] == "complete" and row["dataset"] == "digits" and row["model"] == "resnet20"
        assert float(row["speed_up_reached"]) >= 2.0
        assert float(row["params_after"]) < float(row["params_before"])
        assert 0.0 <= float(row["one_shot"]) <= 1.0 and int(row["finetune_epochs"]) == 1
        assert float(row["best_pruned"]) == pytest.approx(float(row["final_best"]), abs=1e-4)
        assert float(row["paper"]) >= float(row["best_pruned"])
    assert int(rows["proj_sl"]["sl_epochs"]) == 1 and int(rows["l2"]["sl_epochs"]) == 0
    pretrain = read_rows(results / "pretrain.csv")
    assert len(pretrain) == 1 and pretrain[0]["status"] == "complete" and pretrain[0]["epochs"] == "2"
    phases = [r["phase"] for r in read_rows(results / "raw.csv") if r["method"] == "proj_sl"]
    assert phases == ["sl", "finetune"]
    for stem in ("accuracy_vs_speedup", "finetune_curves"):
        assert (results / f"{stem}.png").exists() and (results / f"{stem}.pdf").exists()
    assert parse_logs.METHOD_LABELS["proj_sl"] in (results / "table_best_pruned.md").read_text()


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_prune_done_check_needs_best_acc_after_pruning(tmp_path: Path) -> None:
    from scripts.grid import DONE_CHECK

    def done(*messages: str) -> bool:
        log = tmp_path / "digits-global-proj_sl-2.0-resnet20.txt"
        log.write_text("".join(f"[02/21 07:24:04] run INFO: {m}\n" for m in messages))
        task = gridrun.Task("x", ("true",), str(log), done_check=DONE_CHECK)
        assert gridrun.Task(**{k: v for k, v in task.to_dict().items()}) == task  # survives the task file
        return task.is_done()

    sl = ("mode: prune", "Regularizing...", "Epoch 0/1, Acc=0.9, Val Loss=0.3, lr=0.01", "Best Acc=0.9000")
    pruned = ("Pruning...", "Params: 0.27 M => 0.13 M (48.00%)", "FLOPs: 40.00 M => 19.90 M (49.75%, 2.01X )",
              "Acc: 0.9000 => 0.3000", "Val Loss: 0.3 => 2.1", "Finetuning...")
    finetune = ("Epoch 0/1, Acc=0.8, Val Loss=0.3, lr=0.01", "Best Acc=0.8000")
    assert done(*sl, *pruned, *finetune)
    assert not done(*sl)  # killed right after the sparsity-learning phase
    assert not done(*sl, *pruned, finetune[0])  # killed while fine-tuning
    assert not done(*sl, *pruned, finetune[0], *sl)  # restarted from scratch: its SL "Best Acc" is not the end
    resumed = ("mode: prune", "Found run/x_last.pth: resuming the fine-tuning", "Finetuning...", *finetune)
    assert done(*sl, *pruned, finetune[0], *resumed)
    assert done(*pruned[:-1], *finetune)  # no sparsity learning


def test_pretrain_done_check_reads_the_log(tmp_path: Path) -> None:
    from scripts.grid import DONE_CHECK, GridConfig, pretrain_tasks

    (task,) = pretrain_tasks(GridConfig(datasets=("digits",), output_dir=str(tmp_path)))
    assert task.done_check == DONE_CHECK and task.done_path == str(tmp_path / "digits/pretrain/digits-resnet20.txt")
    log = Path(task.done_path)
    log.parent.mkdir(parents=True)
    epoch = "[02/21 07:24:04] r INFO: Epoch 0/1, Acc=0.9000, Val Loss=0.3, lr=0.1\n"
    log.write_text("[02/21 07:24:04] r INFO: mode: pretrain\n" + epoch)
    assert not task.is_done()  # still training
    log.write_text(log.read_text() + "[02/21 07:24:04] r INFO: Best Acc=0.9000\n")
    assert task.is_done()
    log.write_text(log.read_text() + "[02/21 07:24:04] r INFO: mode: pretrain\n" + epoch)
    assert not task.is_done()  # restarted after finishing: the new attempt has not finished
    with pytest.raises(ValueError, match="done_check 'no colon'"):
        gridrun.Task("x", ("true",), "x.txt", done_check="no colon")
