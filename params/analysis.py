"""The hyper-parameter analysis (paper §4.3): staged pruning of N small models, statistics, figures.

Every number comes from an importable function; ``params/main.py`` only parses flags and calls
:func:`run_analysis`. The pieces:

* :func:`stage_percents` / :func:`stage_schedule`: keep 100 %, 90 %, ..., 10 % of each hidden layer.
* :data:`COMPARISONS`: named groups of :class:`Variant` (a core ``PAIR_METHODS`` name plus keyword
  overrides and a mode, ``layer`` or ``global``); each comparison becomes one figure.
* :func:`prune_in_stages`: prunes one copy of a model stage by stage with the core's ``prune_pair``
  (each layer by itself) or :func:`prune_chain_global` (global selection with the core's
  ``greedy_global``), recording test accuracy per stage.
* :func:`run_study`: models (trained or cached), every variant, CSVs, figures and ``SUMMARY.md``;
  shared by :func:`run_analysis` (LeNet) and ``params.vgg`` (VGG-16).
* :func:`mean_ci`, :func:`paired_t_test`, :func:`holm_adjust`: Student-t statistics over models.

λ = 0 (no ridge term): the core raises ``ValueError`` when a Gram matrix is singular. Variants that
may hit this (``may_fail``) record the stage, and every later stage of that model, with
``status = "failed"``, an empty accuracy and the core's message in ``reason``; statistics then use
the models that succeeded and report how many failed. Any other error propagates. A stage that
leaves non-finite weights is recorded the same way, so no NaN enters the statistics silently.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402
from torch import nn  # noqa: E402

from engine.classify import evaluate_accuracy, train_classifier  # noqa: E402
from engine.harness import (  # noqa: E402
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    close_logger,
    config_to_dict,
    get_logger,
    load_checkpoint,
    log_config,
    progress,
    save_checkpoint,
    save_figure,
)
from params.data import DATASETS, draw_split, load_dataset, resolve_split_sizes  # noqa: E402
from params.models import HIDDEN_WIDTHS, LeNetParams  # noqa: E402

MODES = ("layer", "global")
SWEEP_VALUES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # the paper's alpha = beta and gamma grids
LAMBDA_VALUES = (0.0, 1e-3, 1e-2, 0.1, 1.0, 10.0)  # the paper's lambda grid
FAILED = "failed"


# --------------------------------------------------------------------------- configuration
@dataclass
class ParamsConfig:
    """Configuration of the hyper-parameter analysis; defaults are the paper's (§4.3)."""

    dataset: str = field(default="fashionmnist", metadata={"choices": sorted(DATASETS), "help": "data set"})
    dataroot: str = field(default="data", metadata={"help": "folder holding the FashionMNIST IDX files"})
    output_dir: str = field(default="run/params", metadata={"help": "results go to <output-dir>/<dataset>/"})
    models_dir: str = field(
        default="", metadata={"help": "cached trained models (safetensors); empty = <output-dir>/<dataset>/models"}
    )
    num_models: int = field(default=10, metadata={"help": "N independently trained models"})
    epochs: int = field(default=10, metadata={"help": "training epochs per model"})
    lr: float = field(default=3e-3, metadata={"help": "Adam learning rate"})
    batch_size: int = field(default=64, metadata={"help": "training batch size"})
    train_size: int = field(default=0, metadata={"help": "training images per model; 0 = data set default"})
    val_size: int = field(default=0, metadata={"help": "validation images per model; 0 = data set default"})
    dropout: float = field(default=0.2, metadata={"help": "dropout after each hidden Linear"})
    stages: int = field(default=10, metadata={"help": "pruning stages: keep 100%, then down to 100/stages %"})
    comparisons: str = field(default="all", metadata={"help": "comma-separated comparisons, or 'all'"})
    confidence: float = field(default=0.95, metadata={"help": "confidence level of the Student-t intervals"})
    alpha_level: float = field(default=0.05, metadata={"help": "significance level (Holm-adjusted p-values)"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads (1 is fastest for these tiny models)"})
    retrain: bool = field(default=False, metadata={"help": "retrain models even if cached ones exist"})
    seed: int = field(default=1, metadata={"help": "base seed; model i uses seed * 1000 + i"})


def check_study_flags(cfg: Any) -> None:
    """Check the flags every study shares (LeNet analysis and VGG ablation) before anything is written.

    Raises:
        ValueError: naming the offending flag and what was expected.
    """
    if cfg.dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {sorted(DATASETS)}, got {cfg.dataset!r}")
    checks = [
        (cfg.num_models >= 1, f"--num-models must be >= 1, got {cfg.num_models}"),
        (cfg.epochs >= 0, f"--epochs must be >= 0, got {cfg.epochs}"),
        (cfg.lr > 0, f"--lr must be > 0, got {cfg.lr}"),
        (cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}"),
        (cfg.train_size >= 0 and cfg.val_size >= 0, "--train-size and --val-size must be >= 0 (0 = default)"),
        (0.0 <= cfg.dropout < 1.0, f"--dropout must be in [0, 1), got {cfg.dropout}"),
        (1 <= cfg.stages <= 100, f"--stages must be in [1, 100], got {cfg.stages}"),
        (0.0 < cfg.confidence < 1.0, f"--confidence must be in (0, 1), got {cfg.confidence}"),
        (0.0 < cfg.alpha_level < 1.0, f"--alpha-level must be in (0, 1), got {cfg.alpha_level}"),
        (cfg.threads >= 1, f"--threads must be >= 1, got {cfg.threads}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def validate_config(cfg: ParamsConfig) -> list[str]:
    """Check ``cfg`` before anything is written; returns the selected comparison names.

    Raises:
        ValueError: naming the offending flag and what was expected.
    """
    check_study_flags(cfg)
    return parse_comparisons(cfg.comparisons)


def parse_comparisons(text: str) -> list[str]:
    """``"all"`` or a comma-separated list of :data:`COMPARISONS` keys (order kept, duplicates dropped)."""
    if text.strip() == "all":
        return list(COMPARISONS)
    names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in COMPARISONS]
    if unknown or not names:
        raise ValueError(
            f"--comparisons must be 'all' or a comma-separated subset of {list(COMPARISONS)}, got {text!r}"
        )
    return names


# --------------------------------------------------------------------------- stages
def stage_percents(stages: int) -> list[int]:
    """Kept percentages per stage: ``stages=10`` -> ``[100, 90, ..., 10]``."""
    if not 1 <= stages <= 100:
        raise ValueError(f"stages must be in [1, 100], got {stages}")
    return [100 - (100 * s) // stages for s in range(stages)]


def stage_schedule(widths: Sequence[int], percents: Sequence[int]) -> list[tuple[int, ...]]:
    """Target widths per stage: ``round(width * percent / 100)`` (halves up), at least one unit.

    Args:
        widths: unpruned widths of the pruned layers, e.g. ``(64, 32, 16)``.
        percents: strictly decreasing kept percentages starting at 100.

    Returns:
        One tuple of widths per stage, non-increasing from stage to stage.
    """
    if not percents or percents[0] != 100 or any(b >= a for a, b in zip(percents, percents[1:])):
        raise ValueError(f"percents must start at 100 and decrease strictly, got {list(percents)}")
    if any(p < 1 for p in percents) or any(w < 1 for w in widths):
        raise ValueError(f"percents and widths must be positive, got {list(percents)}, {list(widths)}")
    # Integer arithmetic: no float rounding surprises at exact halves.
    return [tuple(max(1, (w * p + 50) // 100) for w in widths) for p in percents]


# --------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class Variant:
    """One pruning configuration: a core ``PAIR_METHODS`` name, keyword overrides and a mode.

    ``mode="layer"`` prunes each hidden layer by itself to the stage's width (``prune_pair``);
    ``mode="global"`` removes the same total number of units, chosen across the three layers by the
    core's per-layer-normalised global selection (``prune_pairs``).
    """

    label: str
    method: str
    overrides: tuple[tuple[str, Any], ...] = ()
    mode: str = "layer"
    may_fail: bool = False  # λ = 0: a singular Gram matrix is a recorded failure, not a crash
    scope: str = "linear"  # which layers the model's ``prunable_pairs(scope)`` returns

    @property
    def key(self) -> str:
        """A stable identity (shared between comparisons, so each variant is computed once)."""
        return json.dumps([self.method, sorted(self.overrides), self.mode, self.scope])


@dataclass(frozen=True)
class Comparison:
    """A group of variants drawn in one figure, with the paired tests ``(variant, reference)``."""

    name: str
    title: str
    variants: tuple[Variant, ...]
    tests: tuple[tuple[str, str], ...]

    def variant(self, label: str) -> Variant:
        return next(v for v in self.variants if v.label == label)


def _against(variants: Sequence[Variant], reference: str) -> tuple[tuple[str, str], ...]:
    return tuple((v.label, reference) for v in variants if v.label != reference)


def _methods() -> Comparison:
    from projprune import PAIR_METHODS

    variants = tuple(Variant(name, name) for name in PAIR_METHODS)
    return Comparison("methods", "Methods (each layer pruned by itself)", variants, _against(variants, "l2"))


def _alpha_beta() -> Comparison:
    variants = tuple(Variant(f"alpha=beta={a:g}", "proj000", (("alpha", a), ("beta", a))) for a in SWEEP_VALUES)
    return Comparison("alpha_beta", "alpha = beta sweep (gamma = 0)", variants, _against(variants, "alpha=beta=0"))


def _gamma() -> Comparison:
    variants = tuple(Variant(f"gamma={g:g}", "proj550", (("gamma", g),)) for g in SWEEP_VALUES)
    return Comparison("gamma", "gamma sweep (alpha = beta = 0.5)", variants, _against(variants, "gamma=0"))


def _lambda() -> Comparison:
    variants = tuple(
        Variant(f"lambda={lm:g}", "proj550", (("lmbda", lm),), may_fail=lm == 0.0) for lm in LAMBDA_VALUES
    )
    return Comparison("lambda", "lambda sweep (alpha = beta = 0.5, gamma = 0)", variants,
                      _against(variants, "lambda=0.001"))


def _decay() -> Comparison:
    variants, tests = [], []
    for method in ("proj550", "proj555", "exact"):
        on = Variant(f"{method} decay", method, (("decay", True),))
        off = Variant(f"{method} no decay", method, (("decay", False),))
        variants += [on, off]
        tests.append((off.label, on.label))
    return Comparison("decay", "Linear decay of the redistribution on / off", tuple(variants), tuple(tests))


def _mode() -> Comparison:
    variants, tests = [], []
    for method in ("l2", "proj000", "proj550", "proj555", "exact", "exact_oac"):
        layer = Variant(f"{method} layer", method, mode="layer")
        glob = Variant(f"{method} global", method, mode="global")
        variants += [layer, glob]
        tests.append((glob.label, layer.label))
    return Comparison("mode", "Single-layer vs global selection", tuple(variants), tuple(tests))


_COMPARISON_FACTORIES = {
    "methods": _methods,
    "alpha_beta": _alpha_beta,
    "gamma": _gamma,
    "lambda": _lambda,
    "decay": _decay,
    "mode": _mode,
}
COMPARISONS: tuple[str, ...] = tuple(_COMPARISON_FACTORIES)


def build_comparison(name: str) -> Comparison:
    """The :class:`Comparison` called ``name`` (a key of :data:`COMPARISONS`)."""
    if name not in _COMPARISON_FACTORIES:
        raise ValueError(f"unknown comparison {name!r}; known: {list(COMPARISONS)}")
    return _COMPARISON_FACTORIES[name]()


# --------------------------------------------------------------------------- staged pruning
@dataclass
class StageResult:
    """Accuracy after one stage; ``accuracy is None`` exactly when ``status == "failed"``."""

    percent: int
    widths: tuple[int, ...]
    accuracy: float | None
    status: str = "ok"
    reason: str = ""


def _variant_seed(seed: int, model_index: int, variant: Variant) -> int:
    return (seed * 1_000_003 + model_index * 10_007 + zlib.crc32(variant.key.encode())) % (2**31)


def _install_linear_pair(
    fc1: nn.Linear, fc2: nn.Linear, W: torch.Tensor, b: torch.Tensor | None, V: torch.Tensor,
    bias_delta: torch.Tensor | None,
) -> None:
    """Put ``W: (n', m)``, ``b: (n',)`` into ``fc1`` and ``V: (k, n')`` (+ bias delta) into ``fc2``."""
    fc1.weight = nn.Parameter(W.to(fc1.weight.dtype).contiguous())
    if fc1.bias is not None and b is not None:
        fc1.bias = nn.Parameter(b.to(fc1.bias.dtype).contiguous())
    fc2.weight = nn.Parameter(V.to(fc2.weight.dtype).contiguous())
    if fc2.bias is not None and bias_delta is not None:
        fc2.bias = nn.Parameter((fc2.bias.detach() + bias_delta.to(fc2.bias.dtype)).contiguous())
    fc1.out_features = fc2.in_features = W.shape[0]


def prune_chain_global(
    pairs: Sequence[tuple[nn.Linear, nn.Linear]],
    amount: int,
    method: str,
    generator: torch.Generator | None = None,
    **overrides: Any,
) -> None:
    """Remove ``amount`` units in total from chained Linear pairs ``(fc1, fc2), (fc2, fc3), ...``, globally.

    The core's ``prune_pairs`` is chain-safe: it decides everything from the matrices read before
    the first write, then re-reads each pair just before writing it.
    """
    from projprune import prune_pairs

    prune_pairs(pairs, amount, method, generator=generator, **overrides)


def _prune_stage(model: nn.Module, targets: Sequence[int], variant: Variant, generator: torch.Generator) -> None:
    from projprune import prune_pair

    overrides = dict(variant.overrides)
    triples = model.prunable_pairs(variant.scope)
    current = [layer.weight.shape[0] for layer, _, _ in triples]
    if variant.mode == "global":
        if any(norm is not None or not isinstance(layer, nn.Linear) for layer, _, norm in triples):
            raise ValueError(f"variant {variant.label!r}: global mode supports chained Linear pairs without norms")
        total = sum(current) - sum(targets)
        if total > 0:
            pairs = [(layer, nxt) for layer, nxt, _ in triples]
            prune_chain_global(pairs, total, variant.method, generator=generator, **overrides)
        return
    for (layer, next_layer, norm), width, target in zip(triples, current, targets):
        if width > target:
            prune_pair(layer, next_layer, width - target, variant.method, generator=generator, bn=norm, **overrides)


def prune_in_stages(
    model: nn.Module,
    variant: Variant,
    percents: Sequence[int],
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    seed: int = 0,
    after_stage: Callable[[nn.Module], None] | None = None,
) -> list[StageResult]:
    """Prune a copy of ``model`` stage by stage, recording test accuracy after each stage.

    Each stage removes the difference between the current widths and the stage's targets
    (:func:`stage_schedule` of the unpruned widths), so redistribution compounds over stages.

    Args:
        model: a trained model with ``prunable_pairs(scope)`` and ``hidden_widths(scope)``, e.g.
            :class:`LeNetParams` (left untouched).
        variant: what to prune with.
        percents: kept percentages, ``[100, 90, ..., 10]``.
        x_test: (N, 1, S, S) images; y_test: (N,) labels.
        seed: seeds the generator of the ``random`` method.
        after_stage: called on the pruned model after each stage, before evaluation (e.g.
            :func:`recalibrate_batchnorm`).
    """
    if variant.mode not in MODES:
        raise ValueError(f"variant {variant.label!r}: mode must be one of {MODES}, got {variant.mode!r}")
    work = copy.deepcopy(model).eval()
    schedule = stage_schedule(work.hidden_widths(variant.scope), percents)
    generator = torch.Generator().manual_seed(seed)
    results = [StageResult(percents[0], work.hidden_widths(variant.scope), evaluate_accuracy(work, x_test, y_test))]
    failure = ""
    for percent, targets in zip(percents[1:], schedule[1:]):
        if not failure:
            try:
                with torch.no_grad():
                    _prune_stage(work, targets, variant, generator)
            except ValueError as exc:
                if not variant.may_fail:
                    raise
                failure = f"pruning failed: {exc}"
            if not failure and after_stage is not None:
                after_stage(work)
            if not failure and not all(bool(torch.isfinite(p).all()) for p in work.parameters()):
                failure = "non-finite weights after pruning"
        if failure:
            results.append(StageResult(percent, tuple(targets), None, FAILED, failure))
            continue
        results.append(StageResult(percent, work.hidden_widths(variant.scope), evaluate_accuracy(work, x_test, y_test)))
    return results


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> None:
    """Re-estimate every BatchNorm's running mean/variance on ``x`` (N, ...); no weight changes.

    Pruning a conv's input channels shifts the statistics its BatchNorm saw in training; this is the
    standard cheap repair (a cumulative average over ``x``, dropout kept in eval mode).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training = model.training
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
        m.train()
    for start in range(0, len(x), batch_size):
        model(x[start : start + batch_size])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)


# --------------------------------------------------------------------------- statistics
def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None]:
    """Mean and Student-t confidence half-width ``t_{(1+c)/2, n-1} * s / sqrt(n)`` (``s``: ddof 1).

    Returns ``(mean, None)`` for a single value (no interval from one sample).
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or not np.isfinite(arr).all():
        raise ValueError(f"values must be a non-empty 1-D sequence of finite numbers, got {values!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean = float(arr.mean())
    if arr.size < 2:
        return mean, None
    half = float(stats.t.ppf(0.5 + confidence / 2.0, arr.size - 1) * arr.std(ddof=1) / math.sqrt(arr.size))
    return mean, half


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float | None]:
    """Two-sided paired t-test of ``a - b`` (same models): ``(mean difference, p-value)``.

    Constant differences (zero spread, where t is undefined or infinite) fall back to the exact
    two-sided sign test: ``p = 1`` when they are all zero, else ``p = min(1, 2 * 0.5**n)`` (identical
    differences are common on small test sets, and ``p = 0`` would call two models significant).
    Fewer than two pairs give ``p = None``.
    """
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.ndim != 1 or diff.size == 0:
        raise ValueError("a and b must be equally long, non-empty 1-D sequences")
    mean = float(diff.mean())
    if diff.size < 2:
        return mean, None
    spread = float(diff.std(ddof=1))
    if spread <= 1e-12 * max(1.0, abs(mean)):
        return mean, 1.0 if abs(mean) <= 1e-12 else min(1.0, 2.0 * 0.5**diff.size)
    t_value = mean / (spread / math.sqrt(diff.size))
    return mean, float(2.0 * stats.t.sf(abs(t_value), diff.size - 1))


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error control), in the input order."""
    p = np.asarray(pvalues, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = p.size
    adjusted = np.empty(m)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        adjusted[idx] = running
    return adjusted.tolist()


# --------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelFactory:
    """How to build one architecture: ``build(input_size)`` and the settings that identify it.

    ``name`` tags the cached files (``<dataset>_<name>_<index>.safetensors``); ``arch`` goes into
    each checkpoint's metadata so a cache built with other settings is refused.
    """

    name: str
    build: Callable[[int], nn.Module]
    arch: tuple[tuple[str, Any], ...] = ()


def lenet_factory(cfg: ParamsConfig) -> ModelFactory:
    """The paper's LeNet-style model with ``cfg.dropout``."""
    return ModelFactory(
        "lenet",
        lambda input_size: LeNetParams(input_size=input_size, dropout=cfg.dropout),
        (("dropout", cfg.dropout), ("hidden", list(HIDDEN_WIDTHS))),
    )


def _training_key(cfg: Any, factory: ModelFactory, index: int, n_train: int, n_val: int) -> dict[str, Any]:
    return {
        "dataset": cfg.dataset,
        "model": factory.name,
        "model_index": index,
        "seed": cfg.seed * 1000 + index,
        "epochs": cfg.epochs,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "train_size": n_train,
        "val_size": n_val,
        **dict(factory.arch),
    }


def model_path(models_dir: str | Path, dataset: str, name: str, index: int) -> Path:
    """Where model ``index`` of architecture ``name`` on ``dataset`` is cached."""
    return Path(models_dir) / f"{dataset}_{name}_{index:02d}.safetensors"


def check_cached_models(cfg: Any, factory: ModelFactory, models_dir: Path, n_train: int, n_val: int) -> None:
    """Refuse cached models trained with other settings (before anything is trained or written).

    Args:
        cfg: a config with ``dataset, seed, epochs, lr, batch_size, num_models, retrain``.

    Raises:
        ValueError: a cached file's training settings differ (names the file and the fields).
    """
    if cfg.retrain:
        return
    for index in range(cfg.num_models):
        path = model_path(models_dir, cfg.dataset, factory.name, index)
        if not path.exists():
            continue
        _, meta = load_checkpoint(path)
        expected = _training_key(cfg, factory, index, n_train, n_val)
        cached = meta.get("training", {})
        differing = sorted(k for k in expected if cached.get(k) != expected[k])
        if differing:
            raise ValueError(
                f"cached model {path} was trained with other settings ({', '.join(differing)} differ); "
                "pass --retrain to overwrite it or choose another --models-dir"
            )


def train_or_load_models(
    cfg: Any, factory: ModelFactory, data: tuple[torch.Tensor, ...], models_dir: Path, logger: Any
) -> list[tuple[nn.Module, dict[str, Any]]]:
    """N trained models with their metadata (val/test accuracy), from ``models_dir`` or trained now.

    Model ``i`` uses seed ``cfg.seed * 1000 + i`` for its train/validation split, initialisation,
    shuffling and dropout, and is saved atomically (safetensors) as soon as it is trained.
    """
    n_train, n_val = resolve_split_sizes(cfg.dataset, len(data[0]), cfg.train_size, cfg.val_size)
    input_size = int(data[0].shape[-1])
    models = []
    for index in progress(range(cfg.num_models), desc="models"):
        path = model_path(models_dir, cfg.dataset, factory.name, index)
        key = _training_key(cfg, factory, index, n_train, n_val)
        if path.exists() and not cfg.retrain:
            state, meta = load_checkpoint(path)
            model = factory.build(input_size)
            model.load_state_dict(state)
            model.eval()
            logger.info(f"Model {index}: loaded {path}, val Acc={meta['val_acc']:.4f}, test Acc={meta['test_acc']:.4f}")
        else:
            split = draw_split(data, n_train, n_val, split_seed=key["seed"])
            torch.manual_seed(key["seed"])  # weight initialisation
            model = factory.build(input_size)
            losses = train_classifier(
                model, split.x_train, split.y_train, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                seed=key["seed"],
            )
            val_acc = evaluate_accuracy(model, split.x_val, split.y_val) if n_val else float("nan")
            test_acc = evaluate_accuracy(model, split.x_test, split.y_test)
            meta = {"training": key, "val_acc": val_acc, "test_acc": test_acc,
                    "final_loss": losses[-1] if losses else None}
            save_checkpoint(path, model.state_dict(), meta)
            logger.info(f"Model {index}: trained {cfg.epochs} epochs, val Acc={val_acc:.4f}, test Acc={test_acc:.4f}")
        models.append((model, meta))
    return models


# --------------------------------------------------------------------------- aggregation
def summarise(
    comparisons: Sequence[Comparison],
    results: Mapping[str, list[list[StageResult]]],
    percents: Sequence[int],
    confidence: float,
    alpha_level: float,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-variant statistics and paired tests.

    Args:
        results: variant key -> per model -> per stage results.

    Returns:
        ``(summary_rows, test_rows)``: mean and CI per (comparison, variant, percent); paired
        t-tests per (comparison, test pair, percent < 100) with Holm-adjusted p-values within
        each comparison.
    """
    summary, tests = [], []
    for comp in comparisons:
        for variant in comp.variants:
            per_model = results[variant.key]
            for s, percent in enumerate(percents):
                accs = [stages[s].accuracy for stages in per_model if stages[s].accuracy is not None]
                failed = len(per_model) - len(accs)
                row: dict[str, Any] = {"comparison": comp.name, "variant": variant.label, "kept_percent": percent,
                                       "n_ok": len(accs), "n_failed": failed}
                if accs:
                    mean, half = mean_ci(accs, confidence)
                    row.update(mean=mean, ci_low=None if half is None else mean - half,
                               ci_high=None if half is None else mean + half, half_width=half)
                summary.append(row)
        comp_tests = []
        for label, reference in comp.tests:
            mine, ref = results[comp.variant(label).key], results[comp.variant(reference).key]
            for s, percent in enumerate(percents):
                if percent == 100:
                    continue  # nothing pruned yet: every variant is the same model
                pairs = [(a[s].accuracy, b[s].accuracy) for a, b in zip(mine, ref)
                         if a[s].accuracy is not None and b[s].accuracy is not None]
                row = {"comparison": comp.name, "variant": label, "reference": reference,
                       "kept_percent": percent, "n_pairs": len(pairs)}
                if pairs:
                    diff, p = paired_t_test([a for a, _ in pairs], [b for _, b in pairs])
                    row.update(mean_diff=diff, p=p)
                comp_tests.append(row)
        testable = [row for row in comp_tests if row.get("p") is not None]
        for row, adjusted in zip(testable, holm_adjust([row["p"] for row in testable]) if testable else []):
            row["p_holm"] = adjusted
            row["significant"] = adjusted < alpha_level
        tests += comp_tests
    return summary, tests


def _fmt(value: Any, digits: int = 4) -> Any:
    return f"{value:.{digits}g}" if isinstance(value, float) else ("" if value is None else value)


def plot_comparison(ax: Any, comp: Comparison, summary: Sequence[Mapping[str, Any]]) -> None:
    """Mean accuracy against kept percentage with confidence bands, one line per variant."""
    rows = [r for r in summary if r["comparison"] == comp.name]
    methods = list(dict.fromkeys(v.method for v in comp.variants))
    two_modes = len({v.mode for v in comp.variants}) > 1
    paired = comp.name == "decay"
    cmap = plt.get_cmap("viridis" if comp.name in ("alpha_beta", "gamma", "lambda") else "tab10")
    for i, variant in enumerate(comp.variants):
        mine = [r for r in rows if r["variant"] == variant.label and r.get("mean") is not None]
        if not mine:
            continue
        x = np.array([r["kept_percent"] for r in mine], dtype=float)
        y = np.array([r["mean"] for r in mine]) * 100
        if comp.name in ("alpha_beta", "gamma", "lambda"):
            color = cmap(i / max(1, len(comp.variants) - 1))
        else:
            color = cmap(methods.index(variant.method) % 10 if (two_modes or paired) else i % 10)
        dashed = (two_modes and variant.mode == "global") or (paired and variant.label.endswith("no decay"))
        ax.plot(x, y, marker="o", markersize=3, color=color, linestyle="--" if dashed else "-", label=variant.label)
        if all(r.get("half_width") is not None for r in mine):
            low = np.array([r["ci_low"] for r in mine]) * 100
            high = np.array([r["ci_high"] for r in mine]) * 100
            ax.fill_between(x, low, high, color=color, alpha=0.15, linewidth=0)
    ax.set_xlim(102, min(r["kept_percent"] for r in rows) - 2)  # pruning proceeds left to right
    ax.set_ylim(0, 100)  # t-bands of few models can leave [0, 100]; accuracy cannot
    ax.set_xlabel("kept hidden units (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(comp.title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)


def markdown_summary(
    cfg: Any,
    heading: str,
    comparisons: Sequence[Comparison],
    summary: Sequence[Mapping[str, Any]],
    tests: Sequence[Mapping[str, Any]],
    base_accuracy: tuple[float, float | None],
    failures: Mapping[str, str],
) -> str:
    """A Markdown report: accuracy tables (mean ± CI half-width, %) and significant differences."""
    mean, half = base_accuracy
    ci = f" ± {100 * half:.2f}" if half is not None else ""
    lines = [
        f"# {heading}",
        "",
        f"{cfg.num_models} models, {cfg.epochs} epochs (Adam lr {cfg.lr:g}, batch {cfg.batch_size}), seed {cfg.seed}. "
        f"Unpruned test accuracy {100 * mean:.2f}{ci} % (mean ± {100 * cfg.confidence:g} % Student-t half-width).",
        f"Significance: two-sided paired t-tests over the models, Holm-adjusted within each comparison, "
        f"level {cfg.alpha_level:g}.",
        "",
    ]
    for comp in comparisons:
        rows = [r for r in summary if r["comparison"] == comp.name]
        percents = list(dict.fromkeys(r["kept_percent"] for r in rows))
        lines += [f"## {comp.title} (`{comp.name}`)", "", f"![{comp.name}](figures/{comp.name}.png)", ""]
        lines.append("| variant | " + " | ".join(f"{p} %" for p in percents) + " |")
        lines.append("|---|" + "---|" * len(percents))
        for variant in comp.variants:
            cells = []
            for r in rows:
                if r["variant"] != variant.label:
                    continue
                if r.get("mean") is None:
                    cells.append("failed")
                    continue
                hw = f" ± {100 * r['half_width']:.1f}" if r.get("half_width") is not None else ""
                note = f" ({r['n_failed']} failed)" if r["n_failed"] else ""
                cells.append(f"{100 * r['mean']:.1f}{hw}{note}")
            lines.append(f"| {variant.label} | " + " | ".join(cells) + " |")
        lines.append("")
        comp_tests = [t for t in tests if t["comparison"] == comp.name]
        tested = [p for p in percents if p != 100]
        lines += [
            "Paired differences to the reference (accuracy points; `**` Holm-adjusted p < "
            f"{cfg.alpha_level:g}, `*` unadjusted p < {cfg.alpha_level:g} only):",
            "",
            "| variant vs reference | " + " | ".join(f"{p} %" for p in tested) + " |",
            "|---|" + "---|" * len(tested),
        ]
        significant = []
        for label, reference in comp.tests:
            cells = []
            for t in comp_tests:
                if t["variant"] != label or t["reference"] != reference:
                    continue
                if t.get("mean_diff") is None:
                    cells.append("n/a")
                    continue
                mark = "**" if t.get("significant") else "*" if (t.get("p") or 1.0) < cfg.alpha_level else ""
                cells.append(f"{100 * t['mean_diff']:+.1f}{mark}")
                if t.get("significant"):
                    significant.append(t)
            lines.append(f"| {label} vs {reference} | " + " | ".join(cells) + " |")
        lines.append("")
        for label, reference in comp.tests:
            mine = [t for t in significant if t["variant"] == label and t["reference"] == reference]
            parts = [
                f"{word} at " + ", ".join(f"{t['kept_percent']} % ({100 * t['mean_diff']:+.1f})" for t in group)
                for word, group in (("better", [t for t in mine if t["mean_diff"] > 0]),
                                    ("worse", [t for t in mine if t["mean_diff"] < 0])) if group
            ]
            if parts:
                lines.append(f"- **{label}** vs {reference}, significant after Holm: " + "; ".join(parts))
        if not significant:
            lines.append(f"- No difference to the reference is significant after Holm adjustment "
                         f"(level {cfg.alpha_level:g}).")
        for variant in comp.variants:
            if variant.key in failures:
                lines.append(f"- **{variant.label}** failed on some models: {failures[variant.key]}")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry
def run_analysis(cfg: ParamsConfig) -> dict[str, Any]:
    """Train or load the LeNet models, prune with every selected variant, write CSVs, figures, SUMMARY.md.

    Everything is checked (flags, data files, model cache) before the first file is written.
    Outputs go to ``<output_dir>/<dataset>/`` (see :func:`run_study`).
    """
    names = validate_config(cfg)
    data = load_dataset(cfg.dataset, cfg.dataroot)  # FileNotFoundError before anything is written
    out_dir = Path(cfg.output_dir) / cfg.dataset
    models_dir = Path(cfg.models_dir) if cfg.models_dir else out_dir / "models"
    factory = lenet_factory(cfg)
    n_train, n_val = resolve_split_sizes(cfg.dataset, len(data[0]), cfg.train_size, cfg.val_size)
    check_cached_models(cfg, factory, models_dir, n_train, n_val)
    comparisons = [build_comparison(name) for name in names]
    return run_study(cfg, factory, comparisons, data, out_dir, models_dir, f"params-{cfg.dataset}",
                     f"Hyper-parameter analysis on {cfg.dataset}")


def run_study(
    cfg: Any,
    factory: ModelFactory,
    comparisons: Sequence[Comparison],
    data: tuple[torch.Tensor, ...],
    out_dir: Path,
    models_dir: Path,
    run_name: str,
    heading: str,
) -> dict[str, Any]:
    """Models, staged pruning of every variant, statistics and outputs (shared by LeNet and VGG).

    Args:
        cfg: a validated config with the fields of :class:`ParamsConfig` used here (``dataset``,
            ``num_models``, ``epochs``, ``lr``, ``batch_size``, ``train_size``, ``val_size``, ``stages``,
            ``confidence``, ``alpha_level``, ``threads``, ``retrain``, ``seed``).
        out_dir: receives ``<run_name>.txt`` (log), ``config.json``, ``results.csv`` (every stage of
            every model and variant), ``summary.csv`` (mean and CI), ``significance.csv`` (paired
            tests), ``SUMMARY.md`` and ``figures/<comparison>.{png,pdf}`` plus ``figures/overview``.

    Returns:
        Paths and the rows written (for tests and notebooks).
    """
    previous_threads = torch.get_num_threads()
    # Tiny models: one thread avoids the oversubscription that makes small ops 50x slower on a busy CPU.
    torch.set_num_threads(cfg.threads)
    logger = get_logger(run_name, out_dir / f"{run_name}.txt")
    try:
        log_config(logger, cfg)
        atomic_write_json(out_dir / "config.json", config_to_dict(cfg))
        start = time.perf_counter()
        models = train_or_load_models(cfg, factory, data, models_dir, logger)
        logger.info(f"Models ready in {time.perf_counter() - start:.1f} s")

        percents = stage_percents(cfg.stages)
        unique = {v.key: v for comp in comparisons for v in comp.variants}
        x_test, y_test = data[2], data[3]
        results: dict[str, list[list[StageResult]]] = {key: [] for key in unique}
        start = time.perf_counter()
        jobs = [(i, model, v) for i, (model, _) in enumerate(models) for v in unique.values()]
        n_train, n_val = resolve_split_sizes(cfg.dataset, len(data[0]), cfg.train_size, cfg.val_size)
        for index, model, variant in progress(jobs, desc="pruning"):
            after_stage = None
            if getattr(cfg, "bn_recalibrate", False):
                x_own = draw_split(data, n_train, n_val, split_seed=cfg.seed * 1000 + index).x_train
                after_stage = partial(recalibrate_batchnorm, x=x_own)
            stages = prune_in_stages(model, variant, percents, x_test, y_test,
                                     _variant_seed(cfg.seed, index, variant), after_stage)
            results[variant.key].append(stages)
        logger.info(f"Pruned {len(unique)} variants x {len(models)} models in {time.perf_counter() - start:.1f} s")

        failures: dict[str, str] = {}
        for key, per_model in results.items():
            reasons = sorted({s.reason for stages in per_model for s in stages if s.status == FAILED})
            if reasons:
                count = sum(any(s.status == FAILED for s in stages) for stages in per_model)
                failures[key] = f"{count}/{len(per_model)} models; " + " | ".join(reasons)
                logger.info(f"Variant {unique[key].label}: {failures[key]}")

        rows = []
        for comp in comparisons:
            for variant in comp.variants:
                for index, stages in enumerate(results[variant.key]):
                    for stage in stages:
                        rows.append({
                            "comparison": comp.name, "variant": variant.label, "method": variant.method,
                            "overrides": json.dumps(dict(variant.overrides)), "mode": variant.mode,
                            "scope": variant.scope, "model": index, "kept_percent": stage.percent,
                            "widths": "/".join(map(str, stage.widths)), "accuracy": stage.accuracy,
                            "status": stage.status, "reason": stage.reason,
                        })
        summary, tests = summarise(comparisons, results, percents, cfg.confidence, cfg.alpha_level)
        atomic_write_csv(out_dir / "results.csv", rows)
        atomic_write_csv(out_dir / "summary.csv", [{k: _fmt(v, 6) for k, v in r.items()} for r in summary],
                         ["comparison", "variant", "kept_percent", "n_ok", "n_failed", "mean", "ci_low", "ci_high",
                          "half_width"])
        atomic_write_csv(out_dir / "significance.csv", [{k: _fmt(v, 6) for k, v in r.items()} for r in tests],
                         ["comparison", "variant", "reference", "kept_percent", "n_pairs", "mean_diff", "p", "p_holm",
                          "significant"])

        figures = []
        for comp in comparisons:
            fig, ax = plt.subplots(figsize=(6, 4))
            plot_comparison(ax, comp, summary)
            figures += save_figure(fig, out_dir / "figures" / comp.name)
            plt.close(fig)
        cols = min(3, len(comparisons))
        n_rows = math.ceil(len(comparisons) / cols)
        fig, axes = plt.subplots(n_rows, cols, figsize=(5.5 * cols, 4 * n_rows), squeeze=False)
        for ax, comp in zip(axes.flat, comparisons):
            plot_comparison(ax, comp, summary)
        for ax in list(axes.flat)[len(comparisons):]:
            ax.axis("off")
        fig.suptitle(f"{cfg.dataset}, {factory.name}: {cfg.num_models} models, mean and "
                     f"{100 * cfg.confidence:g} % CI")
        fig.tight_layout()
        figures += save_figure(fig, out_dir / "figures" / "overview")
        plt.close(fig)

        base = mean_ci([stages[0].accuracy for stages in next(iter(results.values()))], cfg.confidence)
        report = markdown_summary(cfg, heading, comparisons, summary, tests, base, failures)
        atomic_write_text(out_dir / "SUMMARY.md", report)
        logger.info(f"Unpruned test Acc={base[0]:.4f}; results in {out_dir}")
    finally:
        close_logger(logger)
        torch.set_num_threads(previous_threads)
    return {"output_dir": out_dir, "results": rows, "summary": summary, "tests": tests, "figures": figures,
            "report": report, "config": dataclasses.asdict(cfg)}
