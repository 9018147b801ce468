"""The hyper-parameter analysis (paper §4.3): staged pruning of N small models, statistics, figures.

Every number comes from an importable function; ``params/main.py`` only parses flags and calls
:func:`run_analysis`. This module runs a study; the pieces live by concern (and are re-exported
here, so ``from params.analysis import ...`` keeps working): ``params.config`` (settings),
``params.comparisons`` (variants, comparisons), ``params.stages`` (staged pruning),
``params.training`` (train-or-load cache), ``params.significance`` (statistics),
``params.report`` (summaries, figures, ``SUMMARY.md``).

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

import dataclasses
import json
import math
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from engine.harness import (  # noqa: E402
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    close_logger,
    config_to_dict,
    get_logger,
    log_config,
    num_threads,
    progress,
    save_figure,
)
from params.comparisons import (  # noqa: E402,F401
    _COMPARISON_FACTORIES,
    COMPARISONS,
    LAMBDA_VALUES,
    SWEEP_VALUES,
    Comparison,
    Variant,
    _against,
    _alpha_beta,
    _decay,
    _gamma,
    _lambda,
    _methods,
    _mode,
    build_comparison,
    parse_comparisons,
)
from params.config import FAILED, MODES, ParamsConfig, check_study_flags, validate_config  # noqa: E402,F401
from params.data import draw_split, load_dataset, resolve_split_sizes  # noqa: E402
from params.report import _fmt, markdown_summary, plot_comparison, summarise  # noqa: E402,F401
from params.significance import holm_adjust, mean_ci, paired_t_test  # noqa: E402,F401
from params.stages import (  # noqa: E402,F401
    StageResult,
    _install_linear_pair,
    _prune_stage,
    _variant_seed,
    prune_chain_global,
    prune_in_stages,
    recalibrate_batchnorm,
    stage_percents,
    stage_schedule,
)
from params.training import (  # noqa: E402,F401
    ModelFactory,
    _training_key,
    check_cached_models,
    lenet_factory,
    model_path,
    train_or_load_models,
)


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


def _prune_every_variant(
    cfg: Any, comparisons: Sequence[Comparison], models: Sequence[tuple[nn.Module, Any]],
    data: tuple[torch.Tensor, ...], percents: Sequence[int],
) -> tuple[dict[str, list[list[StageResult]]], dict[str, Variant]]:
    """Staged pruning of every model with every distinct variant: ``(results by variant key, variants by key)``."""
    unique = {v.key: v for comp in comparisons for v in comp.variants}
    x_test, y_test = data[2], data[3]
    results: dict[str, list[list[StageResult]]] = {key: [] for key in unique}
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
    return results, unique


def _failures(results: Mapping[str, Sequence[Sequence[StageResult]]], unique: Mapping[str, Variant]) -> dict[str, str]:
    """Per variant key with failed stages: ``"<models failed>/<models>; <reasons>"``."""
    failures: dict[str, str] = {}
    for key, per_model in results.items():
        reasons = sorted({s.reason for stages in per_model for s in stages if s.status == FAILED})
        if reasons:
            count = sum(any(s.status == FAILED for s in stages) for stages in per_model)
            failures[key] = f"{count}/{len(per_model)} models; " + " | ".join(reasons)
    return failures


def _result_rows(comparisons: Sequence[Comparison],
                 results: Mapping[str, Sequence[Sequence[StageResult]]]) -> list[dict[str, Any]]:
    """One CSV row per comparison, variant, model and stage."""
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
    return rows


def _write_figures(cfg: Any, model_name: str, comparisons: Sequence[Comparison],
                   summary: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """``figures/<comparison>`` for each comparison and ``figures/overview`` with all of them."""
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
    fig.suptitle(f"{cfg.dataset}, {model_name}: {cfg.num_models} models, mean and "
                 f"{100 * cfg.confidence:g} % CI")
    fig.tight_layout()
    figures += save_figure(fig, out_dir / "figures" / "overview")
    plt.close(fig)
    return figures


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
    # Tiny models: one thread avoids the oversubscription that makes small ops 50x slower on a busy CPU.
    with num_threads(cfg.threads):
        logger = get_logger(run_name, out_dir / f"{run_name}.txt")
        try:
            log_config(logger, cfg)
            atomic_write_json(out_dir / "config.json", config_to_dict(cfg))
            start = time.perf_counter()
            models = train_or_load_models(cfg, factory, data, models_dir, logger)
            logger.info(f"Models ready in {time.perf_counter() - start:.1f} s")

            percents = stage_percents(cfg.stages)
            start = time.perf_counter()
            results, unique = _prune_every_variant(cfg, comparisons, models, data, percents)
            logger.info(f"Pruned {len(unique)} variants x {len(models)} models in {time.perf_counter() - start:.1f} s")
            failures = _failures(results, unique)
            for key, text in failures.items():
                logger.info(f"Variant {unique[key].label}: {text}")
            rows = _result_rows(comparisons, results)
            summary, tests = summarise(comparisons, results, percents, cfg.confidence, cfg.alpha_level)
            atomic_write_csv(out_dir / "results.csv", rows)
            atomic_write_csv(out_dir / "summary.csv", [{k: _fmt(v, 6) for k, v in r.items()} for r in summary],
                             ["comparison", "variant", "kept_percent", "n_ok", "n_failed", "mean", "ci_low", "ci_high",
                              "half_width"])
            atomic_write_csv(out_dir / "significance.csv", [{k: _fmt(v, 6) for k, v in r.items()} for r in tests],
                             ["comparison", "variant", "reference", "kept_percent", "n_pairs", "mean_diff", "p",
                              "p_holm", "significant"])

            figures = _write_figures(cfg, factory.name, comparisons, summary, out_dir)
            base = mean_ci([stages[0].accuracy for stages in next(iter(results.values()))], cfg.confidence)
            report = markdown_summary(cfg, heading, comparisons, summary, tests, base, failures)
            atomic_write_text(out_dir / "SUMMARY.md", report)
            logger.info(f"Unpruned test Acc={base[0]:.4f}; results in {out_dir}")
        finally:
            close_logger(logger)
    return {"output_dir": out_dir, "results": rows, "summary": summary, "tests": tests, "figures": figures,
            "report": report, "config": dataclasses.asdict(cfg)}
