"""The blocked calibrated exact greedy (flushes every ``block`` steps) against brute force in float64."""

import pytest
import torch

import projprune as pp
from projprune import _symmetric as symmetric_module
from projprune import greedy as greedy_module
from tests.reference_impl import plain_calibrated_greedy


@pytest.mark.parametrize("block_width", [256, 16])  # 16: P, S and the Gram in 6 blocks, upper-only updates
def test_blocked_calibrated_greedy_matches_brute_force(monkeypatch, block_width):
    monkeypatch.setattr(symmetric_module, "_BLOCK_WIDTH", block_width)
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
    gram_reads = []  # Uᵀc read from the tracked Gram matrix G = UᵀU, not from a product with U
    original_dots = greedy_module._CalibratedExactState._dots_with_removed
    monkeypatch.setattr(greedy_module._CalibratedExactState, "_dots_with_removed",
                        lambda self, q, c: (gram_reads.append(self.G is not None), original_dots(self, q, c))[1])
    res = pp.greedy_exact(W, amount, opts, V=V, stats=stats)
    order, V_ref, bias_ref = plain_calibrated_greedy(H, V, amount, opts.lmbda)
    assert len(flushes) == amount // block and flushes[-1] < n  # the blocked path ran and squeezed rows
    assert gram_reads == [True] * amount
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


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("n", [700, 1100])  # 2 and 4 column blocks
def test_blocked_symmetric_helpers_match_plain_float64(n):
    g = torch.Generator().manual_seed(17)
    rows = torch.randn(300, n, generator=g, dtype=torch.float64)
    plain = rows.T @ rows
    assert _rel(symmetric_module.gram(rows), plain) < 1e-9
    upper = symmetric_module.gram(rows, upper_only=True)
    assert _rel(upper.triu(), plain.triu()) < 1e-9
    for r in (0, 1, n // 3, n - 1):  # rows of a symmetric matrix read from its upper triangle
        assert torch.equal(symmetric_module.symmetric_row(upper, r), upper.triu()[r] + upper.triu(1)[:, r])
        assert _rel(symmetric_module.symmetric_row(upper, r), plain[r]) < 1e-9
    A, B = torch.randn(n, 12, generator=g, dtype=torch.float64), torch.randn(n, 12, generator=g, dtype=torch.float64)
    M = upper.clone()
    symmetric_module.sub_upper_product_(M, A, B)
    assert _rel(M.triu(), (plain - A @ B.T).triu()) < 1e-9
    C = torch.randn(n, n, generator=g, dtype=torch.float64)
    assert torch.equal(symmetric_module.symmetrised(C), (C + C.T) * 0.5)


def test_low_precision_statistics_are_opt_in_and_within_their_bound():
    g = torch.Generator().manual_seed(18)
    n, m, T = 600, 64, 5000  # two column blocks, several chunks and a partial one
    W = torch.randn(n, m, generator=g) / m**0.5
    h = torch.nn.functional.gelu(torch.randn(T, m, generator=g) @ W.T + 0.2)
    exact, low = pp.ActivationStats(n), pp.ActivationStats(n, gram_dtype=torch.bfloat16)
    assert exact.gram_dtype is None  # the default is unchanged
    exact.update(h)
    low.update(h)
    reference = h.double().T @ h.double()
    assert _rel(exact.sum_outer, reference) < 1e-6  # float32 products
    error = float((low.sum_outer - reference).norm() / reference.norm())
    assert 0 < error < 3e-3  # documented bound of the bf16 products
    assert _rel(low.covariance(), exact.covariance()) < 1e-2  # centred: some cancellation
    assert torch.equal(low.sum, exact.sum) and low.count == exact.count == T  # sums stay exact
    assert low.to("cpu").gram_dtype is torch.bfloat16
    with pytest.raises(ValueError, match="gram_dtype"):
        pp.ActivationStats(n, gram_dtype=torch.float16)
