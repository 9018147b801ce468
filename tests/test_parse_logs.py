"""scripts/parse_logs.py on logs written here in the published format (docs/reproduction.md)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from scripts import parse_logs
from tests.conftest import write_log


def read(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def by_method(rows: list[dict]) -> dict[str, dict]:
    return {(r["dataset"], r["method"], float(r["speed_up"])): r for r in rows}


@pytest.fixture()
def run_tree(tmp_path: Path) -> Path:
    root = tmp_path / "run"
    # sparsity learning whose regularisation phase (unpruned) beats the fine-tuned model
    write_log(root, "cifar100", "proj_sl", 3, "resnet56", sl_accs=(0.70, 0.7242, 0.71),
              finetune_accs=(0.60, 0.6894, 0.68))
    write_log(root, "cifar100", "l2", 3, "resnet56", finetune_accs=(0.65, 0.69, 0.6900))
    write_log(root, "cifar100", "random", 3, "resnet56", finetune_accs=(0.60, 0.6708),
              prune=(0.86, 0.40, 127.12, 42.0, 0.7300, 0.0500))
    write_log(root, "cifar100", "group_sl", 3, "resnet56", sl_accs=(0.72,), finetune_accs=(0.6700, 0.6800))
    write_log(root, "cifar10", "l2", 2, "resnet56", finetune_accs=(0.90, 0.9346))
    write_log(root, "cifar10", "proj_sl", 2, "resnet56", sl_accs=(0.93,), finetune_accs=(0.92, 0.9401))
    # problems: truncated (running) log, unknown method, a stray file, an empty log
    write_log(root, "cifar10", "random", 2, "resnet56", finetune_accs=(0.5,), finished=False)
    write_log(root, "cifar10", "magic", 2, "resnet56", finetune_accs=(0.99,))
    write_log(root, "cifar10", "slim", 2, "resnet56", sl_accs=(0.95,), prune=None, finished=False)  # killed
    (root / "notes.txt").write_text("not a log\n")
    empty = root / "cifar10" / "prune" / "cifar10-global-lamp-2.0-resnet56" / "cifar10-global-lamp-2.0-resnet56.txt"
    empty.parent.mkdir(parents=True)
    empty.write_text("")
    return root


def test_runs_csv_separates_paper_from_best_pruned(run_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert parse_logs.main(["--runs", str(run_tree), "--out", str(out), "--quiet"]) == 0
    runs = by_method(read(out / "runs.csv"))
    proj = runs[("cifar100", "proj_sl", 3.0)]
    assert float(proj["paper"]) == pytest.approx(0.7242)  # from the regularisation phase
    assert float(proj["best_pruned"]) == pytest.approx(0.6894)  # only after the prune lines
    assert float(proj["one_shot"]) == pytest.approx(0.1410)
    assert float(proj["acc_before"]) == pytest.approx(0.9401)
    assert float(proj["params_before"]) == pytest.approx(0.86) and float(proj["params_after"]) == pytest.approx(0.57)
    assert float(proj["flops_after"]) == pytest.approx(63.32)
    assert float(proj["speed_up_reached"]) == pytest.approx(2.01)
    assert int(proj["sl_epochs"]) == 3 and int(proj["finetune_epochs"]) == 3
    l2 = runs[("cifar100", "l2", 3.0)]
    assert float(l2["paper"]) == float(l2["best_pruned"]) == pytest.approx(0.69)
    assert runs[("cifar10", "random", 2.0)]["status"] == "incomplete"
    assert ("cifar10", "magic", 2.0) not in runs
    slim = runs[("cifar10", "slim", 2.0)]  # its sparsity-learning "Best Acc=" does not finish the run
    assert slim["status"] == "incomplete" and float(slim["paper"]) == pytest.approx(0.95)
    assert math.isnan(float(slim["best_pruned"]))
    skipped = {Path(r["log"]).name: r["reason"] for r in read(out / "skipped.csv")}
    assert "unknown method 'magic'" in skipped["cifar10-global-magic-2.0-resnet56.txt"]
    assert "incomplete" in skipped["cifar10-global-random-2.0-resnet56.txt"]
    assert "not <dataset>" in skipped["notes.txt"]
    assert "no epoch" in skipped["cifar10-global-lamp-2.0-resnet56.txt"]
    raw = read(out / "raw.csv")
    proj_raw = [r for r in raw if r["run"] == "cifar100-global-proj_sl-3.0-resnet56"]
    assert [r["phase"] for r in proj_raw] == ["sl"] * 3 + ["finetune"] * 3
    assert [float(r["acc"]) for r in proj_raw] == [0.70, 0.7242, 0.71, 0.60, 0.6894, 0.68]


def test_tables_mark_best_and_second_per_column(run_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    parse_logs.main(["--runs", str(run_tree), "--out", str(out), "--quiet", "--metric", "best_pruned,paper"])
    md = (out / "table_best_pruned.md").read_text().splitlines()
    assert md[0] == "| method | C10 RN56 2× | C100 RN56 3× |"
    labels = [line.split("|")[1].strip() for line in md[2:]]
    assert labels == ["Random", "MagnitudeL2", "DepGraph-SL", "Projective-SL"]  # paper order, incomplete dropped
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in md[2:]}
    # C100 RN56 3x best_pruned: l2 .6900 best, proj_sl .6894 second, group_sl .6800, random .6708
    assert rows["MagnitudeL2"][1] == "**.6900**"
    assert rows["Projective-SL"][1] == "<ins>.6894</ins>"
    assert rows["DepGraph-SL"][1] == ".6800" and rows["Random"][1] == ".6708"
    assert rows["Projective-SL"][0] == "**.9401**" and rows["MagnitudeL2"][0] == "<ins>.9346</ins>"
    assert rows["Random"][0] == "–"  # its C10 run is still running
    paper = {line.split("|")[1].strip(): line for line in (out / "table_paper.md").read_text().splitlines()[2:]}
    assert "**.7242**" in paper["Projective-SL"]  # the published-table view ranks differently
    tex = (out / "table_best_pruned.tex").read_text()
    assert "\\textbf{.6900}" in tex and "\\underline{.6894}" in tex and "2$\\times$" in tex
    table = read(out / "table_best_pruned.csv")
    assert [r["method"] for r in table] == labels
    assert float(table[1]["C100 RN56 3x"]) == pytest.approx(0.69)
    for stem in ("accuracy_vs_speedup", "finetune_curves"):
        for ext in ("png", "pdf"):
            assert (out / f"{stem}.{ext}").stat().st_size > 1000


def test_ties_share_rank_and_lower_is_better_metric() -> None:
    column = ("d", "m", 2.0)
    values = {("a", column): 0.9, ("b", column): 0.9, ("c", column): 0.8, ("e", column): 0.7}
    assert parse_logs.ranks(values, ["a", "b", "c", "e"], column, True) == {"a": 1, "b": 1, "c": 2, "e": 0}
    assert parse_logs.ranks(values, ["a", "b", "c", "e"], column, False) == {"a": 0, "b": 0, "c": 2, "e": 1}


def test_restarted_run_keeps_resumed_finetuning(tmp_path: Path) -> None:
    root = tmp_path / "run"
    name = "digits-global-proj_sl-2.0-resnet20"
    path = write_log(root, "digits", "proj_sl", 2, "resnet20", sl_accs=(0.9, 0.95), finetune_accs=(0.5, 0.6),
                     finished=False)
    stamp = "[02/21 07:24:04]"
    resumed = [f"{stamp} {name} INFO: mode: prune",
               f"{stamp} {name} INFO: Epoch 2/4, Acc=0.7000, Val Loss=0.3, lr=0.0100",
               f"{stamp} {name} INFO: Epoch 3/4, Acc=0.8000, Val Loss=0.3, lr=0.0100",
               f"{stamp} {name} INFO: Best Acc=0.8000"]
    path.write_text(path.read_text() + "\n".join(resumed) + "\n")
    run = parse_logs.parse_log(path)
    assert not isinstance(run, str) and run.complete
    assert [e.phase for e in run.epochs] == ["sl", "sl", "finetune", "finetune", "finetune", "finetune"]
    summary = run.summary()
    assert summary["best_pruned"] == pytest.approx(0.8) and summary["paper"] == pytest.approx(0.95)


def test_truncated_mid_line_and_missing_folder(tmp_path: Path) -> None:
    root = tmp_path / "run"
    path = write_log(root, "digits", "l2", 2, "resnet20", finetune_accs=(0.5, 0.6), finished=False)
    path.write_text(path.read_text() + "[02/21 07:24:04] x INFO: Epoch 2/4, Acc=0.7")  # killed mid-write
    run = parse_logs.parse_log(path)
    assert not isinstance(run, str) and not run.complete and len(run.epochs) == 2
    assert math.isnan(run.final_best)
    with pytest.raises(FileNotFoundError, match="--runs"):
        parse_logs.main(["--runs", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="--metric"):
        parse_logs.main(["--runs", str(root), "--out", str(tmp_path / "o"), "--metric", "top5"])
    assert not (tmp_path / "o").exists()  # bad arguments write nothing


def test_the_method_table_orders_labels_and_grid() -> None:
    from engine.methods_table import GRID_METHODS, METHOD_LABELS, METHOD_TABLE, TABLE_ORDER, method_row

    names = [row.name for row in METHOD_TABLE]
    assert len(set(names)) == len(names) and len({row.label for row in METHOD_TABLE}) == len(names)
    assert sorted(row.table_row for row in METHOD_TABLE) == list(range(1, len(names) + 1))
    # the paper's nine rows first, in its order; then ours
    paper = ["random", "l2", "slim", "fpgm", "obdc", "lamp", "group_norm", "group_sl", "proj_sl"]
    assert list(TABLE_ORDER[:9]) == paper and all(method_row(m).in_paper for m in paper)
    assert set(TABLE_ORDER[9:]) == {"l1", "proj", "growing_reg", "proj_comp", "proj_calib"}
    assert list(METHOD_LABELS) == list(TABLE_ORDER)
    assert len(GRID_METHODS) == 11 and "growing_reg" not in GRID_METHODS and GRID_METHODS[0] == "random"
    # the labels say what differs: sparsity learning
    assert METHOD_LABELS["proj_sl"] == "Projective-SL" and METHOD_LABELS["proj"] == "Projective"
    assert {m for m, r in ((r.name, r) for r in METHOD_TABLE) if r.sparsity_learning} == {
        "slim", "group_sl", "proj_sl", "growing_reg"}
    with pytest.raises(ValueError, match="unknown method 'projective'; valid: .*proj_sl"):
        method_row("projective")


def test_registry_grid_and_parser_read_the_one_table() -> None:
    registry = pytest.importorskip("registry")
    from engine import methods_table
    from scripts import grid

    assert list(registry.METHODS) == [row.name for row in methods_table.METHOD_TABLE]
    for row in methods_table.METHOD_TABLE:
        spec = registry.METHODS[row.name]
        assert isinstance(spec, methods_table.MethodRow) and spec.label == row.label and spec.table_row == row.table_row
        assert spec.sparsity_learning == row.sparsity_learning and callable(spec.importance_factory)
        assert spec.pruner_cls is registry.PRUNERS[row.pruner].factory
    assert registry.TABLE1_METHODS == list(grid.TABLE1_METHODS) == list(methods_table.GRID_METHODS)
    assert parse_logs.METHOD_LABELS is methods_table.METHOD_LABELS


def test_grid_and_parser_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, scripts.grid, scripts.parse_logs, engine.methods_table, engine.table1_layout; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr


def test_written_lines_and_names_are_read_back(tmp_path: Path) -> None:
    from engine import table1_layout as layout

    name = layout.run_name("digits", "resnet20", "proj_sl", 2, global_pruning=True)
    assert name == "digits-global-proj_sl-2.0-resnet20"
    assert layout.run_name("digits", "resnet20") == "digits-resnet20"
    assert layout.run_name("digits", "vgg19", "l2", 3.0, global_pruning=False) == "digits-local-l2-3.0-vgg19"
    log = layout.log_path(tmp_path, "digits", "prune", name)
    assert log == tmp_path / "digits" / "prune" / name / f"{name}.txt"
    assert layout.pretrain_checkpoint("run", "digits", "resnet20") == Path("run/digits/pretrain/digits_resnet20.pth")
    lines = [layout.PARAMS_LINE.format(before=0.27, after=0.13, kept=48.0),
             layout.FLOPS_LINE.format(before=40.0, after=19.9, kept=49.75, speed_up=2.01),
             layout.ACC_LINE.format(before=0.9, after=0.3), layout.LOSS_LINE.format(before=0.3, after=2.1),
             layout.BN_ACC_LINE.format(before=0.9, after=0.55), "Epoch 0/1, Acc=0.8000, Val Loss=0.3, lr=0.01",
             "Best Acc=0.8000"]
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"[02/21 07:24:04] {name} INFO: {line}\n" for line in ["mode: prune", *lines]))
    run = parse_logs.parse_log(log)
    assert not isinstance(run, str) and run.complete and parse_logs.run_finished(log)
    summary = run.summary()
    assert (summary["params_before"], summary["params_after"], summary["params_kept_pct"]) == (0.27, 0.13, 48.0)
    assert (summary["flops_after"], summary["speed_up_reached"]) == (19.9, 2.01)
    assert (summary["acc_before"], summary["one_shot"], summary["one_shot_bn"]) == (0.9, 0.3, 0.55)
    assert (run.method, run.scope, run.speed_up, run.final_best) == ("proj_sl", "global", 2.0, 0.8)
    assert layout.RESUME_FINETUNE_RE.match(layout.RESUME_FINETUNE_LINE.format(path="run/x_last.pth"))



def test_every_method_has_its_own_colour_and_marker() -> None:
    """Figures tell methods apart: no two methods share a colour or a marker."""
    styles = [parse_logs.method_style(method) for method in parse_logs.METHOD_LABELS]
    assert len({style["color"] for style in styles}) == len(styles)
    assert len({style["marker"] for style in styles}) == len(styles)
