"""The run behind ``gpt2/main.py``: load (or train) the model, prune, evaluate perplexity, write the row."""

from __future__ import annotations

import time
from dataclasses import asdict

import torch

from engine.harness import (
    atomic_write_csv,
    close_logger,
    count_params,
    get_logger,
    log_config,
    num_threads,
    seed_everything,
)
from gpt2 import data
from gpt2.main import GPT2Config, run_dir, run_name
from gpt2.model import GPT2, load_hf_tokenizer, save_model
from gpt2.prune import prune_attention, prune_mlp
from gpt2.tiny import TinyConfig, load_or_train_tiny, stdlib_corpus


def tiny_config(cfg: GPT2Config) -> TinyConfig:
    return TinyConfig(steps=cfg.tiny_steps, n_layer=cfg.tiny_layers, n_embd=cfg.tiny_embd, vocab_size=cfg.tiny_vocab,
                      seed=cfg.seed, corpus_dir=cfg.tiny_corpus_dir)


def load_model_and_text(cfg: GPT2Config, logger) -> tuple[GPT2, object, str]:
    """``(model, tokenizer, evaluation text)`` for the configured model and data set."""
    tiny_text = None
    if cfg.model == "tiny":
        model, tokenizer, tiny_text = load_or_train_tiny(tiny_config(cfg), cfg.output_dir, logger)
    else:
        model, tokenizer = GPT2.from_pretrained(cfg.model), load_hf_tokenizer(cfg.model)
    text_loaders = {
        "stdlib": lambda: tiny_text if tiny_text is not None else stdlib_corpus(cfg.tiny_corpus_dir or None)["test"][
            : TinyConfig.max_test_chars],
        "ptb": lambda: data.load_hf_test_text("ptb"),
        "wikitext2": lambda: data.load_hf_test_text("wikitext2"),
        "text": lambda: data.read_text_file(cfg.text_file),
    }
    return model, tokenizer, text_loaders[cfg.dataset]()


def calibration_batches(cfg: GPT2Config, tokenizer, block_size: int, model: GPT2, logger) -> list[torch.Tensor] | None:
    """Token blocks ``(1, T)`` of calibration text for the calibrated MLP methods (``None`` for the others).

    The text is ``--calib-text-file`` or the training split of the tiny corpus, never the evaluation text.
    """
    from projprune import PAIR_METHODS

    if not PAIR_METHODS[cfg.mlp_method].needs_stats:
        return None
    text = (data.read_text_file(cfg.calib_text_file) if cfg.calib_text_file
            else stdlib_corpus(cfg.tiny_corpus_dir or None)["train"])
    ids = data.encode(tokenizer, text)[: cfg.calib_tokens + 1]
    blocks = data.make_blocks(ids, min(block_size, model.config.n_positions + 1), 0)
    logger.info(f"Calibration: {sum(b.numel() for b in blocks)} tokens of "
                f"{cfg.calib_text_file or 'the tiny corpus training split'}")
    return [b.reshape(1, -1) for b in blocks]


def run(cfg: GPT2Config) -> dict:
    """Run a validated ``cfg`` (see :func:`gpt2.main.validate`); returns the result row."""
    with num_threads(cfg.threads):
        return _run(cfg)


def _run(cfg: GPT2Config) -> dict:
    name = run_name(cfg)
    folder = run_dir(cfg)
    logger = get_logger(name, folder / f"{name}.txt")
    try:
        log_config(logger, cfg)
        seed_everything(cfg.seed)
        model, tokenizer, text = load_model_and_text(cfg, logger)
        ids = data.encode(tokenizer, text)
        block_size = cfg.block_size or model.config.n_positions
        blocks = data.make_blocks(ids, min(block_size, model.config.n_positions + 1), cfg.max_blocks)
        logger.info(f"Text: {len(text)} characters, {ids.numel()} tokens, {len(blocks)} blocks of {block_size}")

        params_before = count_params(model)
        start = time.perf_counter()
        if cfg.method != "none" and cfg.rate > 0:
            prune_attention(model, cfg.rate, cfg.method, lmbda=cfg.lmbda, seed=cfg.seed)
        if cfg.mlp_rate > 0:
            prune_mlp(model, cfg.mlp_rate, cfg.mlp_method, seed=cfg.seed,
                      calibration=calibration_batches(cfg, tokenizer, block_size, model, logger))
        prune_seconds = time.perf_counter() - start
        model = model.to(cfg.device)  # pruned on the CPU: many small per-head solves
        params_after = count_params(model)
        logger.info(f"Params: {params_before / 1e6:.2f} M => {params_after / 1e6:.2f} M "
                    f"({100 * params_after / params_before:.2f}%)")
        logger.info(f"QK dims per head: {model.config.qk_dims}; MLP widths: {model.config.mlp_dims}")
        logger.info(f"Pruning time: {prune_seconds:.2f} s")

        result = data.evaluate_perplexity(model, blocks, cfg.batch_size, cfg.device)
        logger.info(f"Perplexity={result.perplexity:.4f}, Loss={result.loss:.4f}, Tokens={result.tokens}, "
                    f"Tokens/s={result.tokens_per_s:.1f}")
        row = {
            "model": cfg.model, "dataset": cfg.dataset, "method": cfg.method, "rate": cfg.rate,
            "mlp_method": cfg.mlp_method if cfg.mlp_rate > 0 else "none", "mlp_rate": cfg.mlp_rate,
            "lmbda": cfg.lmbda, "seed": cfg.seed, "perplexity": f"{result.perplexity:.6f}",
            "loss": f"{result.loss:.6f}", "tokens": result.tokens, "blocks": result.blocks,
            "params": params_after, "params_before": params_before,
            "prune_seconds": f"{prune_seconds:.3f}", "tokens_per_s": f"{result.tokens_per_s:.1f}",
        }
        if cfg.save_model:
            save_model(folder / "model.safetensors", model, {"run": asdict(cfg)})
        atomic_write_csv(folder / "result.csv", [row])
        logger.info(f"Result: {folder / 'result.csv'}")
        return row
    finally:
        close_logger(logger)
