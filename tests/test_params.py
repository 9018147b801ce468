"""Tests of params/: statistics, stage schedule, staged pruning, data loading and the CLI end to end."""

from __future__ import annotations

import copy
import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from engine.harness import read_csv
from params import analysis
from params.analysis import (
    Variant,
    holm_adjust,
    mean_ci,
    paired_t_test,
    prune_chain_global,
    prune_in_stages,
    stage_percents,
    stage_schedule,
)
from params.data import find_fashion_files, load_fashion_mnist, read_idx
from params.main import main
from params.models import LeNetParams


# --------------------------------------------------------------------------- statistics
def test_mean_ci_known_numbers():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    mean, half = mean_ci(values, 0.95)
    # Plain float64: sample std 1.5811..., t_{0.975, 4} = 2.7764451051977987 (tables / scipy).
    sd = math.sqrt(sum((v - 3.0) ** 2 for v in values) / 4)
    assert mean == pytest.approx(3.0, abs=1e-15)
    assert half == pytest.approx(2.7764451051977987 * sd / math.sqrt(5), rel=1e-12)
    low, high = stats.t.interval(0.95, 4, loc=3.0, scale=stats.sem(values))
    assert (mean - half, mean + half) == pytest.approx((low, high), rel=1e-12)


def test_mean_ci_other_levels_and_edge_cases():
    rng = np.random.default_rng(0)
    values = rng.normal(0.8, 0.05, size=10)
    for level in (0.9, 0.99):
        mean, half = mean_ci(values, level)
        low, high = stats.t.interval(level, 9, loc=values.mean(), scale=stats.sem(values))
        assert (mean - half, mean + half) == pytest.approx((low, high), rel=1e-12)
    assert mean_ci([0.7]) == (0.7, None)  # one model: no interval
    with pytest.raises(ValueError, match="finite"):
        mean_ci([0.5, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([0.5, 0.6], 1.5)


def test_paired_t_test_matches_scipy_and_handles_constant_differences():
    a = [0.81, 0.79, 0.85, 0.80, 0.77]
    b = [0.78, 0.79, 0.80, 0.76, 0.75]
    diff, p = paired_t_test(a, b)
    ref = stats.ttest_rel(a, b)
    assert diff == pytest.approx(np.mean(np.subtract(a, b)), rel=1e-12)
    assert p == pytest.approx(ref.pvalue, rel=1e-10)
    assert paired_t_test([0.5, 0.6, 0.7], [0.5, 0.6, 0.7]) == (0.0, 1.0)
    # Identical non-zero differences: the exact sign test, 2 * 0.5**n.
    diff, p = paired_t_test([0.6] * 4, [0.5] * 4)
    assert diff == pytest.approx(0.1) and p == pytest.approx(0.125)
    assert paired_t_test([0.6], [0.5])[1] is None


def test_holm_adjust_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # Sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.06.
    assert holm_adjust(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([0.9, 0.8]) == pytest.approx([1.0, 1.0])


# --------------------------------------------------------------------------- stages
def test_stage_schedule():
    assert stage_percents(10) == [100, 90, 80, 70, 60, 50, 40, 30, 20, 10]
    assert stage_percents(4) == [100, 75, 50, 25]
    assert stage_percents(1) == [100]
    schedule = stage_schedule((64, 32, 16), stage_percents(10))
    assert schedule[0] == (64, 32, 16)
    assert schedule[1] == (58, 29, 14)  # 57.6, 28.8, 14.4 rounded
    assert schedule[5] == (32, 16, 8)
    assert schedule[-1] == (6, 3, 2)  # 6.4, 3.2, 1.6
    for earlier, later in zip(schedule, schedule[1:]):
        assert all(b <= a for a, b in zip(earlier, later))
    assert stage_schedule((10, 1), [100, 25, 5]) == [(10, 1), (3, 1), (1, 1)]  # halves up, never 0
    with pytest.raises(ValueError, match="percents"):
        stage_schedule((8,), [90, 50])
    with pytest.raises(ValueError, match="percents"):
        stage_schedule((8,), [100, 50, 50])
    with pytest.raises(ValueError, match="stages"):
        stage_percents(0)


# --------------------------------------------------------------------------- pruning
def _digits_model(seed: int = 0) -> LeNetParams:
    torch.manual_seed(seed)
    return LeNetParams(input_size=8).eval()


def test_prune_in_stages_widths_and_accuracy():
    model = _digits_model()
    x = torch.rand(40, 1, 8, 8)
    y = torch.randint(0, 10, (40,))
    before = copy.deepcopy(model.state_dict())
    for mode in analysis.MODES:
        result = prune_in_stages(model, Variant("p", "proj550", mode=mode), [100, 50, 25], x, y)
        assert [r.percent for r in result] == [100, 50, 25]
        assert all(r.status == "ok" and 0.0 <= r.accuracy <= 1.0 for r in result)
        if mode == "layer":
            assert [r.widths for r in result] == [(64, 32, 16), (32, 16, 8), (16, 8, 4)]
        else:  # global: same totals, allocation chosen by the method
            assert [sum(r.widths) for r in result] == [112, 56, 28]
    for key, value in model.state_dict().items():  # the trained model is untouched
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_prune_chain_global_matches_core_on_one_pair_and_keeps_chain_consistent():
    from projprune import prune_pair

    a, b = _digits_model(1), _digits_model(1)
    prune_chain_global([(a.fc1, a.fc2)], 10, "proj555")
    prune_pair(b.fc1, b.fc2, 10, "proj555")
    for key, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[key], rtol=1e-6, atol=1e-7)

    model = _digits_model(2)
    prune_chain_global(model.linear_pairs(), 40, "exact_oac")
    widths = model.hidden_widths()
    assert sum(widths) == 112 - 40 and min(widths) >= 1
    assert model.fc2.weight.shape == (widths[1], widths[0]) and model.fc4.weight.shape == (10, widths[2])
    assert torch.isfinite(model(torch.rand(3, 1, 8, 8))).all()


def test_lambda_zero_with_singular_gram_is_recorded_not_nan():
    model = _digits_model(3)
    with torch.no_grad():
        model.fc1.weight[5] = 0.0  # a zero row: W W^T is exactly singular
    x = torch.rand(20, 1, 8, 8)
    y = torch.randint(0, 10, (20,))
    variant = Variant("lambda=0", "proj550", (("lmbda", 0.0),), may_fail=True)
    result = prune_in_stages(model, variant, [100, 80, 60], x, y)
    assert result[0].status == "ok" and result[0].accuracy is not None
    for stage in result[1:]:
        assert stage.status == "failed" and stage.accuracy is None
        assert "singular" in stage.reason
    strict = Variant("lambda=0", "proj550", (("lmbda", 0.0),), may_fail=False)
    with pytest.raises(ValueError, match="singular"):
        prune_in_stages(model, strict, [100, 80], x, y)

    comp = analysis.Comparison("lam", "t", (variant,), ())
    summary, _ = analysis.summarise([comp], {variant.key: [result, result]}, [100, 80, 60], 0.95, 0.05)
    assert [r["n_failed"] for r in summary] == [0, 2, 2]
    assert "mean" not in summary[1]  # no NaN: the cell is empty and counted as failed
    cfg = analysis.ParamsConfig(dataset="digits", num_models=2)
    report = analysis.markdown_summary(cfg, "t", [comp], summary, [], (0.5, 0.1),
                                       {variant.key: "2/2 models; pruning failed: singular"})
    assert "| lambda=0 | 0.0 ± " not in report and "| failed | failed |" in report
    assert "**lambda=0** failed on some models: 2/2 models; pruning failed: singular" in report
    assert "nan" not in report.lower()


# --------------------------------------------------------------------------- data
def _write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def _write_fashion(root: Path, n_train: int = 30, n_test: int = 12, torchvision_layout: bool = False) -> None:
    rng = np.random.default_rng(0)
    folder = root / "FashionMNIST" / "raw" if torchvision_layout else root
    _write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28)), compress=True)
    _write_idx(folder / "train-labels-idx1-ubyte", np.arange(n_train) % 10)
    _write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)))
    _write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10, compress=True)


@pytest.mark.parametrize("torchvision_layout", [False, True])
def test_fashion_loader_reads_idx_files(tmp_path, torchvision_layout):
    _write_fashion(tmp_path, torchvision_layout=torchvision_layout)
    x_train, y_train, x_test, y_test = load_fashion_mnist(tmp_path)
    assert x_train.shape == (30, 1, 28, 28) and x_test.shape == (12, 1, 28, 28)
    assert x_train.dtype == torch.float32 and 0.0 <= float(x_train.min()) and float(x_train.max()) <= 1.0
    assert y_train.tolist() == [i % 10 for i in range(30)] and y_test.dtype == torch.int64
    raw = read_idx(find_fashion_files(tmp_path)["train_images"])
    torch.testing.assert_close(x_train[:, 0], torch.from_numpy(raw.astype(np.float32) / 255.0))


def test_fashion_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="FashionMNIST/raw"):
        load_fashion_mnist(tmp_path / "nowhere")
    _write_fashion(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + struct.pack(">III", 5, 28, 28) + b"x")
    with pytest.raises(ValueError, match="t10k-images"):
        load_fashion_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ValueError, match="not an IDX file"):
        load_fashion_mnist(tmp_path)


def test_fashion_end_to_end_on_tiny_files(tmp_path):
    _write_fashion(tmp_path / "data", n_train=40, n_test=16)
    out = main(["--dataset", "fashionmnist", "--dataroot", str(tmp_path / "data"), "--output-dir",
                str(tmp_path / "run"), "--num-models", "1", "--epochs", "1", "--stages", "2",
                "--train-size", "24", "--val-size", "8", "--comparisons", "decay"])
    rows = read_csv(out["output_dir"] / "results.csv")
    assert len(rows) == 6 * 1 * 2 and {r["kept_percent"] for r in rows} == {"100", "50"}
    summary = read_csv(out["output_dir"] / "summary.csv")
    assert all(r["half_width"] == "" for r in summary)  # one model: no interval, and no NaN either


# --------------------------------------------------------------------------- end to end
def _run(tmp_path: Path, name: str, *extra: str) -> dict:
    return main(["--dataset", "digits", "--output-dir", str(tmp_path / name), "--num-models", "3", "--epochs", "3",
                 "--stages", "4", "--comparisons", "gamma", "--seed", "7", *extra])


@pytest.mark.slow
def test_small_sweep_end_to_end_and_reproducible(tmp_path):
    first = _run(tmp_path, "a")
    out = first["output_dir"]
    for name in ("results.csv", "summary.csv", "significance.csv", "SUMMARY.md", "config.json", "params-digits.txt"):
        assert (out / name).is_file(), name
    for stem in ("gamma", "overview"):
        for ext in ("png", "pdf"):
            assert (out / "figures" / f"{stem}.{ext}").stat().st_size > 1000
    assert len(list((out / "models").glob("*.safetensors"))) == 3

    rows = read_csv(out / "results.csv")
    assert len(rows) == 6 * 3 * 4  # 6 gamma values x 3 models x 4 stages
    assert all(r["status"] == "ok" for r in rows)
    # The summary is the mean and t-interval of the per-model accuracies (plain float64 here).
    summary = read_csv(out / "summary.csv")
    for cell in summary:
        accs = [float(r["accuracy"]) for r in rows
                if r["variant"] == cell["variant"] and r["kept_percent"] == cell["kept_percent"]]
        mean = sum(accs) / 3
        half = stats.t.ppf(0.975, 2) * math.sqrt(sum((a - mean) ** 2 for a in accs) / 2) / math.sqrt(3)
        assert float(cell["mean"]) == pytest.approx(mean, rel=1e-5)
        assert float(cell["half_width"]) == pytest.approx(half, rel=1e-5, abs=1e-9)
    # Unpruned stage: the same three models for every variant.
    assert len({r["accuracy"] for r in rows if r["kept_percent"] == "100" and r["model"] == "0"}) == 1
    tests = read_csv(out / "significance.csv")
    assert len(tests) == 5 * 3 and all(r["reference"] == "gamma=0" for r in tests)
    assert "gamma sweep" in (out / "SUMMARY.md").read_text()

    # Same seed, fresh training: identical numbers; cached models: identical again.
    second = _run(tmp_path, "b")
    third = _run(tmp_path, "c", "--models-dir", str(out / "models"))
    for name in ("results.csv", "summary.csv", "significance.csv", "SUMMARY.md"):
        text = (out / name).read_text()
        assert (second["output_dir"] / name).read_text() == text, name
        assert (third["output_dir"] / name).read_text() == text, name
    assert not (third["output_dir"] / "models").exists()


def test_bad_input_fails_before_writing(tmp_path):
    with pytest.raises(ValueError, match="--comparisons"):
        main(["--dataset", "digits", "--output-dir", str(tmp_path / "x"), "--comparisons", "gamma,nope"])
    with pytest.raises(ValueError, match="--num-models"):
        main(["--dataset", "digits", "--output-dir", str(tmp_path / "x"), "--num-models", "0"])
    with pytest.raises(FileNotFoundError, match="--dataroot"):
        main(["--dataset", "fashionmnist", "--dataroot", str(tmp_path / "none"), "--output-dir", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_cached_model_with_other_settings_is_refused(tmp_path):
    args = ["--dataset", "digits", "--output-dir", str(tmp_path), "--num-models", "1", "--epochs", "1",
            "--stages", "2", "--comparisons", "alpha_beta"]
    main(args)
    log = (tmp_path / "digits" / "params-digits.txt").read_text()
    with pytest.raises(ValueError, match="epochs"):
        main([*args[:-4], "--epochs", "2", "--stages", "2", "--comparisons", "alpha_beta"])
    assert (tmp_path / "digits" / "params-digits.txt").read_text() == log  # refused before logging anything
