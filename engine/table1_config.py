"""The flags of ``main.py`` (Table 1) as a dataclass, torch-free: ``python main.py --help`` imports only this.

:mod:`engine.table1` runs the modes; this module only describes the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# projprune.compensation.DEFAULT_CALIBRATE_DRIFT, repeated here so that parsing the flags imports no torch
# (tests/test_main.py checks that both are equal).
DEFAULT_CALIBRATE_DRIFT = 0.05


@dataclass
class CNNConfig:
    """Every flag of the paper's ``main.py`` with its default, plus a few for small machines."""

    mode: str = field(default="prune", metadata={"choices": ["pretrain", "prune", "test"]})
    model: str = field(default="resnet56", metadata={"help": "model name (see registry.MODELS)"})
    verbose: bool = field(default=False, metadata={"help": "log iterations and the pruned model"})
    dataset: str = field(default="digits", metadata={"help": "digits, cifar10, cifar100, modelnet40, imagenet"})
    dataroot: str = field(default="data", metadata={"help": "folder holding the data sets"})
    batch_size: int = 128
    total_epochs: int = 100
    lr_decay_milestones: str = "60,80"
    lr_decay_gamma: float = 0.1
    lr: float = 0.01
    restore: str | None = field(default=None, metadata={"help": "checkpoint to start from"})
    output_dir: str = field(default="run", metadata={"help": "root of the run folders"})
    finetune: bool = field(default=False, metadata={"help": "fine-tune after pruning"})
    method: str | None = field(default=None, metadata={"help": "pruning method (see registry.METHODS)"})
    speed_up: float = field(default=2.0, metadata={"help": "target FLOPs speed-up"})
    max_pruning_ratio: float = 1.0
    soft_keeping_ratio: float = field(default=0.0, metadata={"help": "kept for the paper's launchers (unused)"})
    reg: float = field(default=5e-4, metadata={"help": "sparsity-learning regularisation strength"})
    delta_reg: float = field(default=1e-4, metadata={"flag": "--delta_reg", "help": "growing_reg increment"})
    weight_decay: float = 5e-4
    seed: int | None = field(default=None, metadata={"help": "random seed (unset: 0)"})
    global_pruning: bool = False
    sl_total_epochs: int = 100
    sl_lr: float = 0.01
    sl_lr_decay_milestones: str = "60,80"
    sl_reg_warmup: int = field(default=0, metadata={"help": "epochs to ramp the regulariser up"})
    sl_restore: str | None = None
    iterative_steps: int = 400
    # Additions (not in the paper's script): small models, data layout, ImageNet target.
    width_mult: float = field(default=1.0, metadata={"help": "hidden-width multiplier of the model"})
    num_points: int = field(default=1024, metadata={"help": "points per cloud (ModelNet40)"})
    image_size: int = field(default=224, metadata={"help": "ImageNet crop size"})
    target_flops: float = field(default=0.0, metadata={"help": "prune to this many GFLOPs instead of --speed-up"})
    workers: int = field(default=0, metadata={"help": "data-loader worker processes"})
    bn_recalibrate: int = field(default=0, metadata={
        "help": "after pruning, re-estimate BatchNorm statistics on this many training batches (0: the paper's "
                "behaviour, none)"})
    calib_size: int = field(default=64, metadata={
        "help": "calibrated methods (proj_calib): training images whose activations guide selection and "
                "compensation"})
    calib_every: int = field(default=1, metadata={
        "help": "calibrated methods: re-collect the activation statistics at most every this many pruning steps"})
    calib_drift: float = field(default=DEFAULT_CALIBRATE_DRIFT, metadata={
        "help": "calibrated methods: re-collect the statistics once this fraction of the consumers' input "
                "channels was pruned since the last collection (0: every step allowed by --calib-every)"})
