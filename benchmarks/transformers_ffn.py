"""Benchmark: prune every FFN of a randomly initialised BERT-base-sized model in one call.

BERT-base has 12 FFN blocks of 3072 hidden units reading 768 features (``W: (3072, 768)``,
``V: (768, 3072)``). Each method prunes 30 % of every block with
:func:`projprune.transformers.prune_ffn`; the table gives the wall time side by side, the
slowest layer and the parameter counts. The goal for ``exact`` + ``compensate`` is under
30 s on a 2-core CPU.

    python benchmarks/transformers_ffn.py
    python benchmarks/transformers_ffn.py --methods exact+compensate,exact_oac,l2 --threads 2
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # `python benchmarks/transformers_ffn.py`: import engine etc. from this repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from engine.harness import num_threads, parse_config, run_cli, seed_everything, split_list  # noqa: E402
from engine.report import markdown_table  # noqa: E402

if TYPE_CHECKING:
    import torch


# Named runs: a method of FFN_METHODS plus option overrides.
RUNS: dict[str, tuple[str, dict]] = {
    "exact+compensate": ("exact", {"compensate": True}),
    "exact": ("exact", {}),
    "exact_oac": ("exact_oac", {}),
    "l2": ("l2", {}),
    "random": ("random", {}),
}


@dataclass
class BenchConfig:
    methods: str = field(default="exact+compensate,l2", metadata={"help": f"comma-separated runs of {sorted(RUNS)}"})
    ratio: float = field(default=0.3, metadata={"help": "fraction of FFN units pruned per layer"})
    num_layers: int = field(default=12, metadata={"help": "encoder layers (BERT-base: 12)"})
    hidden_size: int = field(default=768, metadata={"help": "model width (BERT-base: 768)"})
    intermediate_size: int = field(default=3072, metadata={"help": "FFN width (BERT-base: 3072)"})
    threads: int = field(default=0, metadata={"help": "torch threads (0: torch's default)"})
    seed: int = field(default=1, metadata={"help": "seed of the random initialisation"})


def build_model(cfg: BenchConfig) -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                        intermediate_size=cfg.intermediate_size, num_attention_heads=12, vocab_size=1000)
    seed_everything(cfg.seed)
    return BertModel(config).eval()


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = parse_config(BenchConfig, argv, description=__doc__.splitlines()[0])
    names = split_list(cfg.methods)
    unknown = [name for name in names if name not in RUNS]
    if unknown or not names:
        raise ValueError(f"--methods: expected names from {sorted(RUNS)}, got {cfg.methods!r}")
    with num_threads(cfg.threads):
        rows = [_time_method(cfg, name) for name in names]
    print(markdown_table(rows), end="")
    return rows


def _time_method(cfg: BenchConfig, name: str) -> dict:
    """Prune a fresh model with run ``name`` of :data:`RUNS`; one table row."""
    import torch

    from projprune.transformers import prune_ffn

    method, options = RUNS[name]
    model = build_model(cfg)
    load = os.getloadavg()[0]  # other processes on the machine slow the run down
    start = time.perf_counter()
    report = prune_ffn(model, cfg.ratio, method, **options)
    seconds = time.perf_counter() - start
    slowest = max(layer.seconds or 0.0 for layer in report.layers)
    print(f"{name}: {seconds:.1f} s", flush=True)
    return {
        "method": name,
        "layers": f"{len(report.layers)} x {report.layers[0].width_before} x {cfg.hidden_size}",
        "kept / layer": report.layers[0].width_after,
        "total s": f"{seconds:.1f}",
        "slowest layer s": f"{slowest:.2f}",
        "FFN params": f"{report.ffn_params_before / 1e6:.2f}M -> {report.ffn_params_after / 1e6:.2f}M",
        "all params": f"{report.params_before / 1e6:.1f}M -> {report.params_after / 1e6:.1f}M",
        "threads": torch.get_num_threads(),
        "load avg": f"{load:.1f}",
    }


if __name__ == "__main__":
    run_cli(main, "benchmarks/transformers_ffn.py")
