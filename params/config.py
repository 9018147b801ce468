"""Settings of the hyper-parameter analysis: the config dataclass, flag checks, stage constants."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from params.comparisons import parse_comparisons

# The keys of params.data.DATASETS, named here so that parsing the flags imports no torch
# (tests/test_params.py checks that they agree).
DATASETS = ("digits", "fashionmnist")
MODES = ("layer", "global")


FAILED = "failed"


@dataclass
class ParamsConfig:
    """Configuration of the hyper-parameter analysis; defaults are the paper's (§4.3)."""

    dataset: str = field(default="fashionmnist", metadata={"choices": sorted(DATASETS), "help": "data set"})
    dataroot: str = field(default="data", metadata={"help": "folder holding the FashionMNIST IDX files"})
    output_dir: str = field(default="run/params", metadata={"help": "results go to <output-dir>/<dataset>/"})
    models_dir: str = field(
        default="", metadata={"help": "cached trained models (safetensors); empty = <output-dir>/<dataset>/models"}
    )
    num_models: int = field(default=10, metadata={"help": "N independently trained models"})
    epochs: int = field(default=10, metadata={"help": "training epochs per model"})
    lr: float = field(default=3e-3, metadata={"help": "Adam learning rate"})
    batch_size: int = field(default=64, metadata={"help": "training batch size"})
    train_size: int = field(default=0, metadata={"help": "training images per model; 0 = data set default"})
    val_size: int = field(default=0, metadata={"help": "validation images per model; 0 = data set default"})
    dropout: float = field(default=0.2, metadata={"help": "dropout after each hidden Linear"})
    stages: int = field(default=10, metadata={"help": "pruning stages: keep 100%, then down to 100/stages %"})
    comparisons: str = field(default="all", metadata={"help": "comma-separated comparisons, or 'all'"})
    confidence: float = field(default=0.95, metadata={"help": "confidence level of the Student-t intervals"})
    alpha_level: float = field(default=0.05, metadata={"help": "significance level (Holm-adjusted p-values)"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads (1 is fastest for these tiny models)"})
    retrain: bool = field(default=False, metadata={"help": "retrain models even if cached ones exist"})
    seed: int = field(default=1, metadata={"help": "base seed; model i uses seed * 1000 + i"})


def check_study_flags(cfg: Any) -> None:
    """Check the flags every study shares (LeNet analysis and VGG ablation) before anything is written.

    Raises:
        ValueError: naming the offending flag and what was expected.
    """
    if cfg.dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {sorted(DATASETS)}, got {cfg.dataset!r}")
    checks = [
        (cfg.num_models >= 1, f"--num-models must be >= 1, got {cfg.num_models}"),
        (cfg.epochs >= 0, f"--epochs must be >= 0, got {cfg.epochs}"),
        (cfg.lr > 0, f"--lr must be > 0, got {cfg.lr}"),
        (cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}"),
        (cfg.train_size >= 0 and cfg.val_size >= 0, "--train-size and --val-size must be >= 0 (0 = default)"),
        (0.0 <= cfg.dropout < 1.0, f"--dropout must be in [0, 1), got {cfg.dropout}"),
        (1 <= cfg.stages <= 100, f"--stages must be in [1, 100], got {cfg.stages}"),
        (0.0 < cfg.confidence < 1.0, f"--confidence must be in (0, 1), got {cfg.confidence}"),
        (0.0 < cfg.alpha_level < 1.0, f"--alpha-level must be in (0, 1), got {cfg.alpha_level}"),
        (cfg.threads >= 1, f"--threads must be >= 1, got {cfg.threads}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def validate_config(cfg: ParamsConfig) -> list[str]:
    """Check ``cfg`` before anything is written; returns the selected comparison names.

    Raises:
        ValueError: naming the offending flag and what was expected.
    """
    check_study_flags(cfg)
    return parse_comparisons(cfg.comparisons)
