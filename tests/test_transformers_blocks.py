"""prune_blocks: heads and FFN units together on tiny random models, with float64 references written here."""

from __future__ import annotations

import pytest
import torch
import transformers as hf
from torch import nn

from projprune.calibration import collect_activation_stats
from projprune.methods import CALIB_SELECT_LMBDA
from projprune.transformers import find_attention_blocks, find_ffn_blocks, from_pretrained
from projprune.transformers.blocks import _Greedy, prune_blocks

VOCAB = 64
CALIB = [torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
IDS = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
METHODS = ("l2", "flap", "wanda_sp", "act_norm", "calib")


def _bert(seed: int = 0, layers: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    config = hf.BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                           vocab_size=VOCAB)
    return hf.BertModel(config).eval()


def _llama(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = hf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=VOCAB)
    return hf.LlamaForCausalLM(config).eval()


def _calibration(method: str):
    return None if method == "l2" else CALIB


def _unit_sizes() -> tuple[int, int]:
    """Parameters of one head and of one FFN unit of the tiny BERT (weights and biases), counted by hand."""
    hidden, head_dim, ffn_out = 32, 8, 32
    head = 3 * (hidden * head_dim + head_dim) + hidden * head_dim  # q/k/v rows + biases, output columns
    unit = hidden + 1 + ffn_out  # input row + bias, output column
    return head, unit


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("global_mode", [False, True])
def test_parameters_removed_are_within_one_unit_of_the_target(method, global_mode):
    model = _bert()
    head, unit = _unit_sizes()
    projections = [layer for b in (*find_attention_blocks(model), *find_ffn_blocks(model)) for layer in
                   (*b.inputs, b.output)]
    total = sum(p.numel() for layer in projections for p in layer.parameters(recurse=False))
    report = prune_blocks(model, 0.4, method, _calibration(method), global_mode=global_mode)
    assert report.block_params_before == total
    assert report.target_params == round(0.4 * total)
    # BERT has every bias already: what was removed is exactly whole heads and whole units
    removed_heads = sum(report.heads_before) - sum(report.heads_after)
    removed_units = sum(report.ffn_before) - sum(report.ffn_after)
    assert report.removed_params == removed_heads * head + removed_units * unit
    assert report.block_params_before - report.block_params_after == report.removed_params
    assert abs(report.removed_params - 0.4 * total) <= (head if global_mode else unit)
    assert removed_heads > 0 or global_mode
    if not global_mode:  # uniform: the same heads in every layer
        assert report.heads_after == [4 - round(0.4 * 4)] * 2


@pytest.mark.parametrize(("method", "sequential"), [(m, True) for m in METHODS] + [("calib", False)])
def test_both_parts_pruned_and_the_model_forwards(method, sequential, tmp_path):
    model = _llama()
    report = prune_blocks(model, 0.35, method, _calibration(method), sequential=sequential)
    assert report.heads_after == [1, 1] and report.heads_before == [2, 2]  # key/value groups of two heads
    assert all(a < b for a, b in zip(report.ffn_after, report.ffn_before))
    assert [b.width for b in find_ffn_blocks(model)] == report.ffn_after
    assert [b.query_heads for b in find_attention_blocks(model)] == [2, 2]
    with torch.no_grad():
        logits = model(input_ids=IDS).logits
    assert logits.shape == (2, 9, VOCAB) and torch.isfinite(logits).all()
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path, hf.LlamaForCausalLM).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=IDS).logits, logits)


def test_heads_only_and_ffn_only_remove_the_same_budget():
    reports = {parts: prune_blocks(_bert(), 0.2, "calib", CALIB, parts=parts)
               for parts in (("heads",), ("ffn",), ("heads", "ffn"))}
    head, unit = _unit_sizes()
    for parts, report in reports.items():
        assert abs(report.removed_params - report.target_params) <= (head if parts == ("heads",) else unit) / 2 + 1
    assert reports[("ffn",)].heads_after == [] and reports[("heads",)].ffn_after == []
    assert sum(reports[("heads",)].heads_after) < 8 and sum(reports[("ffn",)].ffn_after) < 128


def _quiet_ffn_model() -> nn.Module:
    model = _bert(seed=1)
    with torch.no_grad():
        find_ffn_blocks(model)[1].output.weight.mul_(1e-3)  # layer 1's FFN writes almost nothing
    return model


def test_global_mode_takes_more_from_an_ffn_that_barely_writes():
    # normalised per layer (one energy for heads and FFN), layer 1's FFN units now cost almost nothing next to its heads
    uniform = prune_blocks(_quiet_ffn_model(), 0.3, "calib", CALIB)
    chosen = prune_blocks(_quiet_ffn_model(), 0.3, "calib", CALIB, global_mode=True, max_shift=None, normalise="layer")
    # normalised per part (each block's own energy, the default) a block's scale does not matter
    plain = prune_blocks(_bert(seed=1), 0.3, "calib", CALIB, global_mode=True, max_shift=None)
    scaled = prune_blocks(_quiet_ffn_model(), 0.3, "calib", CALIB, global_mode=True, max_shift=None)
    assert (plain.heads_after, plain.ffn_after) == (scaled.heads_after, scaled.ffn_after)
    assert uniform.heads_after == [3, 3] and abs(uniform.ffn_after[0] - uniform.ffn_after[1]) <= 1
    assert chosen.ffn_after[1] < chosen.ffn_after[0] and chosen.ffn_after[1] < uniform.ffn_after[1]
    assert abs(chosen.removed_params - uniform.removed_params) <= _unit_sizes()[0]


def test_ffn_greedy_costs_match_an_explicit_obs_solve():
    model = _bert(seed=2).double()
    block = find_ffn_blocks(model)[0]
    st = collect_activation_stats(model, [block.output], CALIB)[0]
    source = _Greedy(block, st, limit=2, scale=1.0)
    costs = []
    while (key := source.peek()) is not None:
        costs.append(key)
        source.take()
    assert len(costs) == 2
    C = st.covariance()
    lam = CALIB_SELECT_LMBDA * float(C.trace()) / C.shape[0]
    V = block.output_weight().double()
    alive = list(range(C.shape[0]))
    for step in range(2):  # greedy: smallest d_i·‖u_i‖, cost ‖u_i‖²/P_ii; compensation u_j += q_ij u_i
        M = C[alive][:, alive] + lam * torch.eye(len(alive), dtype=torch.float64)
        P = torch.linalg.inv(M)
        d2 = torch.diagonal(P @ C[alive][:, alive] @ P) / torch.diagonal(P) ** 2
        U = V[:, alive]
        pick = int(torch.argmin(d2.sqrt() * U.norm(dim=0)))
        assert float(costs[step]) == pytest.approx(float(U[:, pick].square().sum() / P[pick, pick]), rel=1e-9)
        q = -P[pick] / P[pick, pick]
        V = V.clone()
        V[:, alive] = U + torch.outer(U[:, pick], q)
        alive.pop(pick)


def test_sequential_collects_layer_statistics_after_earlier_layers_were_pruned():
    one_pass, sequential = _bert(seed=3), _bert(seed=3)
    prune_blocks(one_pass, 0.4, "calib", CALIB, sequential=False)
    prune_blocks(sequential, 0.4, "calib", CALIB, sequential=True)
    first = [find_attention_blocks(m)[0].output.weight for m in (one_pass, sequential)]
    torch.testing.assert_close(first[1], first[0])  # layer 0's heads read the same statistics
    later = [find_ffn_blocks(m)[1].output.weight for m in (one_pass, sequential)]
    assert later[0].shape == later[1].shape and not torch.allclose(later[0], later[1])
    data_free = [_bert(seed=3), _bert(seed=3)]
    for model, flag in zip(data_free, (False, True)):
        prune_blocks(model, 0.4, "l2", sequential=flag)
    for a, b in zip(*(m.state_dict().values() for m in data_free)):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("args", "kwargs", "needle"), [
    ((1.0, "calib", CALIB), {}, "ratio"),
    ((0.3, "exact", CALIB), {}, "method"),
    ((0.3, "calib", CALIB), {"parts": ("heads", "mlp")}, "parts"),
    ((0.3, "calib", None), {}, "calibration"),
    ((0.3, "l2", CALIB), {}, "calibration"),
    ((0.3, "calib", CALIB), {"lmbda": 0.1}, "option"),
    ((0.3, "calib", CALIB), {"global_mode": 1}, "global_mode"),
    ((0.3, "calib", CALIB), {"global_mode": True, "energy": "layer"}, "now normalise="),
    ((0.3, "calib", CALIB), {"global_mode": True, "normalise": "output"}, "normalise must be 'part' or 'layer'"),
    ((0.6, "flap", CALIB), {"parts": ("heads",)}, "ratio 0.6"),
])
def test_bad_input_is_one_value_error_before_any_change(args, kwargs, needle):
    model = _bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=needle):
        prune_blocks(model, *args, **kwargs)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_hf_compare_prunes_heads_and_ffn_with_parts(tmp_path):
    from engine.hf_compare import main

    _bert(layers=2).save_pretrained(tmp_path / "bert")
    (tmp_path / "text.txt").write_text("Heads and units leave together when a block is pruned. " * 30)
    (tmp_path / "calib.txt").write_text("Calibration text is read once before anything is removed. " * 30)
    rows = main(["--model", str(tmp_path / "bert"), "--text-file", str(tmp_path / "text.txt"), "--calibration-file",
                 str(tmp_path / "calib.txt"), "--output-dir", str(tmp_path / "out"), "--seq-len", "16",
                 "--max-chunks", "2", "--parts", "heads,ffn", "--ratio", "0.4", "--methods", "l2,calib"])
    assert [r["method"] for r in rows] == ["dense", "l2", "calib"]
    for row in rows[1:]:
        heads, widths = row["widths"].split("/")
        assert heads == "2" and max(int(w) for w in widths.split("-")) < 64  # 4 - round(1.6) heads, FFN the rest
        # 40 % of the attention + FFN projections; the embeddings make up the rest of the model
        assert 10 < float(row["param_reduction_%"]) < 30 and -1 <= float(row["cosine"]) < 1
    with pytest.raises(ValueError, match="--parts"):
        main(["--model", str(tmp_path / "bert"), "--text-file", str(tmp_path / "text.txt"), "--parts", "mlp"])


def test_global_calib_joint_greedy_writes_what_a_per_layer_greedy_would():
    # layer 0's statistics are the same in one pass and sequentially: the joint greedy's plan for it must
    # equal the per-layer greedy re-run with the same count (what the sequential path does)
    one_pass, sequential = _bert(seed=6), _bert(seed=6)
    first = prune_blocks(one_pass, 0.3, "calib", CALIB, parts=("ffn",), global_mode=True, sequential=False)
    second = prune_blocks(sequential, 0.3, "calib", CALIB, parts=("ffn",), global_mode=True, sequential=True)
    assert first.ffn_after == second.ffn_after and first.ffn_after[0] < 64
    blocks = [find_ffn_blocks(m)[0] for m in (one_pass, sequential)]
    torch.testing.assert_close(blocks[0].output_weight(), blocks[1].output_weight(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(blocks[0].output_bias(), blocks[1].output_bias(), rtol=1e-5, atol=1e-6)


def test_global_counts_stay_within_max_shift_of_the_uniform_ones():
    uniform = prune_blocks(_quiet_ffn_model(), 0.3, "calib", CALIB)
    free = prune_blocks(_quiet_ffn_model(), 0.3, "calib", CALIB, global_mode=True, max_shift=None, normalise="layer")
    bounded = prune_blocks(_quiet_ffn_model(), 0.3, "calib", CALIB, global_mode=True, max_shift=0.05, normalise="layer")
    ffn_shift = [abs(b - u) for b, u in zip(bounded.ffn_after, uniform.ffn_after)]
    assert 0 < max(ffn_shift) <= 4  # ceil(0.05 * 64) units either way
    assert all(abs(b - u) <= 1 for b, u in zip(bounded.heads_after, uniform.heads_after))  # ceil(0.05 * 4)
    assert max(abs(f - u) for f, u in zip(free.ffn_after, uniform.ffn_after)) > 4
