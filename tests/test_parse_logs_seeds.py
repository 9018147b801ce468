"""Seeds in the digits table (issue 24.4): the grid runs one tree per seed, parse_logs prints methods against
best_pruned/paper/one_shot/one_shot_bn/speed-up as mean [min, max]; the figures (issue 24.6) are a dot plot with
seed ranges and fine-tuning curves that mark one_shot and one_shot_bn."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest

from scripts import grid, parse_logs
from tests.conftest import write_log

# (method, seed) -> (fine-tuning accuracies, one_shot, one_shot_bn)
RUNS = {("l2", 1): ((0.90, 0.95), 0.50, 0.91), ("l2", 2): ((0.93, 0.96), 0.30, 0.93),
        ("l2", 3): ((0.80, 0.91), 0.40, 0.80), ("proj_calib", 1): ((0.97, 0.96), 0.97, 0.975)}


def _tree(root: Path, speed_ups=(2.0,)) -> None:
    for (method, seed), (accs, one_shot, bn) in RUNS.items():
        for speed_up in speed_ups:
            name = f"digits-global-{method}-{speed_up}-resnet20"
            path = write_log(root / f"seed{seed}", "digits", method, speed_up, "resnet20", finetune_accs=accs,
                             prune=(0.27, 0.13, 40.0, 20.0 - seed, 0.98, one_shot))
            stamp = "[02/21 07:24:04]"
            text = path.read_text().replace("INFO: mode: prune\n",
                                            f"INFO: mode: prune\n{stamp} {name} INFO: seed: {seed}\n")
            text = text.replace("INFO: Val Loss: 0.3120 => 5.5544\n",
                                f"INFO: Val Loss: 0.3120 => 5.5544\n{stamp} {name} INFO: BN Acc: 0.9800 => {bn:.4f}\n")
            path.write_text(text)


def _cell(values: list[float], fmt=lambda v: f"{v:.4f}".lstrip("0")) -> str:
    mean = sum(values) / len(values)  # float64 reference
    return fmt(mean) if len(values) == 1 else f"{fmt(mean)} [{fmt(min(values))}, {fmt(max(values))}]"


def test_setting_table_is_mean_min_max_over_seeds(tmp_path, capsys):
    _tree(tmp_path / "run")
    out = tmp_path / "out"
    parse_logs.main(["--runs", str(tmp_path / "run"), "--out", str(out), "--metric", "best_pruned,one_shot"])
    printed = capsys.readouterr().out
    table = (out / "table_digits-resnet20-2x.md").read_text()
    assert table in printed.replace("; complete runs, best mean bold (table_digits-resnet20-2x.md):", "")
    lines = table.splitlines()
    assert lines[0].startswith("Digits RN20 2×: mean [min, max] over seeds 1, 2, 3")
    assert lines[2] == "| method | best_pruned | paper | one_shot | one_shot_bn | speed-up reached |"
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[4:]}
    assert list(rows) == ["MagnitudeL2", "Projective + compensation, calibrated"]
    l2 = [RUNS[("l2", seed)] for seed in (1, 2, 3)]
    assert rows["MagnitudeL2"][0] == _cell([max(r[0]) for r in l2])
    assert rows["MagnitudeL2"][2] == _cell([r[1] for r in l2])
    assert rows["MagnitudeL2"][3] == _cell([r[2] for r in l2])
    assert rows["MagnitudeL2"][4] == _cell([40.0 / (20.0 - s) for s in (1, 2, 3)], lambda v: f"{v:.2f}×")
    # one seed: just the value, bold where its mean is the column's best
    assert rows["Projective + compensation, calibrated"][:4] == ["**.9700**", "**.9700**", "**.9700**", "**.9750**"]
    with open(out / "runs.csv", newline="") as handle:
        assert sorted((r["method"], r["seed"]) for r in csv.DictReader(handle)) == sorted((m, str(s)) for m, s in RUNS)
    with open(out / "table_best_pruned.csv", newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["method"] == "MagnitudeL2")
    assert float(row["Digits RN20 2x"]) == pytest.approx((0.95 + 0.96 + 0.91) / 3)
    assert (float(row["Digits RN20 2x min"]), float(row["Digits RN20 2x max"]), row["Digits RN20 2x runs"]) == (
        0.91, 0.96, "3")


def test_a_seed_found_twice_counts_once(tmp_path, capsys):
    """The Quick start's single-seed tree next to the ``--seeds 1,2,3`` trees holds seed 1 twice: the mean is
    still over three seeds, and the repeat is listed in skipped.csv; logs that name no seed all count."""
    _tree(tmp_path / "run")
    copy = tmp_path / "run" / "digits"  # seed 1's l2 run again, as `bash scripts/digits.sh` writes it
    copy.mkdir()
    original = next((tmp_path / "run" / "seed1").rglob("digits-global-l2-*.txt"))
    (copy / original.name).write_text(original.read_text())
    for index, accs in enumerate(((0.50, 0.52), (0.60, 0.61))):  # two logs without a seed line: both kept
        write_log(tmp_path / "run" / f"unseeded{index}", "digits", "proj_comp", 2.0, "resnet20", finetune_accs=accs)
    out = tmp_path / "out"
    parse_logs.main(["--runs", str(tmp_path / "run"), "--out", str(out), "--metric", "best_pruned"])
    capsys.readouterr()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in (out / "table_digits-resnet20-2x.md").read_text().splitlines()[4:]}
    assert rows["MagnitudeL2"][0] == _cell([max(RUNS[("l2", seed)][0]) for seed in (1, 2, 3)])
    assert rows["Projective + compensation, data-free"][0] == _cell([0.52, 0.61])
    with open(out / "skipped.csv", newline="") as handle:
        skipped = list(csv.DictReader(handle))
    assert len(skipped) == 1 and "seed 1" in skipped[0]["reason"]
    both = {copy / original.name, original}  # the first log path is the one counted
    assert Path(skipped[0]["log"]) in both and str(min(both, key=str)) in skipped[0]["reason"]
    with open(out / "runs.csv", newline="") as handle:
        assert sum(r["method"] == "l2" for r in csv.DictReader(handle)) == 3


def test_a_pretraining_found_twice_counts_once(tmp_path):
    """Pretraining logs have no speed-up (NaN): two copies of seed 1's still count once in the unpruned accuracy."""
    for folder, best in (("a", 0.97), ("b", 0.97), ("c", 0.99)):
        path = tmp_path / folder / "digits" / "pretrain" / "digits-resnet20.txt"  # main.py's layout
        path.parent.mkdir(parents=True)
        seed = 2 if folder == "c" else 1
        path.write_text("".join(f"[02/21 07:24:04] digits-resnet20 INFO: {line}\n" for line in (
            "mode: pretrain", "dataset: digits", "model: resnet20", f"seed: {seed}",
            "Epoch 0/1, Acc=0.5000, Val Loss=1.0000, lr=0.1000", f"Epoch 1/1, Acc={best:.4f}, Val Loss=0.1000, "
            "lr=0.0100", f"Best Acc={best:.4f}")))
    runs, skipped = parse_logs.collect(tmp_path, ["digits"], "global")
    assert [r.kind for r in runs] == ["pretrain"] * 3 and not skipped
    # each with its own NaN object, as logs parsed apart may carry (NaN != NaN: the key must not rely on identity)
    runs = [dataclasses.replace(r, speed_up=float("nan")) for r in runs]
    kept, repeated = parse_logs.drop_repeated_seeds(runs)
    assert sorted(r.seed for r in kept) == ["1", "2"] and len(repeated) == 1
    assert Path(repeated[0]["log"]) == tmp_path / "b" / "digits" / "pretrain" / "digits-resnet20.txt"


def test_one_speed_up_is_a_dot_plot_with_seed_ranges(tmp_path):
    _tree(tmp_path / "run")
    runs, _ = parse_logs.collect(tmp_path / "run", ["digits"], "global")
    rows = [r.summary() for r in runs if r.kind == "prune"]
    fig = parse_logs.speedup_figure(rows, "best_pruned")
    (ax,) = fig.axes
    assert ax.get_xlabel() == "accuracy after pruning + fine-tuning (best_pruned)"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["MagnitudeL2", "Projective + compensation, calibrated"]
    assert len(ax.containers) == 2  # one error-bar point per method
    l2 = ax.containers[0]
    (x,), (y,) = l2.lines[0].get_data()
    assert x == pytest.approx((0.95 + 0.96 + 0.91) / 3) and y == 0
    bar = l2.lines[2][0].get_segments()[0]  # the horizontal bar spans [min, max] over the seeds
    assert (bar[0][0], bar[1][0]) == pytest.approx((0.91, 0.96))
    assert "min-max over 3 seeds" in ax.get_title()
    two = parse_logs.summary_table  # several speed-ups: accuracy against the speed-up reached
    _tree(tmp_path / "run3", speed_ups=(2.0, 3.0))
    runs, _ = parse_logs.collect(tmp_path / "run3", ["digits"], "global")
    fig = parse_logs.speedup_figure([r.summary() for r in runs if r.kind == "prune"], "one_shot")
    (ax,) = fig.axes
    assert ax.get_xlabel() == "FLOPs speed-up reached" and ax.get_ylabel() == "accuracy right after pruning (one_shot)"
    assert len(two([r.summary() for r in runs], "one_shot")[0]) == 2 and len(ax.containers) == 2


def test_curves_mark_one_shot_and_one_shot_bn(tmp_path):
    _tree(tmp_path / "run")
    runs, _ = parse_logs.collect(tmp_path / "run", ["digits"], "global")
    fig = parse_logs.curves_figure(runs, ("digits", "resnet20", 2.0))
    (ax,) = fig.axes
    marks = {gid: [line.get_data() for line in ax.lines if line.get_gid() == gid]
             for gid in ("one_shot", "one_shot_bn")}
    # seed 1 only (the lowest): l2 and proj_calib, each with both points at epoch 0
    assert sorted(float(y[0]) for _, y in marks["one_shot"]) == [0.5, 0.97]
    assert sorted(float(y[0]) for _, y in marks["one_shot_bn"]) == [0.91, 0.975]
    assert all(list(x) == [0] for x, _ in marks["one_shot"] + marks["one_shot_bn"])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "one_shot: right after pruning" in labels and "one_shot_bn: after BatchNorm re-estimation" in labels
    assert "(seed 1)" in ax.get_title()
    curve = next(line for line in ax.lines if line.get_label() == "MagnitudeL2")
    assert list(curve.get_xdata()) == [0, 1, 2] and list(curve.get_ydata()) == [0.91, 0.90, 0.95]


def test_grid_runs_one_tree_per_seed(tmp_path):
    cfg = grid.GridConfig(datasets=("digits",), methods=("l2",), output_dir=str(tmp_path), seeds=(1, 3))
    tasks = grid.pretrain_tasks(cfg) + grid.prune_tasks(cfg)
    assert [t.name for t in tasks] == ["digits-pretrain-resnet20-seed1", "digits-pretrain-resnet20-seed3",
                                       "digits-global-l2-2.0-resnet20-seed1", "digits-global-l2-2.0-resnet20-seed3"]
    for task, seed in zip(tasks, (1, 3, 1, 3)):
        argv = list(task.command)
        assert argv[argv.index("--seed") + 1] == str(seed)
        assert argv[argv.index("--output-dir") + 1] == str(tmp_path / f"seed{seed}")
        assert task.done_path.startswith(str(tmp_path / f"seed{seed}"))
    assert str(tmp_path / "seed3" / "digits" / "pretrain") in " ".join(tasks[3].command)  # its own pretraining
    with pytest.raises(ValueError, match="--seeds"):
        grid.GridConfig(datasets=("digits",), seeds=(1, 1))
    single = grid.prune_tasks(grid.GridConfig(datasets=("digits",), methods=("l2",), output_dir=str(tmp_path)))
    assert single[0].name == "digits-global-l2-2.0-resnet20" and "seed" not in single[0].done_path
