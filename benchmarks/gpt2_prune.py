"""GPT-2 XL-sized pruning speed on CPU: QK scores of every head, and one MLP pruned with the exact solver.

    python -m benchmarks.gpt2_prune [--layers 48] [--threads 0] [--skip-mlp]

1. QK scores for a randomly initialised attention of GPT-2 XL's size (48 layers x 25 heads x
   64 dims over 1600 inputs, one layer built at a time) with every score of
   ``gpt2/prune.py``; ``proj_coef`` also with the reference's rank-1 ``fast`` solver side by
   side (same per-head loop, only the solver differs), and the greedy methods
   (``proj_exact``, ``proj_comp`` at rate .3) on ``--greedy-layers`` layers, extrapolated.
2. One GPT-2 XL MLP (``c_fc`` 6400x1600, ``c_proj`` 1600x6400) pruned 30 % with
   ``projprune.prune_linear_pair(..., solver="exact")``. Goal: under 60 s.

Prints a Markdown table: wall-clock seconds and the process's CPU seconds (with one thread on a
busy shared machine, CPU seconds are what an idle core would take; wall time includes waiting).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # `python benchmarks/gpt2_prune.py`: import engine etc. from this repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from engine.harness import num_threads, plain_text, run_cli  # noqa: E402
from engine.report import markdown_table  # noqa: E402

if TYPE_CHECKING:
    import torch

    from gpt2.model import CausalSelfAttention


XL = {"n_embd": 1600, "n_head": 25, "n_inner": 6400}


def _proj_coef_fast(attn: CausalSelfAttention, lmbda: float = 1e-3) -> torch.Tensor:
    """``proj_coef`` with the reference's rank-1 loop solver (for the side-by-side ratio)."""
    import torch

    from gpt2.prune import head_rows
    from projprune.solvers import solve_normal_equations

    scores = []
    for head in range(attn.n_head):
        Q_h, K_h = head_rows(attn, head)
        C_Q = solve_normal_equations(Q_h, lmbda, method="fast")
        C_K = solve_normal_equations(K_h, lmbda, method="fast")
        scores.append(C_Q.norm(dim=1) + C_K.norm(dim=1))
    return torch.stack(scores)


def _timed_over_layers(fn: Callable[[CausalSelfAttention], object], layers: int, seed: int) -> tuple[float, float]:
    """``(wall, cpu)`` seconds of ``fn`` summed over ``layers`` freshly initialised XL attention layers."""
    import torch
    from torch import nn

    from gpt2.model import CausalSelfAttention, GPT2ModelConfig

    config = GPT2ModelConfig(n_layer=1, n_positions=8, vocab_size=8, **XL)
    total, cpu = 0.0, 0.0
    for layer in range(layers):
        torch.manual_seed(seed + layer)
        attn = CausalSelfAttention(config, 0)
        for proj in (attn.q_proj, attn.k_proj):
            nn.init.normal_(proj.weight, std=0.02)
            nn.init.normal_(proj.bias, std=0.02)
        start, start_cpu = time.perf_counter(), time.process_time()
        fn(attn)
        total += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
    return total, cpu


def bench_scores(layers: int, greedy_layers: int, seed: int) -> list[dict]:
    import torch

    from gpt2.prune import ATTENTION_METHODS, attention_keep_count, norm_scores, proj_coef_scores, proj_distance_scores

    rows = []
    n_keep = attention_keep_count(64, 0.3)
    plain = {
        "norm": lambda a: norm_scores(a),
        "proj (distances, closed form)": lambda a: proj_distance_scores(a),
        "proj_coef (closed form)": lambda a: proj_coef_scores(a),
        "proj_coef (reference fast solver)": _proj_coef_fast,
    }
    for name, fn in plain.items():
        seconds, cpu = _timed_over_layers(fn, layers, seed)
        rows.append({"task": f"QK scores {name}", "layers": layers, "seconds": seconds, "cpu": cpu,
                     "scale": 48 / layers})
    generator = torch.Generator().manual_seed(seed)
    for name in ("proj_exact", "proj_comp"):
        select = ATTENTION_METHODS[name].select
        seconds, cpu = _timed_over_layers(lambda a, s=select: s(a, n_keep, lmbda=1e-3, generator=generator),
                                          greedy_layers, seed)
        rows.append({"task": f"QK greedy {name}, rate .3", "layers": greedy_layers, "seconds": seconds, "cpu": cpu,
                     "scale": 48 / greedy_layers})
    return rows


def bench_mlp(seed: int, rate: float = 0.3) -> dict:
    import torch
    from torch import nn

    from projprune import prune_linear_pair

    torch.manual_seed(seed)
    fc1, fc2 = nn.Linear(1600, 6400), nn.Linear(6400, 1600)
    for layer in (fc1, fc2):
        nn.init.normal_(layer.weight, std=0.02)
    amount = int(round(rate * 6400))
    start, start_cpu = time.perf_counter(), time.process_time()
    kept = prune_linear_pair(fc1, fc2, amount, solver="exact")
    seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    if kept.numel() != 6400 - amount or fc1.weight.shape != (6400 - amount, 1600):
        raise RuntimeError("prune_linear_pair returned the wrong shapes")
    return {"task": f"MLP 6400x1600 pruned {rate:.0%}, exact solver", "layers": 1, "seconds": seconds, "cpu": cpu,
            "scale": 48}


def to_markdown(rows: Sequence[dict]) -> str:
    cells = [[r["task"], r["layers"], f"{r['seconds']:.2f}", f"{r['cpu']:.2f}", f"{r['cpu'] * r['scale']:.1f}"]
             for r in rows]
    header = ["task", "layers timed", "wall s", "CPU s", "all 48 layers, CPU s"]
    return markdown_table(cells, columns=header).rstrip("\n")


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=plain_text(__doc__.splitlines()[0]))
    parser.add_argument("--layers", type=int, default=48, help="XL attention layers to score")
    parser.add_argument("--greedy-layers", type=int, default=2, help="layers for the greedy methods (extrapolated)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0 = torch's default; 1 is fastest for the many small per-head solves)")
    parser.add_argument("--skip-mlp", action="store_true", help="only the QK scores")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    import torch
    if args.layers < 1 or args.greedy_layers < 1:
        raise ValueError("--layers and --greedy-layers must be >= 1")
    with num_threads(args.threads):
        rows = bench_scores(args.layers, args.greedy_layers, args.seed)
        if not args.skip_mlp:
            rows.append(bench_mlp(args.seed))
    seconds = {r["task"]: r["cpu"] for r in rows}
    fast = seconds["QK scores proj_coef (reference fast solver)"]
    closed = seconds["QK scores proj_coef (closed form)"]
    table = to_markdown(rows) + (f"\n\nproj_coef: closed form {fast / closed:.1f}x faster than the reference solver"
                                 f" (CPU s; torch threads: {torch.get_num_threads()})\n")
    print(table, end="")
    return table


if __name__ == "__main__":
    run_cli(main, "benchmarks/gpt2_prune.py")
