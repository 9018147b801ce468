"""One readable GPT-2 whose per-head query/key width is separate from the value width.

OpenAI's GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask
Learners") with the layout of ``transformers.GPT2LMHeadModel`` (pre-LayerNorm blocks, tanh
GELU, tied input/output embeddings). The fused ``c_attn`` projection is split into
``q_proj``/``k_proj``/``v_proj`` so that the query/key width of a layer (``qk_dim`` per
head) can shrink while the value width stays ``n_embd // n_head``; the attention
temperature stays ``1/sqrt(n_embd // n_head)``, the value the weights were trained with.

``GPT2.from_pretrained("gpt2")`` loads the OpenAI weights from the local Hugging Face hub
cache (never the network); ``GPT2.from_hf(model)`` converts an in-memory
``GPT2LMHeadModel``. A pruned model stores its widths in ``GPT2ModelConfig.qk_dims`` and
``GPT2ModelConfig.mlp_dims``, so :func:`save_model` / :func:`load_model` round-trip it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.harness import load_checkpoint, save_checkpoint

__all__ = [
    "HF_MODEL_NAMES",
    "GPT2",
    "GPT2ModelConfig",
    "load_model",
    "save_model",
]

# The OpenAI checkpoints the paper prunes (hub ids); any local directory also works.
HF_MODEL_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


@dataclass
class GPT2ModelConfig:
    """Shapes of a GPT-2; defaults are GPT-2 small (124 M parameters)."""

    vocab_size: int = 50257
    n_positions: int = 1024  # context length
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # MLP width of the unpruned model; None means 4 * n_embd
    layer_norm_epsilon: float = 1e-5
    scale_attn_by_inverse_layer_idx: bool = False  # False for every OpenAI checkpoint
    qk_dims: list[int] | None = None  # per layer, query/key width per head; None = n_embd // n_head
    mlp_dims: list[int] | None = None  # per layer, MLP width; None = n_inner

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.qk_dims is None:
            self.qk_dims = [self.head_dim] * self.n_layer
        if self.mlp_dims is None:
            self.mlp_dims = [self.n_inner or 4 * self.n_embd] * self.n_layer
        for name in ("qk_dims", "mlp_dims"):
            dims = list(getattr(self, name))
            if len(dims) != self.n_layer or any(int(d) < 1 for d in dims):
                raise ValueError(f"{name} must hold {self.n_layer} positive widths (one per layer), got {dims}")
            setattr(self, name, [int(d) for d in dims])

    @property
    def head_dim(self) -> int:
        """Value width per head (also the original query/key width)."""
        return self.n_embd // self.n_head


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with query/key width ``qk_dim`` per head.

    Rows ``h * qk_dim : (h + 1) * qk_dim`` of ``q_proj``/``k_proj`` belong to head ``h``.
    """

    def __init__(self, config: GPT2ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.qk_dim = config.qk_dims[layer_idx]
        self.q_proj = nn.Linear(config.n_embd, self.n_head * self.qk_dim)
        self.k_proj = nn.Linear(config.n_embd, self.n_head * self.qk_dim)
        self.v_proj = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        # The temperature of the trained model: pruning QK dims must not change it.
        self.scale = self.head_dim**-0.5
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= float(layer_idx + 1)

    def _heads(self, x: torch.Tensor, width: int) -> torch.Tensor:
        batch, time, _ = x.shape
        return x.view(batch, time, self.n_head, width).transpose(1, 2)  # (B, nh, T, width)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled pre-softmax attention scores ``q k^T * scale``, without the causal mask.

        Args:
            x: ``(B, T, n_embd)``.

        Returns:
            ``(B, n_head, T, T)``.
        """
        q = self._heads(self.q_proj(x), self.qk_dim)
        k = self._heads(self.k_proj(x), self.qk_dim)
        return (q @ k.transpose(-2, -1)) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, channels = x.shape
        q = self._heads(self.q_proj(x), self.qk_dim)  # (B, nh, T, qk)
        k = self._heads(self.k_proj(x), self.qk_dim)  # (B, nh, T, qk)
        v = self._heads(self.v_proj(x), self.head_dim)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        y = y.transpose(1, 2).reshape(batch, time, channels)
        return self.c_proj(y)


class MLP(nn.Module):
    """``c_proj(gelu_tanh(c_fc(x)))``; ``c_fc`` rows / ``c_proj`` columns are the prunable units."""

    def __init__(self, config: GPT2ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_dims[layer_idx])
        self.c_proj = nn.Linear(config.mlp_dims[layer_idx], config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, config: GPT2ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config, layer_idx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    """GPT-2 language model: token ids ``(B, T)`` -> logits ``(B, T, vocab_size)``."""

    def __init__(self, config: GPT2ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2's scaled init of residual projections
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Args: ``idx: (B, T)`` int64, ``T <= n_positions``. Returns logits ``(B, T, vocab_size)``."""
        time = idx.shape[1]
        if time > self.config.n_positions:
            raise ValueError(f"sequence length {time} exceeds the context n_positions={self.config.n_positions}")
        pos = torch.arange(time, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    def sync_config(self) -> GPT2ModelConfig:
        """Re-read the per-layer widths from the modules (after pruning) into ``self.config``."""
        self.config.qk_dims = [block.attn.qk_dim for block in self.h]
        self.config.mlp_dims = [block.mlp.c_fc.weight.shape[0] for block in self.h]
        return self.config

    # ----------------------------------------------------------------------- conversion
    @classmethod
    def from_hf(cls, hf_model: Any) -> GPT2:
        """Convert an in-memory ``transformers.GPT2LMHeadModel`` (weights copied, float32).

        HF's ``Conv1D`` stores weights as ``(in, out)``; ``nn.Linear`` wants ``(out, in)``.
        """
        hf_config = hf_model.config
        if getattr(hf_config, "model_type", None) != "gpt2":
            raise ValueError(f"from_hf expects a GPT2LMHeadModel, got model_type={hf_config.model_type!r}")
        act = getattr(hf_config, "activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"only the tanh GELU of GPT-2 is implemented, got activation_function={act!r}")
        shape = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "layer_norm_epsilon")
        config = GPT2ModelConfig(**{name: getattr(hf_config, name) for name in shape},
                                 scale_attn_by_inverse_layer_idx=bool(hf_config.scale_attn_by_inverse_layer_idx))
        model = cls(config)
        src = {k: v.detach().float() for k, v in hf_model.transformer.state_dict().items()}
        C = config.n_embd
        state: dict[str, torch.Tensor] = {
            "wte.weight": src["wte.weight"],
            "wpe.weight": src["wpe.weight"],
            "ln_f.weight": src["ln_f.weight"],
            "ln_f.bias": src["ln_f.bias"],
        }
        for i in range(config.n_layer):
            p = f"h.{i}."
            for ln in ("ln_1", "ln_2"):
                state[p + ln + ".weight"] = src[p + ln + ".weight"]
                state[p + ln + ".bias"] = src[p + ln + ".bias"]
            w_attn, b_attn = src[p + "attn.c_attn.weight"], src[p + "attn.c_attn.bias"]  # (C, 3C), (3C,)
            for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
                state[p + f"attn.{name}.weight"] = w_attn[:, j * C : (j + 1) * C].t()
                state[p + f"attn.{name}.bias"] = b_attn[j * C : (j + 1) * C]
            state[p + "attn.c_proj.weight"] = src[p + "attn.c_proj.weight"].t()
            state[p + "attn.c_proj.bias"] = src[p + "attn.c_proj.bias"]
            for name in ("c_fc", "c_proj"):
                state[p + f"mlp.{name}.weight"] = src[p + f"mlp.{name}.weight"].t()
                state[p + f"mlp.{name}.bias"] = src[p + f"mlp.{name}.bias"]
        state["lm_head.weight"] = state["wte.weight"]
        model.load_state_dict({k: v.contiguous() for k, v in state.items()})
        return model

    @classmethod
    def from_pretrained(cls, name: str, cache_dir: str | os.PathLike | None = None) -> GPT2:
        """Load ``gpt2``/``gpt2-medium``/``gpt2-large``/``gpt2-xl`` (or a local directory) offline.

        Raises:
            FileNotFoundError: the weights are not in the local hub cache; the message names
                the model and where to put it.
        """
        hf_model = load_hf_model(name, cache_dir)
        return cls.from_hf(hf_model)


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> str:
    """The hub cache that ``from_pretrained`` reads (``HF_HUB_CACHE``/``HF_HOME`` honoured)."""
    if cache_dir is not None:
        return str(cache_dir)
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _from_pretrained_offline(loader: Any, what: str, name: str, cache_dir: str | os.PathLike | None) -> Any:
    """``loader.from_pretrained(name)`` from a local directory or the hub cache only; a miss is one
    FileNotFoundError naming ``what``, the model, the cache and how to fill it."""
    if not name:
        raise ValueError("model name must be a hub id such as 'gpt2' or a local directory")
    try:
        return loader.from_pretrained(name, local_files_only=True, cache_dir=cache_dir)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"{what} {name!r} is not available offline: not a local directory and not in the "
            f"Hugging Face hub cache {hub_cache_dir(cache_dir)}. On a machine with internet run "
            f"`huggingface-cli download {name}` and copy the cache there (or set HF_HOME), or pass a "
            "directory holding config.json, the weights and the tokenizer files."
        ) from exc


def load_hf_model(name: str, cache_dir: str | os.PathLike | None = None) -> Any:
    """``transformers.GPT2LMHeadModel`` from a local directory or the local hub cache, never the network."""
    from transformers import GPT2LMHeadModel

    return _from_pretrained_offline(GPT2LMHeadModel, "GPT-2 model", name, cache_dir)


def load_hf_tokenizer(name: str, cache_dir: str | os.PathLike | None = None) -> Any:
    """The GPT-2 tokenizer of ``name`` from a local directory or the hub cache (offline)."""
    from transformers import AutoTokenizer

    return _from_pretrained_offline(AutoTokenizer, "tokenizer of", name, cache_dir)


# --------------------------------------------------------------------------- checkpoints
def save_model(path: str | os.PathLike, model: GPT2, meta: dict | None = None) -> Path:
    """Save weights and shapes (safetensors + JSON config) atomically; the tied head is stored once."""
    config = dataclasses.asdict(model.sync_config())
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    return save_checkpoint(path, state, {"model_config": config, **(meta or {})})


def load_model(path: str | os.PathLike) -> tuple[GPT2, dict]:
    """Rebuild a (possibly pruned) model saved by :func:`save_model`: ``(model, meta)``."""
    state, meta = load_checkpoint(path)
    if "model_config" not in meta:
        raise ValueError(f"{path} is not a GPT-2 checkpoint of this project (no model_config in its metadata)")
    model = GPT2(GPT2ModelConfig(**meta["model_config"]))
    state["lm_head.weight"] = state["wte.weight"]
    model.load_state_dict(state)
    return model, meta
