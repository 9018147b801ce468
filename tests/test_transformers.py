"""projprune.transformers: one-call FFN pruning of Hugging Face models (tiny random configs, no hub)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import transformers as hf
from torch import nn

from projprune import PAIR_METHODS, apply_pruning, greedy_exact
from projprune.transformers import (
    FFN_METHODS,
    WIDTHS_KEY,
    find_ffn_blocks,
    from_pretrained,
    prune_ffn,
)
from tests.conftest import assert_loaded_same

VOCAB = 100



def _configs(hidden: int = 32, ffn: int = 64) -> dict[str, tuple[type, object, str]]:
    """family -> (model class, config, config attribute holding the FFN width)."""
    common = {"num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": VOCAB}
    return {
        "bert": (hf.BertModel, hf.BertConfig(hidden_size=hidden, intermediate_size=ffn, **common), "intermediate_size"),
        "gpt2": (hf.GPT2LMHeadModel, hf.GPT2Config(n_embd=hidden, n_layer=2, n_head=2, n_inner=ffn, vocab_size=VOCAB,
                                                    n_positions=64, bos_token_id=0, eos_token_id=0), "n_inner"),
        "opt": (hf.OPTForCausalLM, hf.OPTConfig(hidden_size=hidden, ffn_dim=ffn, word_embed_proj_dim=hidden,
                                                 max_position_embeddings=64, **common), "ffn_dim"),
        "phi": (hf.PhiForCausalLM, hf.PhiConfig(hidden_size=hidden, intermediate_size=ffn, **common),
                "intermediate_size"),
        "llama": (hf.LlamaForCausalLM, hf.LlamaConfig(hidden_size=hidden, intermediate_size=ffn, **common),
                  "intermediate_size"),
    }


FAMILY_OF = {"bert": "bert", "gpt2": "gpt2", "opt": "fc", "phi": "fc", "llama": "gated"}
IDS = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
CALIB_IDS = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(1))


def _build(name: str, hidden: int = 32, ffn: int = 64, seed: int = 0) -> nn.Module:
    cls, config, _ = _configs(hidden, ffn)[name]
    torch.manual_seed(seed)
    return cls(copy.deepcopy(config)).eval()


@torch.no_grad()
def _final_hidden(model: nn.Module) -> torch.Tensor:
    return model(input_ids=IDS, output_hidden_states=True).hidden_states[-1]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


# --------------------------------------------------------------------------- discovery
@pytest.mark.parametrize("name", list(FAMILY_OF))
def test_find_ffn_blocks_per_family(name):
    model = _build(name)
    blocks = find_ffn_blocks(model)
    assert len(blocks) == 2
    assert {b.family.name for b in blocks} == {FAMILY_OF[name]}
    for block in blocks:
        W, V = block.unit_weight(), block.output_weight()
        in_dims = 64 if name == "llama" else 32  # gated units concatenate [gate_row, up_row]
        assert W.shape == (64, in_dims) and V.shape == (32, 64)
    if name == "gpt2":  # Conv1D stores (in, out): the unit matrix is the transpose
        assert torch.equal(blocks[0].unit_weight(), model.transformer.h[0].mlp.c_fc.weight.T)
        assert torch.equal(blocks[0].output_weight(), model.transformer.h[0].mlp.c_proj.weight.T)
    if name == "llama":
        mlp = model.model.layers[0].mlp
        assert torch.equal(blocks[0].unit_weight(), torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight], dim=1))
        assert torch.equal(blocks[0].policy_weight(), mlp.gate_proj.weight)


def test_unsupported_model_names_the_modules_looked_for():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    before = _state(model)
    with pytest.raises(ValueError) as info:
        prune_ffn(model, 0.3)
    message = str(info.value)
    for expected in ("intermediate.dense", "output.dense", "c_fc", "c_proj", "fc1", "fc2", "gate_proj", "up_proj",
                     "down_proj"):
        assert expected in message
    _assert_same_state(before, _state(model))


# --------------------------------------------------------------------------- shapes + forward
@pytest.mark.parametrize("name", list(FAMILY_OF))
@pytest.mark.parametrize("method", sorted(FFN_METHODS))
def test_prune_every_family_and_method(name, method):
    model = _build(name)
    n_params = sum(p.numel() for p in model.parameters())
    options = {"episodes": 2, "show_progress": False} if method == "prunenet" else {}
    if FFN_METHODS[method].needs_stats:
        options["calibration"] = [CALIB_IDS[:2], CALIB_IDS[2:]]
    report = prune_ffn(model, 0.3, method, **options)
    kept = 64 - round(0.3 * 64)
    spec = FFN_METHODS[method]
    bias_before = name != "llama" or not (spec.needs_stats and spec.options.mean_correction)
    assert report.widths == [kept, kept]
    for block, layer in zip(find_ffn_blocks(model), report.layers):
        assert block.width == kept and layer.width_before == 64 and layer.kept.numel() == kept
        assert torch.all(layer.kept[1:] > layer.kept[:-1])
        assert block.output_weight().shape == (32, kept)
        for linear in block.inputs:
            dims = (linear.nx, linear.nf) if name == "gpt2" else (linear.in_features, linear.out_features)
            assert tuple(linear.weight.shape) == ((32, kept) if name == "gpt2" else (kept, 32))
            assert dims == (32, kept)
    # every removed unit costs its input row(s) and bias entries, and one output column; mean correction
    # gives a bias-free (LLaMA) block biases: an output bias and zero input biases (config.mlp_bias)
    per_unit, created = 0, 0
    for block in find_ffn_blocks(model):
        for linear in block.inputs:
            per_unit += block.unit_weight().shape[1] // len(block.inputs) + (bias_before and linear.bias is not None)
            created += 0 if bias_before else kept
        per_unit += block.output_weight().shape[0]
        created += 0 if bias_before else block.output_weight().shape[0]
    assert report.params_before == n_params
    assert report.params_after == sum(p.numel() for p in model.parameters())
    assert report.params_before - report.params_after == per_unit * (64 - kept) - created
    assert bias_before or (FFN_METHODS[method].needs_stats and model.config.mlp_bias)
    assert getattr(model.config, _configs()[name][2]) == kept
    out = _final_hidden(model)
    assert out.shape == (2, 9, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert"])
def test_projective_writes_core_result_into_the_right_places(name):
    """The model's new tensors are apply_pruning(W, b, V, greedy_exact(...)) laid out per family."""
    model = _build(name)
    block = find_ffn_blocks(model)[0]
    W, V, b = block.unit_weight().clone(), block.output_weight().clone(), block.unit_bias()
    out_bias = block.output_bias()
    b_core = None if name == "llama" else b.clone()
    result = greedy_exact(W, round(0.25 * 64), alpha=0.0, beta=0.0, gamma=0.0, b=b_core, V=V, output_aware=True,
                          compensate=True)
    W_new, b_new, V_new, delta = apply_pruning(W, b_core, V, result)
    prune_ffn(model, 0.25, "exact_oac")
    block = find_ffn_blocks(model)[0]
    torch.testing.assert_close(block.unit_weight(), W_new)
    torch.testing.assert_close(block.output_weight(), V_new)
    if name != "llama":
        torch.testing.assert_close(block.unit_bias(), b_new)
        # Data-free compensation folds into V only: the next-bias term holds for identity activations alone.
        assert delta is None
        torch.testing.assert_close(block.output_bias(), out_bias)


@pytest.mark.parametrize("name", list(FAMILY_OF))
def test_slicing_units_with_zero_output_columns_keeps_the_function(name):
    """Float64 check of the surgery: units whose output columns are zero and whose input rows are the
    smallest are removed by l2; the model's output must not change."""
    model = _build(name).double()
    dead = torch.tensor([3, 10, 17, 40, 41, 63])
    with torch.no_grad():
        for block in find_ffn_blocks(model):
            for layer in block.inputs:
                if name == "gpt2":
                    layer.weight[:, dead] *= 1e-3
                else:
                    layer.weight[dead] *= 1e-3
            if name == "gpt2":
                block.output.weight[dead] = 0.0
            else:
                block.output.weight[:, dead] = 0.0
    before = _final_hidden(model)
    report = prune_ffn(model, len(dead) / 64, "l2")
    for layer in report.layers:
        assert set(range(64)) - set(layer.kept.tolist()) == set(dead.tolist())
    torch.testing.assert_close(_final_hidden(model), before, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- duplicates
def _with_duplicates(name: str) -> tuple[nn.Module, list[tuple[int, int]]]:
    """FFN width 24 < hidden 48 (so the unit rows are independent) and five exact duplicate units."""
    model = _build(name, hidden=48, ffn=24, seed=3)
    pairs = [(0, 13), (2, 15), (4, 17), (6, 19), (8, 21)]
    src, dst = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    with torch.no_grad():
        for block in find_ffn_blocks(model):
            for layer in block.inputs:
                if name == "gpt2":
                    layer.weight[:, dst] = layer.weight[:, src]
                else:
                    layer.weight[dst] = layer.weight[src]
                if getattr(layer, "bias", None) is not None:
                    layer.bias[dst] = layer.bias[src]
    return model, pairs


PROJECTIVE = [name for name, spec in PAIR_METHODS.items() if spec.kind in ("lazy", "exact")]


@pytest.mark.parametrize("name", list(FAMILY_OF))
@pytest.mark.parametrize("method", PROJECTIVE)
def test_projective_methods_remove_duplicates_first(name, method):
    base, pairs = _with_duplicates(name)
    model = copy.deepcopy(base)
    calibration = [CALIB_IDS] if PAIR_METHODS[method].needs_stats else None
    report = prune_ffn(model, len(pairs) / 24, method, calibration=calibration)
    for layer in report.layers:
        removed = set(range(24)) - set(layer.kept.tolist())
        assert len(removed) == len(pairs)
        for a, b in pairs:  # exactly one unit of every duplicate pair leaves
            assert len(removed & {a, b}) == 1, (removed, a, b)


@pytest.mark.parametrize("name", list(FAMILY_OF))
def test_compensation_makes_removing_duplicates_exact(name):
    base, pairs = _with_duplicates(name)
    base = base.double()
    reference = _final_hidden(base)
    model = copy.deepcopy(base)
    prune_ffn(model, len(pairs) / 24, "exact_oac", lmbda=1e-9)
    torch.testing.assert_close(_final_hidden(model), reference, rtol=1e-6, atol=1e-6)
    # without compensation the duplicates' contribution is lost
    sliced = copy.deepcopy(base)
    prune_ffn(sliced, len(pairs) / 24, "proj000")
    assert (_final_hidden(sliced) - reference).abs().max() > 1e-4


# --------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("name", list(FAMILY_OF))
def test_uniform_widths_round_trip_with_plain_from_pretrained(name, tmp_path):
    model = _build(name)
    prune_ffn(model, 0.25, "exact")
    expected = _final_hidden(model)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    cls = type(model)
    loaded = cls.from_pretrained(tmp_path).eval()
    assert not hasattr(loaded.config, WIDTHS_KEY)
    assert_loaded_same(loaded, model, _final_hidden(loaded), expected)
    helper = from_pretrained(tmp_path).eval()
    assert_loaded_same(helper, model, _final_hidden(helper), expected)


@pytest.mark.parametrize("name", list(FAMILY_OF))
def test_per_layer_widths_round_trip(name, tmp_path):
    model = _build(name)
    with torch.no_grad():  # half of layer 1's units much weaker (after per-layer normalisation too)
        block = find_ffn_blocks(model)[1]
        for layer in block.inputs:
            (layer.weight[:, :32] if name == "gpt2" else layer.weight[:32]).mul_(0.01)
    report = prune_ffn(model, 0.3, "l2", global_mode=True)
    widths = report.widths
    assert len(set(widths)) == 2 and sum(64 - w for w in widths) == round(0.3 * 128)
    assert getattr(model.config, WIDTHS_KEY) == widths
    expected = _final_hidden(model)
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path).eval()
    assert type(loaded).__name__ == type(model).__name__ and isinstance(loaded, type(model))
    assert [b.width for b in find_ffn_blocks(loaded)] == widths
    assert_loaded_same(loaded, model, _final_hidden(loaded), expected)
    loaded_auto = from_pretrained(tmp_path, hf.AutoModel if name == "bert" else hf.AutoModelForCausalLM)
    assert [b.width for b in find_ffn_blocks(loaded_auto)] == widths
    # the saved-again model keeps the usual architecture name and loads again
    loaded.save_pretrained(tmp_path / "again")
    again = from_pretrained(tmp_path / "again").eval()
    assert_loaded_same(again, model, _final_hidden(again), expected)
    # plain transformers cannot express per-layer widths: it must not load silently
    for loader in (type(model), hf.AutoModel):
        with pytest.raises(Exception, match="projprune.transformers.from_pretrained"):  # transformers' own type
            loader.from_pretrained(tmp_path)
    with pytest.raises(Exception, match="projprune.transformers.from_pretrained"):
        type(model).from_pretrained(tmp_path / "again")


def test_from_pretrained_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_pretrained(tmp_path / "nothing")


# --------------------------------------------------------------------------- no-ops and errors
@pytest.mark.parametrize("method", ["exact", "l1", "prunenet"])
def test_ratio_zero_changes_nothing(method):
    model = _build("llama")
    before, config_before = _state(model), model.config.to_dict()
    report = prune_ffn(model, 0.0, method)
    _assert_same_state(before, _state(model))
    assert model.config.to_dict() == config_before
    assert report.widths == [64, 64] and report.params_before == report.params_after


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((1.0,), {}, "ratio"),
        ((-0.1,), {}, "ratio"),
        ((math.nan,), {}, "ratio"),
        (("0.3",), {}, "ratio"),
        ((True,), {}, "ratio"),
        ((0.3, "proj"), {}, "method must be one of"),
        ((0.3, "exact"), {"bogus": 1}, "bogus"),
        ((0.3, "l2"), {"alpha": 0.5}, "alpha"),
        ((0.3, "exact"), {"alpha": "big"}, "alpha"),
        ((0.3, "prunenet"), {"global_mode": True}, "global_mode"),
        ((0.3, "prunenet"), {"policy": 3}, "policy"),
        ((0.99,), {}, "every unit"),
    ],
)
def test_bad_arguments_raise_before_touching_the_model(args, kwargs, match):
    model = _build("opt", ffn=8)
    before, config_before = _state(model), model.config.to_dict()
    with pytest.raises(ValueError, match=match):
        prune_ffn(model, *args, **kwargs)
    _assert_same_state(before, _state(model))
    assert model.config.to_dict() == config_before


def test_prunenet_policy_of_another_shape_is_rejected_before_touching():
    from projprune.transformers import train_policy

    donor = _build("llama", ffn=32)
    policy = train_policy([b.policy_weight() for b in find_ffn_blocks(donor)], 0.3, episodes=1, show_progress=False)
    model = _build("llama")
    before = _state(model)
    with pytest.raises(ValueError, match="tied to one"):
        prune_ffn(model, 0.3, "prunenet", policy=policy)
    _assert_same_state(before, _state(model))


# --------------------------------------------------------------------------- global mode, wrappers, reports
@pytest.mark.parametrize("method", ["exact", "proj550", "l1", "random"])
def test_global_mode_removes_the_total_amount(method):
    model = _build("phi")
    report = prune_ffn(model, 0.3, method, global_mode=True)
    assert sum(64 - w for w in report.widths) == round(0.3 * 128)
    assert all(w >= 1 for w in report.widths) and report.global_mode
    assert torch.isfinite(_final_hidden(model)).all()
    expected = report.widths
    config_widths = getattr(model.config, WIDTHS_KEY, None)
    if len(set(expected)) > 1:
        assert config_widths == expected
    else:
        assert model.config.intermediate_size == expected[0]


class SentenceEncoder(nn.Module):
    """A sentence-transformers style wrapper: the transformer is a submodule, pooling on top."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.auto_model = model

    def forward(self, input_ids):
        return self.auto_model(input_ids=input_ids).last_hidden_state.mean(dim=1)


def test_wrapped_model_is_pruned_and_its_config_updated(tmp_path):
    encoder = SentenceEncoder(_build("bert"))
    report = prune_ffn(encoder, 0.5, "exact", global_mode=True)
    assert encoder(IDS).shape == (2, 32)
    inner = encoder.auto_model
    widths = report.widths
    if len(set(widths)) > 1:
        assert getattr(inner.config, WIDTHS_KEY) == widths
    else:
        assert inner.config.intermediate_size == widths[0]
    expected = encoder(IDS)
    inner.save_pretrained(tmp_path)
    reloaded = SentenceEncoder(from_pretrained(tmp_path).eval())
    assert_loaded_same(reloaded.auto_model, inner, reloaded(IDS), expected)


def test_half_precision_model_prunes_in_its_dtype():
    model = _build("llama").to(torch.bfloat16)
    prune_ffn(model, 0.3, "exact_oac")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert torch.isfinite(_final_hidden(model).float()).all()


def test_report_rows_and_times():
    model = _build("gpt2")
    report = prune_ffn(model, 0.3, "exact")
    rows = report.rows()
    assert [r["layer"] for r in rows] == ["transformer.h.0.mlp", "transformer.h.1.mlp"]
    assert all(r["family"] == "gpt2" and r["width_after"] == 45 for r in rows)
    assert all(layer.seconds is not None and layer.seconds >= 0 for layer in report.layers)
    assert 0 < report.param_reduction < 0.3 and report.ffn_params_after < report.ffn_params_before


def test_importing_the_library_does_not_import_the_experiment_harness():
    import subprocess
    import sys

    code = ("import sys, projprune, projprune.transformers, projprune.transformers.prunenet, "
            "projprune.transformers.compare; print(sorted(m for m in sys.modules if m.split('.')[0] == 'engine'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
