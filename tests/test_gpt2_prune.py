"""gpt2/prune.py: QK scores against plain float64 code, exact compensation, every method, MLP pruning."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from gpt2.model import GPT2, GPT2ModelConfig
from gpt2.prune import (
    ATTENTION_METHODS,
    attention_keep_count,
    norm_scores,
    proj_coef_scores,
    proj_distance_scores,
    prune_attention,
    prune_head_qk,
    prune_mlp,
    slice_qk,
)

LMBDA = 1e-3


def _model(seed: int = 0, dtype=torch.float32) -> GPT2:
    torch.manual_seed(seed)
    model = GPT2(GPT2ModelConfig(vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=2)).to(dtype).eval()
    with torch.no_grad():  # non-zero biases so the bias column matters
        for block in model.h:
            block.attn.q_proj.bias.normal_(0, 0.5)
            block.attn.k_proj.bias.normal_(0, 0.5)
            block.attn.q_proj.weight.normal_(0, 0.5)
            block.attn.k_proj.weight.normal_(0, 0.5)
    return model


def _plain_rows(attn, head, which):
    qk = attn.qk_dim
    proj = attn.q_proj if which == "q" else attn.k_proj
    W = proj.weight.detach().double().numpy()[head * qk:(head + 1) * qk]
    b = proj.bias.detach().double().numpy()[head * qk:(head + 1) * qk]
    return np.concatenate([W, b[:, None]], axis=1)


def _plain_ridge(rows: np.ndarray, i: int, lmbda: float):
    """Direct ridge fit of row i on the other rows: (coefficients over the others, distance)."""
    others = np.delete(rows, i, axis=0)
    coef = np.linalg.solve(others @ others.T + lmbda * np.eye(len(others)), others @ rows[i])
    return coef, np.linalg.norm(coef @ others - rows[i])


def test_norm_scores_match_plain_float64():
    attn = _model().h[0].attn
    got = norm_scores(attn).numpy()
    Wq, Wk = attn.q_proj.weight.detach().double().numpy(), attn.k_proj.weight.detach().double().numpy()
    for h in range(attn.n_head):
        for d in range(attn.qk_dim):
            r = h * attn.qk_dim + d
            assert got[h, d] == pytest.approx(np.linalg.norm(Wq[r]) + np.linalg.norm(Wk[r]), rel=1e-12)


def test_proj_distance_and_coef_scores_match_plain_float64():
    attn = _model().h[1].attn
    dist, coef = proj_distance_scores(attn, LMBDA).numpy(), proj_coef_scores(attn, LMBDA).numpy()
    for h in range(attn.n_head):
        Qr, Kr = _plain_rows(attn, h, "q"), _plain_rows(attn, h, "k")
        for d in range(attn.qk_dim):
            cq, dq = _plain_ridge(Qr, d, LMBDA)
            ck, dk = _plain_ridge(Kr, d, LMBDA)
            assert dist[h, d] == pytest.approx(dq + dk, rel=1e-8, abs=1e-12)
            assert coef[h, d] == pytest.approx(np.linalg.norm(cq) + np.linalg.norm(ck), rel=1e-8)


def _make_dependent(model: GPT2) -> None:
    """Head 0 of layer 0: q dim 3 = .7 q1 - 1.2 q5; head 1: k dim 2 = .5 k0 + .3 k6 (weights and biases)."""
    attn, qk = model.h[0].attn, model.h[0].attn.qk_dim
    with torch.no_grad():
        for p in (attn.q_proj.weight, attn.q_proj.bias):
            p[3] = 0.7 * p[1] - 1.2 * p[5]
        for p in (attn.k_proj.weight, attn.k_proj.bias):
            p[qk + 2] = 0.5 * p[qk + 0] + 0.3 * p[qk + 6]


def _dependent_scores():
    """A float64 model with linearly dependent query/key dimensions, an input and its scores."""
    model = _model(dtype=torch.float64)
    _make_dependent(model)
    x = torch.randn(2, 7, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    return model, model.h[0].attn, x, model.h[0].attn.scores(x)


def test_compensated_prune_of_dependent_dimension_keeps_scores():
    model, attn, x, before = _dependent_scores()
    kept = prune_attention(model, 1 / 8, "proj_comp", lmbda=1e-10, layers=[0])[0]
    assert attn.qk_dim == 7 and attn.q_proj.weight.shape == (14, 16)
    removed = [set(range(8)) - set(kept[h].tolist()) for h in range(2)]
    assert removed[0] <= {1, 3, 5} and removed[1] <= {0, 2, 6}
    after = attn.scores(x)
    assert before.abs().max() > 1.0
    assert (after - before).abs().max() < 1e-6


def test_uncompensated_prune_of_dependent_dimension_changes_scores():
    """The fold is what keeps the scores: selecting the same dimension without it does not."""
    _, attn, x, before = _dependent_scores()
    slice_qk(attn, torch.tensor([[0, 1, 2, 4, 5, 6, 7], [0, 1, 3, 4, 5, 6, 7]]))
    assert (attn.scores(x) - before).abs().max() > 1e-2


def test_prune_head_qk_matches_plain_fold():
    """One greedy step by hand: the smallest bound decides the side; the fold uses the ridge coefficients."""
    gen = torch.Generator().manual_seed(5)
    Q, K = torch.randn(6, 9, generator=gen, dtype=torch.float64), torch.randn(6, 9, generator=gen, dtype=torch.float64)
    keep, Q_new, K_new = prune_head_qk(Q, K, 1, LMBDA)
    Qn, Kn = Q.numpy(), K.numpy()
    fits_q = [_plain_ridge(Qn, i, LMBDA) for i in range(6)]
    fits_k = [_plain_ridge(Kn, i, LMBDA) for i in range(6)]
    err_k = [fits_q[i][1] * np.linalg.norm(Kn[i]) for i in range(6)]
    err_q = [np.linalg.norm(Qn[i]) * fits_k[i][1] for i in range(6)]
    i = int(np.argmin(np.minimum(err_k, err_q)))
    others = [j for j in range(6) if j != i]
    assert keep.tolist() == others
    exp_Q, exp_K = Qn[others].copy(), Kn[others].copy()
    if err_k[i] <= err_q[i]:
        exp_K += fits_q[i][0][:, None] * Kn[i]
    else:
        exp_Q += fits_k[i][0][:, None] * Qn[i]
    np.testing.assert_allclose(Q_new.numpy(), exp_Q, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(K_new.numpy(), exp_K, rtol=1e-8, atol=1e-10)


def test_proj_exact_removes_a_jointly_dependent_dimension():
    model = _model(dtype=torch.float64)
    attn = model.h[0].attn
    with torch.no_grad():
        for p in (attn.q_proj.weight, attn.q_proj.bias, attn.k_proj.weight, attn.k_proj.bias):
            p[3] = 0.7 * p[1] - 1.2 * p[5]
    kept = prune_attention(model, 1 / 8, "proj_exact", lmbda=1e-8, layers=[0])[0]
    assert set(range(8)) - set(kept[0].tolist()) <= {1, 3, 5}


@pytest.mark.parametrize("method", sorted(ATTENTION_METHODS))
def test_every_method_prunes_every_head_and_runs(method):
    model = _model()
    idx = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(0))
    kept = prune_attention(model, 0.3, method, lmbda=LMBDA, seed=1)
    n_keep = attention_keep_count(8, 0.3)
    assert n_keep == 6
    for block, keep in zip(model.h, kept):
        assert keep.shape == (2, n_keep)
        assert all(len(set(row.tolist())) == n_keep for row in keep)
        assert block.attn.q_proj.weight.shape == block.attn.k_proj.weight.shape == (2 * n_keep, 16)
        assert block.attn.v_proj.weight.shape == (16, 16)  # values untouched
    assert model.config.qk_dims == [n_keep, n_keep]
    logits = model(idx)
    assert logits.shape == (2, 16, 40) and torch.isfinite(logits).all()


def test_random_is_seeded_and_selection_uses_scores():
    a, b = _model(), _model()
    assert all(torch.equal(x, y) for x, y in zip(prune_attention(a, 0.5, "random", seed=3),
                                                 prune_attention(b, 0.5, "random", seed=3)))
    model = _model()
    expected = torch.sort(torch.topk(norm_scores(model.h[0].attn), 4, dim=1).indices, dim=1).values
    assert torch.equal(prune_attention(model, 0.5, "norm")[0], expected)


def test_depgraph_prunes_the_same_positions_in_every_head():
    model = _model()
    attn = copy.deepcopy(model.h[0].attn)
    keep = prune_attention(model, 0.25, "depgraph", layers=[0])[0]
    assert torch.equal(keep[0], keep[1])
    # Torch-Pruning's group-norm importance, averaged over heads: squared norms of the coupled Q/K rows.
    Wq = attn.q_proj.weight.detach().double().view(2, 8, -1)
    Wk = attn.k_proj.weight.detach().double().view(2, 8, -1)
    bq, bk = attn.q_proj.bias.detach().double().view(2, 8), attn.k_proj.bias.detach().double().view(2, 8)
    imp = (Wq.pow(2).sum(-1) + Wk.pow(2).sum(-1) + bq.pow(2) + bk.pow(2)).mean(0)
    assert keep[0].tolist() == sorted(torch.topk(imp, 6).indices.tolist())


def test_bad_arguments_raise_before_modifying():
    model = _model()
    with pytest.raises(ValueError, match="method"):
        prune_attention(model, 0.2, "nope")
    with pytest.raises(ValueError, match="rate"):
        prune_attention(model, 1.0, "norm")
    with pytest.raises(ValueError, match="layers"):
        prune_attention(model, 0.2, "norm", layers=[5])
    assert model.config.qk_dims == [8, 8]


@pytest.mark.parametrize("method", ["exact", "random"])
def test_mlp_pruning_through_the_core(method):
    model = _model()
    idx = torch.randint(0, 40, (1, 16))
    kept = prune_mlp(model, 0.25, method, seed=1)
    assert [k.numel() for k in kept] == [48, 48]
    assert model.config.mlp_dims == [48, 48]
    assert model.h[0].mlp.c_proj.weight.shape == (16, 48)
    assert torch.isfinite(model(idx)).all()


def test_calibrated_mlp_pruning_uses_c_proj_input_statistics():
    from projprune import collect_activation_stats, prune_pair

    model, direct = _model(), _model()
    calibration = [torch.randint(0, 40, (4, 16), generator=torch.Generator().manual_seed(3))]
    idx = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        reference = direct(idx)
    errors = {}
    for method in ("l2", "calib"):
        pruned = _model()
        prune_mlp(pruned, 0.5, method, calibration=calibration if method == "calib" else None)
        with torch.no_grad():
            errors[method] = float((pruned(idx) - reference).norm())
    assert errors["calib"] < errors["l2"]
    prune_mlp(model, 0.25, "calib", calibration=calibration)
    for block in direct.h:  # the same as the core with statistics collected block by block
        stats = collect_activation_stats(direct, [block.mlp.c_proj], calibration)[0]
        prune_pair(block.mlp.c_fc, block.mlp.c_proj, 16, "calib", stats=stats)
    for a, b in zip(model.parameters(), direct.parameters()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="calibration"):
        prune_mlp(_model(), 0.25, "act_norm")
