"""vit/models.py: offline weight loading (clear errors, no network) and the MLP pairs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.conftest import tiny_vit
from vit.models import VIT_MODELS, hub_checkpoint_path, load_state_file, load_vit, mlp_pairs, weights_filename


@pytest.fixture()
def empty_hub(tmp_path):
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


def test_the_papers_models_and_files():
    assert set(VIT_MODELS) == {"vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"}
    assert weights_filename("vit_b_16") == "vit_b_16-c867db91.pth"
    assert weights_filename("vit_h_14") == "vit_h_14_swag-80465313.pth"  # SWAG end-to-end, 518 px
    assert VIT_MODELS["vit_h_14"].weights.meta["min_size"] == (518, 518)


@pytest.mark.parametrize("name", ["vit_b_16", "vit_h_14"])
def test_offline_error_names_the_file_and_where_to_put_it(empty_hub, name):
    with pytest.raises(FileNotFoundError) as info:
        load_vit(name)
    message = str(info.value)
    assert weights_filename(name) in message
    assert str(empty_hub / "checkpoints") in message
    assert str(hub_checkpoint_path(name)) in message and "--weights" in message


def test_missing_and_corrupt_weights_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_vit("vit_b_32", weights=tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable state dict"):
        load_state_file(bad)
    with pytest.raises(ValueError, match="model must be one of"):
        load_vit("vit_x_99")


def test_state_files_round_trip(tmp_path):
    from safetensors.torch import save_file

    model = tiny_vit()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "w.pth")
    save_file(state, str(tmp_path / "w.safetensors"))
    for path in (tmp_path / "w.pth", tmp_path / "w.safetensors"):
        loaded = load_state_file(path)
        assert loaded.keys() == state.keys()
        for key in state:
            assert torch.equal(loaded[key], state[key])


def test_random_init_needs_no_file(empty_hub):
    model, transform = load_vit("vit_b_32", pretrained=False)
    assert len(mlp_pairs(model)) == 12
    fc1, fc2 = mlp_pairs(model)[0]
    assert fc1.weight.shape == (3072, 768) and fc2.weight.shape == (768, 3072)
    assert transform.crop_size == [224]


def test_mlp_pairs_are_mlp0_and_mlp3():
    model = tiny_vit()
    pairs = mlp_pairs(model)
    assert [p[0] for p in pairs] == [block.mlp[0] for block in model.encoder.layers]
    assert [p[1] for p in pairs] == [block.mlp[3] for block in model.encoder.layers]
    with pytest.raises(ValueError, match="VisionTransformer"):
        mlp_pairs(nn.Linear(2, 2))
