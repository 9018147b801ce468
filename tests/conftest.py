"""Suite-wide settings and the helpers several test modules share.

One intra-op thread: the tests use tiny models, for which OpenMP synchronisation costs more
than it gains (up to 8x slower with two threads on a busy 2-core machine), and one thread
makes timings of the whole suite predictable.

Shared helpers live here (import them with ``from tests.conftest import ...``; fixtures need no
import): ``tiny_vit`` (vit tests), ``write_log`` (log parser tests), the small digits grid
(``digits_grid`` fixture; launcher and SLURM tests), ``assert_loaded_same`` (save/load tests).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from torchvision.models.vision_transformer import VisionTransformer

os.environ.setdefault("PROJPRUNE_NO_TQDM", "1")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- save / load
def assert_loaded_same(loaded: torch.nn.Module, model: torch.nn.Module, loaded_out: torch.Tensor,
                       expected: torch.Tensor) -> None:
    """A reloaded model holds ``model``'s tensors bit for bit, and its output matches to the last bits.

    Outputs are not compared exactly: safetensors maps tensors at other memory alignments than
    ``torch.empty`` gives, and a BLAS kernel may take another (equally correct) path for them:
    one float64 ulp apart (bert, measured).
    """
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert list(ours) == list(theirs)
    for key, value in ours.items():
        torch.testing.assert_close(theirs[key], value, rtol=0, atol=0, msg=lambda m, key=key: f"{key}: {m}")
    assert loaded_out.dtype == expected.dtype
    tol = 1e-12 if expected.dtype == torch.float64 else 1e-5
    torch.testing.assert_close(loaded_out, expected, rtol=tol, atol=tol)


# --------------------------------------------------------------------------- models
def tiny_vit(seed: int = 0) -> VisionTransformer:
    """A 2-layer torchvision ViT on 8x8 images (eval mode) whose MLP biases are not ~0."""
    from torchvision.models.vision_transformer import VisionTransformer

    from vit.models import mlp_pairs

    torch.manual_seed(seed)
    model = VisionTransformer(image_size=8, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=10)
    with torch.no_grad():  # torchvision initialises MLP biases at ~1e-6; give them scale
        for fc1, fc2 in mlp_pairs(model):
            fc1.bias.normal_(0, 0.1)
            fc2.bias.normal_(0, 0.1)
    return model.eval()


# --------------------------------------------------------------------------- logs in the published format
def write_log(
    root: Path, dataset: str, method: str, speed_up: float, model: str, *, sl_accs=(), finetune_accs=(),
    prune: tuple | None = (0.86, 0.57, 127.12, 63.32, 0.9401, 0.1410), finished: bool = True,
    scope: str = "global", extra_lines=(),
) -> Path:
    """A log exactly as main.py (and the paper's runs) write it."""
    name = f"{dataset}-{scope}-{method}-{float(speed_up)}-{model}"
    path = root / dataset / "prune" / name / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = "[02/21 07:24:04]"
    lines = [f"{stamp} {name} INFO: {key}: {value}" for key, value in
             (("mode", "prune"), ("model", model), ("method", method), ("speed_up", speed_up), ("reg", 1e-05))]
    if sl_accs:  # main.py's sparsity-learning phase ends with its own "Best Acc=" line
        lines.append(f"{stamp} {name} INFO: Regularizing...")
        for i, acc in enumerate(sl_accs):
            lines.append(f"{stamp} {name} INFO: Epoch {i}/{len(sl_accs)}, Acc={acc:.4f}, Val Loss=0.2954, lr=0.0100")
        lines.append(f"{stamp} {name} INFO: Best Acc={max(sl_accs):.4f}")
    if prune is not None:
        lines.append(f"{stamp} {name} INFO: Pruning...")
    if prune is not None:
        p0, p1, f0, f1, before, after = prune
        lines += [
            f"{stamp} {name} INFO: Params: {p0:.2f} M => {p1:.2f} M ({100 * p1 / p0:.2f}%)",
            f"{stamp} {name} INFO: FLOPs: {f0:.2f} M => {f1:.2f} M ({100 * f1 / f0:.2f}%, {f0 / f1:.2f}X )",
            f"{stamp} {name} INFO: Acc: {before:.4f} => {after:.4f}",
            f"{stamp} {name} INFO: Val Loss: 0.3120 => 5.5544",
        ]
    for i, acc in enumerate(finetune_accs):
        lines.append(f"{stamp} {name} INFO: Epoch {i}/{len(finetune_accs)}, Acc={acc:.4f}, Val Loss=0.31, lr=0.0100")
    lines += list(extra_lines)
    if finished:
        lines.append(f"{stamp} {name} INFO: Best Acc={max(finetune_accs):.4f}")
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- the real digits grid
# A small digits grid (scripts/digits.sh: pretraining, then l2 and proj_sl with 1 epoch), run under bash once
# per test session (tests/test_launchers.py checks it; tests/test_slurm.py reuses its pretraining).
GRID_METHODS = ("l2", "proj_sl")
GRID_ARGS = ("--methods", ",".join(GRID_METHODS), "--pretrain-epochs", "2", "--finetune-epochs", "1",
             "--sl-epochs", "1")


@dataclass(frozen=True)
class DigitsGrid:
    folder: Path
    first: subprocess.CompletedProcess
    second: subprocess.CompletedProcess

    @property
    def runs(self) -> Path:
        return self.folder / "run"

    @property
    def results(self) -> Path:
        return self.folder / "results"


_CACHE: list[DigitsGrid] = []


def environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "PROJPRUNE_NO_TQDM": "1", **extra}
    for key in ("GRID_BACKEND", "SLURM_JOB_ID"):
        env.pop(key, None)
    return env


def small_digits_grid(factory: pytest.TempPathFactory) -> DigitsGrid:
    """Run the grid (twice: the second run must skip everything) the first time it is asked for."""
    if not _CACHE:
        folder = factory.mktemp("digits_grid")
        args = [*GRID_ARGS, "--output-dir", str(folder / "run"), "--results", str(folder / "results"),
                "--task-log-dir", str(folder / "out"), "--log-dir", str(folder)]
        command = ["bash", str(ROOT / "scripts" / "digits.sh"), *args]
        first = subprocess.run(command, capture_output=True, text=True, env=environment(), timeout=400)
        second = subprocess.run(command, capture_output=True, text=True, env=environment(), timeout=120)
        _CACHE.append(DigitsGrid(folder, first, second))
    return _CACHE[0]


@pytest.fixture(scope="session")
def digits_grid(tmp_path_factory: pytest.TempPathFactory) -> DigitsGrid:
    return small_digits_grid(tmp_path_factory)
