"""Command line of the hyper-parameter analysis (paper §4.3).

    python -m params.main --dataset digits --num-models 10
    python -m params.main --dataset fashionmnist --dataroot data      # needs the IDX files locally
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.harness import parse_config, run_cli
from params.analysis import ParamsConfig, run_analysis


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse flags into a :class:`ParamsConfig` and run the analysis; returns what was written."""
    cfg = parse_config(ParamsConfig, argv, description=__doc__)
    return run_analysis(cfg)


if __name__ == "__main__":
    run_cli(main, "python -m params.main")
