"""Prune a torchvision CNN to a FLOPs target with calibrated compensation, and compare with magnitude.

    python examples/prune_torchvision_cnn.py                   # resnet18, 64x64 inputs, 2x fewer FLOPs (~1 min)
    python examples/prune_torchvision_cnn.py --quick           # 32x32 inputs, coarser steps (what CI runs)
    python examples/prune_torchvision_cnn.py --model mobilenet_v2 --speed-up 3

Needs the Torch-Pruning extra (``pip install projprune[tp]``) and torchvision. The network has
random weights and the calibration batches are random images, so this shows the mechanics and
measures how much each pruner changes the network's outputs; put your trained model and a few
of your *training* batches in their place. Writes the pruned model's weights and shapes to
``run/examples/prune_torchvision_cnn/``, prints where, and rebuilds the model from that file.

How it works: Torch-Pruning groups the channels that must go together (a conv's outputs, its
BatchNorm, every layer that reads them). ``CompensatingPruner`` removes channels group by group
like Torch-Pruning's ``MagnitudePruner``, but first folds each removed channel into every layer
that reads it, as a least-squares combination of the channels that stay, fitted on the
activations of the calibration batches. ``CalibratedProjectiveImportance`` picks the channels
whose removal that fold repairs best (per multiply-accumulate saved, with ``flops_aware=True``).
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

import torch
import torch_pruning as tp
import torchvision

import projprune as pp
from projprune.compensation import CalibratedProjectiveImportance, CompensatingPruner


def classifier_of(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The layer that makes the 10 class scores: it keeps its outputs (Torch-Pruning's ignored_layers)."""
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 10]


def prune_to_speed_up(pruner: tp.pruner.BasePruner, model: torch.nn.Module, example: torch.Tensor,
                      speed_up: float) -> float:
    """Step ``pruner`` until the FLOPs fall to ``1 / speed_up`` of the start (or its steps run out)."""
    base, _ = tp.utils.count_ops_and_params(model, example)
    flops = base
    while flops > base / speed_up and pruner.current_step < pruner.iterative_steps:
        pruner.step()  # removes a few more channels (every group, chosen globally)
        flops, _ = tp.utils.count_ops_and_params(model, example)
    return base / flops


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="a torchvision.models builder, e.g. resnet18, mobilenet_v2")
    parser.add_argument("--speed-up", type=float, default=2.0, help="FLOPs of the original / FLOPs after")
    parser.add_argument("--image-size", type=int, default=64, help="input height and width")
    parser.add_argument("--quick", action="store_true", help="32x32 inputs and 12 steps (CI)")
    parser.add_argument("--output-dir", default="run/examples/prune_torchvision_cnn", help="where the model goes")
    args = parser.parse_args(argv)
    if args.speed_up <= 1:
        raise ValueError(f"--speed-up must be > 1 (FLOPs before / after), got {args.speed_up}")
    if not hasattr(torchvision.models, args.model):
        raise ValueError(f"--model: torchvision.models has no {args.model!r} (try resnet18, mobilenet_v2)")
    size, steps = (32, 12) if args.quick else (args.image_size, 50)

    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(num_classes=10).eval()
    example = torch.randn(1, 3, size, size)  # Torch-Pruning traces the graph with it
    # Calibration: in real use a few of your training batches (never the data you evaluate on).
    calibration = [torch.randn(16, 3, size, size) for _ in range(4)]
    held_out = torch.randn(32, 3, size, size)  # what we measure the output change on
    with torch.no_grad():
        reference = model(held_out)
    flops, params = tp.utils.count_ops_and_params(model, example)
    print(f"{args.model}, {size}x{size} inputs: {flops / 1e6:.1f} M MACs, {params / 1e6:.2f} M parameters")

    settings = dict(iterative_steps=steps, pruning_ratio=1.0, max_pruning_ratio=0.9, global_pruning=True)
    candidates = {
        # ours: OBS channel scores per MAC + folding removed channels into their readers, on activations
        "CompensatingPruner + CalibratedProjectiveImportance":
            lambda m: CompensatingPruner(m, example, CalibratedProjectiveImportance(flops_aware=True),
                                         calibration=lambda: calibration, ignored_layers=classifier_of(m),
                                         **settings),
        # the usual baseline: Torch-Pruning's L2 magnitude, no compensation
        "MagnitudePruner + MagnitudeImportance(p=2)":
            lambda m: tp.pruner.MagnitudePruner(m, example, importance=tp.importance.MagnitudeImportance(p=2),
                                                ignored_layers=classifier_of(m), **settings),
    }
    pruned_models = {}
    for name, make_pruner in candidates.items():
        pruned = copy.deepcopy(model)  # both pruners start from the same weights
        reached = prune_to_speed_up(make_pruner(pruned), pruned, example, args.speed_up)
        with torch.no_grad():
            change = float((pruned(held_out) - reference).norm() / reference.norm())
        flops, params = tp.utils.count_ops_and_params(pruned, example)
        print(f"{name}: {flops / 1e6:.1f} M MACs ({reached:.2f}x fewer), {params / 1e6:.2f} M parameters, "
              f"relative output change {change:.4f}")
        pruned_models[name] = pruned

    # Torch-Pruning changes the layers' shapes: save the weights and every tensor's shape (tensors, lists and
    # strings: loadable with weights_only=True, no pickled modules), then rebuild from a fresh model
    compensated = next(iter(pruned_models.values()))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.model}_compensated.pt"
    saved = {"model": args.model, "state_dict": compensated.state_dict(), "shapes": pp.tensor_shapes(compensated)}
    torch.save(saved, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)  # atomic: a reader never sees half a file
    loaded = torch.load(path, weights_only=True)
    rebuilt = pp.adapt_to_shapes(getattr(torchvision.models, loaded["model"])(num_classes=10), loaded["shapes"])
    rebuilt.load_state_dict(loaded["state_dict"])
    with torch.no_grad():
        difference = float((rebuilt.eval()(held_out) - compensated(held_out)).abs().max())
    print(f"wrote {path}; rebuilt from it (torch.load(path, weights_only=True), projprune.adapt_to_shapes, "
          f"load_state_dict): max |difference| to the pruned model {difference:.1e}")


if __name__ == "__main__":
    main()
