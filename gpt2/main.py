"""GPT-2 QK-dimension (and MLP) pruning without fine-tuning, scored by perplexity (paper §4.2).

One run = one model, one data set, one attention method and rate (plus an optional MLP
method and rate). Examples::

    python gpt2/main.py --model tiny --method proj --rate 0.2          # embedded default
    python gpt2/main.py --model gpt2 --dataset wikitext2 --method proj_coef --rate 0.1

Outputs ``<output-dir>/gpt2/<dataset>-<method>-<rate>-<model>/``: the log ``<name>.txt``
(every argument first) and ``result.csv`` (one row); ``python -m gpt2.parse`` gathers them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `python gpt2/main.py`: import engine etc. from this repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.harness import parse_config, run_cli, wrote  # noqa: E402  (torch-free: --help imports no torch)

# gpt2.model.HF_MODEL_NAMES, gpt2.prune.ATTENTION_METHODS and gpt2.tiny.TinyConfig's defaults, named here so that
# parsing the flags imports no torch (tests/test_gpt2_main.py checks that they agree).
HF_MODEL_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
ATTENTION_METHOD_NAMES = ("random", "norm", "proj_coef", "proj", "proj_exact", "proj_comp", "depgraph")
TINY_DEFAULTS = {"steps": 1500, "n_layer": 4, "n_embd": 128, "vocab_size": 2048}
METHODS = ("none", *ATTENTION_METHOD_NAMES)
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
    tiny_steps: int = field(default=TINY_DEFAULTS["steps"], metadata={"help": "training steps of the tiny GPT-2"})
    tiny_layers: int = field(default=TINY_DEFAULTS["n_layer"], metadata={"help": "layers of the tiny GPT-2"})
    tiny_embd: int = field(default=TINY_DEFAULTS["n_embd"], metadata={"help": "width of the tiny GPT-2"})
    tiny_vocab: int = field(default=TINY_DEFAULTS["vocab_size"], metadata={"help": "BPE vocabulary of the tiny GPT-2"})
    tiny_corpus_dir: str = field(default="", metadata={
        "help": "tree of .py files whose docstrings/comments train the tiny GPT-2 ('' = the standard library)"})


def run_name(cfg: GPT2Config) -> str:
    """``<dataset>-<method>-<rate>-<model>`` (plus ``-mlp_<method>-<rate>`` when the MLPs are pruned)."""
    model = Path(cfg.model).name if Path(cfg.model).is_dir() else cfg.model
    name = f"{cfg.dataset}-{cfg.method}-{cfg.rate:.2f}-{model}"
    if cfg.mlp_rate > 0:
        name += f"-mlp_{cfg.mlp_method}-{cfg.mlp_rate:.2f}"
    return name


def run_dir(cfg: GPT2Config) -> Path:
    """``<output-dir>/gpt2/<run name>``: the log, ``result.csv`` (and the pruned model)."""
    return Path(cfg.output_dir) / "gpt2" / run_name(cfg)


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


def main(argv: Sequence[str] | None = None) -> dict:
    """Run one pruning + perplexity evaluation; returns the result row."""
    cfg = validate(parse_config(GPT2Config, argv, description=__doc__.splitlines()[0]))
    from gpt2.run import run  # torch (and transformers for the hub models): after the arguments parsed

    row = run(cfg)
    wrote(run_dir(cfg))
    return row


if __name__ == "__main__":
    run_cli(main, "gpt2/main.py")
