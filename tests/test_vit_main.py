"""vit/main.py, vit/parse.py and vit/grid.py end to end on the digits ViT (one training epoch)."""

from __future__ import annotations

import json

import pytest

from engine.harness import load_checkpoint, read_csv
from vit import grid, parse
from vit.main import main

FAST = ["--small-epochs", "1", "--timing-repeats", "1", "--threads", "1", "--seed", "1", "--eval-batches", "5"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("vitruns")
    dirs = {
        "uniform": main(["--output-dir", str(out), "--experiment", "uniform", "--method", "exact",
                         "--amounts", "0,16,64", *FAST]),
        "adaptive": main(["--output-dir", str(out), "--experiment", "adaptive", "--method", "l2",
                          "--chunk", "64", "--save-model", *FAST]),
        "norms": main(["--output-dir", str(out), "--experiment", "norm_analysis", *FAST]),
    }
    return out, dirs


@pytest.mark.slow
def test_uniform_run_writes_csv_figure_log_and_summary(runs):
    out, dirs = runs
    run = dirs["uniform"]
    assert run == out / "vit" / "small" / "uniform" / "small-uniform-exact"
    rows = read_csv(run / "small-uniform-exact.csv")
    assert [r["amount"] for r in rows] == ["0", "16", "64"]
    assert [int(r["mlp_units"]) for r in rows] == [1024, 960, 768]
    params = [int(r["params"]) for r in rows]
    macs = [int(r["macs"]) for r in rows]
    assert params[0] > params[1] > params[2] and macs[0] > macs[1] > macs[2]
    for r in rows:
        assert 0.0 <= float(r["top1"]) <= float(r["top5"]) <= 1.0
    assert len(read_csv(run / "small-uniform-exact-timing.csv")) == 3
    for suffix in (".png", ".pdf", ".txt", ".json"):
        assert (run / f"small-uniform-exact{suffix}").is_file()
    log = (run / "small-uniform-exact.txt").read_text()
    assert "small-uniform-exact INFO: method: exact" in log and "Step 2: amount=64" in log
    assert json.loads((run / "small-uniform-exact.json").read_text())["amounts"] == [0, 16, 64]
    assert (out / "vit" / "small" / "pretrain" / "small_vit_digits_seed1.safetensors").is_file()


@pytest.mark.slow
def test_same_seed_gives_the_same_csv(runs, tmp_path):
    out, dirs = runs
    again = main(["--output-dir", str(tmp_path), "--experiment", "uniform", "--method", "exact",
                  "--amounts", "0,16,64", *FAST])
    first = (dirs["uniform"] / "small-uniform-exact.csv").read_bytes()
    assert (again / "small-uniform-exact.csv").read_bytes() == first


def test_adaptive_and_norm_runs(runs):
    _, dirs = runs
    rows = read_csv(dirs["adaptive"] / "small-adaptive-l2.csv")
    assert rows[0]["accepted"] == "True" and rows[0]["layer"] == "-1"
    assert [int(r["layer"]) for r in rows[1:]] == sorted((int(r["layer"]) for r in rows[1:]), reverse=True)
    summary = json.loads((dirs["adaptive"] / "small-adaptive-l2.json").read_text())
    assert summary["chunk"] == 64 and len(summary["widths"]) == 4
    assert [256 - w for w in summary["widths"]] == summary["removed_per_layer"]
    state, meta = load_checkpoint(dirs["adaptive"] / "small-adaptive-l2.safetensors")
    assert meta["widths"] == summary["widths"]
    assert [state[f"encoder.layers.encoder_layer_{i}.mlp.0.weight"].shape[0] for i in range(4)] == meta["widths"]
    norms = read_csv(dirs["norms"] / "small-norm_analysis.csv")
    assert len(norms) == 4 * 256 and float(norms[0]["distance"]) > 0
    assert (dirs["norms"] / "small-norm_analysis.png").is_file()


@pytest.mark.slow
def test_parse_writes_tables_and_figures(runs):
    out, _ = runs
    results = parse.main(["--output-dir", str(out)])
    top1 = read_csv(results / "vit_uniform_top1_small.csv")
    assert top1[0]["method"] == "exact" and set(top1[0]) == {"method", "0", "16", "64"}
    last = read_csv(results / "vit_uniform_last_small.csv")
    assert last[0]["amount"] == "64" and float(last[0]["MACs_ratio"]) < 1
    assert read_csv(results / "vit_adaptive_small.csv")[0]["method"] == "l2"
    markdown = (results / "vit_tables.md").read_text()
    assert "| exact |" in markdown and "| l2 |" in markdown
    for stem in ("vit_uniform_small", "vit_adaptive_small", "vit_norms_small"):
        assert (results / f"{stem}.png").is_file() and (results / f"{stem}.pdf").is_file()


@pytest.mark.parametrize("argv, error, match", [
    (["--amounts", "1,x"], ValueError, "--amounts"),
    (["--amounts", "0,256"], ValueError, "MLP width"),
    (["--experiment", "adaptive", "--method", "svd3"], ValueError, "svd3"),
    (["--batch-size", "0"], ValueError, "--batch-size"),
    (["--model", "vit_b_16", "--weights", "missing.pth"], FileNotFoundError, "missing.pth"),
])
def test_bad_input_fails_before_writing(tmp_path, argv, error, match):
    with pytest.raises(error, match=match):
        main(["--output-dir", str(tmp_path / "out"), *argv])
    assert not (tmp_path / "out").exists()


def test_offline_torchvision_model_fails_before_writing(tmp_path):
    import torch

    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with pytest.raises(FileNotFoundError, match="vit_b_16-c867db91.pth"):
            main(["--model", "vit_b_16", "--output-dir", str(tmp_path / "out")])
    finally:
        torch.hub.set_dir(previous)
    assert not (tmp_path / "out").exists()


def test_grid_tasks_and_skipping(tmp_path, capsys):
    spec = grid.GridSpec(models=("small", "vit_b_16"), methods=("l2", "svd3"), output_dir=str(tmp_path))
    stages = grid.build_stages(spec)
    assert [s.name for s in stages] == ["analysis", "prune"]
    names = [t.name for t in stages[1].tasks]
    assert names == ["vit-small-uniform-l2", "vit-small-uniform-svd3", "vit-small-adaptive-l2",
                     "vit-vit_b_16-uniform-l2", "vit-vit_b_16-uniform-svd3", "vit-vit_b_16-adaptive-l2"]
    b16 = stages[1].tasks[3]
    assert "--dataroot" in b16.command and b16.done_path.endswith("vit_b_16-uniform-l2/vit_b_16-uniform-l2.json")
    done = stages[1].tasks[0]
    assert not done.is_done()
    (tmp_path / "vit/small/uniform/small-uniform-l2").mkdir(parents=True)
    (tmp_path / "vit/small/uniform/small-uniform-l2/small-uniform-l2.json").write_text("{}")
    assert done.is_done()
    code = grid.main(["--models", "small", "--methods", "l2", "--output-dir", str(tmp_path), "--dry-run",
                      "--backend", "bash", "--log-dir", str(tmp_path / "logs")])
    printed = capsys.readouterr().out
    assert code == 0
    assert "--experiment norm_analysis" in printed and "--experiment adaptive --method l2" in printed
    assert "# done" in printed  # the finished uniform run is skipped
    with pytest.raises(ValueError, match="--methods"):
        grid.GridSpec(methods=("nope",))


@pytest.mark.slow
def test_calibrated_uniform_run_logs_its_training_images(tmp_path):
    out = main(["--output-dir", str(tmp_path), "--experiment", "uniform", "--method", "calib",
                "--amounts", "0,128", "--calib-size", "64", *FAST])
    log = (out / "small-uniform-calib.txt").read_text()
    assert "Calibration: 64 training images" in log
    rows = read_csv(out / "small-uniform-calib.csv")
    assert [r["amount"] for r in rows] == ["0", "128"] and float(rows[1]["top1"]) > 0.2


def test_calibrated_method_needs_calibration_images(tmp_path):
    with pytest.raises(ValueError, match="--calib-size"):
        main(["--output-dir", str(tmp_path / "out"), "--method", "act_norm", "--calib-size", "0"])
    assert not (tmp_path / "out").exists()
