"""prune_ffn with the calibrated methods (calib, act_norm): float64 references, fidelity, bad input, rollback."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as hf
from torch.nn.utils.parametrizations import weight_norm

from projprune import PAIR_METHODS, apply_pruning, collect_activation_stats, greedy_exact
from projprune.transformers import find_ffn_blocks, prune_ffn
from projprune.transformers.families import FFNBlock

VOCAB = 100
CALIB = [torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
EVAL = torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(3))


def _bert(ffn: int = 48) -> torch.nn.Module:
    torch.manual_seed(0)
    config = hf.BertConfig(hidden_size=24, intermediate_size=ffn, num_hidden_layers=2, num_attention_heads=2,
                           vocab_size=VOCAB, max_position_embeddings=32)
    return hf.BertModel(config).double().eval()


def _gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = hf.GPT2Config(n_embd=24, n_layer=2, n_head=2, n_inner=48, vocab_size=VOCAB, n_positions=32)
    return hf.GPT2Model(config).double().eval()


def _llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = hf.LlamaConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                            vocab_size=VOCAB)
    return hf.LlamaForCausalLM(config).double().eval()


@torch.no_grad()
def _hidden(model, ids=EVAL) -> torch.Tensor:
    return model(input_ids=ids, output_hidden_states=True).hidden_states[-1]


@torch.no_grad()
def _reader_inputs(model) -> list[torch.Tensor]:
    """``H: (T, n)`` per block: every token's input to the output projection, from plain hooks."""
    blocks = find_ffn_blocks(model)
    seen: list[list[torch.Tensor]] = [[] for _ in blocks]
    handles = [b.output.register_forward_pre_hook(lambda m, a, i=i: seen[i].append(a[0].reshape(-1, a[0].shape[-1])))
               for i, b in enumerate(blocks)]
    for ids in CALIB:
        model(input_ids=ids)
    for h in handles:
        h.remove()
    return [torch.cat(rows).double() for rows in seen]


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(a, b) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- float64 references
@pytest.mark.parametrize("build", [_bert, _gpt2, _llama], ids=["bert", "gpt2", "llama"])
def test_act_norm_matches_a_plain_float64_refit(build):
    model = build()
    Hs = _reader_inputs(model)
    blocks = find_ffn_blocks(model)
    Vs = [b.output_weight().clone() for b in blocks]
    biases = [torch.zeros(V.shape[0], dtype=V.dtype) if b.output_bias() is None else b.output_bias().clone()
              for b, V in zip(blocks, Vs)]
    prune_ffn(model, 0.25, "act_norm", calibration=CALIB)
    kept = 48 - 12
    for block, H, V, bias in zip(find_ffn_blocks(model), Hs, Vs, biases):
        T, n = H.shape
        mu = H.mean(0)
        C = (H - mu).T @ (H - mu) / T
        scores = C.diagonal().sqrt() * V.norm(dim=0)
        K = torch.sort(torch.argsort(scores, stable=True)[n - kept:]).values
        lam = 1e-3 * C.diagonal().sum() / n
        V_ref = V @ C[:, K] @ torch.linalg.inv(C[K][:, K] + lam * torch.eye(kept, dtype=C.dtype))
        b_ref = bias + V @ mu - V_ref @ mu[K]
        torch.testing.assert_close(block.output_weight(), V_ref, rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(block.output_bias(), b_ref, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("build", [_bert, _gpt2, _llama], ids=["bert", "gpt2", "llama"])
def test_calib_per_layer_is_the_core_greedy_on_the_statistics(build):
    model = build()
    reference = copy.deepcopy(model)
    blocks = find_ffn_blocks(reference)
    stats = collect_activation_stats(reference, [b.output for b in blocks], CALIB)
    report = prune_ffn(model, 0.25, "calib", calibration=CALIB, progress=False)
    for block, new, st, layer in zip(blocks, find_ffn_blocks(model), stats, report.layers):
        W, V = block.unit_weight(), block.output_weight()
        result = greedy_exact(W, 12, PAIR_METHODS["calib"].options, V=V, stats=st)
        W_new, _, V_new, delta = apply_pruning(W, None, V, result)
        old_bias = torch.zeros(V.shape[0], dtype=V.dtype) if block.output_bias() is None else block.output_bias()
        assert torch.equal(layer.kept, result.kept_indices)
        torch.testing.assert_close(new.unit_weight(), W_new)
        torch.testing.assert_close(new.output_weight(), V_new)
        torch.testing.assert_close(new.output_bias(), old_bias + delta)


def test_calib_llama_gains_biases_that_stock_loading_rebuilds(tmp_path):
    model = _llama()
    prune_ffn(model, 0.25, "calib", calibration=CALIB)
    assert model.config.mlp_bias is True
    mlp = model.model.layers[0].mlp
    assert torch.count_nonzero(mlp.gate_proj.bias) == 0 and torch.count_nonzero(mlp.down_proj.bias) > 0
    model.save_pretrained(tmp_path / "m")
    loaded = hf.LlamaForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float64).eval()
    torch.testing.assert_close(_hidden(loaded), _hidden(model))


def test_calib_global_mode_allocates_by_calibrated_scores():
    model = _bert()
    report = prune_ffn(model, 0.5, "calib", calibration=CALIB, global_mode=True)
    assert sum(report.widths) == 96 - 48 and len(set(report.widths)) >= 1
    assert torch.isfinite(_hidden(model)).all()


def test_calib_beats_l2_on_redundant_units():
    """Units built from few directions (as trained FFNs are: correlated activations): calib, which sees
    the activations and compensates, keeps the function far better than magnitude pruning."""
    model = _bert(ffn=64)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for block in find_ffn_blocks(model):
            layer = block.inputs[0]
            basis = torch.randn(6, layer.weight.shape[1], generator=g, dtype=torch.float64)
            mix = torch.randn(layer.weight.shape[0], 6, generator=g, dtype=torch.float64)
            layer.weight.copy_(mix @ basis * 0.2 + 0.01 * layer.weight)
    reference = _hidden(model)
    errors = {}
    for method in ("l2", "calib", "act_norm"):
        pruned = copy.deepcopy(model)
        prune_ffn(pruned, 0.5, method, calibration=CALIB if PAIR_METHODS[method].needs_stats else None)
        errors[method] = float((_hidden(pruned) - reference).norm() / reference.norm())
    assert errors["calib"] < 0.5 * errors["l2"], errors
    assert errors["act_norm"] < errors["l2"], errors


# --------------------------------------------------------------------------- bad input
def _boom(**_):
    raise RuntimeError("boom")


@pytest.mark.parametrize(
    "method, calibration, match",
    [
        ("calib", None, "calibration: method 'calib' runs on activations"),
        ("act_norm", None, "calibration: method 'act_norm'"),
        ("l2", CALIB, "data-free"),
        ("calib", CALIB[0], "single Tensor"),
        ("calib", [], "no batch"),
        ("calib", [torch.rand(2, 5)], "forward failed"),
        ("calib", [{"input_ids": CALIB[0], "attention_mask": torch.ones(4, 12)}, "text"], "batches"),
    ],
)
def test_bad_calibration_is_refused_before_any_change(method, calibration, match):
    model = _bert()
    before = _state(model)
    with pytest.raises(ValueError, match=match):
        prune_ffn(model, 0.25, method, calibration=calibration)
    assert _same_state(before, _state(model)) and model.config.intermediate_size == 48


def test_non_finite_activations_are_refused_before_any_change():
    model = _bert()
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[CALIB[0][0, 0]] = float("nan")
    before = _state(model)
    with pytest.raises(ValueError, match="NaN or Inf"):
        prune_ffn(model, 0.25, "calib", calibration=CALIB)
    assert all(torch.equal(a, b) or (a.isnan() == b.isnan()).all() for a, b in zip(before.values(),
                                                                                  _state(model).values()))


def test_parametrized_tied_or_nan_projections_are_refused():
    model = _llama()
    weight_norm(model.model.layers[1].mlp.down_proj)
    with pytest.raises(ValueError, match="parametrized"):
        prune_ffn(model, 0.25, "exact")
    assert model.model.layers[0].mlp.down_proj.weight.shape == (24, 48)
    tied = _bert()
    tied.encoder.layer[1].output.dense.weight = tied.encoder.layer[0].output.dense.weight
    with pytest.raises(ValueError, match="shares its weight"):
        prune_ffn(tied, 0.25, "l2")
    for method in ("l2", "random"):
        bad = _bert()
        with torch.no_grad():
            bad.encoder.layer[1].output.dense.weight[0, 0] = float("nan")
        with pytest.raises(ValueError, match="NaN or Inf"):
            prune_ffn(bad, 0.25, method)
        assert bad.encoder.layer[0].intermediate.dense.weight.shape == (48, 24)


def test_a_write_failing_half_way_restores_every_block_and_the_config(monkeypatch):
    model = _llama()
    before, expected = _state(model), _hidden(model)
    calls = []
    original = FFNBlock.set_weights

    def failing(self, *args, **kwargs):
        calls.append(self.name)
        if len(calls) == 2:
            raise RuntimeError("write failed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FFNBlock, "set_weights", failing)
    with pytest.raises(RuntimeError, match="write failed"):
        prune_ffn(model, 0.25, "calib", calibration=CALIB)
    assert len(calls) == 2
    assert _same_state(before, _state(model))
    assert model.config.intermediate_size == 48 and model.config.mlp_bias is False
    assert model.model.layers[0].mlp.down_proj.in_features == 48
    torch.testing.assert_close(_hidden(model), expected)
