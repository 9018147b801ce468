"""Module surgery: shapes, compensation, the method registry and bad input (modules untouched)."""

import copy

import pytest
import torch
from torch import nn

import projprune as pp
from tests.reference_impl import DEVICES


def linear_pair(n=16, m=20, k=6, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Linear(m, n).to(dtype), nn.Linear(n, k).to(dtype)


def snapshot(*modules):
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]


def unchanged(before, *modules):
    after = snapshot(*modules)
    return all(
        a.keys() == b.keys()
        and all(a[k].shape == b[k].shape and torch.allclose(a[k], b[k], rtol=0, atol=0, equal_nan=True) for k in a)
        for a, b in zip(before, after)
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("solver", ["lazy", "exact"])
def test_linear_pair_matches_apply_pruning(device, solver):
    fc1, fc2 = linear_pair()
    fc1, fc2 = fc1.to(device), fc2.to(device)
    fc1.weight.requires_grad_(False)
    W, b, V = fc1.weight.detach().clone(), fc1.bias.detach().clone(), fc2.weight.detach().clone()
    kept = pp.prune_linear_pair(fc1, fc2, 5, tracking=solver, alpha=0.5, beta=0.5, gamma=0.5)
    res = (pp.greedy_lazy if solver == "lazy" else pp.greedy_exact)(W, 5, alpha=0.5, beta=0.5, gamma=0.5)
    W2, b2, V2, _ = pp.apply_pruning(W, b, V, res)
    assert kept.tolist() == res.kept_indices.tolist() and kept.tolist() == sorted(kept.tolist())
    assert torch.allclose(fc1.weight, W2) and torch.allclose(fc1.bias, b2) and torch.allclose(fc2.weight, V2)
    assert fc1.out_features == 11 and fc2.in_features == 11
    assert fc1.weight.device.type == device and fc1.weight.dtype == torch.float64
    assert fc1.weight.requires_grad is False and fc2.weight.requires_grad is True
    fc2(torch.relu(fc1(torch.randn(3, 20, dtype=torch.float64, device=device))))


@pytest.mark.parametrize("solver", ["lazy", "exact"])
def test_compensation_of_exact_combination_is_lossless(solver):
    fc1, fc2 = linear_pair(n=10, m=16, k=5, seed=1)
    with torch.no_grad():
        fc1.weight[6] = 0.5 * fc1.weight[1] - 2.0 * fc1.weight[4] + 0.25 * fc1.weight[8]
    x = torch.randn(32, 16, dtype=torch.float64)
    before = fc2(fc1(x))  # identity activation
    pp.prune_linear_pair(fc1, fc2, 1, tracking=solver, alpha=0, beta=0, gamma=0, lmbda=1e-10, compensate=True,
                         identity_activation=True)
    after = fc2(fc1(x))
    assert fc1.out_features == 9
    assert float((after - before).detach().abs().max()) < 1e-6


def test_compensation_conv_pair_interior_exact():
    torch.manual_seed(2)
    conv1 = nn.Conv2d(3, 8, 3, padding=0).double()
    conv2 = nn.Conv2d(8, 4, 1).double()
    with torch.no_grad():
        conv1.weight[5] = conv1.weight[0] - 0.5 * conv1.weight[3]
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    before = conv2(conv1(x))
    pp.prune_conv_pair(conv1, conv2, 1, tracking="exact", alpha=0, beta=0, gamma=0, lmbda=1e-10, compensate=True,
                         identity_activation=True)
    assert conv1.out_channels == 7 and conv2.in_channels == 7
    assert float((conv2(conv1(x)) - before).detach().abs().max()) < 1e-6


def test_conv_pair_with_batchnorm():
    torch.manual_seed(3)
    conv1, bn, conv2 = nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.Conv2d(12, 5, 3, padding=1)
    bn.running_mean.uniform_()
    kept = pp.prune_conv_pair(conv1, conv2, 4, bn=bn, tracking="exact")
    assert conv1.weight.shape == (8, 3, 3, 3) and conv2.weight.shape == (5, 8, 3, 3)
    assert bn.num_features == 8 and bn.running_mean.shape == (8,) and len(kept) == 8
    conv2(torch.relu(bn(conv1(torch.randn(2, 3, 6, 6)))))


def test_amount_zero_changes_nothing():
    fc1, fc2 = linear_pair(seed=4)
    before = snapshot(fc1, fc2)
    for solver in ("lazy", "exact"):
        kept = pp.prune_linear_pair(fc1, fc2, 0, tracking=solver)
        assert kept.tolist() == list(range(16))
    assert unchanged(before, fc1, fc2)


def pair_stats(pairs, seed=0):
    """Calibration statistics of each pair's hidden units on random inputs (GELU in between)."""
    gen = torch.Generator().manual_seed(seed)
    stats = []
    for fc1, fc2 in pairs:
        model = nn.Sequential(fc1, nn.GELU(), fc2)
        x = torch.randn(4, 50, fc1.in_features, generator=gen, dtype=fc1.weight.dtype)
        stats += pp.collect_activation_stats(model, [fc2], [x[i] for i in range(4)])
    return stats


@pytest.mark.parametrize("method", sorted(pp.PAIR_METHODS))
def test_every_named_method(method):
    fc1, fc2 = linear_pair(seed=5, dtype=torch.float32)
    needs = pp.PAIR_METHODS[method].needs_stats
    stats = pair_stats([(fc1, fc2)])[0] if needs else None
    kept = pp.prune_pair(fc1, fc2, 6, method, generator=torch.Generator().manual_seed(0), stats=stats)
    assert len(kept) == 10 and fc1.weight.shape == (10, 20) and fc2.weight.shape == (6, 10)
    assert fc1.weight.dtype == torch.float32
    pairs = [linear_pair(seed=6), linear_pair(n=8, m=16, seed=7)]
    stats = pair_stats(pairs) if needs else None
    kept = pp.prune_pairs(pairs, 12, method, generator=torch.Generator().manual_seed(0), stats=stats)
    assert sum(len(k) for k in kept) == 24 - 12


def test_norm_baseline_removes_smallest_rows():
    fc1, fc2 = linear_pair(seed=8)
    with torch.no_grad():
        fc1.weight[3] *= 1e-3
        fc1.weight[11] *= 1e-2
    kept = pp.prune_pair(fc1, fc2, 2, "l2")
    assert 3 not in kept.tolist() and 11 not in kept.tolist()


def test_duplicate_unit_removed_first_by_projective_methods():
    for method in ("proj000", "proj550", "exact", "exact_oac"):
        fc1, fc2 = linear_pair(seed=9)
        with torch.no_grad():
            fc1.weight[7] = fc1.weight[12]
            fc1.bias[7] = fc1.bias[12]
        kept = pp.prune_pair(fc1, fc2, 1, method)
        assert 7 not in kept.tolist() or 12 not in kept.tolist(), method


def _bad_cases():
    def one_d(fc1, fc2):
        fc1.weight = nn.Parameter(torch.randn(16, dtype=torch.float64))

    def nan(fc1, fc2):
        with torch.no_grad():
            fc1.weight[0, 0] = float("nan")

    def inf_bias(fc1, fc2):
        with torch.no_grad():
            fc2.bias[0] = float("inf")

    def mismatch(fc1, fc2):
        fc2.weight = nn.Parameter(torch.randn(6, 15, dtype=torch.float64))

    def dtype(fc1, fc2):
        fc2.float()

    return {"one_d": (one_d, {}, "2-D"), "nan": (nan, {}, "NaN"), "inf": (inf_bias, {}, "NaN or Inf"),
            "mismatch": (mismatch, {}, "reads 15"), "dtype": (dtype, {}, "dtype"),
            "negative": (None, {"amount": -1}, "amount"), "too_many": (None, {"amount": 16}, "amount"),
            "lmbda": (None, {"lmbda": -0.1}, "lmbda"), "solver": (None, {"solver": "magic"}, "solver")}


@pytest.mark.parametrize("case", sorted(_bad_cases()))
def test_bad_input_leaves_modules_untouched(case):
    corrupt, kwargs, message = _bad_cases()[case]
    fc1, fc2 = linear_pair(seed=10)
    if corrupt is not None:
        corrupt(fc1, fc2)
    before = snapshot(fc1, fc2)
    amount = kwargs.pop("amount", 3)
    with pytest.raises(ValueError, match=message):
        pp.prune_linear_pair(fc1, fc2, amount, **kwargs)
    assert unchanged(before, fc1, fc2)


def test_singular_gram_with_zero_lambda_leaves_modules_untouched():
    fc1, fc2 = linear_pair(n=16, m=4, seed=11)  # 16 rows in 4 dimensions
    before = snapshot(fc1, fc2)
    with pytest.raises(ValueError, match="singular"):
        pp.prune_linear_pair(fc1, fc2, 3, lmbda=0.0, tracking="exact")
    assert unchanged(before, fc1, fc2)


def test_bad_layers():
    conv3d = nn.Conv3d(2, 4, 3)  # 5-D weight
    with pytest.raises(ValueError, match="nn.Linear or nn.Conv2d"):
        pp.prune_conv_pair(conv3d, nn.Conv2d(4, 2, 1), 1)
    grouped, nxt = nn.Conv2d(4, 8, 3, groups=2), nn.Conv2d(8, 2, 1)
    before = snapshot(grouped, nxt)
    with pytest.raises(ValueError, match="groups"):
        pp.prune_conv_pair(grouped, nxt, 2)
    assert unchanged(before, grouped, nxt)
    with pytest.raises(ValueError, match="bn"):
        pp.prune_conv_pair(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 2, 1), 2, bn=nn.BatchNorm2d(7))
    with pytest.raises(ValueError, match="method"):
        pp.prune_pair(*linear_pair(), 2, "magic")
    fc1, fc2 = linear_pair(seed=12)
    before = snapshot(fc1, fc2)
    with pytest.raises(ValueError, match="keep_idx"):
        pp.slice_linear_pair(fc1, fc2, [0, 0, 1])
    assert unchanged(before, fc1, fc2)


def test_global_pairs_share_the_budget():
    pairs = [linear_pair(n=12, seed=13), linear_pair(n=20, seed=14)]
    originals = copy.deepcopy(pairs)
    kept = pp.prune_pairs_global(pairs, 10, tracking="exact")
    assert sum(len(k) for k in kept) == 22
    for (fc1, fc2), k, (o1, _) in zip(pairs, kept, originals):
        assert fc1.out_features == len(k) == fc2.in_features
        assert fc1.weight.shape[1] == o1.weight.shape[1]


@pytest.mark.parametrize("method", ["exact_oac", "proj550", "l2"])
def test_global_chain_of_pairs(method):
    # (fc1, fc2), (fc2, fc3): fc2 is the reader of the first pair and the producer of the second
    torch.manual_seed(15)
    fc1, fc2, fc3 = nn.Linear(10, 16), nn.Linear(16, 12), nn.Linear(12, 4)
    kept = pp.prune_pairs([(fc1, fc2), (fc2, fc3)], 10, method)
    assert fc2.weight.shape == (len(kept[1]), len(kept[0])) and fc3.in_features == len(kept[1])
    assert len(kept[0]) + len(kept[1]) == 28 - 10
    fc3(torch.relu(fc2(torch.relu(fc1(torch.randn(2, 10))))))


def test_parametrized_layer_is_refused_before_any_write():
    from torch.nn.utils.parametrizations import weight_norm

    fc1, fc2 = nn.Linear(8, 16), weight_norm(nn.Linear(16, 6))
    x = torch.randn(3, 8)
    before = fc2(fc1(x)).detach()
    with pytest.raises(ValueError, match=r"layer2 \(ParametrizationList|layer2 .*parametrization"):
        pp.prune_pair(fc1, fc2, 4, "exact")
    assert fc1.out_features == 16 and torch.equal(fc2(fc1(x)).detach(), before)


def test_multi_dimensional_layernorm_is_refused():
    fc1, fc2 = linear_pair()
    before = snapshot(fc1, fc2)
    with pytest.raises(ValueError, match="1-D normalized_shape"):
        pp.prune_linear_pair(fc1, fc2, 3, bn=nn.LayerNorm((4, 16)).double())
    assert unchanged(before, fc1, fc2)


def test_a_failing_write_restores_every_module(monkeypatch):
    import projprune.surgery as surgery

    pairs = [linear_pair(seed=1), linear_pair(seed=2)]
    before = snapshot(*[m for pair in pairs for m in pair])
    real = surgery._write_pair
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second pair fails after the first was written
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(surgery, "_write_pair", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        pp.prune_pairs_global(pairs, 6, tracking="exact")
    assert unchanged(before, *[m for pair in pairs for m in pair])
    assert all(fc1.out_features == 16 and fc2.in_features == 16 for fc1, fc2 in pairs)


def test_overflowing_redistribution_is_refused():
    fc1, fc2 = linear_pair(dtype=torch.float32)
    before = snapshot(fc1, fc2)
    with pytest.raises(ValueError, match="NaN or Inf weights"):
        pp.prune_linear_pair(fc1, fc2, 5, alpha=1e308, beta=1e308, gamma=1e308)
    assert unchanged(before, fc1, fc2)


def test_numpy_and_tensor_integer_amounts():
    import numpy as np

    for amount in (np.int64(3), torch.tensor(3)):
        fc1, fc2 = linear_pair()
        assert len(pp.prune_pair(fc1, fc2, amount, "l2")) == 13
    with pytest.raises(ValueError, match="amount must be an int"):
        pp.prune_pair(*linear_pair(), 3.0, "l2")


@pytest.mark.parametrize("seed", range(6))
def test_zero_lambda_with_a_singular_gram_always_raises(seed):
    # duplicate rows make W W^T exactly singular; rounding used to decide whether Cholesky noticed
    W = torch.randn(6, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    W = torch.cat([W, W[:2] * 3.0])
    with pytest.raises(ValueError, match="singular"):
        pp.greedy_exact(W, 2, lmbda=0.0)
    with pytest.raises(ValueError, match="singular"):
        pp.solve_closed(W.float(), lmbda=0.0)
