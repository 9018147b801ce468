"""Cost savings of the calibrated block path: forwards cut after the last hooked layer, statistics reused,
the precision formed in the covariance's own memory. Every result is checked against a float64 reference."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as hf
from torch import nn

from projprune import ActivationStats
from projprune.calibration import collect_activation_stats
from projprune.greedy import _CalibratedExactState, make_layer_state
from projprune.options import resolve_options
from projprune.solvers import regularised_inverse
from projprune.transformers import find_attention_blocks, find_ffn_blocks
from projprune.transformers.blocks import _find_parts, _prune_ffn, _prune_heads, prune_blocks
from projprune.transformers.prune import FFN_METHODS

VOCAB = 64
CALIB = [torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3)]


def _llama(layers: int = 2) -> nn.Module:
    torch.manual_seed(0)
    config = hf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=VOCAB)
    return hf.LlamaModel(config).double().eval()


def _count_calls(module: nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_pre_hook(lambda _m, _a: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_stop_early_gives_the_same_statistics_and_skips_the_rest_of_the_forward():
    model = _llama()
    first_attention = find_attention_blocks(model)[0].output
    after = _count_calls(model.norm)  # runs after every layer: only when the forward is not cut
    full = collect_activation_stats(model, [first_attention], CALIB)[0]
    assert after[0] == len(CALIB)
    cut = collect_activation_stats(model, [first_attention], CALIB, stop_early=True)[0]
    assert after[0] == len(CALIB) + 1  # the first batch runs whole (it checks each layer is called once)
    assert cut.count == full.count == 3 * 12 * len(CALIB)
    torch.testing.assert_close(cut.sum_outer, full.sum_outer, rtol=0, atol=0)
    # float64 reference: the inputs of the output projection, gathered by a plain hook
    rows = []
    handle = first_attention.register_forward_pre_hook(lambda _m, a: rows.append(a[0].reshape(-1, 32)))
    with torch.no_grad():
        for batch in CALIB:
            model(batch)
    handle.remove()
    H = torch.cat(rows)
    torch.testing.assert_close(cut.covariance(), torch.cov(H.T, correction=0), rtol=1e-10, atol=1e-12)


def test_stop_early_runs_every_forward_whole_when_a_layer_is_called_twice():
    layer = nn.Linear(4, 4).double()
    model = nn.Sequential(layer, nn.Tanh(), layer)  # the same module twice: both calls are statistics
    tail = _count_calls(model[1])
    batches = [torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    full = collect_activation_stats(model, [layer], batches)[0]
    calls = tail[0]
    cut = collect_activation_stats(model, [layer], batches, stop_early=True)[0]
    assert tail[0] == 2 * calls and cut.count == full.count == 20
    torch.testing.assert_close(cut.sum_outer, full.sum_outer, rtol=0, atol=0)


def test_overwriting_inverse_matches_the_float64_inverse_in_the_same_memory():
    X = torch.randn(40, 90, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    G = X @ X.T / 90
    reference = torch.linalg.inv(G + 0.1 * torch.eye(40, dtype=torch.float64))
    A = G.clone()
    P = regularised_inverse(A, 0.1, overwrite=True)
    assert P.data_ptr() == A.data_ptr()
    torch.testing.assert_close(P, reference, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(P, P.T, rtol=0, atol=0)
    singular = torch.zeros(5, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="singular"):
        regularised_inverse(singular, 0.0, "the test matrix", overwrite=True)


def test_calibrated_state_keeps_no_weight_copy_and_releases_its_matrices():
    gen = torch.Generator().manual_seed(5)
    W, V = torch.randn(12, 6, generator=gen), torch.randn(3, 12, generator=gen)
    st = ActivationStats(12)
    st.update(torch.randn(200, 12, generator=gen))
    state = make_layer_state(resolve_options(FFN_METHODS["calib"].options, {}), W, None, V, st, 4, torch.float64)
    assert isinstance(state, _CalibratedExactState) and state.W is None
    C = st.covariance()
    lam = FFN_METHODS["calib"].options.lmbda * float(C.diagonal().mean())
    P = torch.linalg.inv(C + lam * torch.eye(12, dtype=torch.float64))
    torch.testing.assert_close(state.P, P, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.triu(state.S), torch.triu(P @ P), rtol=1e-10, atol=1e-12)
    state.remove(int(torch.argmin(state.distances())), 1.0)
    result = state.result(torch.float64)
    assert state.P is None and state.S is None and int(result.keep.sum()) == 11


def test_sequential_global_one_layer_reuses_the_first_pass():
    """Nothing is pruned before the first block: its statistics from the one pass are the current ones."""
    model = _llama(layers=1)
    reference = copy.deepcopy(model)
    batches = _count_calls(model)
    report = prune_blocks(model, 0.3, "calib", CALIB, global_mode=True, sequential=True)
    # one pass (heads + FFN) and one for the FFN after the heads were pruned; the heads' is reused
    assert batches[0] == 2 * len(CALIB) and report.sequential
    assert sum(report.heads_after) < sum(report.heads_before) and sum(report.ffn_after) < sum(report.ffn_before)
    # the same outcome as collecting the heads' statistics afresh: prune that layer's parts by hand
    heads, ffn, _ = _find_parts(reference, ("heads", "ffn"))
    head_stats = collect_activation_stats(reference, [heads.blocks[0].output], CALIB)
    _prune_heads(reference, "calib", heads, report.extra["head_amounts"], head_stats)
    ffn_stats = collect_activation_stats(reference, [ffn.blocks[0].output], CALIB)
    _prune_ffn(reference, "calib", ffn, [0], report.extra["ffn_amounts"], ffn_stats)
    ids = CALIB[0]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).last_hidden_state, reference(ids).last_hidden_state,
                                   rtol=1e-10, atol=1e-10)
    assert [b.width for b in find_ffn_blocks(model)] == [b.width for b in find_ffn_blocks(reference)]


def test_single_use_statistics_give_the_float64_covariance_once():
    H = torch.randn(50, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    st = ActivationStats(7)
    st.update(H)
    st.single_use = True
    buffer = st.sum_outer.data_ptr()
    C = st.covariance()
    assert C.data_ptr() == buffer  # formed in Σ h hᵀ's own memory
    torch.testing.assert_close(C, torch.cov(H.T, correction=0), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(st.mean, H.mean(dim=0), rtol=1e-12, atol=1e-14)  # the sums are untouched
    for spend in (st.covariance, lambda: st.update(H), lambda: st.to("cpu")):
        with pytest.raises(ValueError, match="single_use"):
            spend()


@pytest.mark.parametrize("global_mode", [False, True])
def test_float32_greedy_keeps_the_float64_choice(global_mode):
    """``dtype=torch.float32`` (the calib FFN greedy's compute dtype) on a float64 model: the units and
    heads removed are those of the float64 run, the outputs agree to float32 rounding."""
    ids = CALIB[0]
    outputs, widths = [], []
    for dtype in (None, torch.float32):
        model = _llama()
        options = {} if dtype is None else {"dtype": dtype}
        prune_blocks(model, 0.3, "calib", CALIB, global_mode=global_mode, **options)
        widths.append([b.width for b in find_ffn_blocks(model)] + [b.units for b in find_attention_blocks(model)])
        with torch.no_grad():
            outputs.append(model(ids).last_hidden_state)
    assert widths[0] == widths[1]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="dtype"):
        prune_blocks(_llama(), 0.3, "act_norm", CALIB, dtype=torch.float32)


def test_float32_products_accumulate_block_by_block_to_the_float64_sums():
    H = torch.randn(300, 1100, generator=torch.Generator().manual_seed(7))  # wider than one block of rows
    st = ActivationStats(1100)
    st.update(H[:150])
    st.update(H[150:])
    Hd = H.double()
    reference = Hd[:150].T @ Hd[:150] + Hd[150:].T @ Hd[150:]
    torch.testing.assert_close(st.sum_outer, reference, rtol=1e-5, atol=1e-4)  # float32 products
    exact = H[:150].T @ H[:150]  # the same float32 product the accumulator adds first
    torch.testing.assert_close(st.sum_outer - (H[150:].T @ H[150:]).double(), exact.double(), rtol=1e-12, atol=1e-9)
