"""The blocked calibrated exact greedy (flushes every ``block`` steps) against brute force in float64."""

import torch

import projprune as pp
from projprune import greedy as greedy_module
from tests.reference_impl import plain_calibrated_greedy


def test_blocked_calibrated_greedy_matches_brute_force(monkeypatch):
    block = 8
    original = greedy_module._CalibratedExactState.__init__

    def small_block(self, *args, **kwargs):
        original(self, *args, **{**kwargs, "block": block})

    monkeypatch.setattr(greedy_module._CalibratedExactState, "__init__", small_block)
    n, T, amount = 101, 500, 70  # n not a multiple of either block (8 here, 32 for U = V + Δ), amount > 2 blocks
    g = torch.Generator().manual_seed(3)
    H = torch.randn(n, 20, generator=g, dtype=torch.float64) @ torch.randn(20, T, generator=g, dtype=torch.float64)
    H = torch.nn.functional.gelu(H + 0.3 * torch.randn(n, T, generator=g, dtype=torch.float64))
    V = torch.randn(6, n, generator=g, dtype=torch.float64)
    W = torch.randn(n, 5, generator=g, dtype=torch.float64)
    stats = pp.ActivationStats(n)
    stats.update(H.T)
    opts = pp.PAIR_METHODS["calib"].options.replace(lmbda=0.3)  # a large λ: the λ (P²) term decides the order
    flushes = []
    original_flush = greedy_module._CalibratedExactState._flush
    monkeypatch.setattr(greedy_module._CalibratedExactState, "_flush",
                        lambda self: (flushes.append(len(self.idx)), original_flush(self)))
    res = pp.greedy_exact(W, amount, opts, V=V, stats=stats)
    order, V_ref, bias_ref = plain_calibrated_greedy(H, V, amount, opts.lmbda)
    assert len(flushes) == amount // block and flushes[-1] < n  # the blocked path ran and squeezed rows
    assert res.order.tolist() == order
    _, _, V_new, bias = pp.apply_pruning(W, None, V, res)
    assert torch.allclose(V_new, V_ref, atol=1e-9, rtol=0)
    assert torch.allclose(bias, bias_ref, atol=1e-9, rtol=0)


def test_float32_batch_sums_are_float64_accurate():
    # the chunked float32 sum of ActivationStats.update against a float64 sum of the same rows
    g = torch.Generator().manual_seed(4)
    h = torch.randn(3, 1000 + 37, 50, generator=g) * 3.0 + 2.0  # leading dims and a row count not a multiple of 64
    stats = pp.ActivationStats(50)
    stats.update(h)
    reference = h.double().reshape(-1, 50).mean(dim=0)
    assert float((stats.mean - reference).abs().max()) < 1e-9 * float(reference.abs().max()) * 50
    assert stats.count == 3 * 1037
