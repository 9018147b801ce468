"""Benchmark of the Q solvers and the greedy loops (issue: core, §4 benchmark).

Times, in one run on this machine: ``naive``, ``fast`` and ``closed`` at n in {256, 512,
1024, 3072} with m = 768 (``naive`` up to 1024), in float64 and float32; then the lazy and
exact greedy on a 3072 x 768 layer at 30 % next to the plain line-by-line implementation of
docs/algorithm.md §4 used by the tests. Prints a Markdown table (time and ratio to ``fast``) and
writes it to ``benchmarks/results/solvers.md``.

    python -m benchmarks.solvers                  # the full run (about 25 min on 2 cores)
    python -m benchmarks.solvers --quick          # small sizes, a smoke run
    python -m benchmarks.solvers --plain-steps 100   # time the plain loop on its first 100 steps
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # `python benchmarks/solvers.py`: import engine etc. from this repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from engine.harness import atomic_write_text, machine_description, plain_text, progress, run_cli, wrote  # noqa: E402
from engine.report import markdown_table  # noqa: E402

if TYPE_CHECKING:
    import torch


def timed(fn: Callable[[], object], repeats: int = 3) -> float:
    """Seconds for one call; calls under 2 s are repeated and the fastest run is kept."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        if best > 2.0:
            break
    return best


def plain_lazy_steps(W: torch.Tensor, Q: torch.Tensor, amount: int, steps: int, alpha: float = 0.5) -> None:
    """docs/algorithm.md §4 line by line (boolean masks, the full Q), as the reference code does it."""
    import torch

    n = W.shape[0]
    M = torch.ones(n, dtype=torch.bool)
    Q = Q.clone()
    Wk = W.clone()
    U = torch.ones(n, dtype=W.dtype)
    for a in range(steps):
        r = 1 - a / amount
        D = torch.linalg.vector_norm(Q[M] @ Wk - Wk[M], dim=1)
        i = int(torch.nonzero(M).flatten()[int(torch.argmin(D))])
        Wk[i] = 0
        M[i] = False
        Q[:, i] = 0
        Q[M] = Q[M] / (1 + alpha * r * Q[i])
        U = U * (1 + alpha * r * Q[i])


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=plain_text(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--plain-steps", type=int, default=0,
                        help="steps of the plain §4 loop to time (0 = all); lazy is timed on the same steps too")
    parser.add_argument("--out", default="benchmarks/results/solvers.md")
    args = parser.parse_args(argv)
    import torch

    import projprune as pp

    m = 768 if not args.quick else 96
    sizes = [256, 512, 1024, 3072] if not args.quick else [32, 64, 128, 384]
    naive_max = 1024 if not args.quick else 128
    greedy_n = 3072 if not args.quick else 384
    rows: list[tuple[str, str, str, float, float | None]] = []
    torch.manual_seed(0)

    jobs = []
    for dtype in (torch.float64, torch.float32):
        for n in sizes:
            for method in ("fast", "closed", "naive"):
                if method == "naive" and n > naive_max:
                    continue
                jobs.append((dtype, n, method))
    times: dict[tuple, float] = {}
    for dtype, n, method in progress(jobs, desc="solvers"):
        W = torch.randn(n, m, dtype=torch.float64)
        def solve(W=W, method=method, dtype=dtype) -> None:
            pp.solve_normal_equations(W, 1e-3, method, dtype=dtype)

        times[(dtype, n, method)] = timed(solve)
    for dtype, n, method in jobs:
        t = times[(dtype, n, method)]
        fast = times[(dtype, n, "fast")]
        rows.append((f"solver {method}", f"{n}x{m}", str(dtype).replace("torch.", ""), t, fast / t))

    amount = int(0.3 * greedy_n)
    W = torch.randn(greedy_n, m, dtype=torch.float64)
    steps = amount if args.plain_steps <= 0 else min(args.plain_steps, amount)
    Q = pp.solve_closed(W)
    t_plain = timed(lambda: plain_lazy_steps(W, Q, amount, steps))

    class _Stop(Exception):
        pass

    def stop_after(step: int) -> None:
        if step + 1 == steps:
            raise _Stop

    def lazy_same_steps() -> None:
        # the library's lazy loop with the same Q, stopped after the same number of steps
        try:
            pp.greedy_lazy(W, amount, Q=Q, callback=stop_after)
        except _Stop:
            pass

    t_lazy_same = timed(lazy_same_steps)
    t_q = timed(lambda: pp.solve_closed(W))
    t_lazy = t_lazy_same + t_q if steps == amount else None
    t_exact = timed(lambda: pp.greedy_exact(W, amount))
    label = f"{greedy_n}x{m}, {amount} units"
    rows.append((f"plain §4 loop ({steps} steps, Q given)", label, "float64", t_plain, None))
    rows.append((f"lazy greedy ({steps} steps, Q given)", label, "float64", t_lazy_same, t_plain / t_lazy_same))
    if t_lazy is not None:
        rows.append(("lazy greedy (incl. closed-form Q)", label, "float64", t_lazy, t_plain / t_lazy))
    rows.append(("exact greedy (incl. P)", label, "float64", t_exact, t_plain / t_exact))

    header = (
        f"Benchmark run {machine_description()}. Command: `python -m benchmarks.solvers"
        f"{' --quick' if args.quick else ''}{f' --plain-steps {args.plain_steps}' if args.plain_steps else ''}`\n\n"
        "Solver rows: ratio = time of `fast` / time (same n, dtype). Greedy rows: ratio = plain loop / time.\n\n"
    )
    cells = [[case, shape, dt, f"{t:.3f}", "" if r is None else f"{r:.1f}x"] for case, shape, dt, t, r in rows]
    table = header + markdown_table(cells, columns=["case", "shape", "dtype", "seconds", "ratio"])
    print(table)
    atomic_write_text(args.out, table)
    wrote(args.out)
    return table


if __name__ == "__main__":
    run_cli(main, "benchmarks/solvers.py")
