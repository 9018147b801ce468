"""Command line of the hyper-parameter analysis (paper §4.3).

    python params/main.py --dataset digits --num-models 10
    python params/main.py --dataset fashionmnist --dataroot data      # needs the IDX files locally
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python params/main.py`: import engine etc. from this repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.harness import parse_config, run_cli, wrote  # noqa: E402  (torch-free: --help imports no torch)
from params.config import ParamsConfig  # noqa: E402


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse flags into a :class:`ParamsConfig` and run the analysis; returns what was written."""
    cfg = parse_config(ParamsConfig, argv, description=__doc__)
    from params.analysis import run_analysis  # torch and matplotlib: after the arguments parsed

    written = run_analysis(cfg)
    wrote(written["output_dir"])
    return written


if __name__ == "__main__":
    run_cli(main, "params/main.py")
