"""Prune one Linear pair with projprune's core API, data-free and calibrated.

    python examples/prune_layer_pair.py            # ~10 s: train a small MLP on digits, prune it 6 ways
    python examples/prune_layer_pair.py --quick    # ~3 s: fewer epochs (what CI runs)

A *pair* is a layer that produces hidden units (``fc1``, weight ``W: (n, m)``, one row per unit)
and the layer that reads them (``fc2``, weight ``V: (k, n)``, one column per unit). Pruning a unit
removes a row of ``W`` and a column of ``V``. Projective pruning removes the units whose rows are
closest to combinations of the other rows (the smallest *projection distance*) and lets the
survivors absorb them; the calibrated method does the same on the activations ``fc2`` reads.

Writes the pruned model's state dict under ``run/examples/prune_layer_pair/`` and prints where.
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

import torch

import projprune as pp


def tour() -> None:
    """The README's snippet: the core API on one (untrained) pair."""
    # --- README snippet begin ---
    import torch

    import projprune as pp

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    fc1, fc2 = model[0], model[2]  # a pair: fc2 reads the 256 hidden units fc1 makes
    inputs = torch.randn(512, 64)  # stand-in for a few hundred of your training inputs

    d = pp.projection_distances(fc1.weight.detach())  # (256,): small = nearly a mix of the other rows
    print("most redundant units:", d.argsort()[:5].tolist())
    pp.prune_pair(fc1, fc2, 64, "exact_oac")  # data-free: remove 64 units (256 -> 192), in place
    stats = pp.collect_activation_stats(model, [fc2], inputs.split(128))[0]  # what fc2 reads now
    kept = pp.prune_pair(fc1, fc2, 64, "calib", stats=stats)  # calibrated: 192 -> 128 units
    print(fc1, fc2, f"kept {len(kept)} units")
    # --- README snippet end ---


def digits(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """scikit-learn's 8x8 digits (offline), flattened to 64 features: ``(x_train, y_train, x_test, y_test)``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0  # (1797, 64) in [0, 1]
    y = torch.tensor(data.target)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> None:
    """Plain Adam on mini-batches of 64."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    model.eval()


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer training epochs (CI)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden units of the MLP")
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of the hidden units removed")
    parser.add_argument("--output-dir", default="run/examples/prune_layer_pair", help="where the pruned model goes")
    args = parser.parse_args(argv)
    if not 0 <= args.ratio < 1:
        raise ValueError(f"--ratio must be in [0, 1), got {args.ratio}")

    tour()  # the README's snippet, on an untrained pair
    torch.manual_seed(1)
    x_tr, y_tr, x_te, y_te = digits()
    mlp = torch.nn.Sequential(torch.nn.Linear(64, args.hidden), torch.nn.ReLU(), torch.nn.Linear(args.hidden, 10))
    train(mlp, x_tr, y_tr, epochs=5 if args.quick else 30, seed=1)
    amount = round(args.ratio * args.hidden)
    print(f"MLP 64-{args.hidden}-10 on digits: test accuracy {accuracy(mlp, x_te, y_te):.4f}; "
          f"removing {amount} of {args.hidden} hidden units, no fine-tuning")

    # Which units look redundant? Smallest projection distance first (ridge lmbda keeps it well posed).
    distances = pp.projection_distances(mlp[0].weight.detach(), lmbda=1e-3)
    print(f"projection distances: min {distances.min():.4f}, median {distances.median():.4f}, "
          f"max {distances.max():.4f}")

    # Calibration data: training images only (never the test images you report on).
    calibration = x_tr[:256].split(64)
    results = {}
    for method in ("random", "l2", "proj550", "exact_oac", "act_norm", "calib"):
        pruned = copy.deepcopy(mlp)
        fc1, fc2 = pruned[0], pruned[2]
        # calibrated methods read statistics of what fc2 sees; data-free ones take no stats
        stats = (pp.collect_activation_stats(pruned, [fc2], calibration)[0]
                 if pp.PAIR_METHODS[method].needs_stats else None)
        pp.prune_pair(fc1, fc2, amount, method, stats=stats, generator=torch.Generator().manual_seed(0))
        results[method] = pruned
        print(f"{method:>9}: fc1 {tuple(fc1.weight.shape)}, fc2 {tuple(fc2.weight.shape)}, "
              f"test accuracy {accuracy(pruned, x_te, y_te):.4f}  ({pp.PAIR_METHODS[method].description})")

    # The same surgery with explicit options instead of a method name: the paper's (α, β, γ) = (.5, .5, 0)
    # redistribution with exact tracking; `kept` are the surviving units' original indices.
    pruned = copy.deepcopy(mlp)
    kept = pp.prune_linear_pair(pruned[0], pruned[2], amount, alpha=0.5, beta=0.5, gamma=0.0, tracking="exact")
    print(f"prune_linear_pair(alpha=.5, beta=.5, tracking='exact'): kept {len(kept)} units, "
          f"test accuracy {accuracy(pruned, x_te, y_te):.4f}")

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "mlp_calib.pt"
    torch.save(results["calib"].state_dict(), path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)  # atomic: a reader never sees half a file
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
