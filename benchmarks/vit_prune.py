"""ViT-B/16 MLP pruning speed on CPU: all 12 MLPs of a randomly initialised ``vit_b_16``, 1,000 units each.

    python -m benchmarks.vit_prune [--layers 12] [--amount 1000] [--methods exact,exact_oac,proj550,l2]
        [--lazy-steps 10] [--threads 0] [--seed 1]

Each method runs through ``vit.methods`` exactly as the experiments call it (weights sliced and
redistributed in place). The exact greedy (``exact``, ``exact_oac``) and the norm baselines are timed
over every layer. The lazy tracking of the paper (``proj*``) costs ``O(n_rem² m)`` per removed unit
(about 14 GFLOP per step at ``n = 3072``), so it is timed on its first ``--lazy-steps`` steps of one
layer (set-up included) and extrapolated with the ``(n - t)²`` cost of step ``t``, marked as such.
With ``--threads 1`` the experiments' code prunes two layers at once on a 2-core machine
(``vit.methods`` uses the cores that torch's intra-op threads leave idle); the lazy extrapolation is
per layer, sequential. Goal: the exact solver under 60 s for all 12 layers. Prints a Markdown table; the machine's load
average is printed too (timings on a shared machine vary with it).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # `python benchmarks/vit_prune.py`: import engine etc. from this repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from engine.harness import num_threads, plain_text, run_cli, split_list  # noqa: E402
from engine.report import markdown_table  # noqa: E402

if TYPE_CHECKING:
    import torch


GOAL_SECONDS = 60.0


class _Stop(Exception):
    """Raised by the step callback to end a timed lazy run early."""


def time_full(model: torch.nn.Module, method: str, layers: int, amount: int) -> float:
    """Seconds to prune ``amount`` units from each of the first ``layers`` MLPs of a copy of ``model``."""
    from vit.methods import PruneContext, get_method
    from vit.models import mlp_pairs

    pruned = copy.deepcopy(model)
    start = time.perf_counter()
    get_method(method).prune(pruned, {layer: amount for layer in range(layers)}, PruneContext())
    seconds = time.perf_counter() - start
    assert all(fc1.out_features == 3072 - amount for fc1, _ in mlp_pairs(pruned)[:layers])
    return seconds


def time_lazy_extrapolated(model: torch.nn.Module, method: str, layers: int, amount: int, steps: int) -> float:
    """Seconds for the lazy method on ``layers`` layers, extrapolated from ``steps`` steps of layer 0."""
    from projprune import PAIR_METHODS, greedy_lazy
    from vit.models import mlp_pairs

    fc1, fc2 = mlp_pairs(model)[0]
    W, b, V = fc1.weight.detach(), fc1.bias.detach(), fc2.weight.detach()
    n = W.shape[0]
    stamps: list[float] = []

    def on_step(step: int) -> None:
        stamps.append(time.perf_counter())
        if len(stamps) >= steps:
            raise _Stop

    start = time.perf_counter()
    try:
        greedy_lazy(W, amount, PAIR_METHODS[method].options, b=b, V=V, callback=on_step)
    except _Stop:
        pass
    per_step = (stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1)  # at n_rem ≈ n
    setup = stamps[0] - start - per_step
    loop = sum(per_step * ((n - t) / n) ** 2 for t in range(amount))
    return layers * (setup + loop)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=plain_text(__doc__.splitlines()[0]))
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--amount", type=int, default=1000)
    parser.add_argument("--methods", default="exact,exact_oac,proj550,l2")
    parser.add_argument("--lazy-steps", type=int, default=10, help="timed steps of the lazy methods")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not 1 <= args.layers <= 12 or not 0 < args.amount < 3072 or args.lazy_steps < 2:
        raise ValueError("--layers must be in [1, 12], --amount in (0, 3072), --lazy-steps >= 2")
    with num_threads(args.threads) as threads:
        rows = _time_methods(args)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    text = (f"vit_b_16 (random init), {args.layers} MLP layers (3072x768), {args.amount} units each; "
            f"torch threads {threads}, load average {load}\n\n")
    cells = [[method, f"{seconds:.1f}", f"{seconds / args.layers:.2f}", how,
              ("yes" if seconds < GOAL_SECONDS else "no") if method.startswith("exact") else ""]
             for method, seconds, how in rows]
    table = text + markdown_table(cells, columns=["method", "seconds (all layers)", "per layer", "how",
                                                  "exact < 60 s"]).rstrip("\n")
    print(table)
    return table


def _time_methods(args: argparse.Namespace) -> list[tuple[str, float, str]]:
    """``(method, seconds, how)`` per method of ``--methods``."""
    import torch
    from torchvision.models import vit_b_16

    from projprune import PAIR_METHODS

    torch.manual_seed(args.seed)
    model = vit_b_16().eval()
    rows = []
    for method in split_list(args.methods):
        kind = PAIR_METHODS[method].kind if method in PAIR_METHODS else "other"
        if kind == "lazy":
            seconds = time_lazy_extrapolated(model, method, args.layers, args.amount, args.lazy_steps)
            how = f"extrapolated from {args.lazy_steps} steps"
        else:
            seconds = time_full(model, method, args.layers, args.amount)
            how = "measured"
        rows.append((method, seconds, how))
        print(f"{method}: {seconds:.1f} s ({how})", flush=True)
    return rows


if __name__ == "__main__":
    run_cli(main, "benchmarks/vit_prune.py")
