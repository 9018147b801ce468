"""The experiments behind ``vit/main.py``: validation, the uniform/adaptive pruning runs and the norm analysis."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from engine.harness import (
    ResultsCSV,
    atomic_write_csv,
    atomic_write_json,
    close_logger,
    config_to_dict,
    default_device,
    get_logger,
    log_config,
    num_threads,
    save_checkpoint,
    seed_everything,
    split_list,
)
from vit.data import EvalData, digits_data, imagenet_data
from vit.experiments import (
    PAPER_MLP_WIDTH,
    adaptive_chunk,
    norm_analysis,
    run_adaptive,
    run_uniform,
    uniform_amounts,
)
from vit.main import ViTConfig, run_dir, run_name
from vit.methods import PruneContext, get_method
from vit.metrics import count_macs, count_nonzero_params, count_params, evaluate, model_size_mb, time_inference
from vit.models import VIT_MODELS, load_vit, mlp_pairs
from vit.plots import plot_adaptive, plot_norms, plot_uniform
from vit.small import SmallViTConfig, load_or_train_small_vit


def _parse_amounts(text: str) -> list[int]:
    return split_list(text, int, name="--amounts")


def _validate(cfg: ViTConfig) -> None:
    """Every check that needs no model, before anything is written."""
    positive = {"batch_size": cfg.batch_size, "eval_batches": cfg.eval_batches, "steps": cfg.steps,
                "timing_repeats": cfg.timing_repeats, "calibration_batches": cfg.calibration_batches}
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if get_method(cfg.method).needs_stats and cfg.experiment != "norm_analysis" and cfg.calib_size < 1:
        raise ValueError(f"--calib-size must be >= 1 for --method {cfg.method} (it needs calibration images), "
                         f"got {cfg.calib_size}")
    if min(cfg.chunk, cfg.small_epochs, cfg.workers, cfg.threads) < 0:
        raise ValueError("--chunk, --small-epochs, --workers and --threads must be >= 0")
    if not 0 < cfg.threshold <= 1:
        raise ValueError(f"--threshold must be in (0, 1], got {cfg.threshold}")
    if cfg.lmbda <= 0:
        raise ValueError(f"--lmbda must be > 0, got {cfg.lmbda}")
    if cfg.experiment == "adaptive" and not get_method(cfg.method).repeatable:
        raise ValueError(f"--method {cfg.method} cannot prune a layer twice; use it with --experiment uniform")
    if cfg.model == "small" and cfg.weights:
        raise ValueError("--weights applies to torchvision models; the small model is trained and cached")
    if cfg.weights and not Path(cfg.weights).is_file():
        raise FileNotFoundError(f"--weights file not found: {cfg.weights}")
    _parse_amounts(cfg.amounts)


def _stats_images(cfg: ViTConfig) -> int:
    """Calibration images to load: ``--calib-size`` for a calibrated method, else none."""
    return cfg.calib_size if get_method(cfg.method).needs_stats and cfg.experiment != "norm_analysis" else 0


def _load_torchvision(cfg: ViTConfig) -> tuple[nn.Module, EvalData]:
    model, transform = load_vit(cfg.model, cfg.weights or None)
    data = imagenet_data(cfg.dataroot, transform, cfg.batch_size, cfg.eval_batches, cfg.calibration_batches,
                         cfg.workers, cfg.seed, calib_size=_stats_images(cfg))
    return model, data


def _measure(data: EvalData, cfg: ViTConfig) -> Callable[[nn.Module], dict]:
    """``evaluate(model)``: top-1/5 and loss on the evaluation batches, MACs, parameters, size."""

    def measure(model: nn.Module) -> dict:
        result = evaluate(model, data.batches, cfg.eval_batches)
        return {
            "top1": result["top1"],
            "top5": result["top5"],
            "loss": result["loss"],
            "macs": count_macs(model, data.example),
            "params": count_params(model),
            "nonzero_params": count_nonzero_params(model),
            "size_mb": model_size_mb(model),
        }

    return measure


def _step_line(row: dict) -> str:
    where = f"amount={row['amount']}" if "amount" in row else f"layer={row['layer']}, accepted={row['accepted']}"
    return (f"Step {row['step']}: {where}, removed={row['removed_units']}, Acc={row['top1']:.4f}, "
            f"Top5={row['top5']:.4f}, Loss={row['loss']:.4f}, MACs={row['macs'] / 1e6:.2f} M, "
            f"Params={row['params'] / 1e6:.4f} M")


def _prune_run(cfg: ViTConfig, model: nn.Module, data: EvalData, out: Path, logger: logging.Logger) -> dict:
    """Uniform or adaptive: one CSV row per step (deterministic) and one timing row per step."""
    name = run_name(cfg)
    method = get_method(cfg.method)
    ctx = PruneContext(seed=cfg.seed, calibration=data.calibration, overrides={"lmbda": cfg.lmbda},
                       stats_batches=data.stats_batches)
    if data.stats_batches:
        logger.info(f"Calibration: {sum(len(x) for x in data.stats_batches)} training images")
    results = ResultsCSV(out / f"{name}.csv")
    timings = []
    width = mlp_pairs(model)[0][0].weight.shape[0]

    def on_row(row: dict, pruned: nn.Module) -> None:
        results.append(row)
        timings.append({"step": row["step"], "batch_size": int(data.timing_batch.shape[0]),
                        "inference_ms": time_inference(pruned, data.timing_batch, cfg.timing_repeats)})
        atomic_write_csv(out / f"{name}-timing.csv", timings)
        logger.info(_step_line(row))

    measure = _measure(data, cfg)
    if cfg.experiment == "uniform":
        scale = 1.0 if cfg.model in VIT_MODELS else width / PAPER_MLP_WIDTH
        amounts = _parse_amounts(cfg.amounts) or uniform_amounts(scale, cfg.steps)
        logger.info(f"Amounts per layer: {amounts}")
        rows = run_uniform(model, method, amounts, measure, ctx, on_row)
        plot_uniform({cfg.method: ([r["amount"] for r in rows], [r["top1"] for r in rows])},
                     f"{cfg.model}: uniform MLP pruning", out / name)
        summary = {"amounts": amounts, "top1": [r["top1"] for r in rows]}
    else:
        chunk = cfg.chunk or adaptive_chunk(width)
        logger.info(f"Chunk: {chunk} units, threshold per layer: {cfg.threshold ** (1 / len(mlp_pairs(model))):.4f}")
        pruned, rows = run_adaptive(model, method, chunk, measure, ctx, cfg.threshold, on_row)
        accepted = [r for r in rows if r["accepted"]]
        plot_adaptive({cfg.method: ([r["params"] / 1e6 for r in accepted], [r["top1"] for r in accepted])},
                      f"{cfg.model}: adaptive MLP pruning", out / name)
        summary = {"chunk": chunk, "widths": [fc1.weight.shape[0] for fc1, _ in mlp_pairs(pruned)],
                   "final": accepted[-1], "removed_per_layer": _removed_per_layer(rows, len(mlp_pairs(model)))}
        if cfg.save_model:  # the widths in the meta rebuild the narrower MLPs before loading
            save_checkpoint(out / f"{name}.safetensors", pruned.state_dict(),
                            {"model": cfg.model, "method": cfg.method, "widths": summary["widths"]})
        logger.info(f"Params: {rows[0]['params'] / 1e6:.2f} M => {accepted[-1]['params'] / 1e6:.2f} M")
        logger.info(f"Acc: {rows[0]['top1']:.4f} => {accepted[-1]['top1']:.4f}")
    base_ms, last_ms = timings[0]["inference_ms"], timings[-1]["inference_ms"]
    logger.info(f"Inference: {base_ms:.2f} ms => {last_ms:.2f} ms per batch of {data.timing_batch.shape[0]}")
    return summary


def _removed_per_layer(rows: list[dict], num_layers: int) -> list[int]:
    removed = [0] * num_layers
    for row in rows[1:]:
        if row["accepted"]:
            removed[row["layer"]] = row["layer_removed"]
    return removed


def _norm_run(cfg: ViTConfig, model: nn.Module, data: EvalData, out: Path, logger: logging.Logger) -> dict:
    rows = norm_analysis(model, cfg.lmbda)
    name = run_name(cfg)
    atomic_write_csv(out / f"{name}.csv", rows)
    plot_norms(rows, f"{cfg.model}: MLP weights per layer (λ = {cfg.lmbda:g})", out / name)
    per_layer = {}
    for row in rows:
        per_layer.setdefault(row["layer"], []).append(row["distance"])
    for layer, distances in per_layer.items():
        median = sorted(distances)[len(distances) // 2]
        logger.info(f"Layer {layer}: {len(distances)} units, median distance {median:.4g}")
    return {"units": len(rows)}


RUNNERS = {"uniform": _prune_run, "adaptive": _prune_run, "norm_analysis": _norm_run}


def run(cfg: ViTConfig) -> Path:
    """Validate ``cfg`` (before anything is written) and run its experiment; returns the run directory."""
    _validate(cfg)
    with num_threads(cfg.threads):  # callers (tests) keep their own setting
        return _run(cfg)


def _run(cfg: ViTConfig) -> Path:
    seed_everything(cfg.seed)
    # Load torchvision weights and data before writing anything: a missing file leaves no run behind.
    model, data = _load_torchvision(cfg) if cfg.model in VIT_MODELS else (None, None)
    width = mlp_pairs(model)[0][0].out_features if model is not None else SmallViTConfig().mlp_dim
    too_large = [a for a in _parse_amounts(cfg.amounts) if not 0 <= a < width]
    if too_large:
        raise ValueError(f"--amounts must be in [0, {width}) (the MLP width, a unit stays), got {too_large}")
    out = run_dir(cfg)
    name = run_name(cfg)
    logger = get_logger(name, out / f"{name}.txt")
    try:
        log_config(logger, cfg)
        if model is None:
            model = load_or_train_small_vit(cfg.output_dir, cfg.seed, SmallViTConfig(epochs=cfg.small_epochs), logger,
                                            retrain=cfg.retrain)
            data = digits_data(cfg.batch_size, cfg.calibration_batches, calib_size=_stats_images(cfg))
        device = torch.device(cfg.device) if cfg.device else default_device()
        model = model.to(device).eval()
        summary = RUNNERS[cfg.experiment](cfg, model, data, out, logger)
        atomic_write_json(out / f"{name}.json", {"config": config_to_dict(cfg), **summary})
        logger.info(f"Done: {out}")
    finally:
        close_logger(logger)
    return out
