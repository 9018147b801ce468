"""vit/methods.py: every registered method prunes a tiny ViT, which still runs with the expected shapes;
the Torch-Pruning and SVD baselines agree with plain float64 computations written here."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.vision_transformer import VisionTransformer

from projprune import prune_pair
from tests.conftest import tiny_vit
from vit.methods import VIT_METHODS, PruneContext, _fisher_diagonals, get_method, svd_rank_for
from vit.metrics import count_macs, count_nonzero_params, count_params
from vit.models import mlp_pairs

AMOUNTS = {0: 5, 1: 9}


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(6, 3, 8, 8, generator=generator), torch.randint(0, 10, (6,), generator=generator)


@pytest.mark.parametrize("name", sorted(VIT_METHODS))
def test_every_method_prunes_and_the_model_runs(name, batch):
    model = tiny_vit()
    method = get_method(name)
    method.prune(model, AMOUNTS, PruneContext(seed=1, calibration=[batch]))
    out = model(batch[0])
    assert out.shape == (6, 10) and torch.isfinite(out).all()
    for layer, amount in AMOUNTS.items():
        mlp = model.encoder.layers[layer].mlp
        if method.family in ("projprune", "torch_pruning"):
            assert mlp[0].weight.shape == (64 - amount, 32)
            assert mlp[0].bias.shape == (64 - amount,)
            assert mlp[3].weight.shape == (32, 64 - amount)
        elif method.family == "svd":
            rank = svd_rank_for(64, 32, 32, amount)
            assert [m.weight.shape for m in mlp[0]] == [(rank, 32), (64, rank)]
            assert [m.weight.shape for m in mlp[3]] == [(rank, 64), (32, rank)]
        else:
            zeros = int((mlp[0].weight == 0).sum())
            assert zeros == amount * 32  # the same number of weights as `amount` rows
            if name.endswith("structured"):
                assert int((mlp[0].weight.abs().sum(dim=1) == 0).sum()) == amount
    if method.shrinks:
        assert count_params(model) < count_params(tiny_vit())
    else:  # masks: nothing gets smaller but the nonzero count
        assert count_params(model) == count_params(tiny_vit())
        assert count_macs(model, batch[0][:1]) == count_macs(tiny_vit(), batch[0][:1])
        assert count_nonzero_params(model) == count_nonzero_params(tiny_vit()) - sum(a * 32 for a in AMOUNTS.values())


def test_unknown_method_and_bad_amounts():
    with pytest.raises(ValueError, match="method must be one of"):
        get_method("nope")
    with pytest.raises(ValueError, match="layer index"):
        get_method("l2").prune(tiny_vit(), {5: 1}, PruneContext())
    with pytest.raises(ValueError, match="non-negative int"):
        get_method("l2").prune(tiny_vit(), {0: -1}, PruneContext())


def test_core_methods_are_the_core_prune_pair():
    ours, direct = tiny_vit(), tiny_vit()
    get_method("exact").prune(ours, {1: 7}, PruneContext())
    fc1, fc2 = mlp_pairs(direct)[1]
    prune_pair(fc1, fc2, 7, "exact", lmbda=1e-3)
    for (a1, a2), (b1, b2) in zip(mlp_pairs(ours), mlp_pairs(direct)):
        torch.testing.assert_close(a1.weight, b1.weight)
        torch.testing.assert_close(a1.bias, b1.bias)
        torch.testing.assert_close(a2.weight, b2.weight)


def _kept_after(name: str, model: VisionTransformer, layer: int, amount: int, ctx: PruneContext) -> set[tuple]:
    """Rows of W that survive, as tuples (slicing keeps rows unchanged for these methods)."""
    get_method(name).prune(model, {layer: amount}, ctx)
    return {tuple(row.tolist()) for row in mlp_pairs(model)[layer][0].weight}


def _rows_of(model, layer, indices) -> set[tuple]:
    W = mlp_pairs(model)[layer][0].weight
    return {tuple(W[i].tolist()) for i in indices}


@pytest.mark.parametrize("name", ["group_norm", "lamp"])
def test_magnitude_baselines_remove_smallest_group_norm(name):
    model = tiny_vit(3)
    fc1, fc2 = mlp_pairs(model)[0]
    W, V = fc1.weight.detach().double(), fc2.weight.detach().double()
    # group L2 magnitude: mean over the group of squared row norms of W and column norms of V
    score = (W.pow(2).sum(1) + V.pow(2).sum(0)) / 2
    expected_keep = torch.argsort(score, stable=True)[11:].tolist()
    assert _kept_after(name, copy.deepcopy(model), 0, 11, PruneContext()) == _rows_of(model, 0, expected_keep)


def test_obdc_fisher_and_scores_match_per_token_gradients(batch):
    model = tiny_vit(4)
    fc1 = mlp_pairs(model)[1][0]
    x, y = batch
    # Plain reference: per-token gradient of W, g_t x_tᵀ, squared and summed, times batch size².
    saved = {}
    fc1.register_forward_hook(lambda m, i, o: saved.__setitem__("x", i[0].detach()))
    fc1.register_full_backward_hook(lambda m, gi, go: saved.__setitem__("g", go[0].detach()))
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    fc1._forward_hooks.clear()
    fc1._backward_hooks.clear()
    xs = saved["x"].reshape(-1, 32).double()
    gs = saved["g"].reshape(-1, 64).double() * x.shape[0]
    reference = torch.zeros(64, 32, dtype=torch.float64)
    for t in range(xs.shape[0]):
        reference += torch.outer(gs[t], xs[t]) ** 2
    model.zero_grad(set_to_none=True)
    fisher = _fisher_diagonals(model, [1], [batch])[fc1]
    torch.testing.assert_close(fisher.double(), reference, rtol=1e-4, atol=1e-10)
    score = (fc1.weight.detach().double() ** 2 * (reference + 1e-10)).sum(1)
    expected_keep = torch.argsort(score, stable=True)[13:].tolist()
    kept = _kept_after("obdc", copy.deepcopy(model), 1, 13, PruneContext(calibration=[batch]))
    assert kept == _rows_of(model, 1, expected_keep)


def test_obdc_needs_calibration():
    with pytest.raises(ValueError, match="calibration"):
        get_method("obdc").prune(tiny_vit(), {0: 3}, PruneContext())


def test_svd3_is_a_truncated_svd_within_the_pruned_budget():
    model = tiny_vit(5)
    fc1, fc2 = (m.weight.detach().double().clone() for m in mlp_pairs(model)[0])
    get_method("svd3").prune(model, {0: 20}, PruneContext())
    mlp = model.encoder.layers[0].mlp
    rank = svd_rank_for(64, 32, 32, 20)
    for factorised, W in ((mlp[0], fc1), (mlp[3], fc2)):
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        product = factorised[1].weight.double() @ factorised[0].weight.double()
        torch.testing.assert_close(product, U[:, :rank] @ torch.diag(S[:rank]) @ Vh[:rank], rtol=1e-5, atol=1e-5)
    factorised_params = sum(p.numel() for p in mlp.parameters())
    pruned_params = (64 - 20) * (32 + 1) + 32 * (64 - 20) + 32
    assert factorised_params <= pruned_params
    assert rank == (pruned_params - 32 - 64) // (32 + 2 * 64 + 32)
    with pytest.raises(ValueError, match="already factorised"):
        get_method("svd3").prune(model, {0: 1}, PruneContext())


def test_random_methods_are_seeded():
    runs = []
    for _ in range(2):
        model = tiny_vit()
        get_method("random").prune(model, {0: 10}, PruneContext(seed=7))
        get_method("mask_random_structured").prune(model, {1: 10}, PruneContext(seed=7))
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b)


def test_layers_pruned_in_parallel_match_sequential(monkeypatch):
    import concurrent.futures

    import vit.methods as methods

    pools = []

    class SpyPool(concurrent.futures.ThreadPoolExecutor):
        def __init__(self, workers):
            pools.append(workers)
            super().__init__(workers)

    monkeypatch.setattr(methods, "ThreadPoolExecutor", SpyPool)
    results = []
    for workers in (1, 2):
        monkeypatch.setattr(methods, "_layer_workers", lambda workers=workers: workers)
        model = tiny_vit(6)
        get_method("exact_oac").prune(model, {0: 9, 1: 17}, PruneContext())
        results.append([p.detach().clone() for p in model.parameters()])
    assert pools == [2]  # only the second run went parallel
    for a, b in zip(*results):
        assert torch.equal(a, b)


def _mlp3_inputs(model: VisionTransformer, images: torch.Tensor) -> list[torch.Tensor]:
    """What mlp[3] of each block reads, ``(tokens, n)`` float64, captured by plain hooks."""
    seen: dict[int, torch.Tensor] = {}
    handles = [fc2.register_forward_pre_hook(lambda mod, args, i=i: seen.__setitem__(i, args[0].detach()))
               for i, (_, fc2) in enumerate(mlp_pairs(model))]
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    return [seen[i].reshape(-1, seen[i].shape[-1]).double() for i in range(len(seen))]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(24, 3, 8, 8, generator=torch.Generator().manual_seed(2))


def test_calibrated_statistics_are_those_of_mlp3_input(images):
    model = tiny_vit(4)
    ctx = PruneContext(stats_batches=[images[:10], images[10:]])
    stats = ctx.activation_stats(model, [0, 1])
    for st, H in zip(stats, _mlp3_inputs(model, images)):
        assert st.count == H.shape[0] == 24 * 5  # 4 patches + the class token per image
        torch.testing.assert_close(st.sum_outer, H.T @ H, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(st.sum, H.sum(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["calib", "act_norm"])
def test_calibrated_methods_are_the_core_prune_pair_with_those_statistics(name, images):
    ours, direct = tiny_vit(4), tiny_vit(4)
    get_method(name).prune(ours, {0: 9, 1: 20}, PruneContext(stats_batches=[images]))
    stats = PruneContext(stats_batches=[images]).activation_stats(direct, [0, 1])
    for (fc1, fc2), st, amount in zip(mlp_pairs(direct), stats, (9, 20)):
        prune_pair(fc1, fc2, amount, name, stats=st)  # the method's own λ
    for (a1, a2), (b1, b2) in zip(mlp_pairs(ours), mlp_pairs(direct)):
        assert a1.weight.shape == (64 - (9 if a1 is mlp_pairs(ours)[0][0] else 20), 32)
        torch.testing.assert_close(a1.weight, b1.weight)
        torch.testing.assert_close(a2.weight, b2.weight)
        torch.testing.assert_close(a2.bias, b2.bias)


def test_calibrated_methods_reconstruct_the_mlp_better_than_l2(images):
    """On the calibration images, each pruned MLP's output is closer to the original than with l2."""
    base = tiny_vit(5)
    blocks_in: dict[int, torch.Tensor] = {}
    handles = [block.mlp.register_forward_pre_hook(lambda mod, args, i=i: blocks_in.__setitem__(i, args[0]))
               for i, block in enumerate(base.encoder.layers)]
    with torch.no_grad():
        base(images)
    for handle in handles:
        handle.remove()
    errors = {}
    for name in ("l2", "calib", "act_norm"):
        model = copy.deepcopy(base)
        get_method(name).prune(model, {0: 32, 1: 32}, PruneContext(stats_batches=[images]))
        with torch.no_grad():
            errors[name] = [float((model.encoder.layers[i].mlp(x) - base.encoder.layers[i].mlp(x)).double().norm())
                            for i, x in blocks_in.items()]
    for layer in range(2):
        assert errors["calib"][layer] < 0.8 * errors["l2"][layer]
        assert errors["act_norm"][layer] < errors["l2"][layer]


def test_calibrated_methods_need_images_and_recompute_after_pruning(images):
    with pytest.raises(ValueError, match="calibration images"):
        get_method("calib").prune(tiny_vit(), {0: 3}, PruneContext())
    model = tiny_vit(4)
    ctx = PruneContext(stats_batches=[images])
    before = ctx.activation_stats(model, [0, 1])
    get_method("calib").prune(model, {1: 10}, ctx)
    after = ctx.activation_stats(model, [0, 1])
    assert after[0] is before[0]  # layer 0 reads the same activations: cached
    assert after[1].n == 54 and before[1].n == 64  # layer 1 was cut: its statistics are collected afresh
    H = _mlp3_inputs(model, images)[1]
    torch.testing.assert_close(after[1].sum_outer, H.T @ H, rtol=1e-5, atol=1e-6)
