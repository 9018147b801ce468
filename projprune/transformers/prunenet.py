"""PruneNet, the calibration-free baseline (Sengupta et al., "You Only Prune Once", ICLR 2025,
https://arxiv.org/abs/2501.15296), implemented from ``docs/prunenet.md``.

Where the paper and the reference code (``LCS2-IIITD/PruneNet``,
``experiments/trainable_activation_sparsity.py``) disagree, this follows the code:

- Policy (:class:`SparsityPredictor`): ``alpha = sigmoid((W A^T + a) r)`` from a layer's FFN
  input weight ``W: (m, d)`` alone, kept in the factored form (Linear ``d -> m``, then a
  learned ``(m, 1)`` vector ``r`` initialised ``U(0, 1)``). Logistic noise is redrawn on
  every forward pass: ``p = sigmoid(logit(u) + logit(alpha))``, ``u ~ U(0, 1)``.
- Action: ``k`` rows drawn by ``torch.multinomial(p, k, replacement=False)``, sorted.
- Reward of layer ``i``: ``1 / KS(s_i, s_i')`` with ``s`` the singular values of the
  original input projection and ``s'`` those of the sliced one (99999 when the statistic
  is 0); discounted as ``0.99**i * R_i`` without reward-to-go, favouring *earlier* layers
  (the paper's text describes the opposite; the code is followed).
- Update: after an episode over all layers, one AdamW step per layer (torch defaults,
  weight decay 0.01) on ``-R~_i * sum_{j in S_i} log p_j`` with ``p`` from a new forward
  pass (new noise). No baseline, no entropy term; the reference's ``clip_grad_norm_``
  runs after the step, so it has no effect and is left out.
- The policy of the episode with the best undiscounted total reward is kept.

Differences forced by the setting: this runs in float32 on CPU (the reference uses fp16
autocast with a GradScaler on GPU, a speed measure that does not change the algorithm),
and the slicing used for the reward does not copy the model: layers do not interact, so
the reward only needs the sliced input projection.

The ratio counts FFN width only: report real parameter counts next to it.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "PruneNetPolicy",
    "SparsityPredictor",
    "discount_rewards",
    "kept_width",
    "ks_statistic",
    "load_policy",
    "policy_filename",
    "sample_keep",
    "save_policy",
    "spectrum_reward",
    "train_policy",
]

ZERO_KS_REWARD = 99999.0  # the reference's reward when the KS statistic is exactly 0


def kept_width(width: int, ratio: float) -> int:
    """Units kept when ``ratio`` of ``width`` is pruned: ``width - round(ratio * width)``.

    Equals the reference's ``int((1 - ratio) * width)`` except where float rounding makes
    that one unit smaller (``(1 - 0.9) * 10`` is ``0.999...``, truncated to 0); every
    method uses this one rule, so comparisons are at equal widths.
    """
    return width - int(round(ratio * width))


class SparsityPredictor(nn.Module):
    """PruneNet's policy for FFN input weights ``W: (m, d)``.

    Args:
        hidden_size: ``d``, the model width (columns of ``W``).
        intermediate_size: ``m``, the FFN width (rows of ``W``).
        seed: seeds the parameter initialisation.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, seed: int = 0) -> None:
        super().__init__()
        if hidden_size < 1 or intermediate_size < 1:
            raise ValueError(f"hidden_size and intermediate_size must be >= 1, got {hidden_size}, {intermediate_size}")
        self.hidden_size = int(hidden_size)
        self.intermediate_size = int(intermediate_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.proj_intermediate = nn.Linear(self.hidden_size, self.intermediate_size, bias=True)
            self.row_sparsities = nn.Parameter(torch.rand(self.intermediate_size, 1))

    def _check(self, W: torch.Tensor) -> None:
        if W.dim() != 2 or tuple(W.shape) != (self.intermediate_size, self.hidden_size):
            raise ValueError(
                f"W: this policy scores ({self.intermediate_size}, {self.hidden_size}) FFN input weights, "
                f"got shape {tuple(W.shape)} (a policy is tied to one (m, d))"
            )

    def keep_logits(self, W: torch.Tensor) -> torch.Tensor:
        """``logit(alpha) = (W A^T + a) r: (m,)`` for ``W: (m, d)``."""
        self._check(W)
        W = W.to(self.proj_intermediate.weight.dtype)
        return (self.proj_intermediate(W) @ self.row_sparsities)[:, 0]

    def keep_alpha(self, W: torch.Tensor) -> torch.Tensor:
        """Noise-free keep scores ``alpha = sigmoid((W A^T + a) r): (m,)`` in (0, 1)."""
        return torch.sigmoid(self.keep_logits(W))

    def noisy_logits(self, W: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``logit(u) + logit(alpha)``, fresh ``u ~ U(0, 1)`` per row: the logits of :meth:`forward`.

        ``logit(alpha)`` is taken before the sigmoid rather than as ``log(alpha) - log(1 - alpha)``
        as in the reference: the same number, without the NaN once ``alpha`` saturates.
        """
        logits = self.keep_logits(W)
        u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
        return torch.log(u) - torch.log1p(-u) + logits

    def forward(self, W: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noisy keep probabilities ``p = sigmoid(logit u + logit alpha): (m,)``."""
        return torch.sigmoid(self.noisy_logits(W, generator))


def sample_keep(probs: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``k`` sorted row indices drawn without replacement with weights ``probs: (m,)``."""
    if not 1 <= k <= probs.shape[0]:
        raise ValueError(f"k must be in [1, {probs.shape[0]}], got {k}")
    # Rows whose probability underflowed to 0 stay drawable last, so k rows always exist.
    weights = probs.detach().float().clamp_min(torch.finfo(torch.float32).tiny)
    drawn = torch.multinomial(weights, k, replacement=False, generator=generator)
    return drawn.sort().values


def ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic ``sup_x |F_a(x) - F_b(x)|`` of 1-D samples."""
    a = a.detach().double().flatten().sort().values
    b = b.detach().double().flatten().sort().values
    grid = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, grid, right=True).double() / a.numel()
    cdf_b = torch.searchsorted(b, grid, right=True).double() / b.numel()
    return float((cdf_a - cdf_b).abs().max())


def spectrum_reward(singular_values: torch.Tensor, sliced_weight: torch.Tensor) -> float:
    """PruneNet's reward ``1 / KS(s, s')`` for a sliced input projection ``(k, d)``."""
    sliced_sv = torch.linalg.svdvals(sliced_weight.detach().float())
    statistic = ks_statistic(singular_values, sliced_sv)
    return ZERO_KS_REWARD if statistic == 0 else 1.0 / statistic


def discount_rewards(rewards: Sequence[float], discount: float = 0.99) -> list[float]:
    """``discount**i * R_i`` (no reward-to-go, as in the reference code)."""
    return [discount**i * float(r) for i, r in enumerate(rewards)]


@dataclass
class PruneNetPolicy:
    """A trained PruneNet policy and its training record.

    Attributes:
        predictor: the policy (best episode's parameters).
        ratio: FFN-width ratio it was trained at.
        history: undiscounted total reward of each training episode.
        best_reward: the largest total, whose parameters ``predictor`` holds.
        seconds: training time.
    """

    predictor: SparsityPredictor
    ratio: float
    history: list[float] = field(default_factory=list)
    best_reward: float = -math.inf
    seconds: float = 0.0

    def select(self, W: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Kept row indices (sorted) of ``W: (m, d)`` at ``ratio``: one noisy draw, no data needed."""
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {ratio!r}")
        with torch.no_grad():
            probs = self.predictor(W, generator=generator)
        return sample_keep(probs, kept_width(W.shape[0], ratio), generator)

    def mean_reward(self, weights: Sequence[torch.Tensor], ratio: float, draws: int = 8, seed: int = 0) -> float:
        """Average undiscounted per-layer reward over ``draws`` fresh draws (evaluation)."""
        generator = torch.Generator().manual_seed(seed)
        total = 0.0
        for W in weights:
            s = torch.linalg.svdvals(W.float())
            for _ in range(draws):
                total += spectrum_reward(s, W[self.select(W, ratio, generator)])
        return total / (draws * len(weights))


def train_policy(
    weights: Sequence[torch.Tensor],
    ratio: float,
    *,
    episodes: int = 20,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    discount: float = 0.99,
    seed: int = 0,
    show_progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> PruneNetPolicy:
    """Train PruneNet's policy with REINFORCE on the FFN input weights of one model.

    Args:
        weights: one ``(m, d)`` input projection per layer, in layer order (same shape).
        ratio: fraction of FFN rows removed, ``0 < ratio < 1``.
        episodes: training episodes (reference default 20; its scripts use 15-20).
        lr: AdamW learning rate (reference default 1e-3, scripts 1e-4).
        weight_decay: AdamW weight decay (torch default 0.01).
        discount: per-layer reward discount (0.99).
        seed: seeds the policy's initialisation and every draw.
        show_progress: tqdm bar over episodes.
        callback: called with ``(episode, total_reward)`` after each episode.

    Returns:
        :class:`PruneNetPolicy` holding the best episode's parameters.
    """
    if len(weights) == 0:
        raise ValueError("weights: expected at least one (m, d) FFN input weight")
    shapes = {tuple(W.shape) for W in weights}
    if len(shapes) != 1 or any(W.dim() != 2 for W in weights):
        raise ValueError(f"weights: every layer must share one (m, d) shape for one policy, got {sorted(shapes)}")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), got {ratio!r}")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes!r}")
    from tqdm.auto import tqdm

    start = time.perf_counter()
    m, d = next(iter(shapes))
    states = [W.detach().float() for W in weights]
    singular_values = [torch.linalg.svdvals(W) for W in states]
    k = kept_width(m, ratio)
    predictor = SparsityPredictor(d, m, seed=seed)
    optimizer = torch.optim.AdamW(predictor.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    policy = PruneNetPolicy(predictor, ratio)
    best_state = copy.deepcopy(predictor.state_dict())
    for episode in tqdm(range(episodes), desc="prunenet episodes", disable=not show_progress, leave=False):
        actions, rewards = [], []
        with torch.no_grad():
            for W, s in zip(states, singular_values):
                keep = sample_keep(predictor(W, generator), k, generator)
                actions.append(keep)
                rewards.append(spectrum_reward(s, W[keep]))
        with torch.enable_grad():  # callers may hold a no_grad context (prune_ffn does)
            for W, keep, reward in zip(states, actions, discount_rewards(rewards, discount)):
                # a new forward pass with new noise, as in the reference; log p = logsigmoid(logits)
                log_probs = torch.nn.functional.logsigmoid(predictor.noisy_logits(W, generator))
                loss = -reward * log_probs[keep].sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        total = float(sum(rewards))
        policy.history.append(total)
        if total > policy.best_reward:
            policy.best_reward = total
            best_state = copy.deepcopy(predictor.state_dict())
        if callback is not None:
            callback(episode, total)
    predictor.load_state_dict(best_state)
    predictor.eval()
    policy.seconds = time.perf_counter() - start
    return policy


# --------------------------------------------------------------------------- checkpoints
def policy_filename(model_name: str, ratio: float) -> str:
    """The reference's checkpoint name, ``model={name}_finetune=False_sparsity={ratio}``, as safetensors."""
    short = str(model_name).rstrip("/").split("/")[-1]
    return f"model={short}_finetune=False_sparsity={ratio}.safetensors"


def save_policy(path: str | os.PathLike, policy: PruneNetPolicy) -> None:
    """Write the policy atomically (safetensors + JSON meta, never pickle)."""
    from projprune._io import save_tensors

    meta = {
        "format": "prunenet-policy",
        "hidden_size": policy.predictor.hidden_size,
        "intermediate_size": policy.predictor.intermediate_size,
        "ratio": policy.ratio,
        "history": policy.history,
        "best_reward": policy.best_reward,
        "seconds": policy.seconds,
    }
    save_tensors(path, policy.predictor.state_dict(), meta)


def load_policy(path: str | os.PathLike) -> PruneNetPolicy:
    """Read a policy written by :func:`save_policy`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a PruneNet policy checkpoint.
    """
    from projprune._io import load_tensors

    state, meta = load_tensors(path)
    if meta.get("format") != "prunenet-policy":
        raise ValueError(f"path: {path} is not a PruneNet policy checkpoint (meta format {meta.get('format')!r})")
    predictor = SparsityPredictor(int(meta["hidden_size"]), int(meta["intermediate_size"]))
    try:
        predictor.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"path: {path} holds tensors that do not fit a PruneNet policy: {exc}") from exc
    predictor.eval()
    return PruneNetPolicy(
        predictor,
        float(meta["ratio"]),
        history=[float(x) for x in meta.get("history", [])],
        best_reward=float(meta.get("best_reward", -math.inf)),
        seconds=float(meta.get("seconds", 0.0)),
    )
