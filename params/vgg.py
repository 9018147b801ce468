"""The paper's VGG-16 ablation (§4.3): l2 against proj000/500/550/555, on the classifier and on the convs.

Same harness as the LeNet analysis (training cache, staged pruning, Student-t statistics, figures);
only the model and the comparisons differ. Runs offline on the embedded ``digits`` (and on
FashionMNIST given the files); the paper's CIFAR-10/100 and ImageNet runs need those data sets::

    python -m params.vgg --dataset digits --num-models 3 --epochs 15
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python params/vgg.py`: import engine etc. from this repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.harness import parse_config, run_cli, split_list, wrote  # noqa: E402  (torch-free: fast --help)
from params.config import DATASETS, check_study_flags  # noqa: E402

SCOPES = ("linear", "conv")
VGG_METHODS = ("l2", "proj000", "proj500", "proj550", "proj555")  # the paper's ablation rows


@dataclass
class VGGConfig:
    """Configuration of the VGG-16 ablation; the statistics flags match ``params.main``."""

    dataset: str = field(default="digits", metadata={"choices": sorted(DATASETS), "help": "data set"})
    dataroot: str = field(default="data", metadata={"help": "folder holding the FashionMNIST IDX files"})
    output_dir: str = field(default="run/params", metadata={"help": "results go to <output-dir>/<dataset>/vgg16/"})
    models_dir: str = field(default="", metadata={"help": "cached models; empty = <output-dir>/<dataset>/vgg16/models"})
    num_models: int = field(default=3, metadata={"help": "N independently trained models"})
    epochs: int = field(default=15, metadata={"help": "training epochs per model"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    batch_size: int = field(default=64, metadata={"help": "training batch size"})
    train_size: int = field(default=0, metadata={"help": "training images per model; 0 = data set default"})
    val_size: int = field(default=0, metadata={"help": "validation images per model; 0 = data set default"})
    width_divisor: int = field(default=8, metadata={"help": "divide every VGG width by this (1 = full VGG-16)"})
    dropout: float = field(default=0.3, metadata={"help": "dropout after each hidden Linear"})
    bn_recalibrate: bool = field(
        default=False, metadata={"help": "re-estimate BatchNorm statistics on the training split after each stage"}
    )
    stages: int = field(default=10, metadata={"help": "pruning stages: keep 100%, then down to 100/stages %"})
    scopes: str = field(default="linear,conv", metadata={"help": "comma-separated subset of linear,conv"})
    methods: str = field(default=",".join(VGG_METHODS), metadata={"help": "comma-separated PAIR_METHODS names"})
    confidence: float = field(default=0.95, metadata={"help": "confidence level of the Student-t intervals"})
    alpha_level: float = field(default=0.05, metadata={"help": "significance level (Holm-adjusted p-values)"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    retrain: bool = field(default=False, metadata={"help": "retrain models even if cached ones exist"})
    seed: int = field(default=1, metadata={"help": "base seed; model i uses seed * 1000 + i"})


def _names(text: str, known: Sequence[str], flag: str) -> list[str]:
    names = split_list(text, unique=True)
    if not names or any(name not in known for name in names):
        raise ValueError(f"{flag} must be a comma-separated subset of {list(known)}, got {text!r}")
    return names


def __getattr__(name: str):
    # The model (torch) is imported on first use, so that --help answers without torch.
    if name in ("VGG16", "VGG16_LAYOUT"):
        from params import vgg_model

        return getattr(vgg_model, name)
    raise AttributeError(f"module 'params.vgg' has no attribute {name!r}")


def vgg_comparisons(scopes: Sequence[str], methods: Sequence[str]) -> list:
    """One ``params.analysis.Comparison`` per scope: every method, each tested against ``l2`` (when included)."""
    from params.analysis import Comparison, Variant

    comparisons = []
    for scope in scopes:
        variants = tuple(Variant(method, method, scope=scope) for method in methods)
        tests = tuple((m, "l2") for m in methods if m != "l2") if "l2" in methods else ()
        title = "VGG-16 classifier (fc1, fc2)" if scope == "linear" else "VGG-16 convolutions (conv1-12, BN)"
        comparisons.append(Comparison(f"vgg_{scope}", title, variants, tests))
    return comparisons


def validate_vgg_config(cfg: VGGConfig) -> tuple[list[str], list[str]]:
    """Check ``cfg`` before anything is written; returns ``(scopes, methods)``.

    Raises:
        ValueError: naming the offending flag and what was expected.
    """
    from projprune import PAIR_METHODS

    check_study_flags(cfg)
    if cfg.width_divisor < 1 or 64 % cfg.width_divisor:
        raise ValueError(f"--width-divisor must divide 64, got {cfg.width_divisor}")
    return _names(cfg.scopes, SCOPES, "--scopes"), _names(cfg.methods, list(PAIR_METHODS), "--methods")


def run_vgg(cfg: VGGConfig) -> dict[str, Any]:
    """Train or load N small VGG-16s and prune them in stages with every method and scope."""
    from params.analysis import ModelFactory, check_cached_models, run_study
    from params.data import load_dataset, resolve_split_sizes
    from params.vgg_model import VGG16

    scopes, methods = validate_vgg_config(cfg)
    data = load_dataset(cfg.dataset, cfg.dataroot)
    out_dir = Path(cfg.output_dir) / cfg.dataset / ("vgg16-bnrecal" if cfg.bn_recalibrate else "vgg16")
    # The same trained models serve runs with and without recalibration.
    models_dir = Path(cfg.models_dir) if cfg.models_dir else Path(cfg.output_dir) / cfg.dataset / "vgg16" / "models"
    in_channels = int(data[0].shape[1])
    num_classes = int(max(int(data[1].max()), int(data[3].max())) + 1)
    factory = ModelFactory(
        "vgg16",
        lambda size: VGG16(size, in_channels, num_classes, cfg.width_divisor, dropout=cfg.dropout),
        (("width_divisor", cfg.width_divisor), ("dropout", cfg.dropout), ("num_classes", num_classes)),
    )
    n_train, n_val = resolve_split_sizes(cfg.dataset, len(data[0]), cfg.train_size, cfg.val_size)
    check_cached_models(cfg, factory, models_dir, n_train, n_val)
    return run_study(cfg, factory, vgg_comparisons(scopes, methods), data, out_dir, models_dir,
                     f"params-vgg16-{cfg.dataset}", f"VGG-16 ablation on {cfg.dataset}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse flags into a :class:`VGGConfig` and run the ablation; returns what was written."""
    written = run_vgg(parse_config(VGGConfig, argv, description=__doc__))
    wrote(written["output_dir"])
    return written


if __name__ == "__main__":
    run_cli(main, "python -m params.vgg")
