"""Prune the MLP blocks of a Vision Transformer without fine-tuning (paper §4.1).

    python vit/main.py --model small --experiment uniform --method proj000          # digits, CPU
    python vit/main.py --model vit_b_16 --experiment adaptive --method l2 --dataroot data/imagenet

Writes ``<output-dir>/vit/<model>/<experiment>/<run name>/<run name>{.txt,.csv,-timing.csv,.png,.pdf,.json}``;
the ``.json`` summary is written last and marks a finished run.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `python vit/main.py`: import engine etc. from this repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.harness import parse_config, run_cli, wrote  # noqa: E402  (torch-free: --help imports no torch)

__all__ = ["EXPERIMENTS", "VIT_METHOD_NAMES", "VIT_MODEL_NAMES", "ViTConfig", "main", "run_dir", "run_name"]

EXPERIMENTS = ("uniform", "adaptive", "norm_analysis")
# The keys of vit.models.VIT_MODELS and vit.methods.VIT_METHODS, named here so that parsing the flags imports
# neither torchvision nor Torch-Pruning (tests/test_vit_main.py checks that they agree).
VIT_MODEL_NAMES = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14")
VIT_METHOD_NAMES = ("random", "l1", "l2", "proj000", "proj500", "proj550", "proj5n50", "proj555", "exact", "exact_oac",
                    "calib", "act_norm", "lamp", "obdc", "group_norm", "svd3", "mask_random", "mask_l1",
                    "mask_random_structured", "mask_l1_structured")


@dataclass
class ViTConfig:
    """Command line of ``vit/main.py``; defaults are the paper's ViT settings (docs/reproduction.md §2)."""

    model: str = field(default="small", metadata={
        "choices": ["small", *VIT_MODEL_NAMES], "help": "small = the embedded digits ViT; else a torchvision ViT"})
    experiment: str = field(default="uniform", metadata={"choices": list(EXPERIMENTS), "help": "what to run"})
    method: str = field(default="proj000", metadata={"choices": list(VIT_METHOD_NAMES), "help": "pruning method"})
    dataroot: str = field(default="data/imagenet", metadata={"help": "ImageNet root with val/ (and train/)"})
    weights: str = field(default="", metadata={"help": "state-dict file; empty = the torch hub cache"})
    output_dir: str = field(default="run", metadata={"help": "run directory root"})
    batch_size: int = field(default=32, metadata={"help": "evaluation batch size (paper: 32)"})
    eval_batches: int = field(default=100, metadata={"help": "evaluate on the first N batches (paper: 100)"})
    calibration_batches: int = field(default=4, metadata={"help": "training batches for obdc's Fisher"})
    calib_size: int = field(default=256, metadata={
        "help": "training images whose activations calib / act_norm summarise (never evaluation images)"})
    workers: int = field(default=4, metadata={"help": "ImageNet data-loader workers"})
    amounts: str = field(default="", metadata={"help": "uniform: comma-separated amounts per layer (overrides)"})
    steps: int = field(default=24, metadata={"help": "uniform: i = 0..steps-1 of round(i**1.1 * 50)"})
    chunk: int = field(default=0, metadata={"help": "adaptive: units per step; 0 = 256 scaled to the MLP width"})
    threshold: float = field(default=0.9, metadata={"help": "adaptive: keep top-1 >= threshold x original"})
    lmbda: float = field(default=1e-3, metadata={
        "help": "ridge λ of the projective methods and distances (calib / act_norm: relative to trace(C)/n)"})
    timing_repeats: int = field(default=5, metadata={"help": "forward passes timed per step (median)"})
    device: str = field(default="", metadata={"help": "cpu / cuda; empty = cuda when available"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads; 0 = torch's default"})
    small_epochs: int = field(default=40, metadata={"help": "training epochs of the small digits ViT"})
    retrain: bool = field(default=False, metadata={"help": "retrain the small digits ViT even if a cached one exists"})
    save_model: bool = field(default=False, metadata={"help": "adaptive: save the pruned model (safetensors)"})
    seed: int = field(default=1, metadata={"help": "random seed"})


def run_name(cfg: ViTConfig) -> str:
    """``<model>-<experiment>-<method>`` (``<model>-norm_analysis``: the analysis uses no method)."""
    if cfg.experiment == "norm_analysis":
        return f"{cfg.model}-norm_analysis"
    return f"{cfg.model}-{cfg.experiment}-{cfg.method}"


def run_dir(cfg: ViTConfig) -> Path:
    """``<output_dir>/vit/<model>/<experiment>/<run name>``."""
    return Path(cfg.output_dir) / "vit" / cfg.model / cfg.experiment / run_name(cfg)


def main(argv: list[str] | None = None) -> Path:
    """Run one experiment; returns its run directory."""
    cfg = parse_config(ViTConfig, argv, description=__doc__)
    from vit.run import run  # torch, torchvision, Torch-Pruning: after the arguments parsed

    out = run(cfg)
    wrote(out)
    return out


if __name__ == "__main__":
    run_cli(main, "vit/main.py")
