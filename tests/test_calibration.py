"""Calibrated projective pruning (docs/algorithm.md §8) against plain float64 code that forms H."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import projprune as pp
from tests.reference_impl import plain_calibrated_greedy, plain_lazy

TOL = 1e-9


def activations(n=12, T=300, seed=0, redundant=True):
    """``H: (n, T)`` float64 with a few units that are near-combinations of others."""
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(n, T, generator=g, dtype=torch.float64) + 0.5
    if redundant:
        H[3] = 0.7 * H[1] - 0.2 * H[5] + 0.01 * torch.randn(T, generator=g, dtype=torch.float64)
        H[8] = H[2] + 0.05 * torch.randn(T, generator=g, dtype=torch.float64)
    return H


def stats_of(H, chunks=3):
    s = pp.ActivationStats(H.shape[0])
    for part in H.T.chunk(chunks):
        s.update(part)
    return s


# --------------------------------------------------------------------------- statistics
def test_stats_match_explicit_mean_and_covariance_with_mask():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(3, 7, 5, generator=g, dtype=torch.float64) * 2 + 1
    mask = torch.rand(3, 7, generator=g) > 0.3
    s = pp.ActivationStats(5)
    s.update(h[:2], mask[:2])
    s.update(h[2:], mask[2:])
    rows = h[mask]
    mu = rows.mean(dim=0)
    C = (rows - mu).T @ (rows - mu) / rows.shape[0]
    assert s.count == int(mask.sum())
    assert torch.allclose(s.mean, mu, atol=1e-12) and torch.allclose(s.covariance(), C, atol=1e-12)
    other = pp.ActivationStats(5)
    other.update(h[0])
    merged = stats_of(torch.cat([h[0], h[1]]).T, 1)
    assert torch.allclose(pp.ActivationStats(5).merge(other).merge(stats_of(h[1].T, 1)).covariance(),
                          merged.covariance(), atol=1e-12)


def test_stats_reject_bad_input():
    s = pp.ActivationStats(4)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        s.update(torch.randn(3, 5))
    with pytest.raises(ValueError, match="NaN"):
        s.update(torch.tensor([[1.0, float("nan"), 0.0, 0.0]]))
    with pytest.raises(ValueError, match="mask"):
        s.update(torch.randn(2, 3, 4), torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="no samples"):
        s.covariance()
    with pytest.raises(ValueError, match="n must"):
        pp.ActivationStats(0)


class DictModel(nn.Module):
    """Takes tokenizer-style keyword inputs: an FFN over token embeddings."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(20, 6)
        self.fc1, self.act, self.fc2 = nn.Linear(6, 10), nn.GELU(), nn.Linear(10, 6)
        self.drop = nn.Dropout(0.5)

    def forward(self, input_ids, attention_mask=None):
        return self.fc2(self.drop(self.act(self.fc1(self.emb(input_ids)))))


def test_collect_honours_attention_mask_and_restores_the_model():
    model = DictModel().double()
    model.train()
    g = torch.Generator().manual_seed(2)
    batches = []
    for _ in range(3):
        ids = torch.randint(0, 20, (2, 9), generator=g)
        mask = torch.ones(2, 9, dtype=torch.long)
        mask[1, 5:] = 0  # padding
        batches.append({"input_ids": ids, "attention_mask": mask})
    seen = []
    stats = pp.collect_activation_stats(model, [model.fc2], batches, callback=seen.append)[0]
    assert seen == [0, 1, 2] and model.training and not model.fc2._forward_pre_hooks
    with torch.no_grad():  # the plain computation: eval mode (no dropout), padding dropped
        rows = torch.cat([model.act(model.fc1(model.emb(b["input_ids"])))[b["attention_mask"].bool()]
                          for b in batches])
    mu = rows.mean(dim=0)
    assert stats.count == rows.shape[0] == 3 * 14
    assert torch.allclose(stats.covariance(), (rows - mu).T @ (rows - mu) / rows.shape[0], atol=TOL)


def test_collect_on_convolutions_counts_every_pixel():
    torch.manual_seed(3)
    conv1, conv2 = nn.Conv2d(2, 5, 3, padding=1).double(), nn.Conv2d(5, 4, 3, padding=1).double()
    model = nn.Sequential(conv1, nn.ReLU(), conv2)
    x = torch.randn(6, 2, 4, 4, dtype=torch.float64)
    loader = [(x[:3], torch.zeros(3)), (x[3:], torch.zeros(3))]  # (inputs, targets) pairs
    stats = pp.collect_activation_stats(model, [conv2], loader)[0]
    with torch.no_grad():
        rows = torch.relu(conv1(x)).permute(0, 2, 3, 1).reshape(-1, 5)
    assert stats.count == 6 * 16 and torch.allclose(stats.mean, rows.mean(dim=0), atol=TOL)


def test_collect_errors_name_the_argument():
    model = DictModel()
    with pytest.raises(ValueError, match="batches yielded no batch"):
        pp.collect_activation_stats(model, [model.fc2], [])
    with pytest.raises(ValueError, match="batches: the model's forward failed on batch 0"):
        pp.collect_activation_stats(model, [model.fc2], [{"wrong_name": torch.zeros(2, 3, dtype=torch.long)}])
    with pytest.raises(ValueError, match="batches must yield"):
        pp.collect_activation_stats(model, [model.fc2], ["text"])
    unused = nn.Linear(10, 3)
    with pytest.raises(ValueError, match=r"layers\[1\].*saw no activations"):
        pp.collect_activation_stats(model, [model.fc2, unused], [{"input_ids": torch.zeros(1, 3, dtype=torch.long)}])
    with torch.no_grad():
        model.fc1.bias[0] = float("inf")
    with pytest.raises(ValueError, match=r"layers\[0\].*NaN or Inf"):
        pp.collect_activation_stats(model, [model.fc2], [{"input_ids": torch.zeros(1, 3, dtype=torch.long)}])
    assert not model.fc2._forward_pre_hooks


# --------------------------------------------------------------------------- selection and compensation
@pytest.mark.parametrize("output_aware,compensate", [(True, True), (False, True), (True, False)])
def test_calibrated_exact_greedy_matches_plain(output_aware, compensate):
    H = activations(n=14, T=400, seed=4)
    V = torch.randn(5, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    W = torch.randn(14, 9, dtype=torch.float64)
    amount = 9
    res = pp.greedy_exact(W, amount, V=V, stats=stats_of(H), alpha=0, beta=0, gamma=0, lmbda=1e-3,
                          output_aware=output_aware, compensate=compensate)
    order, V_ref, bias_ref = plain_calibrated_greedy(H, V, amount, 1e-3, output_aware, compensate)
    assert res.order.tolist() == order
    _, _, V_new, bias = pp.apply_pruning(W, None, V, res)
    assert torch.allclose(V_new, V_ref, atol=TOL, rtol=0) and torch.allclose(bias, bias_ref, atol=TOL, rtol=0)


def test_calibrated_global_mode_prunes_the_total():
    Hs = [activations(n=10, T=200, seed=6), activations(n=9, T=200, seed=7, redundant=False)]
    Vs = [torch.randn(4, 10, dtype=torch.float64), torch.randn(3, 9, dtype=torch.float64)]
    Ws = [torch.randn(10, 5, dtype=torch.float64), torch.randn(9, 5, dtype=torch.float64)]
    opts = pp.PAIR_METHODS["calib"].options.replace(output_aware=False)
    results = pp.greedy_global(Ws, 9, opts, Vs=Vs, stats=[stats_of(H) for H in Hs])
    assert sum(int((~r.keep).sum()) for r in results) == 9 and all(int(r.keep.sum()) >= 1 for r in results)
    # the near-copy unit 3 of the redundant layer goes first, before any unit of the independent layer
    assert results[0].order.tolist()[0] == 3 and int((~results[0].keep).sum()) > int((~results[1].keep).sum())


def test_lazy_tracking_on_activations_matches_plain_lazy():
    H = activations(n=12, T=300, seed=8)
    T = H.shape[1]
    Hc = (H - H.mean(dim=1, keepdim=True)) / T**0.5
    lam = 1e-3 * float((Hc @ Hc.T).trace()) / 12
    res = pp.greedy_lazy(torch.randn(12, 4, dtype=torch.float64), 6, V=torch.randn(3, 12, dtype=torch.float64),
                         stats=stats_of(H), alpha=0, beta=0, gamma=0, mean_correction=False)
    keep_ref = plain_lazy([Hc], [torch.zeros(12)], [torch.zeros(1, 12)], 6, 0.0, 0.0, 0.0, lam, True, False)[0][0]
    assert torch.equal(res.keep, keep_ref)


def test_refit_equals_ridge_least_squares():
    H = activations(n=10, T=250, seed=9)
    V = torch.randn(4, 10, dtype=torch.float64)
    keep = torch.ones(10, dtype=torch.bool)
    keep[[1, 4, 7]] = False
    V_new, delta = pp.refit_next_layer(V, stats_of(H), keep, lmbda=1e-2)
    T, mu = H.shape[1], H.mean(dim=1)
    Hc = (H - mu[:, None]) / T**0.5
    lam = 1e-2 * float((Hc @ Hc.T).trace()) / 10
    A = torch.cat([Hc[keep].T, lam**0.5 * torch.eye(7, dtype=torch.float64)])  # ridge as an augmented lstsq
    B = torch.cat([(V @ Hc).T, torch.zeros(7, 4, dtype=torch.float64)])
    V_ref = torch.linalg.lstsq(A, B).solution.T
    assert torch.allclose(V_new, V_ref, atol=TOL) and torch.allclose(delta, V @ mu - V_ref @ mu[keep], atol=TOL)


def ffn(n=24, m=10, k=6, seed=0, bias2=True):
    torch.manual_seed(seed)
    fc1, fc2 = nn.Linear(m, n).double(), nn.Linear(n, k, bias=bias2).double()
    with torch.no_grad():  # trained-like: rows in a low-dimensional subspace plus noise
        basis = torch.randn(6, m, dtype=torch.float64)
        fc1.weight.copy_(torch.randn(n, 6, dtype=torch.float64) @ basis / 3 + 0.05 * fc1.weight)
    return fc1, fc2


@pytest.mark.parametrize("method", ["calib", "act_norm"])
def test_calibrated_methods_keep_the_calibration_mean_and_create_a_bias(method):
    fc1, fc2 = ffn(bias2=False)
    model = nn.Sequential(fc1, nn.GELU(), fc2)
    x = torch.randn(400, 10, dtype=torch.float64)
    stats = pp.collect_activation_stats(model, [fc2], [x[:200], x[200:]])[0]
    before = model(x).detach()
    pp.prune_pair(fc1, fc2, 10, method, stats=stats)
    after = model(x).detach()
    assert fc2.bias is not None and fc2.weight.shape == (6, 14)
    assert torch.allclose(after.mean(dim=0), before.mean(dim=0), atol=1e-9)  # mean correction is exact


def test_calib_beats_data_free_and_norm_on_gelu_ffn():
    x = torch.randn(600, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    errors = {}
    for method in ("l2", "exact_oac", "act_norm", "calib"):
        fc1, fc2 = ffn(seed=12)
        model = nn.Sequential(fc1, nn.GELU(), fc2)
        before = model(x[300:]).detach()
        stats = pp.collect_activation_stats(model, [fc2], [x[:300]])[0] if pp.PAIR_METHODS[method].needs_stats \
            else None
        pp.prune_pair(fc1, fc2, 12, method, stats=stats)  # calibration on x[:300], evaluation on x[300:]
        errors[method] = float((model(x[300:]).detach() - before).norm())
    assert errors["calib"] < errors["act_norm"] < errors["l2"]
    assert errors["calib"] < 0.7 * errors["exact_oac"], errors


def test_data_free_compensation_no_longer_hurts_a_gelu_ffn():
    """Averaged over trained-like layers: compensating into V (no bias term) lowers output error."""
    x = torch.randn(500, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(13))
    gain = []
    for seed in range(8):
        errs = []
        for compensate in (False, True):
            fc1, fc2 = ffn(seed=seed)
            model = nn.Sequential(fc1, nn.GELU(), fc2)
            before = model(x).detach()
            pp.prune_linear_pair(fc1, fc2, 8, tracking="exact", alpha=0, beta=0, gamma=0, output_aware=True,
                                 compensate=compensate)
            errs.append(float((model(x).detach() - before).norm()))
        gain.append(errs[0] - errs[1])
    assert np.mean(gain) > 0


def test_calibration_bad_input_leaves_modules_untouched():
    fc1, fc2 = ffn()
    model = nn.Sequential(fc1, nn.GELU(), fc2)
    stats = pp.collect_activation_stats(model, [fc2], [torch.randn(50, 10, dtype=torch.float64)])[0]
    state = copy.deepcopy(model.state_dict())
    wrong = pp.ActivationStats(7)
    wrong.update(torch.randn(20, 7))
    cases = [
        (lambda: pp.prune_pair(fc1, fc2, 5, "calib"), "stats="),
        (lambda: pp.prune_pair(fc1, fc2, 5, "calib", stats=wrong), r"stats\[0\] describe 7 units"),
        (lambda: pp.prune_pair(fc1, fc2, 5, "l2", stats=stats), "takes no stats"),
        (lambda: pp.prune_linear_pair(fc1, fc2, 5, stats=stats), "alpha, beta and gamma must be 0"),
        (lambda: pp.prune_linear_pair(fc1, fc2, 5, stats=pp.ActivationStats(24), alpha=0, beta=0), "no samples"),
        (lambda: pp.prune_linear_pair(fc1, fc2, 5, refit=True), "refit needs calibration"),
        (lambda: pp.prune_linear_pair(fc1, fc2, 5, tracking="greedy"), "tracking must be one of"),
        (lambda: pp.prune_linear_pair(fc1, fc2, 5, alhpa=0.1), "unknown option"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()) and fc1.out_features == 24


def test_conv_pair_with_stats_keeps_the_interior_mean():
    torch.manual_seed(14)
    conv1, conv2 = nn.Conv2d(3, 8, 3, padding=1).double(), nn.Conv2d(8, 4, 1).double()  # 1x1: no border effect
    model = nn.Sequential(conv1, nn.ReLU(), conv2)
    x = torch.randn(20, 3, 6, 6, dtype=torch.float64)
    stats = pp.collect_activation_stats(model, [conv2], [x])[0]
    before = model(x).detach()
    pp.prune_conv_pair(conv1, conv2, 3, pp.PAIR_METHODS["calib"].options, stats=stats)
    after = model(x).detach()
    assert conv1.out_channels == 5 and conv2.in_channels == 5
    assert torch.allclose(after.mean(dim=(0, 2, 3)), before.mean(dim=(0, 2, 3)), atol=1e-9)


def test_options_object_and_deprecated_solver_keyword():
    opts = pp.ProjectionOptions(tracking="exact", alpha=0.0)
    assert opts.replace(lmbda=1e-2).lmbda == 1e-2 and opts.lmbda == 1e-3
    with pytest.raises(ValueError, match="lmbda"):
        opts.replace(lmbda=float("nan"))
    W = torch.randn(10, 6, dtype=torch.float64)
    with pytest.warns(DeprecationWarning, match="tracking"):
        legacy = pp.greedy_global([W], 3, solver="exact")
    assert torch.equal(legacy[0].keep, pp.greedy_global([W], 3, opts.replace(alpha=0.5))[0].keep)



def test_blocked_gram_of_a_wide_layer_matches_the_plain_product():
    h = torch.randn(300, 1100, dtype=torch.float64, generator=torch.Generator().manual_seed(16))  # 2 blocks
    s = pp.ActivationStats(1100)
    s.update(h)
    assert torch.allclose(s.sum_outer, h.T @ h, atol=1e-9, rtol=0)
