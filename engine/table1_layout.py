"""Table 1's run layout and log lines in one place, torch-free.

``engine/table1.py`` names runs, places files and writes the pruning lines with these;
``scripts/grid.py`` predicts the same names and paths; ``scripts/parse_logs.py`` reads the
lines back with the regexes below (lenient: the published logs of the original study print
units and spaces a little differently).

    <output_dir>/<dataset>/pretrain/<dataset>-<model>.txt   and   <dataset>_<model>.pth
    <output_dir>/<dataset>/prune/<run name>/<run name>.txt   and   <dataset>_<model>_<method>.pth
    <output_dir>/<dataset>/test/<dataset>-<model>.txt

A pruning run is named ``<dataset>-<scope>-<method>-<speed_up>-<model>`` (``scope``:
``global``/``local``, the speed-up printed as ``2.0``). The ``Epoch e/E, Acc=...`` and
``Best Acc=...`` lines are written by ``engine/train.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

# --------------------------------------------------------------------------- names and paths
MODES = ("pretrain", "prune", "test")


def scope_name(global_pruning: bool) -> str:
    return "global" if global_pruning else "local"


def run_name(dataset: str, model: str, method: str | None = None, speed_up: float | None = None,
             global_pruning: bool = True) -> str:
    """``<dataset>-<model>`` (pretrain, test) or, with a method, ``<dataset>-<scope>-<method>-<speed_up>-<model>``."""
    if method is None:
        return f"{dataset}-{model}"
    if speed_up is None:
        raise ValueError(f"run_name: method {method!r} needs a speed_up")
    return f"{dataset}-{scope_name(global_pruning)}-{method}-{float(speed_up)}-{model}"


def run_dir(output_dir: str | Path, dataset: str, mode: str, name: str) -> Path:
    """The folder of a run: one per pruning run, shared by the pretraining (test) runs of a data set."""
    base = Path(output_dir) / dataset / mode
    return base / name if mode == "prune" else base


def log_path(output_dir: str | Path, dataset: str, mode: str, name: str) -> Path:
    """``<run_dir>/<name>.txt``."""
    return run_dir(output_dir, dataset, mode, name) / f"{name}.txt"


def pretrain_checkpoint(output_dir: str | Path, dataset: str, model: str) -> Path:
    """The best pretraining epoch: ``<output_dir>/<dataset>/pretrain/<dataset>_<model>.pth``."""
    return run_dir(output_dir, dataset, "pretrain", "") / f"{dataset}_{model}.pth"


def pruned_checkpoint(folder: Path, dataset: str, model: str, method: str) -> Path:
    """The pruned (and fine-tuned) model in a pruning run's folder."""
    return folder / f"{dataset}_{model}_{method}.pth"


def sparse_checkpoint(folder: Path, dataset: str, model: str, method: str, reg: float) -> Path:
    """The best sparsity-learning epoch in a pruning run's folder."""
    return folder / f"reg_{dataset}_{model}_{method}_{reg}.pth"


def resume_checkpoint(best: Path) -> Path:
    """The last-epoch checkpoint a phase resumes from, next to its best one (``<stem>_last.pth``)."""
    return best.with_name(f"{best.stem}_last.pth")


def finetune_resume_checkpoint(folder: Path, name: str) -> Path:
    """The last fine-tuning epoch of a pruning run (``<run name>_last.pth``): a restarted run resumes it."""
    return folder / f"{name}_last.pth"


# --------------------------------------------------------------------------- log lines (written)
REGULARIZING = "Regularizing..."
PRUNING = "Pruning..."
FINETUNING = "Finetuning..."
PARAMS_LINE = "Params: {before:.2f} M => {after:.2f} M ({kept:.2f}%)"
FLOPS_LINE = "FLOPs: {before:.2f} M => {after:.2f} M ({kept:.2f}%, {speed_up:.2f}X )"
ACC_LINE = "Acc: {before:.4f} => {after:.4f}"
LOSS_LINE = "Val Loss: {before:.4f} => {after:.4f}"
BN_LINE = "BN recalibrated ({layers} layers, {batches} training batches)"
BN_ACC_LINE = "BN Acc: {before:.4f} => {after:.4f}"  # ours, with --bn-recalibrate N
RESUME_FINETUNE_LINE = "Found {path}: resuming the fine-tuning"
SPARSE_LOADING_LINE = "Loading the sparse model from {path}..."

# --------------------------------------------------------------------------- log lines (read)
NUM = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))"
# "[02/21 07:24:04] <logger> INFO: <message>" (engine.harness.get_logger)
LINE_RE = re.compile(r"^\[(?P<time>[^\]]*)\]\s+(?P<logger>\S+)\s+(?P<level>[A-Z]+):\s?(?P<msg>.*?)\s*$")
EPOCH_RE = re.compile(rf"^Epoch (\d+)/(\d+), Acc={NUM}, Val Loss={NUM}, lr={NUM}")
PARAMS_RE = re.compile(rf"^Params: {NUM} ?([KMG]?) => {NUM} ?([KMG]?) \({NUM}%\)")
FLOPS_RE = re.compile(rf"^FLOPs: {NUM} ?([KMG]?) => {NUM} ?([KMG]?) \({NUM}%, {NUM}X ?\)")
ACC_RE = re.compile(rf"^Acc: {NUM} => {NUM}")
BN_ACC_RE = re.compile(rf"^BN Acc: {NUM} => {NUM}")
LOSS_RE = re.compile(rf"^Val Loss: {NUM} => {NUM}")
BEST_RE = re.compile(rf"^Best Acc={NUM}")
CONFIG_RE = re.compile(r"^([A-Za-z_]\w*): (.*)$")  # engine.harness.log_config: "<flag>: <value>"
RESUME_FINETUNE_RE = re.compile("^" + re.escape(RESUME_FINETUNE_LINE).replace(r"\{path\}", ".*") + "$")
# File names: <dataset>-<scope>-<method>-<speed_up>-<model> and <dataset>-<model> (in a pretrain folder).
RUN_NAME_RE = re.compile(
    r"^(?P<dataset>[A-Za-z0-9_]+)-(?P<scope>global|local)-(?P<method>[A-Za-z0-9_]+)-"
    r"(?P<speed_up>\d+(?:\.\d+)?)-(?P<model>[A-Za-z0-9_.]+)$"
)
PRETRAIN_NAME_RE = re.compile(r"^(?P<dataset>[A-Za-z0-9_]+)-(?P<model>[A-Za-z0-9_.]+)$")
