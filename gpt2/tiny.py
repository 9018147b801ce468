"""The embedded default: a small GPT-2 trained on CPU on the Python standard library's prose.

Every machine that runs this project has the CPython standard library, so its docstrings
and comments make a corpus that needs no download. Files are split by a CRC of their
relative path (1/20 test, 1/20 validation, the rest training); a byte-level BPE tokenizer is
trained on the training split with the ``tokenizers`` package, then a small
:class:`gpt2.model.GPT2` (64-dim heads, like every OpenAI GPT-2) is trained for a few
minutes with AdamW. Everything is cached under ``<output_dir>/gpt2/tiny/<config hash>/``;
later runs load it. The corpus depends on the Python version, which is recorded.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import math
import os
import sys
import sysconfig
import time
import tokenize
import zlib
from dataclasses import asdict, dataclass
from logging import Logger
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.harness import atomic_write_json, atomic_write_text, load_cached, progress, seed_everything
from gpt2.model import GPT2, GPT2ModelConfig, load_model, save_model

__all__ = ["TinyConfig", "extract_prose", "load_or_train_tiny", "stdlib_corpus", "train_tokenizer"]

SPLITS = ("train", "validation", "test")
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3"}


@dataclass
class TinyConfig:
    """Corpus, tokenizer, model and training settings of the tiny GPT-2 (a few CPU minutes)."""

    vocab_size: int = 2048
    n_positions: int = 128
    n_embd: int = 128
    n_head: int = 2  # 64-dim heads, as in every OpenAI GPT-2
    n_layer: int = 4
    steps: int = 1500
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 30
    weight_decay: float = 0.1
    seed: int = 1
    max_train_chars: int = 4_000_000  # of the training split, in file order
    max_test_chars: int = 200_000  # of the test split: the perplexity text (about 50 k tokens)
    corpus_dir: str = ""  # tree of .py files to read; "" = this interpreter's standard library

    def key(self) -> str:
        """A short hash naming the cache directory of this configuration."""
        blob = json.dumps({**asdict(self), "python": sys.version_info[:2]}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


# --------------------------------------------------------------------------- corpus
def extract_prose(source: str) -> str:
    """Docstrings and comments of one Python source, one paragraph each (``""`` if unparsable)."""
    pieces: list[str] = []
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                pieces.append(doc.strip())
    comments: list[str] = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT:
                text = token.string.lstrip("#").strip()
                if text and not text.startswith("!") and "coding" not in text[:12]:
                    comments.append(text)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    if comments:
        pieces.append("\n".join(comments))
    return "\n\n".join(pieces)


def _split_of(relative_path: str) -> str:
    bucket = zlib.crc32(relative_path.encode()) % 20
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def stdlib_corpus(stdlib_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Prose of every ``.py`` file of the standard library (tests and site-packages excluded).

    Args:
        stdlib_dir: root to scan (default ``sysconfig.get_paths()["stdlib"]``).

    Returns:
        ``{"train": text, "validation": text, "test": text}``, files joined with blank lines
        in sorted path order.
    """
    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(f"standard library directory not found: {root}")
    texts: dict[str, list[str]] = {split: [] for split in SPLITS}
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if _SKIP_DIRS.intersection(relative.split("/")[:-1]):
            continue
        try:
            prose = extract_prose(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
        if prose:
            texts[_split_of(relative)].append(prose)
    return {split: "\n\n".join(parts) for split, parts in texts.items()}


def train_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``text`` (GPT-2's scheme, smaller vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    # Chunks of paragraphs: the trainer counts words per chunk, the result does not depend on the cut.
    paragraphs = text.split("\n\n")
    tokenizer.train_from_iterator(("\n\n".join(paragraphs[i:i + 200]) for i in range(0, len(paragraphs), 200)),
                                  trainer=trainer)
    return tokenizer


# --------------------------------------------------------------------------- training
def _lr_at(step: int, cfg: TinyConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress_ratio = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress_ratio)))


def _train(model: GPT2, train_ids: torch.Tensor, cfg: TinyConfig, logger: Logger | None) -> list[float]:
    """AdamW on random ``n_positions``-token windows of ``train_ids``; returns the loss per step."""
    generator = torch.Generator().manual_seed(cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    T = cfg.n_positions
    losses = []
    model.train()
    bar = progress(range(cfg.steps), desc="train tiny GPT-2")
    for step in bar:
        starts = torch.randint(0, train_ids.numel() - T - 1, (cfg.batch_size,), generator=generator)
        batch = torch.stack([train_ids[s:s + T + 1] for s in starts.tolist()])  # (B, T+1)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, cfg)
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if logger is not None and (step % 50 == 0 or step == cfg.steps - 1):
            logger.info(f"Tiny step {step}/{cfg.steps}, loss={loss.item():.4f}, lr={_lr_at(step, cfg):.5f}")
    model.eval()
    return losses


def load_or_train_tiny(cfg: TinyConfig, output_dir: str | os.PathLike, logger: Logger | None = None):
    """The tiny GPT-2, its tokenizer and its test text; trained once, then loaded from the cache.

    Args:
        cfg: tiny settings.
        output_dir: run root; the cache is ``<output_dir>/gpt2/tiny/<cfg.key()>/``.
        logger: progress messages (optional).

    Returns:
        ``(model (eval mode), tokenizers.Tokenizer, test_text: str)``.
    """
    from tokenizers import Tokenizer

    cache = Path(output_dir) / "gpt2" / "tiny" / cfg.key()
    paths = {name: cache / name for name in ("model.safetensors", "tokenizer.json", "test.txt", "train.json")}
    complete = all(p.is_file() for p in paths.values())
    if complete and load_cached(paths["model.safetensors"], {"tiny_config": asdict(cfg)}, what="cached tiny GPT-2"):
        model, _ = load_model(paths["model.safetensors"])
        tokenizer = Tokenizer.from_file(str(paths["tokenizer.json"]))
        if logger is not None:
            logger.info(f"Tiny GPT-2 loaded from {cache}")
        return model.eval(), tokenizer, paths["test.txt"].read_text(encoding="utf-8")

    corpus = stdlib_corpus(cfg.corpus_dir or None)
    train_text = corpus["train"][: cfg.max_train_chars]
    test_text = corpus["test"][: cfg.max_test_chars]
    if len(train_text) < 10 * cfg.n_positions or len(test_text) < 2 * cfg.n_positions:
        where = cfg.corpus_dir or "the standard library"
        raise ValueError(f"the corpus of {where} is too small to train on (tiny corpus_dir)")
    start = time.perf_counter()
    seed_everything(cfg.seed)
    tokenizer = train_tokenizer(train_text, cfg.vocab_size)
    train_ids = torch.tensor(tokenizer.encode(train_text).ids, dtype=torch.long)
    model = GPT2(GPT2ModelConfig(vocab_size=tokenizer.get_vocab_size(), n_positions=cfg.n_positions,
                                 n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head))
    if logger is not None:
        logger.info(f"Tiny corpus: {len(train_text)} train chars ({train_ids.numel()} tokens), "
                    f"{len(test_text)} test chars; vocabulary {tokenizer.get_vocab_size()}")
    losses = _train(model, train_ids, cfg, logger)
    seconds = time.perf_counter() - start
    # Written last-to-first so an interrupted run never leaves a complete-looking cache.
    atomic_write_text(paths["test.txt"], test_text)
    atomic_write_text(paths["tokenizer.json"], tokenizer.to_str())
    save_model(paths["model.safetensors"], model, {"tiny_config": asdict(cfg), "python": sys.version})
    atomic_write_json(paths["train.json"], {"config": asdict(cfg), "python": sys.version, "seconds": seconds,
                                            "final_loss": losses[-1], "train_tokens": train_ids.numel()})
    if logger is not None:
        logger.info(f"Tiny GPT-2 trained in {seconds:.0f} s (final loss {losses[-1]:.4f}), cached in {cache}")
    return model, tokenizer, test_text
