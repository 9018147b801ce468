"""gpt2/model.py: equivalence with transformers, checkpoints, offline loading errors."""

from __future__ import annotations

import pytest
import torch

from gpt2.model import GPT2, GPT2ModelConfig, load_model, save_model
from gpt2.prune import prune_attention


def _hf_model(scale_by_layer: bool = False, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=97, n_positions=24, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
                        eos_token_id=0, scale_attn_by_inverse_layer_idx=scale_by_layer)
    hf = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # larger than the default init so that differences would show
        for param in hf.parameters():
            param.normal_(0.0, 0.3 if param.dim() > 1 else 0.1)
    return hf


@pytest.mark.parametrize("scale_by_layer", [False, True])
def test_logits_match_transformers(scale_by_layer):
    hf = _hf_model(scale_by_layer)
    model = GPT2.from_hf(hf).eval()
    idx = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(idx).logits
        got = model(idx)
    assert got.shape == expected.shape == (2, 24, 97)
    assert expected.abs().max() > 1.0  # a non-trivial comparison
    assert (got - expected).abs().max() < 1e-4


def test_lm_head_tied_and_context_checked():
    model = GPT2(GPT2ModelConfig(vocab_size=11, n_positions=8, n_embd=16, n_layer=1, n_head=2))
    assert model.lm_head.weight is model.wte.weight
    with pytest.raises(ValueError, match="n_positions"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_config_rejects_bad_widths():
    with pytest.raises(ValueError, match="divisible"):
        GPT2ModelConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="qk_dims"):
        GPT2ModelConfig(n_embd=16, n_head=2, n_layer=2, qk_dims=[8])


def test_pruned_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = GPT2(GPT2ModelConfig(vocab_size=31, n_positions=12, n_embd=32, n_layer=2, n_head=2)).eval()
    prune_attention(model, 0.25, "norm")
    path = save_model(tmp_path / "m.safetensors", model, {"note": "x"})
    loaded, meta = load_model(path)
    assert meta["note"] == "x"
    assert loaded.config.qk_dims == [12, 12]
    assert loaded.lm_head.weight is loaded.wte.weight
    idx = torch.randint(0, 31, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(idx), model(idx))


def test_missing_pretrained_model_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="gpt2-not-a-real-model.*hub cache"):
        GPT2.from_pretrained("gpt2-not-a-real-model", cache_dir=tmp_path)


def test_from_pretrained_reads_a_local_directory(tmp_path):
    hf = _hf_model()
    hf.save_pretrained(tmp_path / "local")
    model = GPT2.from_pretrained(str(tmp_path / "local")).eval()
    idx = torch.randint(0, 97, (1, 10))
    with torch.no_grad():
        assert (model(idx) - hf(idx).logits).abs().max() < 1e-4
