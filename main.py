"""Table 1: pretrain, prune (Torch-Pruning, progressive to a FLOPs speed-up) and fine-tune CNNs
and point-cloud networks; the paper's command line, run layout and log lines.

    python main.py --mode pretrain --dataset digits --model resnet20 --total-epochs 30 --lr 0.1 \
        --lr-decay-milestones 20,25 --seed 1
    python main.py --mode prune --dataset digits --model resnet20 --restore run/digits/pretrain/digits_resnet20.pth \
        --finetune --global-pruning --reg 1e-5 --speed-up 2 --method proj_sl --seed 1

ImageNet with DistributedDataParallel: ``torchrun --nproc_per_node N main.py --dataset imagenet ...``.
The flags are :class:`engine.table1_config.CNNConfig`; the modes are :func:`engine.table1.run`.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.harness import parse_config, run_cli, wrote
from engine.table1_config import CNNConfig

__all__ = ["CNNConfig", "main"]


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse ``argv`` and run the mode; returns the run's numbers (see ``engine.table1.run``)."""
    cfg = parse_config(CNNConfig, argv, description=__doc__.split("\n\n")[0])
    from engine.table1 import run  # torch and Torch-Pruning: after the arguments parsed (fast --help)

    result = run(cfg)
    if not result.get("skipped"):
        wrote(*[result[key] for key in ("log", "checkpoint") if result.get(key)])
    return result


if __name__ == "__main__":
    run_cli(main, "main.py")
