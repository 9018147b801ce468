"""Evaluation text, tokenisation, blocks and perplexity (docs/reproduction.md §3).

The test split of Penn Treebank or WikiText-2 (``datasets``, offline: the local cache only)
or any local text file is joined with blank lines, tokenised once, cut into consecutive
``block_size``-token blocks (the model's context, 1024 for OpenAI GPT-2) and scored with
batch 1: perplexity = ``exp(mean next-token loss)`` over every predicted token, plus
tokens per second.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.harness import progress

__all__ = ["HF_DATASETS", "Perplexity", "encode", "evaluate_perplexity", "load_hf_test_text", "make_blocks",
           "read_text_file"]


@dataclass(frozen=True)
class _HFDataset:
    path: str
    name: str | None
    field: str


# CLI name -> the hub data set whose test split the paper evaluates.
HF_DATASETS: dict[str, _HFDataset] = {
    "ptb": _HFDataset("ptb_text_only", "penn_treebank", "sentence"),
    "wikitext2": _HFDataset("wikitext", "wikitext-2-raw-v1", "text"),
}


def load_hf_test_text(dataset: str, split: str = "test") -> str:
    """The ``split`` of ``ptb``/``wikitext2`` from the local ``datasets`` cache, joined with blank lines.

    Raises:
        ValueError: unknown data set name.
        FileNotFoundError: not in the local cache (no download is attempted).
    """
    if dataset not in HF_DATASETS:
        raise ValueError(f"dataset must be one of {sorted(HF_DATASETS)}, got {dataset!r}")
    spec = HF_DATASETS[dataset]
    # Never reach for the network: without a cached copy this fails at once instead of retrying.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    try:
        data = datasets.load_dataset(spec.path, spec.name, split=split)
    except Exception as exc:  # datasets raises ConnectionError, FileNotFoundError, ValueError offline
        raise FileNotFoundError(
            f"data set {dataset!r} ({spec.path}/{spec.name}, split {split!r}) is not in the local datasets cache "
            f"{datasets.config.HF_DATASETS_CACHE}: on a machine with internet run "
            f"`python -c \"import datasets; datasets.load_dataset({spec.path!r}, {spec.name!r})\"` and copy the "
            "cache there (or set HF_HOME), or pass --text-file with any local text"
        ) from exc
    return "\n\n".join(data[spec.field])


def read_text_file(path: str | os.PathLike) -> str:
    """A local UTF-8 text file as one string."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--text-file {path} does not exist (expected a UTF-8 text file)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"--text-file {path} is not UTF-8 text (byte {err.start} cannot be decoded); "
                         "expected a UTF-8 text file") from None
    if not text.strip():
        raise ValueError(f"--text-file {path} is empty")
    return text


def encode(tokenizer: Any, text: str) -> torch.Tensor:
    """Token ids ``(N,)`` int64 from a ``tokenizers.Tokenizer`` or a ``transformers`` tokenizer."""
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "get_vocab_size"):  # tokenizers.Tokenizer
        ids = tokenizer.encode(text).ids
    else:  # transformers tokenizer; the whole text at once, as the paper tokenises the joined split
        ids = tokenizer(text, return_attention_mask=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def make_blocks(ids: torch.Tensor, block_size: int, max_blocks: int = 0) -> list[torch.Tensor]:
    """Cut ``ids: (N,)`` into consecutive blocks of ``block_size`` tokens.

    The last, shorter block is kept when it holds at least 2 tokens (one prediction).

    Args:
        max_blocks: keep only the first ``max_blocks`` blocks (0 = all).
    """
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    if ids.dim() != 1 or ids.numel() < 2:
        raise ValueError(f"need a 1-D tensor of at least 2 token ids, got shape {tuple(ids.shape)}")
    blocks = [block for block in torch.split(ids, block_size) if block.numel() >= 2]
    return blocks[:max_blocks] if max_blocks > 0 else blocks


@dataclass
class Perplexity:
    """Result of :func:`evaluate_perplexity`."""

    perplexity: float
    loss: float  # mean next-token cross-entropy (nats)
    tokens: int  # predicted tokens
    blocks: int
    seconds: float
    tokens_per_s: float  # input tokens processed per second


@torch.no_grad()
def evaluate_perplexity(model: nn.Module, blocks: Sequence[torch.Tensor], batch_size: int = 1,
                        device: str | torch.device = "cpu", show_progress: bool = True) -> Perplexity:
    """``exp`` of the mean next-token loss over every predicted token of every block.

    Args:
        model: ids ``(B, T)`` -> logits ``(B, T, vocab)``.
        blocks: token blocks, each ``(T_b,)``; blocks of equal length are batched.
        batch_size: blocks per forward pass (the paper: 1; the result does not depend on it).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    total_loss, total_tokens, input_tokens = 0.0, 0, 0
    start = time.perf_counter()
    batches = [blocks[i:i + batch_size] for i in range(0, len(blocks), batch_size)]
    bar_options = {} if show_progress else {"disable": True}
    for batch in progress(batches, desc="perplexity", **bar_options):
        # Group same-length blocks (only the last block can be shorter).
        for length in sorted({b.numel() for b in batch}, reverse=True):
            ids = torch.stack([b for b in batch if b.numel() == length]).to(device)  # (B, T)
            logits = model(ids[:, :-1]).float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
            total_loss += float(loss)
            total_tokens += ids[:, 1:].numel()
            input_tokens += ids[:, :-1].numel()
    seconds = time.perf_counter() - start
    mean = total_loss / total_tokens
    return Perplexity(perplexity=math.exp(mean), loss=mean, tokens=total_tokens, blocks=len(blocks),
                      seconds=seconds, tokens_per_s=input_tokens / max(seconds, 1e-9))
