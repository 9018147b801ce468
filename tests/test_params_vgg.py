"""Tests of params/vgg.py (the VGG-16 ablation) and the models of params/."""

from __future__ import annotations

import pytest
import torch

from engine.harness import read_csv
from params.analysis import Variant, prune_in_stages
from params.models import LeNetParams
from params.vgg import VGG16, main


@pytest.mark.parametrize("size", [8, 28])
def test_lenet_shapes(size):
    model = LeNetParams(input_size=size).eval()
    assert model.features(torch.zeros(2, 1, size, size)).flatten(1).shape == (2, 144)
    assert model(torch.zeros(2, 1, size, size)).shape == (2, 10)
    assert model.hidden_widths() == (64, 32, 16)
    with pytest.raises(ValueError, match="input_size"):
        LeNetParams(input_size=10)
    with pytest.raises(ValueError, match="scope"):
        model.prunable_pairs("conv")


@pytest.mark.parametrize("size, pools", [(8, 3), (28, 4), (32, 5)])
def test_vgg16_layout(size, pools):
    model = VGG16(input_size=size, in_channels=1, width_divisor=8).eval()
    assert len(model.convs) == 13 and sum(model.pool_after) == pools and model.feature_size == 1
    assert [c.out_channels for c in model.convs] == [8, 8, 16, 16, 32, 32, 32, 64, 64, 64, 64, 64, 64]
    assert model(torch.zeros(2, 1, size, size)).shape == (2, 10)
    assert model.hidden_widths("linear") == (64, 64)
    assert len(model.prunable_pairs("conv")) == 12
    with pytest.raises(ValueError, match="scope"):
        model.hidden_widths("attention")
    with pytest.raises(ValueError, match="width_divisor"):
        VGG16(width_divisor=3)


def test_vgg16_conv_stages_keep_bn_in_step():
    torch.manual_seed(0)
    model = VGG16(input_size=8, width_divisor=16).eval()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    result = prune_in_stages(model, Variant("proj550", "proj550", scope="conv"), [100, 50], x, y)
    widths = result[-1].widths
    assert widths == tuple(max(1, (w * 50 + 50) // 100) for w in result[0].widths)
    assert result[-1].status == "ok"


@pytest.mark.slow
def test_vgg_ablation_end_to_end(tmp_path):
    out = main(["--dataset", "digits", "--output-dir", str(tmp_path), "--num-models", "2", "--epochs", "1",
                "--stages", "2", "--width-divisor", "16", "--methods", "l2,proj550"])
    folder = out["output_dir"]
    rows = read_csv(folder / "results.csv")
    assert len(rows) == 2 * 2 * 2 * 2  # scopes x methods x models x stages
    assert {r["scope"] for r in rows} == {"linear", "conv"}
    conv_widths = {r["widths"] for r in rows if r["scope"] == "conv" and r["kept_percent"] == "50"}
    assert conv_widths == {"2/2/4/4/8/8/8/16/16/16/16/16"}  # half of conv1-12 at width / 16
    for stem in ("vgg_linear", "vgg_conv", "overview"):
        assert (folder / "figures" / f"{stem}.png").is_file() and (folder / "figures" / f"{stem}.pdf").is_file()
    assert "VGG-16 ablation" in (folder / "SUMMARY.md").read_text()
    with pytest.raises(ValueError, match="--methods"):
        main(["--dataset", "digits", "--output-dir", str(tmp_path / "bad"), "--methods", "l2,nope"])
    assert not (tmp_path / "bad").exists()


def test_recalibrate_batchnorm_matches_batch_statistics():
    from params.analysis import recalibrate_batchnorm

    torch.manual_seed(1)
    model = VGG16(input_size=8, width_divisor=16).eval()
    x = torch.rand(48, 1, 8, 8)
    recalibrate_batchnorm(model, x, batch_size=64)  # one batch: running stats = that batch's stats
    feats = model.convs[0](x).double()  # (48, 4, 8, 8): what the first BatchNorm normalises
    mean = feats.mean(dim=(0, 2, 3))
    var = ((feats - mean[None, :, None, None]) ** 2).sum(dim=(0, 2, 3)) / (feats.numel() / feats.shape[1] - 1)
    torch.testing.assert_close(model.norms[0].running_mean.double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.norms[0].running_var.double(), var, rtol=1e-4, atol=1e-6)
    assert not model.training and model.norms[0].momentum == 0.1  # modes and momentum restored


def test_vgg_bn_recalibration_run_reuses_models(tmp_path):
    args = ["--dataset", "digits", "--output-dir", str(tmp_path), "--num-models", "1", "--epochs", "1",
            "--stages", "2", "--width-divisor", "16", "--methods", "l2", "--scopes", "conv"]
    plain = main(args)
    recal = main([*args, "--bn-recalibrate"])
    assert recal["output_dir"].name == "vgg16-bnrecal"
    assert len(list((tmp_path / "digits" / "vgg16" / "models").glob("*.safetensors"))) == 1
    acc = {r["kept_percent"]: r["accuracy"] for r in plain["results"]}
    acc_recal = {r["kept_percent"]: r["accuracy"] for r in recal["results"]}
    assert acc[100] == acc_recal[100]  # same cached model, unpruned
    assert "bn_recalibrate: True" in (recal["output_dir"] / "params-vgg16-digits.txt").read_text()
