"""prune_heads: group OBS algebra, exact head removal per family, save/load, global counts, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as hf
from torch import nn
from torch.nn.utils import parametrize

from projprune.group_obs import greedy_group_obs, group_removal_costs
from projprune.transformers import (
    CALIB_HEADS_LMBDA,
    HEADS_KEY,
    WIDTHS_KEY,
    collect_head_stats,
    find_attention_blocks,
    from_pretrained,
    head_curves,
    prune_ffn,
    prune_heads,
)
from tests.conftest import assert_loaded_same

VOCAB = 50
CALIB = [torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3, 4)]
EVAL = torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(9))


def _build(family: str) -> nn.Module:
    """Tiny float64 models: 2 layers, 4 heads (LLaMA: 8 query heads in 4 key/value groups of 2)."""
    torch.manual_seed(0)
    common = {"num_hidden_layers": 2, "vocab_size": VOCAB}
    if family == "bert":
        model = hf.BertModel(hf.BertConfig(hidden_size=32, intermediate_size=40, num_attention_heads=4,
                                           max_position_embeddings=32, **common))
    elif family == "gpt2":
        model = hf.GPT2Model(hf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=32, vocab_size=VOCAB,
                                           bos_token_id=0, eos_token_id=0))
    elif family == "opt":
        model = hf.OPTModel(hf.OPTConfig(hidden_size=32, ffn_dim=40, num_attention_heads=4, word_embed_proj_dim=32,
                                         max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=1,
                                         **common))
    else:
        model = hf.LlamaModel(hf.LlamaConfig(hidden_size=32, intermediate_size=40, num_attention_heads=8,
                                             num_key_value_heads=4, head_dim=8, **common))
    return model.double().eval()


FAMILIES = ("bert", "gpt2", "opt", "llama")


@torch.no_grad()
def _out(model, ids=EVAL) -> torch.Tensor:
    return model(input_ids=ids).last_hidden_state


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_state(a, b) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, equal_nan=True)


@torch.no_grad()
def _reader_inputs(model) -> list[torch.Tensor]:
    """``H: (T, n)`` per attention block: every calibration token's input to the output projection."""
    outputs = [block.output for block in find_attention_blocks(model)]
    captured: dict[int, list[torch.Tensor]] = {id(layer): [] for layer in outputs}

    def keep(module, args):
        captured[id(module)].append(args[0].flatten(0, -2))

    handles = [layer.register_forward_pre_hook(keep) for layer in outputs]
    try:
        for ids in CALIB:
            model(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    return [torch.cat(captured[id(layer)]).double() for layer in outputs]


def _unit_rows(block, unit: int) -> list[tuple[nn.Module, slice]]:
    """(layer, output-row slice) of every query/key/value row that ``unit`` produces (float64 test helper)."""
    hd, u = block.head_dim, block.unit_channels
    if len(block.inputs) == 1:
        return [(block.inputs[0], slice(s * block.channels + unit * hd, s * block.channels + (unit + 1) * hd))
                for s in range(3)]
    q, k, v = block.inputs
    return [(q, slice(unit * u, (unit + 1) * u)), (k, slice(unit * hd, (unit + 1) * hd)),
            (v, slice(unit * hd, (unit + 1) * hd))]


def _rows_of(layer: nn.Module, rows: slice, conv1d: bool) -> torch.Tensor:
    return layer.weight[:, rows] if conv1d else layer.weight[rows]


# --------------------------------------------------------------------------- the algebra, against lstsq
def _augmented(H: torch.Tensor, lam: float) -> torch.Tensor:
    """``X: (n, T + n)`` whose Gram is ``C + λI`` (centred data / √T, then √λ I)."""
    T, n = H.shape
    Hc = (H - H.mean(0)) / T ** 0.5
    return torch.cat((Hc.T, lam ** 0.5 * torch.eye(n, dtype=H.dtype)), dim=1)


def _fit(X: torch.Tensor, V: torch.Tensor, kept: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Least-squares ``V'`` with ``V' X_K ≈ V X`` and its residual ``‖V X − V' X_K‖²``."""
    target = V @ X
    V_new = torch.linalg.lstsq(X[kept].T, target.T).solution.T
    return V_new, float((target - V_new @ X[kept]).square().sum())


def test_group_costs_compensation_and_schur_update_match_an_explicit_re_solve():
    gen = torch.Generator().manual_seed(0)
    T, n, u = 300, 12, 3
    H = torch.randn(T, n, generator=gen, dtype=torch.float64) @ torch.randn(n, n, generator=gen, dtype=torch.float64)
    H += torch.randn(n, generator=gen, dtype=torch.float64)  # a mean the covariance must remove
    V = torch.randn(5, n, generator=gen, dtype=torch.float64)
    groups = torch.randperm(n, generator=gen).reshape(n // u, u)  # any channels may form a group
    Hc = H - H.mean(0)
    C = Hc.T @ Hc / T
    lam = 0.05 * float(C.trace()) / n
    X = _augmented(H, lam)
    costs, _ = group_removal_costs(torch.linalg.inv(C + lam * torch.eye(n, dtype=C.dtype)), V, groups)
    for g in range(len(groups)):
        kept = torch.cat([groups[i] for i in range(len(groups)) if i != g])
        assert costs[g].item() == pytest.approx(_fit(X, V, kept)[1], rel=1e-9)
    result = greedy_group_obs(C, V, groups, 3, lam)
    assert int(result.order[0]) == int(torch.argmin(costs))
    assert result.keep.sum() == 1 and not result.keep[result.order].any()
    # marginal costs add up to the residual of the least-squares fit on the final kept set (nested projections)
    for step in range(1, 4):
        removed = set(result.order[:step].tolist())
        kept = torch.cat([groups[i] for i in range(len(groups)) if i not in removed])
        assert float(result.costs[:step].sum()) == pytest.approx(_fit(X, V, kept)[1], rel=1e-9)
    # accumulated compensation = the direct fit; Schur-updated precision = the kept block's inverse
    kept = groups[result.keep].flatten()
    torch.testing.assert_close(result.weight, _fit(X, V, kept)[0], rtol=1e-9, atol=1e-10)
    M = C + lam * torch.eye(n, dtype=C.dtype)
    torch.testing.assert_close(result.precision, torch.linalg.inv(M[kept][:, kept]), rtol=1e-9, atol=1e-10)


# --------------------------------------------------------------------------- exact removal per family
@pytest.mark.parametrize("family", FAMILIES)
def test_sliced_heads_equal_zeroed_output_columns(family):
    """Removing a head's q/k/v rows and output columns changes the model exactly as zeroing its columns."""
    model = _build(family)
    zeroed = copy.deepcopy(model)
    report = prune_heads(model, 0.5, "l2")
    with torch.no_grad():
        for block, layer in zip(find_attention_blocks(zeroed), report.layers):
            removed = sorted(set(range(block.units)) - set(layer.kept.tolist()))
            for unit in removed:
                cols = slice(unit * block.unit_channels, (unit + 1) * block.unit_channels)
                (block.output.weight[cols] if block.family.conv1d else block.output.weight[:, cols]).zero_()
    torch.testing.assert_close(_out(model), _out(zeroed), rtol=0, atol=1e-12)
    blocks = find_attention_blocks(model)
    assert [b.units for b in blocks] == [2, 2] and report.widths == [2, 2]
    assert report.extra["query_heads"] == ([4, 4] if family == "llama" else [2, 2])
    assert report.params_after < report.params_before
    assert report.ffn_params_before - report.ffn_params_after == report.params_before - report.params_after
    if family == "llama":  # grouped-query attention: whole key/value groups left, the map untouched
        attn = blocks[0].owner
        assert attn.num_key_value_groups == 2 and attn.q_proj.out_features == 32 and attn.k_proj.out_features == 16


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_duplicate_head_is_removed_first_at_zero_cost_and_output_is_unchanged(family):
    model = _build(family)
    with torch.no_grad():  # unit 2 computes exactly what unit 0 computes, in every layer
        for block in find_attention_blocks(model):
            for (layer, src), (_, dst) in zip(_unit_rows(block, 0), _unit_rows(block, 2)):
                layer.weight[dst] = layer.weight[src]
                if layer.bias is not None:
                    layer.bias[dst] = layer.bias[src]
    expected = _out(model)
    blocks = find_attention_blocks(model)
    stats = collect_head_stats(model, blocks, CALIB)
    curves = head_curves(blocks, "calib", stats, [1, 1], lmbda=1e-12)
    assert all(int(c.order[0]) in (0, 2) and float(c.costs[0]) < 1e-9 for c in curves)
    report = prune_heads(model, 0.25, "calib", calibration=CALIB, lmbda=1e-12)
    assert all(set(range(4)) - set(layer.kept.tolist()) in ({0}, {2}) for layer in report.layers)
    torch.testing.assert_close(_out(model), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["l2", "flap", "act_norm", "calib"])
def test_head_with_zero_output_columns_is_removed_first(method):
    model = _build("opt")
    with torch.no_grad():
        for block in find_attention_blocks(model):
            block.output.weight[:, 8:16] = 0.0  # head 1 writes nothing
    report = prune_heads(model, 0.25, method, calibration=None if method == "l2" else CALIB)
    assert [layer.kept.tolist() for layer in report.layers] == [[0, 2, 3], [0, 2, 3]]


# --------------------------------------------------------------------------- calibrated compensation, float64
@pytest.mark.parametrize(("family", "global_mode"), [("bert", False), ("bert", True), ("llama", False)])
def test_calib_and_flap_write_the_float64_reference_weights(family, global_mode):
    model = _build(family)
    Hs = _reader_inputs(model)
    before = [(b.output_weight().clone(), b.output_bias()) for b in find_attention_blocks(model)]
    flap_model = copy.deepcopy(model)
    report = prune_heads(model, 0.5, "calib", calibration=CALIB, global_mode=global_mode)
    flap = prune_heads(flap_model, 0.5, "flap", calibration=CALIB, global_mode=global_mode)
    for block, flap_block, H, (V, bias), layer, flap_layer in zip(
            find_attention_blocks(model), find_attention_blocks(flap_model), Hs, before, report.layers, flap.layers):
        bias = torch.zeros(V.shape[0], dtype=V.dtype) if bias is None else bias
        u = block.unit_channels
        T, n = H.shape
        kept = torch.cat([torch.arange(k * u, (k + 1) * u) for k in layer.kept.tolist()])
        mu = H.mean(0)
        C = (H - mu).T @ (H - mu) / T
        M = C + CALIB_HEADS_LMBDA * float(C.trace()) / n * torch.eye(n, dtype=C.dtype)
        V_ref = V @ M[:, kept] @ torch.linalg.inv(M[kept][:, kept])
        torch.testing.assert_close(block.output_weight(), V_ref, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(block.output_bias(), bias + V @ mu - V_ref @ mu[kept], rtol=1e-8, atol=1e-10)
        # FLAP: columns sliced, the removed channels' mean folded into the bias
        kept_flap = torch.cat([torch.arange(k * u, (k + 1) * u) for k in flap_layer.kept.tolist()])
        removed = torch.ones(n, dtype=torch.bool)
        removed[kept_flap] = False
        torch.testing.assert_close(flap_block.output_weight(), V[:, kept_flap], rtol=0, atol=0)
        torch.testing.assert_close(flap_block.output_bias(), bias + V[:, removed] @ mu[removed], rtol=1e-9, atol=1e-12)
    assert _out(model).shape == _out(flap_model).shape == (3, 10, 32)
    units = find_attention_blocks(_build(family))[0].units
    assert sum(report.widths) == sum(flap.widths) == len(report.widths) * units // 2


# --------------------------------------------------------------------------- global mode
def test_global_mode_takes_more_heads_where_they_matter_less():
    model = _build("bert")
    with torch.no_grad():
        find_attention_blocks(model)[1].output.weight[:, :16].mul_(0.01)  # two weak heads in layer 1
    report = prune_heads(model, 0.375, "calib", calibration=CALIB, global_mode=True)
    assert sum(4 - w for w in report.widths) == 3 and report.widths == [3, 2] and report.global_mode
    assert report.layers[1].kept.tolist() == [2, 3]
    ratio_all = prune_heads(_build("gpt2"), 0.875, "l2", global_mode=True)
    assert ratio_all.widths == [1, 1]  # every layer keeps a head


# --------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_with_from_pretrained_and_stock_loaders_refused(family, tmp_path):
    model = _build(family)
    with torch.no_grad():
        block = find_attention_blocks(model)[0]  # layer 0's first 3 of 4 units weak: it loses more globally
        block.output_weight()[:, :3 * block.unit_channels].mul_(0.01)
    report = prune_heads(model, 0.5, "calib", calibration=CALIB, global_mode=True)
    assert report.widths == [1, 3]
    expected = _out(model)
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path).eval()
    assert isinstance(loaded, type(model)) and [b.units for b in find_attention_blocks(loaded)] == report.widths
    assert_loaded_same(loaded, model, _out(loaded), expected)
    record = getattr(loaded.config, HEADS_KEY)
    assert record["heads"] == report.extra["query_heads"] and all(record["output_bias"])
    loaded.save_pretrained(tmp_path / "again")
    again = from_pretrained(tmp_path / "again").eval()
    assert_loaded_same(again, model, _out(again), expected)
    for path in (tmp_path, tmp_path / "again"):
        with pytest.raises(Exception, match="projprune.transformers.from_pretrained"):
            type(model).from_pretrained(path)


def test_heads_and_ffn_widths_both_round_trip(tmp_path):
    model = _build("llama")
    prune_heads(model, 0.25, "l2")
    with torch.no_grad():
        find_attention_blocks(model)  # FFN widths per layer: make layer 1's units weak
        model.layers[1].mlp.down_proj.weight[:, :20].mul_(0.01)
    ffn = prune_ffn(model, 0.25, "l2", global_mode=True)
    assert len(set(ffn.widths)) == 2 and getattr(model.config, WIDTHS_KEY) == ffn.widths
    expected = _out(model)
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path).eval()
    assert_loaded_same(loaded, model, _out(loaded), expected)
    with pytest.raises(Exception, match="projprune.transformers.from_pretrained"):
        hf.AutoModel.from_pretrained(tmp_path)


# --------------------------------------------------------------------------- bad input
class _Scale(nn.Module):
    def forward(self, weight):
        return weight * 1.0


def _tie(model):
    blocks = find_attention_blocks(model)
    blocks[1].inputs[0].weight = blocks[0].inputs[0].weight


def _nan(model):
    with torch.no_grad():
        find_attention_blocks(model)[1].inputs[-1].weight[0, 0] = float("nan")


def _parametrize(model):
    parametrize.register_parametrization(find_attention_blocks(model)[0].output, "weight", _Scale())


@pytest.mark.parametrize(("method", "ratio", "kwargs", "edit", "match"), [
    ("l2", 0.9, {}, None, "every head"),
    ("l2", 1.0, {}, None, "ratio"),
    ("nope", 0.25, {}, None, "method"),
    ("l2", 0.25, {"lmbda": 0.1}, None, "option"),
    ("calib", 0.25, {"lmbda": 0.0}, None, "lmbda"),
    ("calib", 0.25, {"energy": "layer", "calibration": CALIB}, None, "energy"),
    ("calib", 0.25, {}, None, "calibration"),
    ("l2", 0.25, {"calibration": CALIB}, None, "data-free"),
    ("calib", 0.25, {"calibration": CALIB[0]}, None, "iterable of batches"),
    ("calib", 0.25, {"stats": ["x", "y"]}, None, "stats"),
    ("l2", 0.25, {"amounts": [1, 4]}, None, "amounts"),
    ("l2", 0.25, {}, _tie, "shares"),
    ("l2", 0.25, {}, _nan, "NaN"),
    ("calib", 0.25, {"calibration": CALIB}, _parametrize, "parametrized"),
])
def test_bad_input_is_one_value_error_before_any_change(method, ratio, kwargs, edit, match):
    model = _build("bert")
    if edit is not None:
        edit(model)
    before, config = _state(model), model.config.to_dict()
    with pytest.raises(ValueError, match=match):
        prune_heads(model, ratio, method, **kwargs)
    _assert_same_state(before, _state(model))
    assert model.config.to_dict() == config and not hasattr(model.config, HEADS_KEY)


def test_meta_device_model_is_refused():
    with torch.device("meta"):
        model = hf.BertModel(hf.BertConfig(hidden_size=32, intermediate_size=40, num_attention_heads=4,
                                           num_hidden_layers=2, vocab_size=VOCAB))
    with pytest.raises(ValueError, match="meta device"):
        prune_heads(model, 0.25, "l2")
    assert find_attention_blocks(model)[0].units == 4


def test_ratio_zero_and_precomputed_stats_and_amounts():
    model = _build("gpt2")
    before, config = _state(model), model.config.to_dict()
    assert prune_heads(model, 0.0, "calib", calibration=CALIB).widths == [4, 4]
    _assert_same_state(before, _state(model))
    assert model.config.to_dict() == config
    reference = copy.deepcopy(model)
    stats = collect_head_stats(model, find_attention_blocks(model), CALIB)
    report = prune_heads(model, 0.0, "calib", stats=stats, amounts=[3, 1])
    assert report.widths == [1, 3]
    again = prune_heads(reference, 0.0, "calib", calibration=CALIB, amounts=[3, 1])
    torch.testing.assert_close(_out(model), _out(reference), rtol=0, atol=0)
    assert [layer.kept.tolist() for layer in again.layers] == [layer.kept.tolist() for layer in report.layers]


def test_gpt2_cross_attention_is_left_alone():
    model = hf.GPT2Model(hf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=32, vocab_size=VOCAB,
                                       add_cross_attention=True, bos_token_id=0, eos_token_id=0))
    blocks = find_attention_blocks(model)
    assert [b.name for b in blocks] == ["h.0.attn", "h.1.attn"]
    prune_heads(model, 0.5, "l2")
    assert model.h[0].crossattention.c_attn.nf == 64 and model.h[0].attn.c_attn.nf == 48


def test_a_write_failing_half_way_restores_every_block(monkeypatch):
    from projprune.transformers.families import AttentionBlock

    model = _build("gpt2")
    before, config = _state(model), model.config.to_dict()
    original, second = AttentionBlock.keep_units, find_attention_blocks(model)[1].name

    def failing(self, *args, **kwargs):  # the first block is written, the second fails
        if self.name == second:
            raise RuntimeError("disk on fire")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(AttentionBlock, "keep_units", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        prune_heads(model, 0.5, "calib", calibration=CALIB)
    _assert_same_state(before, _state(model))
    assert model.config.to_dict() == config
    assert all(b.owner.num_heads == 4 and b.owner.split_size == 32 and b.inputs[0].nf == 96
               for b in find_attention_blocks(model))
    torch.testing.assert_close(_out(model), _out(_build("gpt2")), rtol=0, atol=0)
