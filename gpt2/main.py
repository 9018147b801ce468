"""GPT-2 QK-dimension (and MLP) pruning without fine-tuning, scored by perplexity (paper §4.2).

One run = one model, one data set, one attention method and rate (plus an optional MLP
method and rate). Examples::

    python -m gpt2.main --model tiny --method proj --rate 0.2          # embedded default
    python -m gpt2.main --model gpt2 --dataset wikitext2 --method proj_coef --rate 0.1

Outputs ``<output-dir>/gpt2/<dataset>-<method>-<rate>-<model>/``: the log ``<name>.txt``
(every argument first) and ``result.csv`` (one row); ``python -m gpt2.parse`` gathers them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from engine.harness import (
    atomic_write_csv,
    close_logger,
    count_params,
    get_logger,
    log_config,
    num_threads,
    parse_config,
    seed_everything,
)
from gpt2 import data
from gpt2.model import GPT2, HF_MODEL_NAMES, load_hf_tokenizer, save_model
from gpt2.prune import ATTENTION_METHODS, prune_attention, prune_mlp
from gpt2.tiny import TinyConfig, load_or_train_tiny, stdlib_corpus

METHODS = ("none", *ATTENTION_METHODS)
DATASETS = ("stdlib", "ptb", "wikitext2", "text")


@dataclass
class GPT2Config:
    """Command line of ``gpt2/main.py`` (defaults: the embedded tiny GPT-2, unpruned)."""

    model: str = field(default="tiny", metadata={
        "help": f"'tiny' (trained locally), one of {', '.join(HF_MODEL_NAMES)} (local hub cache) or a directory"})
    dataset: str = field(default="stdlib", metadata={
        "choices": DATASETS, "help": "stdlib = test split of the tiny corpus; text = --text-file"})
    text_file: str = field(default="", metadata={"help": "local UTF-8 text to evaluate (sets --dataset text)"})
    method: str = field(default="none", metadata={"choices": METHODS, "help": "QK-dimension selection"})
    rate: float = field(default=0.0, metadata={"help": "fraction of each head's QK dimensions removed"})
    mlp_method: str = field(default="exact", metadata={"help": "projprune.PAIR_METHODS name for the MLPs"})
    mlp_rate: float = field(default=0.0, metadata={"help": "fraction of each MLP's units removed (paper: 0)"})
    calib_text_file: str = field(default="", metadata={
        "help": "calibration text of --mlp-method calib/act_norm ('' = the training split of the tiny corpus)"})
    calib_tokens: int = field(default=8192, metadata={"help": "calibration tokens of calib/act_norm"})
    lmbda: float = field(default=1e-3, metadata={"help": "ridge regulariser of the projective scores"})
    block_size: int = field(default=0, metadata={"help": "tokens per block (0 = the model's context)"})
    batch_size: int = field(default=1, metadata={"help": "blocks per forward pass (paper: 1)"})
    max_blocks: int = field(default=0, metadata={"help": "evaluate only the first N blocks (0 = all)"})
    seed: int = 1
    output_dir: str = field(default="run", metadata={"help": "run root"})
    save_model: bool = field(default=False, metadata={"help": "also save the pruned model (safetensors)"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads (0 = torch's default)"})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda"})
    tiny_steps: int = field(default=TinyConfig.steps, metadata={"help": "training steps of the tiny GPT-2"})
    tiny_layers: int = field(default=TinyConfig.n_layer, metadata={"help": "layers of the tiny GPT-2"})
    tiny_embd: int = field(default=TinyConfig.n_embd, metadata={"help": "width of the tiny GPT-2"})
    tiny_vocab: int = field(default=TinyConfig.vocab_size, metadata={"help": "BPE vocabulary of the tiny GPT-2"})
    tiny_corpus_dir: str = field(default="", metadata={
        "help": "tree of .py files whose docstrings/comments train the tiny GPT-2 ('' = the standard library)"})


def run_name(cfg: GPT2Config) -> str:
    """``<dataset>-<method>-<rate>-<model>`` (plus ``-mlp_<method>-<rate>`` when the MLPs are pruned)."""
    model = Path(cfg.model).name if Path(cfg.model).is_dir() else cfg.model
    name = f"{cfg.dataset}-{cfg.method}-{cfg.rate:.2f}-{model}"
    if cfg.mlp_rate > 0:
        name += f"-mlp_{cfg.mlp_method}-{cfg.mlp_rate:.2f}"
    return name


def validate(cfg: GPT2Config) -> GPT2Config:
    """Check every argument before anything is loaded or written; ``--text-file`` implies ``--dataset text``."""
    from projprune import PAIR_METHODS

    if cfg.text_file:
        cfg.dataset = "text"
        if not Path(cfg.text_file).is_file():
            raise FileNotFoundError(f"--text-file {cfg.text_file} does not exist (expected a UTF-8 text file)")
    elif cfg.dataset == "text":
        raise ValueError("--dataset text needs --text-file PATH")
    if not 0.0 <= cfg.rate < 1.0 or not 0.0 <= cfg.mlp_rate < 1.0:
        raise ValueError(f"--rate and --mlp-rate must be in [0, 1), got {cfg.rate} and {cfg.mlp_rate}")
    if cfg.method == "none" and cfg.rate > 0:
        raise ValueError(f"--method none prunes nothing; use --rate 0 (got {cfg.rate})")
    if cfg.mlp_method not in PAIR_METHODS:
        raise ValueError(f"--mlp-method must be one of {sorted(PAIR_METHODS)}, got {cfg.mlp_method!r}")
    if cfg.calib_text_file:
        if not Path(cfg.calib_text_file).is_file():
            raise FileNotFoundError(f"--calib-text-file {cfg.calib_text_file} does not exist (expected UTF-8 text)")
        if cfg.text_file and Path(cfg.calib_text_file).resolve() == Path(cfg.text_file).resolve():
            raise ValueError("--calib-text-file must differ from --text-file (calibration text is never the "
                             "evaluation text)")
    if cfg.calib_tokens < 1:
        raise ValueError(f"--calib-tokens must be >= 1, got {cfg.calib_tokens}")
    if cfg.tiny_corpus_dir and not Path(cfg.tiny_corpus_dir).is_dir():
        raise FileNotFoundError(f"--tiny-corpus-dir {cfg.tiny_corpus_dir} is not a directory of .py files")
    if cfg.lmbda <= 0:
        raise ValueError(f"--lmbda must be > 0, got {cfg.lmbda}")
    if cfg.block_size < 0 or cfg.batch_size < 1 or cfg.max_blocks < 0 or cfg.threads < 0:
        raise ValueError("--block-size/--max-blocks/--threads must be >= 0 and --batch-size >= 1")
    if cfg.model != "tiny" and cfg.model not in HF_MODEL_NAMES and not Path(cfg.model).is_dir():
        raise ValueError(f"--model must be 'tiny', one of {HF_MODEL_NAMES} or a model directory, got {cfg.model!r}")
    return cfg


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


def main(argv: Sequence[str] | None = None) -> dict:
    """Run one pruning + perplexity evaluation; returns the result row."""
    cfg = validate(parse_config(GPT2Config, argv, description=__doc__.splitlines()[0]))
    with num_threads(cfg.threads):
        return _run(cfg)


def _run(cfg: GPT2Config) -> dict:
    name = run_name(cfg)
    run_dir = Path(cfg.output_dir) / "gpt2" / name
    logger = get_logger(name, run_dir / f"{name}.txt")
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
            save_model(run_dir / "model.safetensors", model, {"run": asdict(cfg)})
        atomic_write_csv(run_dir / "result.csv", [row])
        logger.info(f"Result: {run_dir / 'result.csv'}")
        return row
    finally:
        close_logger(logger)


if __name__ == "__main__":
    main()
