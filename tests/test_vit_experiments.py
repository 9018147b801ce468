"""vit/experiments.py and vit/metrics.py: the uniform schedule, the adaptive stopping rule (on an
accuracy function the test controls), the norm analysis against float64 ridge solves, and the counters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.conftest import tiny_vit
from vit.experiments import adaptive_chunk, norm_analysis, run_adaptive, run_uniform, uniform_amounts
from vit.methods import PruneContext, get_method
from vit.metrics import count_macs, count_nonzero_params, evaluate, model_size_mb, time_inference
from vit.models import mlp_pairs


def widths(model: nn.Module) -> list[int]:
    return [fc1.weight.shape[0] for fc1, _ in mlp_pairs(model)]


def test_uniform_amounts_are_the_papers_schedule():
    assert uniform_amounts() == [round(i**1.1 * 50) for i in range(24)]
    assert uniform_amounts()[:4] == [0, 50, 107, 167] and uniform_amounts()[-1] == 1574
    small = uniform_amounts(256 / 3072)
    assert small == [round(round(i**1.1 * 50) * 256 / 3072) for i in range(24)]
    assert small[-1] == 131 and uniform_amounts(1.0, 3) == [0, 50, 107]
    assert adaptive_chunk(3072) == 256 and adaptive_chunk(256) == 21 and adaptive_chunk(3) == 1
    with pytest.raises(ValueError):
        uniform_amounts(0.0)


def test_uniform_prunes_every_amount_from_the_original():
    model = tiny_vit()
    original = [p.detach().clone() for p in model.parameters()]
    seen = []

    def fake_eval(pruned: nn.Module) -> dict:
        seen.append(widths(pruned))
        return {"top1": 1.0 - sum(64 - w for w in widths(pruned)) / 1000}

    rows = run_uniform(model, get_method("l2"), [0, 3, 10, 3], fake_eval)
    assert seen == [[64, 64], [61, 61], [54, 54], [61, 61]]
    assert [r["amount"] for r in rows] == [0, 3, 10, 3]
    assert [r["removed_units"] for r in rows] == [0, 6, 20, 6]
    assert [r["mlp_units"] for r in rows] == [128, 122, 108, 122]
    assert [r["top1"] for r in rows] == pytest.approx([1.0, 0.994, 0.98, 0.994])
    for a, b in zip(original, model.parameters()):  # the original model is untouched
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="amounts"):
        run_uniform(model, get_method("l2"), [64], fake_eval)


def controlled_accuracy(pruned: nn.Module) -> dict:
    """Layer 1 (tried first) tolerates 16 removed units, then collapses; layer 0 loses 3 % per 8 units."""
    removed0, removed1 = (64 - w for w in widths(pruned))
    acc1 = 1.0 if removed1 <= 16 else 0.5
    acc0 = 1.0 - 0.03 * removed0 / 8
    return {"top1": acc1 * acc0}


def test_adaptive_stops_at_the_threshold_and_undoes_the_crossing_step():
    model, rows = run_adaptive(tiny_vit(), get_method("l2"), 8, controlled_accuracy, threshold=0.9)
    # threshold per layer: 0.9 ** (1/2) = 0.9487. Layer 1: +8, +8 accepted (1.0), +8 -> 0.5 rejected.
    # Layer 0: each step keeps (1 - .03k) / (1 - .03(k-1)) >= 0.9487, so it runs until 8 units remain.
    assert widths(model) == [8, 48]
    assert [(r["layer"], r["accepted"]) for r in rows] == (
        [(-1, True), (1, True), (1, True), (1, False)] + [(0, True)] * 7
    )
    assert [r["layer_removed"] for r in rows] == [0, 8, 16, 16, 8, 16, 24, 32, 40, 48, 56]
    assert rows[-1]["removed_units"] == 72
    assert rows[-1]["top1"] == pytest.approx(1 - 0.03 * 7)


def test_adaptive_threshold_is_relative_to_the_last_accepted_step():
    # Each 8 units in the last layer cost 6 %: 0.94 < 0.9 ** 0.5 of the previous, so the first step fails;
    # with threshold 0.85 (0.922 per layer) every step passes until one unit-chunk remains.
    def accuracy(pruned: nn.Module) -> dict:
        return {"top1": 0.94 ** ((128 - sum(widths(pruned))) / 8)}

    model, rows = run_adaptive(tiny_vit(), get_method("l1"), 8, accuracy, threshold=0.9)
    assert widths(model) == [64, 64] and [r["accepted"] for r in rows] == [True, False, False]
    model, rows = run_adaptive(tiny_vit(), get_method("l1"), 8, accuracy, threshold=0.85)
    assert widths(model) == [8, 8] and all(r["accepted"] for r in rows)


def test_adaptive_rejects_non_repeatable_methods_and_bad_arguments():
    with pytest.raises(ValueError, match="cannot"):
        run_adaptive(tiny_vit(), get_method("svd3"), 8, controlled_accuracy)
    with pytest.raises(ValueError, match="chunk"):
        run_adaptive(tiny_vit(), get_method("l2"), 0, controlled_accuracy)
    with pytest.raises(ValueError, match="threshold"):
        run_adaptive(tiny_vit(), get_method("l2"), 8, controlled_accuracy, threshold=1.5)


def test_adaptive_runs_with_masks():
    model, rows = run_adaptive(tiny_vit(), get_method("mask_l1_structured"), 16, lambda m: {"top1": 1.0},
                               PruneContext())
    # masks keep the shapes; every accepted chunk zeroes 16 more rows of mlp[0].weight
    assert widths(model) == [64, 64]
    for fc1, _ in mlp_pairs(model):
        assert int((fc1.weight.abs().sum(dim=1) == 0).sum()) == 48


def test_norm_analysis_matches_float64_ridge_solves():
    model = tiny_vit(2)
    lmbda = 1e-3
    rows = norm_analysis(model, lmbda)
    assert len(rows) == 128
    for layer, (fc1, fc2) in enumerate(mlp_pairs(model)):
        W = fc1.weight.detach().double()
        V = fc2.weight.detach().double()
        b = fc1.bias.detach().double()
        for unit in (0, 17, 63):
            others = torch.cat([W[:unit], W[unit + 1:]])  # (n-1, m)
            gram = others @ others.T + lmbda * torch.eye(others.shape[0], dtype=torch.float64)
            q = torch.linalg.solve(gram, others @ W[unit])
            distance = torch.linalg.norm(q @ others - W[unit])
            row = rows[layer * 64 + unit]
            assert (row["layer"], row["unit"]) == (layer, unit)
            assert row["distance"] == pytest.approx(float(distance), rel=1e-6, abs=1e-9)
            assert row["w_norm"] == pytest.approx(float(W[unit].norm()))
            assert row["b_abs"] == pytest.approx(float(b[unit].abs()))
            assert row["v_norm"] == pytest.approx(float(V[:, unit].norm()))


def test_evaluate_counts_top1_top5_and_loss():
    model = nn.Linear(6, 6, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.diag(torch.arange(1.0, 7.0)))
    x = torch.eye(6)[[5, 0, 1]]  # logits peak at class 5, 0, 1
    y = torch.tensor([5, 0, 4])
    result = evaluate(model, [(x, y)])
    logits = model(x).detach().double()
    expected_loss = float(torch.nn.functional.cross_entropy(logits, y, reduction="mean"))
    assert result["top1"] == pytest.approx(2 / 3)
    # third image: logits (0, 2, 0, 0, 0, 0); class 4 ties with the zeros, ranked by index -> not in top-5
    assert result["top5"] == pytest.approx(2 / 3 + (1 / 3 if 4 in logits[2].topk(5).indices else 0))
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert evaluate(model, [(x, y), (x, y)], max_batches=1)["images"] == 3


def test_count_macs_matches_the_vit_formula():
    model = tiny_vit()
    tokens, dim, mlp, patches = 5, 32, 64, 4  # 8x8 image, patch 4: 4 patches + class token
    per_layer = tokens * dim * 3 * dim + 2 * tokens * tokens * dim + tokens * dim * dim + 2 * tokens * dim * mlp
    expected = patches * 3 * 16 * dim + 2 * per_layer + dim * 10
    assert count_macs(model, torch.zeros(2, 3, 8, 8)) == expected
    get_method("l2").prune(model, {0: 14}, PruneContext())
    assert count_macs(model, torch.zeros(1, 3, 8, 8)) == expected - 2 * tokens * dim * 14


def test_size_nonzero_and_timing():
    model = nn.Linear(4, 3)
    assert model_size_mb(model) == pytest.approx(15 * 4 / 1e6)
    with torch.no_grad():
        model.weight[0] = 0
    assert count_nonzero_params(model) == 15 - 4 - int((model.bias == 0).sum())
    assert time_inference(model, torch.zeros(2, 4), repeats=2) > 0
    with pytest.raises(ValueError):
        time_inference(model, torch.zeros(2, 4), repeats=0)
