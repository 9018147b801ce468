"""FFN baselines of prune_ffn: FLAP and Wanda-sp against float64 references written here (tiny random models)."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as hf
from torch import nn

from projprune.transformers import find_ffn_blocks, prune_ffn

VOCAB = 64
CALIB = [torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
IDS = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))


def _bert(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = hf.BertConfig(hidden_size=16, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
                           vocab_size=VOCAB)
    return hf.BertModel(config).double().eval()


def _llama(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = hf.LlamaConfig(hidden_size=16, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
                            vocab_size=VOCAB)
    return hf.LlamaForCausalLM(config).double().eval()


@torch.no_grad()
def _activations(model: nn.Module) -> list[torch.Tensor]:
    """Per FFN block, ``H: (tokens, n)``: what its output projection reads on the calibration batches."""
    blocks = find_ffn_blocks(model)
    store: list[list[torch.Tensor]] = [[] for _ in blocks]
    hooks = [b.output.register_forward_pre_hook(
        lambda _m, args, i=i: store[i].append(args[0].reshape(-1, args[0].shape[-1]))) for i, b in enumerate(blocks)]
    for batch in CALIB:
        model(input_ids=batch)
    for h in hooks:
        h.remove()
    return [torch.cat(s).double() for s in store]


def _reference_scores(model: nn.Module, method: str) -> list[torch.Tensor]:
    scores = []
    for H, block in zip(_activations(model), find_ffn_blocks(model)):
        V = block.output_weight().double()
        if method == "flap":  # population variance of each unit x squared norm of its output column
            centred = H - H.mean(dim=0)
            scores.append((centred * centred).mean(dim=0) * (V * V).sum(dim=0))
        else:  # Wanda-sp: root mean square of the unit x L1 norm of its output column
            scores.append((H * H).mean(dim=0).sqrt() * V.abs().sum(dim=0))
    return scores


def _kept_sets(report) -> list[set[int]]:
    return [set(layer.kept.tolist()) for layer in report.layers]


@pytest.mark.parametrize("method", ["flap", "wanda_sp"])
def test_uniform_selection_matches_the_explicit_scores(method):
    model = _bert()
    scores = _reference_scores(model, method)
    report = prune_ffn(model, 0.3, method, calibration=CALIB)
    removed = 40 - (40 - round(0.3 * 40))
    for score, kept in zip(scores, _kept_sets(report)):
        expected = set(range(40)) - set(torch.argsort(score)[:removed].tolist())
        assert kept == expected


@pytest.mark.parametrize("method", ["flap", "wanda_sp"])
def test_global_mode_ranks_per_layer_standardised_scores(method):
    model = _bert(seed=4)
    scores = _reference_scores(model, method)
    flat = torch.cat([(s - s.mean()) / s.std() for s in scores])  # FLAP: standardise per layer, then rank
    total = round(0.4 * 80)
    order = torch.argsort(flat)[:total].tolist()
    report = prune_ffn(model, 0.4, method, calibration=CALIB, global_mode=True)
    expected = [set(range(40)) - {i for i in order if i < 40}, set(range(40)) - {i - 40 for i in order if i >= 40}]
    assert _kept_sets(report) == expected
    assert sum(report.widths) == 80 - total


@pytest.mark.parametrize("method", ["flap", "wanda_sp"])
def test_a_unit_with_a_zero_output_column_is_removed_first(method):
    model = _bert(seed=2)
    with torch.no_grad():
        for block, unit in zip(find_ffn_blocks(model), (17, 3)):
            block.output.weight[:, unit] = 0.0
    report = prune_ffn(model, 1 / 40, method, calibration=CALIB)
    assert [set(range(40)) - kept for kept in _kept_sets(report)] == [{17}, {3}]


def test_flap_bias_compensation_is_the_removed_units_mean_and_keeps_the_mean_output():
    model = _bert(seed=5)
    original = copy.deepcopy(model)
    H = _activations(model)
    blocks = find_ffn_blocks(model)
    V = [b.output_weight().double().clone() for b in blocks]
    bias = [b.output_bias().double().clone() for b in blocks]
    report = prune_ffn(model, 0.5, "flap", calibration=CALIB)
    for li, (layer, block) in enumerate(zip(report.layers, find_ffn_blocks(model))):
        removed = torch.ones(40, dtype=torch.bool)
        removed[layer.kept] = False
        expected = bias[li] + V[li][:, removed] @ H[li][:, removed].mean(dim=0)
        torch.testing.assert_close(block.output_bias().double(), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(block.output_weight().double(), V[li][:, layer.kept])
    # layer 0 reads the same activations before and after: its FFN's mean output on the calibration tokens is kept
    outputs: list[list[torch.Tensor]] = [[], []]
    for net, store in zip((original, model), outputs):
        hook = find_ffn_blocks(net)[0].output.register_forward_hook(lambda _m, _a, out, s=store: s.append(out))
        with torch.no_grad():
            for batch in CALIB:
                net(input_ids=batch)
        hook.remove()
    means = [torch.cat([o.reshape(-1, 16) for o in store]).mean(dim=0) for store in outputs]
    torch.testing.assert_close(means[1], means[0], rtol=0, atol=1e-10)
    no_comp = prune_ffn(_bert(seed=5), 0.5, "flap", calibration=CALIB, mean_correction=False)
    assert _kept_sets(no_comp) == _kept_sets(report)


def test_gated_model_flap_creates_output_biases_and_wanda_sp_does_not():
    flap_model, wanda_model = _llama(), _llama()
    prune_ffn(flap_model, 0.25, "flap", calibration=CALIB)
    prune_ffn(wanda_model, 0.25, "wanda_sp", calibration=CALIB)
    assert flap_model.config.mlp_bias and not wanda_model.config.mlp_bias
    assert all(b.output_bias() is not None for b in find_ffn_blocks(flap_model))
    assert all(b.output_bias() is None for b in find_ffn_blocks(wanda_model))
    for net in (flap_model, wanda_model):
        assert [b.width for b in find_ffn_blocks(net)] == [30, 30]
        with torch.no_grad():
            assert torch.isfinite(net(input_ids=IDS).logits).all()


@pytest.mark.parametrize(("method", "kwargs", "needle"), [
    ("flap", {}, "calibration"),
    ("wanda_sp", {"calibration": CALIB, "mean_correction": True}, "mean_correction"),
    ("flap", {"calibration": CALIB, "lmbda": 0.1}, "lmbda"),
    ("wanda_sp", {"calibration": CALIB[0]}, "calibration"),
])
def test_bad_input_is_one_value_error_before_any_change(method, kwargs, needle):
    model = _bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=needle):
        prune_ffn(model, 0.3, method, **kwargs)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
