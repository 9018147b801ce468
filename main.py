"""Table 1: pretrain, prune (Torch-Pruning, progressive to a FLOPs speed-up) and fine-tune CNNs
and point-cloud networks; the paper's command line, run layout and log lines.

    python main.py --mode pretrain --dataset digits --model resnet20 --total-epochs 30 --lr 0.1 \
        --lr-decay-milestones 20,25 --seed 1
    python main.py --mode prune --dataset digits --model resnet20 --restore run/digits/pretrain/digits_resnet20.pth \
        --finetune --global-pruning --reg 1e-5 --speed-up 2 --method proj_sl --seed 1

ImageNet with DistributedDataParallel: ``torchrun --nproc_per_node N main.py --dataset imagenet ...``.
The flags are :class:`engine.table1.CNNConfig`; the modes are :func:`engine.table1.run`.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.harness import parse_config, run_cli
from engine.table1 import CNNConfig, run

__all__ = ["CNNConfig", "main"]


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse ``argv`` and run the mode; returns the run's numbers (see ``engine.table1.run``)."""
    return run(parse_config(CNNConfig, argv, description=__doc__.split("\n\n")[0]))


if __name__ == "__main__":
    run_cli(main, "main.py")
