"""Demo on the embedded default: an MLP on scikit-learn's digits, pruned 50 % by each method.

    python -m engine.demo [--seed 1] [--epochs 40] [--ratio 0.5] [--methods l2,exact_oac] [--output-dir run/demo]

Trains 64 -> 256 -> 256 -> 10 (ReLU) in a few seconds, then, from the same trained weights,
removes --ratio of the units of both hidden layers with every method of projprune.PAIR_METHODS
(no fine-tuning) and prints accuracy before and after. The table is also written to
<output-dir>/demo.md and demo.csv.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `python engine/demo.py`: import engine etc. from this repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.harness import (  # noqa: E402  (torch-free: --help imports no torch)
    atomic_write_csv,
    atomic_write_text,
    count_params,
    parse_config,
    progress,
    run_cli,
    seed_everything,
    split_list,
    wrote,
)
from engine.report import markdown_table  # noqa: E402


@dataclass
class DemoConfig:
    seed: int = field(default=1, metadata={"help": "random seed"})
    epochs: int = field(default=40, metadata={"help": "training epochs"})
    hidden: int = field(default=256, metadata={"help": "width of both hidden layers"})
    ratio: float = field(default=0.5, metadata={"help": "fraction of hidden units removed per layer"})
    calib_size: int = field(default=256, metadata={
        "help": "training images whose activations calib / act_norm summarise (never test images)"})
    methods: str = field(default="all", metadata={
        "help": "comma-separated names from projprune.PAIR_METHODS, or 'all' for every one (README's table)"})
    output_dir: str = field(default="run/demo", metadata={"help": "where demo.md and demo.csv go"})


def make_mlp(hidden: int):
    """``64 -> hidden -> hidden -> 10`` with ReLUs: an ``nn.Sequential``."""
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 10))


def run(cfg: DemoConfig) -> list[dict]:
    """Train once, prune a copy per method; returns one row per method."""
    import copy

    import torch

    import projprune as pp
    from engine.classify import evaluate_accuracy, train_classifier
    from engine.digits import digits_tensors

    if not 0.0 <= cfg.ratio < 1.0:
        raise ValueError(f"--ratio must be in [0, 1) (fraction of hidden units removed), got {cfg.ratio}")
    if cfg.epochs < 0:
        raise ValueError(f"--epochs must be >= 0, got {cfg.epochs}")
    if cfg.hidden < 2:
        raise ValueError(f"--hidden must be >= 2 (width of both hidden layers), got {cfg.hidden}")
    if cfg.calib_size < 1:
        raise ValueError(f"--calib-size must be >= 1 (training images for calib / act_norm), got {cfg.calib_size}")
    methods = list(pp.PAIR_METHODS) if cfg.methods.strip() == "all" else split_list(cfg.methods, unique=True)
    unknown = [m for m in methods if m not in pp.PAIR_METHODS]
    if unknown or not methods:
        raise ValueError(f"--methods: unknown {unknown or cfg.methods!r}; expected 'all' or names from "
                         f"{', '.join(pp.PAIR_METHODS)}")
    seed_everything(cfg.seed)
    x_tr, y_tr, x_te, y_te = digits_tensors(seed=0)
    model = make_mlp(cfg.hidden)
    train_classifier(model, x_tr, y_tr, epochs=cfg.epochs, lr=1e-3, batch_size=64, seed=cfg.seed,
                     desc="train MLP on digits")
    base = evaluate_accuracy(model, x_te, y_te)
    amount = int(round(cfg.ratio * cfg.hidden))
    rows = []
    for method in progress(methods, desc="prune"):
        pruned = copy.deepcopy(model)
        start = time.perf_counter()
        # pair 1: hidden layer 1 read by hidden layer 2; pair 2: hidden layer 2 read by the classifier
        # calibrated methods: statistics of what the second layer reads, on training images, collected
        # after the previous pair was pruned (its compensation changed what follows)
        for first, second in ((1, 3), (3, 5)):
            stats = (pp.collect_activation_stats(pruned, [pruned[second]], x_tr[: cfg.calib_size].split(64))[0]
                     if pp.PAIR_METHODS[method].needs_stats else None)
            pp.prune_pair(pruned[first], pruned[second], amount, method,
                          generator=torch.Generator().manual_seed(cfg.seed), stats=stats)
        seconds = time.perf_counter() - start
        params = count_params(pruned)
        rows.append({"method": method, "description": pp.PAIR_METHODS[method].description,
                     "acc_before": round(base, 4), "acc_after": round(evaluate_accuracy(pruned, x_te, y_te), 4),
                     "params": params, "seconds": round(seconds, 3)})
    return rows


def markdown(rows: list[dict], cfg: DemoConfig) -> str:
    lines = [f"MLP 64-{cfg.hidden}-{cfg.hidden}-10 on digits (test split), {int(cfg.ratio * 100)} % of each hidden "
             f"layer removed, no fine-tuning, seed {cfg.seed}.", ""]
    cells = [[r["method"], f"{r['acc_before']:.4f}", f"{r['acc_after']:.4f}", r["params"], f"{r['seconds']:.3f}"]
             for r in rows]
    header = ["method", "accuracy before", "accuracy after", "params after", "prune time (s)"]
    return "\n".join(lines) + "\n" + markdown_table(cells, columns=header)


def main(argv: list[str] | None = None) -> list[dict]:
    """Parse ``argv``, run the demo, write ``demo.csv`` and ``demo.md``; returns the rows."""
    cfg = parse_config(DemoConfig, argv, description=__doc__.split("\n\n")[0])
    rows = run(cfg)
    table = markdown(rows, cfg)
    out = Path(cfg.output_dir)
    atomic_write_csv(out / "demo.csv", rows)
    atomic_write_text(out / "demo.md", table)
    print(table)
    wrote(out / "demo.md", out / "demo.csv")
    return rows


if __name__ == "__main__":
    run_cli(main, "python -m engine.demo")
