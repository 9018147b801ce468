"""Lazy greedy against the plain §4 implementation; exact greedy against brute force."""

import pytest
import torch

import projprune as pp
from tests.reference_impl import (
    DEVICES,
    brute_exact,
    brute_exact_compensated,
    plain_lazy,
    plain_lazy_compensated,
)


def layer(n, m, k, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, m, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64),
            torch.randn(k, n, generator=g, dtype=torch.float64))


def close(a, b, tol=1e-8):
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("decay", [True, False])
@pytest.mark.parametrize("v_uses_beta", [False, True])
@pytest.mark.parametrize("shape", [(24, 40), (30, 12)])
def test_lazy_single_layer_matches_plain(device, decay, v_uses_beta, shape):
    W, b, V = layer(*shape, k=7, seed=shape[0])
    alpha, beta, gamma, amount = 0.5, -0.3, 0.4, shape[0] // 2
    res = pp.greedy_lazy(W.to(device), amount, alpha=alpha, beta=beta, gamma=gamma, decay=decay,
                         v_uses_beta=v_uses_beta)
    keep, Ua, Ub, Ug, W_ref, b_ref, V_ref = plain_lazy([W], [b], [V], amount, alpha, beta, gamma, 1e-3, decay,
                                                      v_uses_beta)[0]
    assert torch.equal(res.keep.cpu(), keep)
    assert close(res.scale_w, Ua) and close(res.scale_b, Ub)
    assert close(res.scale_v, Ub if v_uses_beta else Ug)
    W2, b2, V2, _ = pp.apply_pruning(W.to(device), b.to(device), V.to(device), res)
    assert close(W2, W_ref) and close(b2, b_ref) and close(V2, V_ref)
    assert W2.shape == (shape[0] - amount, shape[1]) and V2.shape == (7, shape[0] - amount)


@pytest.mark.parametrize("decay", [True, False])
@pytest.mark.parametrize("v_uses_beta", [False, True])
def test_lazy_global_matches_plain(decay, v_uses_beta):
    layers = [layer(20, 30, 5, 1), layer(12, 9, 4, 2), layer(16, 16, 3, 3)]
    Ws, bs, Vs = zip(*layers)
    amount = 25
    results = pp.greedy_global(list(Ws), amount, tracking="lazy", alpha=0.5, beta=0.5, gamma=0.5, decay=decay,
                               v_uses_beta=v_uses_beta)
    refs = plain_lazy(Ws, bs, Vs, amount, 0.5, 0.5, 0.5, 1e-3, decay, v_uses_beta)
    assert sum(int((~r.keep).sum()) for r in results) == amount
    for res, (keep, Ua, Ub, _, W_ref, b_ref, V_ref), W, b, V in zip(results, refs, Ws, bs, Vs):
        assert torch.equal(res.keep, keep)
        assert close(res.scale_w, Ua) and close(res.scale_b, Ub)
        W2, b2, V2, _ = pp.apply_pruning(W, b, V, res)
        assert close(W2, W_ref) and close(b2, b_ref) and close(V2, V_ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape, lmbda", [((20, 30), 1e-3), ((25, 10), 1e-3), ((18, 18), 1e-2)])
def test_exact_matches_brute_force_without_row_scaling(device, shape, lmbda):
    # With alpha = 0 the rows are never rescaled, so the exact greedy must equal a brute-force
    # greedy that recomputes every ridge projection from scratch, for any lambda.
    W, _, _ = layer(*shape, k=3, seed=shape[1])
    amount = shape[0] - 3
    res = pp.greedy_exact(W.to(device), amount, alpha=0.0, beta=0.5, gamma=0.7, lmbda=lmbda)
    keep, order, U = brute_exact(W, amount, 0.0, 0.5, 0.7, lmbda, decay=True)
    assert res.order.cpu().tolist() == order
    assert torch.equal(res.keep.cpu(), keep)
    assert close(res.scale_b, U[1], 1e-7) and close(res.scale_v, U[2], 1e-7)


@pytest.mark.parametrize("decay", [True, False])
def test_exact_matches_brute_force_with_row_scaling(decay):
    # With alpha != 0 the exact greedy scales distances by |U_alpha|, exact as lambda -> 0.
    W, _, _ = layer(14, 40, k=3, seed=11)
    amount = 10
    res = pp.greedy_exact(W, amount, alpha=0.5, beta=0.5, gamma=0.5, lmbda=1e-10, decay=decay)
    keep, order, U = brute_exact(W, amount, 0.5, 0.5, 0.5, 1e-10, decay=decay)
    assert res.order.tolist() == order
    assert close(res.scale_w, U[0], 1e-6) and close(res.scale_v, U[2], 1e-6)


def test_exact_long_run_crosses_block_flushes():
    # more removals than the block size of the downdate, n > m
    W, _, _ = layer(48, 20, k=3, seed=12)
    res = pp.greedy_exact(W, 40, alpha=0.0)
    keep, order, _ = brute_exact(W, 40, 0.0, 0.0, 0.0, 1e-3, decay=True)
    assert res.order.tolist() == order


def test_exact_global_prunes_amount_and_keeps_a_unit():
    Ws = [layer(10, 20, 3, s)[0] for s in range(3)]
    results = pp.greedy_global(Ws, 27, tracking="exact")
    assert [int(r.keep.sum()) for r in results] == [1, 1, 1]


@pytest.mark.parametrize("solver", ["lazy", "exact"])
def test_duplicate_row_pruned_first(solver):
    W, _, _ = layer(12, 30, 3, seed=13)
    W[9] = W[2]
    res = (pp.greedy_lazy if solver == "lazy" else pp.greedy_exact)(W, 1)
    assert res.order.tolist()[0] in (2, 9)


def test_output_aware_changes_choice():
    W, b, V = layer(12, 30, 4, seed=14)
    W[9] = W[2]  # 2 and 9 are duplicates: both have distance ~0
    V[:, 2] *= 100.0  # unit 2 matters a lot downstream
    res = pp.greedy_exact(W, 1, V=V, output_aware=True)
    assert res.order.tolist() == [9]
    V2 = V.clone()
    V2[:, 9] *= 100.0
    V2[:, 2] /= 100.0
    assert pp.greedy_lazy(W, 1, V=V2, output_aware=True).order.tolist() == [2]


def test_amount_zero_is_identity():
    W, b, V = layer(8, 5, 3, seed=15)
    for fn in (pp.greedy_lazy, pp.greedy_exact):
        res = fn(W, 0)
        W2, b2, V2, _ = pp.apply_pruning(W, b, V, res)
        assert torch.equal(W2, W) and torch.equal(b2, b) and torch.equal(V2, V)


def test_float32_in_float32_out():
    W, b, V = layer(16, 20, 3, seed=16)
    res = pp.greedy_exact(W.float(), 4, V=V.float(), b=b.float(), compensate=True)
    assert res.scale_w.dtype == torch.float32 and res.v_delta.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"amount": -1}, "amount"),
        ({"amount": 8}, "amount"),
        ({"amount": 2.0}, "amount"),
        ({"amount": 2, "lmbda": -1.0}, "lmbda"),
        ({"amount": 2, "output_aware": True}, "need V"),
        ({"amount": 2, "alpha": float("nan")}, "alpha"),
    ],
)
def test_bad_arguments(kwargs, message):
    W, _, _ = layer(8, 5, 3, seed=17)
    amount = kwargs.pop("amount")
    with pytest.raises(ValueError, match=message):
        pp.greedy_lazy(W, amount, **kwargs)
    with pytest.raises(ValueError, match=message):
        pp.greedy_exact(W, amount, **kwargs)


def test_bad_shapes():
    W, b, V = layer(8, 5, 3, seed=18)
    with pytest.raises(ValueError, match="V"):
        pp.greedy_exact(W, 2, V=V[:, :5], output_aware=True)
    with pytest.raises(ValueError, match="b"):
        pp.greedy_lazy(W, 2, b=b[:3])
    with pytest.raises(ValueError, match="dtype"):
        pp.greedy_lazy(W, 2, V=V.float(), output_aware=True)
    with pytest.raises(ValueError, match="singular"):
        pp.greedy_exact(W, 2, lmbda=0.0)  # 8 rows in 5 dimensions
    with pytest.raises(ValueError, match="amount"):
        pp.greedy_global([W, W], 15)


@pytest.mark.parametrize("solver_fn", [pp.greedy_exact, pp.greedy_lazy])
@pytest.mark.parametrize("output_aware", [False, True])
def test_compensation_and_output_aware_match_brute_force(solver_fn, output_aware):
    W, b, V = layer(24, 40, 6, seed=19)
    c = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(20))
    amount = 15
    res = solver_fn(W, amount, alpha=0.0, beta=0.0, gamma=0.0, b=b, V=V, output_aware=output_aware, compensate=True,
                    identity_activation=True)
    reference = brute_exact_compensated if solver_fn is pp.greedy_exact else plain_lazy_compensated
    order, V_eff, c_eff = reference(W, b, V, c, amount, 1e-3, output_aware)
    assert res.order.tolist() == order
    _, _, V2, delta = pp.apply_pruning(W, b, V, res)
    assert close(V2, V_eff[:, res.keep], 1e-8) and close(c + delta, c_eff, 1e-8)


@pytest.mark.parametrize("fn", [pp.greedy_lazy, pp.greedy_exact])
def test_float32_compute_dtype(fn):
    W, b, V = layer(20, 30, 4, seed=21)
    res64 = fn(W, 6)
    res32 = fn(W, 6, dtype=torch.float32)
    assert torch.equal(res32.keep, res64.keep) and res32.scale_w.dtype == torch.float64
    assert close(res32.scale_w, res64.scale_w, 1e-4)
