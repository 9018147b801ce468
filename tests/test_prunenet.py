"""PruneNet baseline (docs/prunenet.md): policy, sampling, reward, REINFORCE, checkpoints."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy import stats

from projprune.transformers import find_ffn_blocks, prune_ffn
from projprune.transformers.prunenet import (
    ZERO_KS_REWARD,
    PruneNetPolicy,
    SparsityPredictor,
    discount_rewards,
    kept_width,
    ks_statistic,
    load_policy,
    policy_filename,
    sample_keep,
    save_policy,
    spectrum_reward,
    train_policy,
)


def _learnable_weights(seed: int, m: int = 64, d: int = 32, layers: int = 3) -> list[torch.Tensor]:
    """FFN input weights where 30 % of the units are dead (near-zero rows) and the rest share a
    mean direction: keeping the live rows preserves the spectrum, and a linear score can find them."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(d, generator=g)
    mu /= mu.norm()
    weights = []
    for _ in range(layers):
        W = mu[None] + 0.3 * torch.randn(m, d, generator=g) / d**0.5
        dead = torch.randperm(m, generator=g)[: m * 3 // 10]
        W[dead] = 1e-3 * torch.randn(len(dead), d, generator=g)
        weights.append(W)
    return weights


# --------------------------------------------------------------------------- pieces
@pytest.mark.parametrize("seed", range(5))
def test_ks_statistic_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=rng.integers(5, 40))
    b = rng.normal(0.3, 1.2, size=rng.integers(5, 40))
    if seed == 4:  # ties inside and across the samples
        a, b = np.round(a, 1), np.round(b, 1)
    expected = stats.ks_2samp(a, b).statistic
    assert ks_statistic(torch.tensor(a), torch.tensor(b)) == pytest.approx(expected, abs=1e-12)
    assert ks_statistic(torch.tensor(a), torch.tensor(a)) == 0.0


def test_spectrum_reward_is_inverse_ks_of_singular_values():
    W = torch.randn(20, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    s = np.linalg.svd(W.numpy(), compute_uv=False)
    sliced = W[::2]
    s2 = np.linalg.svd(sliced.numpy(), compute_uv=False)
    expected = 1.0 / stats.ks_2samp(s, s2).statistic
    assert spectrum_reward(torch.tensor(s), sliced) == pytest.approx(expected, rel=1e-6)
    assert spectrum_reward(torch.linalg.svdvals(W.float()), W) == ZERO_KS_REWARD  # nothing sliced: KS = 0


def test_discount_rewards_weights_earlier_layers_more():
    assert discount_rewards([1.0, 2.0, 3.0], 0.99) == pytest.approx([1.0, 2 * 0.99, 3 * 0.99**2])
    assert discount_rewards([5.0] * 32)[31] == pytest.approx(5.0 * 0.99**31)  # the reference's layer 31: 0.73


def test_policy_scores_match_a_float64_formula():
    policy = SparsityPredictor(6, 10, seed=3).double()
    W = torch.randn(10, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    A, a = policy.proj_intermediate.weight.detach(), policy.proj_intermediate.bias.detach()
    r = policy.row_sparsities.detach()
    alpha = 1.0 / (1.0 + np.exp(-((W @ A.T + a) @ r)[:, 0].numpy()))
    np.testing.assert_allclose(policy.keep_alpha(W).detach().numpy(), alpha, rtol=1e-12)
    # noisy probabilities: sigmoid(logit u + logit alpha), u drawn from the given generator
    u = torch.rand(10, generator=torch.Generator().manual_seed(7), dtype=torch.float64).numpy()
    logit = np.log(u) - np.log1p(-u) + np.log(alpha) - np.log1p(-alpha)
    probs = policy(W, generator=torch.Generator().manual_seed(7)).detach().numpy()
    np.testing.assert_allclose(probs, 1.0 / (1.0 + np.exp(-logit)), rtol=1e-9)
    assert sum(p.numel() for p in policy.parameters()) == 6 * 10 + 10 + 10  # A, its bias, r


def test_sample_keep_draws_distinct_sorted_rows_by_weight():
    probs = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    for seed in range(5):
        keep = sample_keep(probs, 4, torch.Generator().manual_seed(seed))
        assert keep.tolist() == [1, 2, 4, 5]
    keep = sample_keep(torch.rand(50), 35, torch.Generator().manual_seed(0))
    assert keep.numel() == 35 and torch.all(keep[1:] > keep[:-1])
    with pytest.raises(ValueError, match="k must be"):
        sample_keep(probs, 0)


def test_kept_width_rule():
    assert kept_width(3072, 0.3) == int((1 - 0.3) * 3072) == 2150
    assert kept_width(11008, 0.2) == 8806
    assert kept_width(10, 0.9) == 1  # the reference's int((1 - 0.9) * 10) truncates to 0


# --------------------------------------------------------------------------- training
def test_training_raises_the_reward():
    weights = _learnable_weights(0)
    untrained = PruneNetPolicy(SparsityPredictor(32, 64, seed=0), 0.3)
    before = untrained.mean_reward(weights, 0.3, draws=32, seed=11)
    trained = train_policy(weights, 0.3, episodes=20, lr=1e-3, seed=0, show_progress=False)
    after = trained.mean_reward(weights, 0.3, draws=32, seed=11)
    assert len(trained.history) == 20 and trained.best_reward == max(trained.history)
    assert after > 1.08 * before, (before, after)


def test_training_is_reproducible_and_keeps_the_best_episode():
    weights = _learnable_weights(1, m=32, d=16, layers=2)
    a = train_policy(weights, 0.25, episodes=6, seed=4, show_progress=False)
    b = train_policy(weights, 0.25, episodes=6, seed=4, show_progress=False)
    assert a.history == b.history
    for key, value in a.predictor.state_dict().items():
        assert torch.equal(value, b.predictor.state_dict()[key])
    # the kept parameters are the best episode's: replaying training up to it gives them back
    best = int(np.argmax(a.history))
    c = train_policy(weights, 0.25, episodes=best + 1, seed=4, show_progress=False)
    for key, value in a.predictor.state_dict().items():
        assert torch.equal(value, c.predictor.state_dict()[key])


def test_train_policy_rejects_bad_input():
    W = torch.randn(8, 4)
    with pytest.raises(ValueError, match="ratio"):
        train_policy([W], 1.0)
    with pytest.raises(ValueError, match="one \\(m, d\\) shape"):
        train_policy([W, torch.randn(6, 4)], 0.3)
    with pytest.raises(ValueError, match="episodes"):
        train_policy([W], 0.3, episodes=0)
    with pytest.raises(ValueError, match="at least one"):
        train_policy([], 0.3)


# --------------------------------------------------------------------------- checkpoints and reuse
def test_policy_save_load_round_trip(tmp_path):
    weights = _learnable_weights(2, m=32, d=16, layers=2)
    policy = train_policy(weights, 0.3, episodes=3, seed=0, show_progress=False)
    path = tmp_path / policy_filename("org/tiny-llama", 0.3)
    assert path.name == "model=tiny-llama_finetune=False_sparsity=0.3.safetensors"
    save_policy(path, policy)
    loaded = load_policy(path)
    assert loaded.ratio == 0.3 and loaded.history == policy.history and loaded.best_reward == policy.best_reward
    for W in weights:
        torch.testing.assert_close(loaded.predictor.keep_alpha(W), policy.predictor.keep_alpha(W), rtol=0, atol=0)
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        assert torch.equal(loaded.select(W, 0.5, g1), policy.select(W, 0.5, g2))
    with pytest.raises(FileNotFoundError):
        load_policy(tmp_path / "missing.safetensors")
    from engine.harness import save_checkpoint

    save_checkpoint(tmp_path / "other.safetensors", {"x": torch.zeros(2)}, {"format": "something-else"})
    with pytest.raises(ValueError, match="not a PruneNet policy"):
        load_policy(tmp_path / "other.safetensors")


def _tiny_llama(seed: int = 0):
    import transformers as hf

    torch.manual_seed(seed)
    config = hf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            vocab_size=100)
    return hf.LlamaForCausalLM(config).eval()


def test_trained_policy_is_reused_at_other_ratios_through_prune_ffn(tmp_path):
    model = _tiny_llama()
    weights = [block.policy_weight() for block in find_ffn_blocks(model)]
    policy = train_policy(weights, 0.2, episodes=3, seed=0, show_progress=False)
    save_policy(tmp_path / "policy.safetensors", policy)
    for ratio in (0.2, 0.5):
        pruned = copy.deepcopy(model)
        report = prune_ffn(pruned, ratio, "prunenet", policy=str(tmp_path / "policy.safetensors"))
        assert report.widths == [kept_width(64, ratio)] * 2
        assert report.policy is not None and report.policy.ratio == 0.2  # no retraining
        ids = torch.randint(0, 100, (1, 5))
        with torch.no_grad():
            assert torch.isfinite(pruned(input_ids=ids).logits).all()
    # the same draw seed gives the same mask; the slicing keeps gate, up and down aligned
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    ra = prune_ffn(a, 0.3, "prunenet", policy=policy, draw_seed=9)
    rb = prune_ffn(b, 0.3, "prunenet", policy=policy, draw_seed=9)
    assert all(torch.equal(x.kept, y.kept) for x, y in zip(ra.layers, rb.layers))
    kept = ra.layers[0].kept
    mlp, original = a.model.layers[0].mlp, model.model.layers[0].mlp
    assert torch.equal(mlp.gate_proj.weight, original.gate_proj.weight[kept])
    assert torch.equal(mlp.up_proj.weight, original.up_proj.weight[kept])
    assert torch.equal(mlp.down_proj.weight, original.down_proj.weight[:, kept])
