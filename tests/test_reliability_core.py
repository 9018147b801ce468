"""Issue 25, core library and prune_ffn: weight-normalised / pruning-masked / meta layers refused before any
change, BatchNorm recalibration keeping the old statistics on NaN/Inf, and calibration errors that say what is
wrong (overflow, too few samples for the width) instead of "singular ... use lmbda > 0"."""

from __future__ import annotations

import pytest
import torch
import torch.nn.utils.prune as torch_prune
import transformers as hf
from torch import nn
from torch.nn.utils import parametrizations

import projprune as pp
from projprune.transformers import prune_ffn

VOCAB = 50


# --------------------------------------------------------------------------- helpers
def _linear_pair(seed: int = 0) -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(seed)
    return nn.Linear(8, 12), nn.Linear(12, 5)


def _conv_pair(seed: int = 0) -> tuple[nn.Conv2d, nn.Conv2d]:
    torch.manual_seed(seed)
    return nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 3, padding=1)


def _old_weight_norm(layer: nn.Module) -> None:
    with pytest.warns(FutureWarning):
        torch.nn.utils.weight_norm(layer)  # the deprecated kind: weight_g / weight_v + a forward pre-hook


def _new_weight_norm(layer: nn.Module) -> None:
    parametrizations.weight_norm(layer)


def _prune_mask(layer: nn.Module) -> None:
    torch_prune.l1_unstructured(layer, "weight", amount=0.25)  # weight_orig / weight_mask + a forward pre-hook


def _prune_mask_on_bias(layer: nn.Module) -> None:
    torch_prune.random_unstructured(layer, "bias", amount=0.5)


WRAPPERS = {
    "weight_norm": (_old_weight_norm, "weight_norm"),
    "parametrizations.weight_norm": (_new_weight_norm, "parametriz"),
    "prune_mask": (_prune_mask, "torch.nn.utils.prune"),
    "prune_mask_bias": (_prune_mask_on_bias, "torch.nn.utils.prune"),
}

ENTRY_POINTS = {
    "prune_linear_pair": lambda l1, l2: pp.prune_linear_pair(l1, l2, 3),
    "prune_pair_exact": lambda l1, l2: pp.prune_pair(l1, l2, 3, "exact"),
    "prune_pair_l2": lambda l1, l2: pp.prune_pair(l1, l2, 3, "l2"),
    "prune_pairs_random": lambda l1, l2: pp.prune_pairs([(l1, l2)], 3, "random", generator=torch.Generator()),
    "prune_pairs_global": lambda l1, l2: pp.prune_pairs_global([(l1, l2)], 3),
    "slice_linear_pair": lambda l1, l2: pp.slice_linear_pair(l1, l2, [0, 2, 4]),
}


def _snapshot(*modules: nn.Module) -> list[dict]:
    """Everything a write could change: parameters, buffers, plain tensor attributes, shape attributes."""
    out = []
    for m in modules:
        tensors = {k: v.detach().clone() for k, v in [*m.named_parameters(), *m.named_buffers()]}
        tensors.update({k: v.detach().clone() for k, v in vars(m).items() if isinstance(v, torch.Tensor)})
        attrs = {a: getattr(m, a) for a in ("in_features", "out_features", "in_channels", "out_channels")
                 if hasattr(m, a)}
        out.append({"tensors": tensors, "attrs": attrs, "params": {k: id(v) for k, v in m.named_parameters()}})
    return out


def _assert_unchanged(before: list[dict], *modules: nn.Module) -> None:
    after = _snapshot(*modules)
    for b, a in zip(before, after):
        assert b["attrs"] == a["attrs"]
        assert b["params"] == a["params"]  # not even replaced by an equal Parameter
        assert b["tensors"].keys() == a["tensors"].keys()
        for key in b["tensors"]:
            assert torch.equal(b["tensors"][key], a["tensors"][key]), key


# --------------------------------------------------------------------------- item 3: weight norm, pruning masks
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
@pytest.mark.parametrize("side", ["layer1", "layer2"])
def test_weight_norm_and_prune_masks_are_refused_before_any_change(entry, wrapper, side):
    fc1, fc2 = _linear_pair()
    wrap, mechanism = WRAPPERS[wrapper]
    wrap(fc1 if side == "layer1" else fc2)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(3))
    out_before = fc2(torch.relu(fc1(x))).detach()
    before = _snapshot(fc1, fc2)
    with pytest.raises(ValueError, match=rf"{side}.*{mechanism}") as info:
        ENTRY_POINTS[entry](fc1, fc2)
    assert "remove" in str(info.value)  # says what to do
    _assert_unchanged(before, fc1, fc2)
    assert torch.equal(fc2(torch.relu(fc1(x))).detach(), out_before)  # the hooks still work


@pytest.mark.parametrize("wrapper", ["weight_norm", "prune_mask"])
def test_conv_pair_with_weight_norm_or_prune_mask_is_refused(wrapper):
    conv1, conv2 = _conv_pair()
    WRAPPERS[wrapper][0](conv2)
    before = _snapshot(conv1, conv2)
    with pytest.raises(ValueError, match=rf"layer2 \(Conv2d\).*{WRAPPERS[wrapper][1]}"):
        pp.prune_conv_pair(conv1, conv2, 2)
    _assert_unchanged(before, conv1, conv2)


def test_a_masked_norm_layer_is_refused():
    fc1, fc2 = _linear_pair()
    bn = nn.BatchNorm1d(12)
    _prune_mask(bn)
    before = _snapshot(fc1, fc2, bn)
    with pytest.raises(ValueError, match=r"bn .*torch.nn.utils.prune"):
        pp.prune_linear_pair(fc1, fc2, 3, bn=bn)
    _assert_unchanged(before, fc1, fc2, bn)


def test_plain_layer_check_is_one_shared_function():
    from projprune._checks import check_plain_layer

    layer = nn.Linear(3, 2)
    check_plain_layer(layer, "layer")  # plain: accepted
    _old_weight_norm(layer)
    with pytest.raises(ValueError, match=r"^consumer \(Linear\) .*weight_norm.*weight_g"):
        check_plain_layer(layer, "consumer")
    spectral = torch.nn.utils.spectral_norm(nn.Linear(3, 2))  # any hook-computed weight: a plain attribute
    with pytest.raises(ValueError, match=r"^s \(Linear\)\.weight is a plain tensor attribute, not an nn.Parameter"):
        check_plain_layer(spectral, "s")


def test_install_results_refuses_a_masked_layer():
    fc1, fc2 = _linear_pair()
    W, b, V = pp.pair_matrices(fc1, fc2)
    results = pp.greedy_global([W], 3, bs=[b], Vs=[V])
    _prune_mask(fc2)  # masked after the results were computed
    before = _snapshot(fc1, fc2)
    with pytest.raises(ValueError, match=r"layer2\[0\] \(Linear\) has a torch.nn.utils.prune mask"):
        pp.install_results([(fc1, fc2)], [None], results)
    _assert_unchanged(before, fc1, fc2)


def _bert() -> nn.Module:
    torch.manual_seed(0)
    config = hf.BertConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           vocab_size=VOCAB, max_position_embeddings=16)
    return hf.BertModel(config).eval()


@pytest.mark.parametrize("wrapper", ["weight_norm", "prune_mask", "prune_mask_bias"])
@pytest.mark.parametrize("method", ["exact", "l2"])
def test_prune_ffn_refuses_weight_norm_and_prune_masks_naming_the_layer(wrapper, method):
    model = _bert()
    WRAPPERS[wrapper][0](model.encoder.layer[1].output.dense)
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out_before = model(input_ids=ids).last_hidden_state
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"encoder\.layer\.1\.output\.dense.*{WRAPPERS[wrapper][1]}"):
        prune_ffn(model, 0.25, method)
    after = model.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)
    assert model.encoder.layer[0].intermediate.dense.weight.shape == (32, 16)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).last_hidden_state, out_before)


# --------------------------------------------------------------------------- item 7: meta device
def test_meta_layers_are_refused_with_one_value_error():
    with torch.device("meta"):
        fc1, fc2 = _linear_pair()
        conv1, conv2 = _conv_pair()
    for call in (lambda: pp.prune_linear_pair(fc1, fc2, 3), lambda: pp.prune_pair(fc1, fc2, 3, "l2"),
                 lambda: pp.prune_pair(fc1, fc2, 3, "proj550"), lambda: pp.prune_conv_pair(conv1, conv2, 2),
                 lambda: pp.prune_pairs_global([(fc1, fc2)], 3)):
        with pytest.raises(ValueError, match=r"layer1(\[0\])? \((Linear|Conv2d)\) is on the meta device; materialise"):
            call()
    assert fc1.out_features == 12 and fc1.weight.is_meta
    real = nn.Linear(8, 12)  # only the consumer on meta
    with pytest.raises(ValueError, match=r"layer2 \(Linear\) is on the meta device"):
        pp.prune_pair(real, fc2, 3, "exact")
    with pytest.raises(ValueError, match="W is on the meta device; materialise"):
        pp.solve_closed(torch.empty(4, 6, device="meta"))
    with pytest.raises(ValueError, match="h is on the meta device"):
        pp.ActivationStats(6).update(torch.empty(3, 6, device="meta"))


def test_prune_ffn_refuses_a_meta_model():
    with torch.device("meta"):
        model = _bert()
    with pytest.raises(ValueError, match=r"FFN block .*is on the meta device; materialise the weights first"):
        prune_ffn(model, 0.25, "exact")
    assert model.encoder.layer[0].intermediate.dense.out_features == 32


# --------------------------------------------------------------------------- item 4: BatchNorm recalibration
def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6, momentum=0.3), nn.ReLU(), nn.Linear(6, 3),
                        nn.BatchNorm1d(3))
    net.train()
    for _ in range(3):  # non-default running statistics and counters
        net(torch.randn(8, 4) * 2 + 1)
    return net.eval()


def _bn_state(net: nn.Module) -> list:
    return [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum, m.training)
            for m in net.modules() if isinstance(m, nn.BatchNorm1d)]


def _assert_bn_state(net: nn.Module, saved: list) -> None:
    now = _bn_state(net)
    assert len(now) == len(saved)
    for (m0, v0, t0, mom0, tr0), (m1, v1, t1, mom1, tr1) in zip(saved, now):
        assert torch.equal(m0, m1) and torch.equal(v0, v1) and torch.equal(t0, t1)
        assert mom0 == mom1 and tr0 == tr1


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_recalibrate_batchnorm_keeps_old_statistics_on_nan_or_inf_batch(bad):
    net = _bn_net()
    saved = _bn_state(net)
    good = torch.randn(8, 4, generator=torch.Generator().manual_seed(5))
    poisoned = good.clone()
    poisoned[3, 1] = bad
    with pytest.raises(ValueError, match=r"batch 1\b.*NaN or Inf"):
        pp.recalibrate_batchnorm(net, [good, poisoned, good])
    _assert_bn_state(net, saved)
    assert not net.training
    assert pp.recalibrate_batchnorm(net, [good, good]) == 2  # still usable afterwards


def test_recalibrate_batchnorm_refuses_a_meta_model():
    with torch.device("meta"):
        net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))
    with pytest.raises(ValueError, match=r"BatchNorm '1' is on the meta device; materialise the weights first"):
        pp.recalibrate_batchnorm(net, [torch.randn(8, 4)])


def test_recalibrate_batchnorm_float16_overflow_keeps_old_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6)).half().eval()
    saved = _bn_state(net)
    fine = torch.randn(8, 4).half()
    huge = (torch.randn(8, 4) * 3e3).half()  # variance ~1e7: beyond float16's 65504
    with pytest.raises(ValueError, match=r"batch 1\b"):
        pp.recalibrate_batchnorm(net, [fine, (huge, None)])
    _assert_bn_state(net, saved)


# --------------------------------------------------------------------------- item 6: overflow, too few samples
def test_activation_overflow_is_named_not_left_to_the_solver():
    stats = pp.ActivationStats(4)
    h = torch.randn(16, 4, generator=torch.Generator().manual_seed(0)) * 1e30  # finite float32, squares are not
    with pytest.raises(ValueError, match=r"overflow.*float32"):
        stats.update(h)
    assert stats.count == 0 and torch.equal(stats.sum_outer, torch.zeros(4, 4, dtype=torch.float64))
    low = pp.ActivationStats(4, gram_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"overflow.*bfloat16"):
        low.update(torch.randn(16, 4, generator=torch.Generator().manual_seed(0)) * 1e20)
    assert low.count == 0
    stats.update(h.double())  # float64 holds them: the statistics equal a float64 reference
    ref = h.double().T @ h.double()
    assert torch.allclose(stats.sum_outer, ref, rtol=1e-12)


def test_collect_activation_stats_names_the_overflowing_layer():
    torch.manual_seed(0)
    fc1, fc2 = nn.Linear(4, 6), nn.Linear(6, 3)
    with torch.no_grad():
        fc1.weight.mul_(1e30)
    model = nn.Sequential(fc1, nn.ReLU(), fc2)
    with pytest.raises(ValueError, match=r"layers\[0\] \(Linear\).*overflow") as info:
        pp.collect_activation_stats(model, [fc2], [torch.randn(20, 4)])
    assert "singular" not in str(info.value)
    assert not fc2._forward_pre_hooks


def _calibrated_pair(tokens: int, seed: int = 0):
    fc1, fc2 = _linear_pair(seed)
    model = nn.Sequential(fc1, nn.Tanh(), fc2)
    x = torch.randn(tokens, 8, generator=torch.Generator().manual_seed(seed + 1))
    return fc1, fc2, pp.collect_activation_stats(model, [fc2], [x])[0]


@pytest.mark.parametrize("method", ["calib", "act_norm"])
def test_one_calibration_sample_says_too_few_samples(method):
    fc1, fc2, stats = _calibrated_pair(tokens=1)
    before = _snapshot(fc1, fc2)
    with pytest.raises(ValueError, match=r"1 calibration samples for width 12.*more calibration") as info:
        pp.prune_pair(fc1, fc2, 3, method, stats=stats)
    assert "singular" not in str(info.value)
    _assert_unchanged(before, fc1, fc2)


def test_fewer_samples_than_units_at_lambda_zero_says_too_few_samples():
    fc1, fc2, stats = _calibrated_pair(tokens=10)  # 10 samples for 12 units: the covariance has rank <= 9
    with pytest.raises(ValueError, match=r"10 calibration samples for width 12.*lmbda > 0") as info:
        pp.prune_pair(fc1, fc2, 3, "calib", stats=stats, lmbda=0.0)
    assert "singular" not in str(info.value)
    with pytest.raises(ValueError, match="10 calibration samples for width 12"):
        pp.refit_next_layer(fc2.weight.detach(), stats, torch.ones(12, dtype=torch.bool), lmbda=0.0)
    kept = pp.prune_pair(fc1, fc2, 3, "calib", stats=stats)  # the default relative lambda > 0 copes
    assert len(kept) == 9
    fc1, fc2, stats = _calibrated_pair(tokens=40)  # enough samples: lambda 0 works
    assert len(pp.prune_pair(fc1, fc2, 3, "calib", stats=stats, lmbda=0.0)) == 9


def test_singular_covariance_with_enough_samples_blames_the_units_not_the_shape():
    fc1, fc2 = _linear_pair()
    with torch.no_grad():
        fc1.weight[4] = 0.0
        fc1.bias[4] = -1.0  # unit 4 is dead after the ReLU: a zero row and column in the covariance
    model = nn.Sequential(fc1, nn.ReLU(), fc2)
    stats = pp.collect_activation_stats(model, [fc2], [torch.randn(200, 8, generator=torch.Generator())])[0]
    with pytest.raises(ValueError, match=r"calibration covariance.*singular") as info:
        pp.prune_pair(fc1, fc2, 3, "calib", stats=stats, lmbda=0.0)
    assert "n > m" not in str(info.value) and "dead" in str(info.value)


def test_prune_ffn_one_token_calibration_says_too_few_samples():
    model = _bert()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"1 calibration samples for width 32") as info:
        prune_ffn(model, 0.25, "calib", calibration=[torch.tensor([[3]])])
    assert "singular" not in str(info.value)
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)


def test_demo_with_one_calibration_image_says_too_few_samples():
    from engine.demo import DemoConfig, run

    with pytest.raises(ValueError, match=r"1 calibration samples for width 8.*--calib-size|1 calibration samples "
                                         r"for width 8.*more calibration"):
        run(DemoConfig(hidden=8, epochs=1, methods="calib", calib_size=1))

