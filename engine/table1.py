"""The Table 1 experiment behind ``main.py``: the pretrain, prune (+ sparsity learning and fine-tuning)
and test modes of :class:`CNNConfig` (every flag of the paper's script, in :mod:`engine.table1_config`),
with the paper's run layout and log lines (both in :mod:`engine.table1_layout`).

A run directory holds one run: a rerun there with other arguments is refused before anything is
logged (:func:`previous_run`), an interrupted one resumes, a finished one of the same arguments is kept.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, RandomSampler

from engine import registry
from engine import table1_layout as layout
from engine.cnn import count_flops_params, progressive_pruning
from engine.datasets import DatasetBundle
from engine.harness import (
    CheckpointIntegrityError,
    close_logger,
    config_to_dict,
    default_device,
    get_logger,
    load_checkpoint,
    log_config,
    save_checkpoint,
    seed_everything,
)
from engine.table1_config import CNNConfig
from engine.train import (
    DistInfo,
    check_checkpoint,
    check_resume,
    cleanup_distributed,
    evaluate,
    init_distributed,
    load_model,
    make_loader,
    save_model,
    train_model,
)
from projprune.calibration import recalibrate_batchnorm

# Arguments that do not change what a fine-tuning computes (a resumed run may differ in them).
_RESUME_IGNORED = {"verbose", "workers", "restore", "sl_restore", "output_dir", "dataroot"}
MODES = layout.MODES


@dataclass
class Context:
    """What every mode needs: config, data, model, loaders, logger, device and rank layout."""

    cfg: CNNConfig
    bundle: DatasetBundle
    model: nn.Module
    train_loader: DataLoader
    test_loader: DataLoader
    logger: logging.Logger
    device: torch.device
    dist: DistInfo
    run_dir: Path
    run_name: str

    @property
    def example_inputs(self) -> torch.Tensor:
        return self.bundle.example_inputs(1).to(self.device)


def run_name(cfg: CNNConfig) -> str:
    """The paper's run name: ``<dataset>-<model>`` or ``<dataset>-<scope>-<method>-<speed_up>-<model>``."""
    if cfg.mode == "prune":
        return layout.run_name(cfg.dataset, cfg.model, cfg.method, cfg.speed_up, cfg.global_pruning)
    return layout.run_name(cfg.dataset, cfg.model)


def validate(cfg: CNNConfig) -> None:
    """Reject bad arguments before anything is created or written."""
    if cfg.mode not in MODES:
        raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    registry.model_spec(cfg.model)
    if cfg.dataset not in registry.DATASET_NAMES:
        raise ValueError(f"unknown --dataset {cfg.dataset!r}; valid: {', '.join(registry.DATASET_NAMES)}")
    if cfg.mode == "prune":
        if cfg.method is None:
            raise ValueError(f"--mode prune needs --method, one of {', '.join(sorted(registry.METHODS))}")
        registry.get_method(cfg.method)
    if cfg.mode == "test" and not cfg.restore:
        raise ValueError("--mode test needs --restore <checkpoint>")
    for name in ("restore", "sl_restore"):
        path = getattr(cfg, name)
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"--{name.replace('_', '-')} {path}: no such checkpoint file")
    _check_numbers(cfg)


def _check_numbers(cfg: CNNConfig) -> None:
    """Ranges of the numeric flags (NaN and infinities are refused by the parser already)."""
    def need(ok: bool, flag: str, expected: str, value: Any) -> None:
        if not ok:
            raise ValueError(f"{flag} must be {expected}, got {value}")

    for flag in ("batch_size", "iterative_steps", "num_points", "image_size", "calib_size", "calib_every"):
        need(getattr(cfg, flag) >= 1, "--" + flag.replace("_", "-"), ">= 1", getattr(cfg, flag))
    for flag in ("lr", "sl_lr", "lr_decay_gamma", "width_mult"):
        need(getattr(cfg, flag) > 0, "--" + flag.replace("_", "-"), "> 0", getattr(cfg, flag))
    for flag in ("weight_decay", "reg", "delta_reg", "target_flops", "sl_reg_warmup", "workers", "bn_recalibrate"):
        need(getattr(cfg, flag) >= 0, "--" + flag.replace("_", "-") if flag != "delta_reg" else "--delta_reg",
             ">= 0", getattr(cfg, flag))
    need(0 <= cfg.calib_drift < 1, "--calib-drift", "in [0, 1)", cfg.calib_drift)
    need(0 < cfg.max_pruning_ratio <= 1, "--max-pruning-ratio", "in (0, 1]", cfg.max_pruning_ratio)
    need(cfg.total_epochs >= 0, "--total-epochs", ">= 1 (0 only to prune without --finetune)", cfg.total_epochs)
    need(cfg.sl_total_epochs >= 0, "--sl-total-epochs", ">= 1", cfg.sl_total_epochs)
    from engine.train import parse_milestones

    parse_milestones(cfg.lr_decay_milestones)
    parse_milestones(cfg.sl_lr_decay_milestones)
    if cfg.mode == "pretrain":
        need(cfg.total_epochs >= 1, "--mode pretrain trains: --total-epochs", ">= 1", cfg.total_epochs)
    if cfg.mode == "prune":
        if cfg.target_flops == 0:
            need(cfg.speed_up > 1, "--speed-up", "> 1 (the FLOPs reduction factor)", cfg.speed_up)
        if cfg.finetune:
            need(cfg.total_epochs >= 1, "--finetune trains: --total-epochs", ">= 1", cfg.total_epochs)
        if registry.get_method(cfg.method).sparsity_learning and not cfg.sl_restore:
            need(cfg.sl_total_epochs >= 1, f"--method {cfg.method} learns sparsity first: --sl-total-epochs", ">= 1",
                 cfg.sl_total_epochs)


def build_context(cfg: CNNConfig) -> Context:
    """Seed, load data, build the model and open the run's logger."""
    validate(cfg)
    dist_info = init_distributed()
    seed_everything(_seed(cfg))
    device = default_device() if not dist_info.enabled or not torch.cuda.is_available() else \
        torch.device("cuda", dist_info.local_rank)
    spec = registry.model_spec(cfg.model)
    bundle = registry.get_dataset(cfg.dataset, cfg.dataroot, input_kind=spec.input_kind,
                                  num_points=cfg.num_points, image_size=cfg.image_size)
    model = registry.get_model(cfg.model, bundle.num_classes, bundle.in_channels, cfg.width_mult, bundle.input_size)
    for path in (cfg.restore, cfg.sl_restore):  # another task's (or a damaged) checkpoint: refused before any write
        if path:
            _verify_checkpoint(path)
            check_checkpoint(path, model, _identity(cfg, bundle), bundle.example_inputs(1), f"--dataset {cfg.dataset}")
    name = run_name(cfg)
    run_dir = layout.run_dir(cfg.output_dir, cfg.dataset, cfg.mode, name)
    log = layout.log_path(cfg.output_dir, cfg.dataset, cfg.mode, name)
    logger = get_logger(name, log if dist_info.is_main else None, console=dist_info.is_main)
    log_config(logger, cfg)
    train_loader = make_loader(bundle.train, cfg.batch_size, True, _seed(cfg), cfg.workers)
    test_loader = make_loader(bundle.test, cfg.batch_size, False, _seed(cfg), cfg.workers)
    return Context(cfg, bundle, model.to(device), train_loader, test_loader, logger, device, dist_info, run_dir, name)


def _saver(path: Path, meta: dict):
    def save(model: nn.Module, acc: float) -> None:
        save_model(path, model, {**meta, "acc": acc})
    return save


def _identity(cfg: CNNConfig, bundle: DatasetBundle) -> dict:
    """What a checkpoint must match to be loaded by this run (stored in every checkpoint's metadata)."""
    return {"model": cfg.model, "dataset": cfg.dataset, "num_classes": bundle.num_classes,
            "in_channels": bundle.in_channels}


def _meta(ctx: Context) -> dict:
    """A checkpoint's metadata: identity, config and ``run`` (the arguments a rerun must share with it)."""
    return {**_identity(ctx.cfg, ctx.bundle), "config": config_to_dict(ctx.cfg),
            "run": _resume_signature(ctx.cfg, ctx.cfg.mode)}


def _verify_checkpoint(path: str) -> None:
    """Refuse a safetensors checkpoint with NaN/Inf weights or a changed byte (one line naming it).

    Other unreadable files are left to :func:`engine.train.load_model`, which also reads torch state dicts.
    """
    try:
        load_checkpoint(path)
    except CheckpointIntegrityError:
        raise
    except ValueError:
        pass


def _final_checkpoint(cfg: CNNConfig) -> Path:
    """The checkpoint a finished run of ``cfg`` leaves (pretrain: the best epoch; prune: the pruned model)."""
    if cfg.mode == "pretrain":
        return layout.pretrain_checkpoint(cfg.output_dir, cfg.dataset, cfg.model)
    folder = layout.run_dir(cfg.output_dir, cfg.dataset, cfg.mode, run_name(cfg))
    return layout.pruned_checkpoint(folder, cfg.dataset, cfg.model, cfg.method)


def _resume_points(cfg: CNNConfig) -> list[tuple[Path, dict]]:
    """Every ``(last-epoch checkpoint, signature)`` a run of ``cfg`` would resume from."""
    final = _final_checkpoint(cfg)
    if cfg.mode == "pretrain":
        return [(layout.resume_checkpoint(final), _resume_signature(cfg, "pretrain"))]
    points = []
    if cfg.mode == "prune" and registry.get_method(cfg.method).sparsity_learning and not cfg.sl_restore:
        sparse = layout.sparse_checkpoint(final.parent, cfg.dataset, cfg.model, cfg.method, cfg.reg)
        points.append((layout.resume_checkpoint(sparse), _resume_signature(cfg, "sparsity_learning")))
    if cfg.mode == "prune" and cfg.finetune:
        points.append((layout.finetune_resume_checkpoint(final.parent, run_name(cfg)),
                       _resume_signature(cfg, "finetune")))
    return points


def previous_run(cfg: CNNConfig) -> dict | None:
    """What the run directory of ``cfg`` already holds, checked before anything is logged or written.

    Returns:
        ``None`` when the run is to go ahead (nothing there, an interrupted run of these arguments to
        resume, or an unfinished one to redo); the stored result when the final checkpoint is the
        finished run of these same arguments (kept: nothing is rerun).

    Raises:
        ValueError: the directory holds a run (interrupted or finished) of other arguments; its files
            are kept and nothing is appended to its log.
    """
    if cfg.mode == "test":
        return None
    points = _resume_points(cfg)
    for last, signature in points:
        try:
            load_checkpoint(last)
        except (ValueError, FileNotFoundError):
            continue  # absent, or damaged: the run moves it aside and redoes that phase
        check_resume(last, signature)  # other arguments: ValueError naming them
    final = _final_checkpoint(cfg)
    try:
        _, meta = load_checkpoint(final)
    except (ValueError, FileNotFoundError):
        return None
    expected = _resume_signature(cfg, cfg.mode)
    stored = meta.get("run")
    if stored is None:  # written before the signature was recorded: compare the flags
        expected = {k: v for k, v in config_to_dict(cfg).items() if k not in _RESUME_IGNORED}
        stored = {k: v for k, v in (meta.get("config") or {}).items() if k not in _RESUME_IGNORED}
    if stored != expected:
        keys = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
        flags = ", ".join(f"--{k.replace('_', '-').removesuffix('-sha256')}" for k in keys)
        state = "finished" if meta.get("complete") else "unfinished"
        remove = final if cfg.mode == "pretrain" else final.parent  # pretraining folders hold every model
        raise ValueError(f"{final} holds the {state} {cfg.mode} run of other arguments ({flags} differ); it is kept: "
                         f"choose another --output-dir, or delete {remove} to run again")
    if not meta.get("complete") or any(last.is_file() for last, _ in points):
        return None
    return {"skipped": True, "checkpoint": str(final), "acc": meta.get("acc"), "run_dir": str(final.parent),
            "log": str(layout.log_path(cfg.output_dir, cfg.dataset, cfg.mode, run_name(cfg)))}


def _mark_complete(path: Path) -> None:
    """Record in ``path``'s metadata that its run finished (a rerun of the same arguments keeps it)."""
    tensors, meta = load_checkpoint(path)
    save_checkpoint(path, tensors, {**meta, "complete": True})


def _resume_signature(cfg: CNNConfig, phase: str) -> dict:
    """The arguments a resumed phase must share with the interrupted one; the starting checkpoints by
    content (a moved file still resumes, another one does not)."""
    digests = {f"{k}_sha256": _file_digest(getattr(cfg, k)) for k in ("restore", "sl_restore")}
    return {"phase": phase, **{k: v for k, v in config_to_dict(cfg).items() if k not in _RESUME_IGNORED}, **digests}


def _file_digest(path: str | None) -> str | None:
    if not path:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_pretrain(ctx: Context) -> dict:
    """Train from scratch; the best epoch is kept as ``<dataset>_<model>.pth``."""
    cfg = ctx.cfg
    if cfg.restore:
        load_model(cfg.restore, ctx.model, ctx.device)
    ckpt = layout.pretrain_checkpoint(cfg.output_dir, cfg.dataset, cfg.model)
    best = train_model(ctx.model, ctx.train_loader, ctx.test_loader, epochs=cfg.total_epochs, lr=cfg.lr,
                       milestones=cfg.lr_decay_milestones, gamma=cfg.lr_decay_gamma, weight_decay=cfg.weight_decay,
                       logger=ctx.logger, device=ctx.device, on_best=_saver(ckpt, _meta(ctx)),
                       resume_path=layout.resume_checkpoint(ckpt),
                       resume_meta=_resume_signature(cfg, "pretrain"), verbose=cfg.verbose, desc="pretrain")
    if ctx.dist.is_main:
        _mark_complete(ckpt)
    return {"best_acc": best, "checkpoint": str(ckpt)}


def _sparsity_learning(ctx: Context, pruner) -> None:
    cfg = ctx.cfg
    if cfg.sl_restore:
        ctx.logger.info(layout.SPARSE_LOADING_LINE.format(path=cfg.sl_restore))
        load_model(cfg.sl_restore, ctx.model, ctx.device)
        return
    reg_path = layout.sparse_checkpoint(ctx.run_dir, cfg.dataset, cfg.model, cfg.method, cfg.reg)
    ctx.logger.info(layout.REGULARIZING)
    train_model(ctx.model, ctx.train_loader, ctx.test_loader, epochs=cfg.sl_total_epochs, lr=cfg.sl_lr,
                milestones=cfg.sl_lr_decay_milestones, gamma=cfg.lr_decay_gamma, weight_decay=cfg.weight_decay,
                logger=ctx.logger, device=ctx.device, regularizer=pruner, reg_warmup=cfg.sl_reg_warmup,
                on_best=_saver(reg_path, _meta(ctx)), resume_path=layout.resume_checkpoint(reg_path),
                resume_meta=_resume_signature(cfg, "sparsity_learning"), verbose=cfg.verbose,
                desc="sparsity learning")
    if ctx.dist.enabled:
        torch.distributed.barrier()  # rank 0 wrote the best sparse model
    if reg_path.is_file():
        ctx.logger.info(layout.SPARSE_LOADING_LINE.format(path=reg_path))
        load_model(reg_path, ctx.model, ctx.device)


def _fisher_batches(ctx: Context, count: int = 10):
    """EigenDamage's 10 training batches per pruning step, the same on every rank (unsharded)."""
    generator = torch.Generator().manual_seed(_seed(ctx.cfg))
    loader = DataLoader(ctx.bundle.train, batch_size=ctx.cfg.batch_size, num_workers=ctx.cfg.workers,
                        sampler=RandomSampler(ctx.bundle.train, generator=generator))

    def batches():
        for i, (inputs, _) in enumerate(loader):
            if i >= count:
                break
            yield inputs
    return batches


def _calibration(ctx: Context):
    """``--calib-size`` training images for a calibrated method (None for the others); same on every rank."""
    if not registry.get_method(ctx.cfg.method).calibrated:
        return None
    batches = registry.calibration_batches(ctx.bundle.train, ctx.cfg.calib_size, _seed(ctx.cfg), ctx.cfg.batch_size)
    return lambda: [inputs.to(ctx.device) for inputs in batches()]


def _seed(cfg: CNNConfig) -> int:
    return cfg.seed if cfg.seed is not None else 0


def run_prune(ctx: Context) -> dict:
    """(Sparsity learning) -> progressive pruning to the FLOPs target -> (fine-tuning)."""
    cfg, logger = ctx.cfg, ctx.logger
    ft_last = layout.finetune_resume_checkpoint(ctx.run_dir, ctx.run_name)
    final = layout.pruned_checkpoint(ctx.run_dir, cfg.dataset, cfg.model, cfg.method)
    signature = _resume_signature(cfg, "finetune")
    result: dict = {}
    if cfg.finetune and check_resume(ft_last, signature, logger):
        logger.info(layout.RESUME_FINETUNE_LINE.format(path=ft_last))
    else:
        if cfg.restore:
            load_model(cfg.restore, ctx.model, ctx.device)
        pruner = registry.build_pruner(
            ctx.model, ctx.example_inputs, cfg.method, ctx.bundle.num_classes, iterative_steps=cfg.iterative_steps,
            max_pruning_ratio=cfg.max_pruning_ratio, global_pruning=cfg.global_pruning, reg=cfg.reg,
            delta_reg=cfg.delta_reg, calibration=_calibration(ctx), calibrate_every=cfg.calib_every,
            calibrate_drift=cfg.calib_drift)
        if registry.get_method(cfg.method).sparsity_learning:
            _sparsity_learning(ctx, pruner)
            pruner.update_regularizer()
        ctx.model.eval()
        ori_flops, ori_params = count_flops_params(ctx.model, ctx.example_inputs)
        ori_acc, ori_loss = evaluate(ctx.model, ctx.test_loader, ctx.device)
        logger.info(layout.PRUNING)
        target = cfg.target_flops * 1e9 if cfg.target_flops > 0 else None
        torch.manual_seed(_seed(cfg))  # every rank draws the same random scores/Fisher labels
        progressive_pruning(pruner, ctx.model, cfg.speed_up, ctx.example_inputs, target_flops=target,
                            fisher_batches=_fisher_batches(ctx), device=ctx.device)
        del pruner
        if cfg.verbose:
            logger.info(ctx.model)
        flops, params = count_flops_params(ctx.model, ctx.example_inputs)
        acc, loss = evaluate(ctx.model, ctx.test_loader, ctx.device)
        logger.info(layout.PARAMS_LINE.format(before=ori_params / 1e6, after=params / 1e6,
                                              kept=params / ori_params * 100))
        logger.info(layout.FLOPS_LINE.format(before=ori_flops / 1e6, after=flops / 1e6, kept=flops / ori_flops * 100,
                                             speed_up=ori_flops / flops))
        logger.info(layout.ACC_LINE.format(before=ori_acc, after=acc))
        logger.info(layout.LOSS_LINE.format(before=ori_loss, after=loss))
        result = {"ori_acc": ori_acc, "pruned_acc": acc, "ori_flops": ori_flops, "flops": flops,
                  "ori_params": ori_params, "params": params, "speed_up": ori_flops / flops}
        if cfg.bn_recalibrate > 0:
            result["bn_acc"] = _recalibrate(ctx, ori_acc)
        if ctx.dist.is_main:  # without fine-tuning, this is the run's result
            save_model(final, ctx.model, {**_meta(ctx), "acc": acc, "pruned": True, "complete": not cfg.finetune})
    if cfg.finetune:
        logger.info(layout.FINETUNING)
        result["best_acc"] = train_model(
            ctx.model, ctx.train_loader, ctx.test_loader, epochs=cfg.total_epochs, lr=cfg.lr,
            milestones=cfg.lr_decay_milestones, gamma=cfg.lr_decay_gamma, weight_decay=cfg.weight_decay,
            logger=logger, device=ctx.device, on_best=_saver(final, {**_meta(ctx), "pruned": True}),
            resume_path=ft_last, resume_meta=signature, verbose=cfg.verbose, desc="finetune")
        if ctx.dist.is_main:
            _mark_complete(final)
    result["checkpoint"] = str(final)
    return result


def _recalibrate(ctx: Context, ori_acc: float) -> float:
    """Re-estimate BatchNorm statistics on ``--bn-recalibrate`` training batches; log and return the accuracy."""
    cfg = ctx.cfg
    seen = [0]

    def batches():  # counts what ran: the training split may hold fewer batches than asked for
        for batch in ctx.train_loader:
            seen[0] += 1
            yield batch

    count = recalibrate_batchnorm(ctx.model, batches(), max_batches=cfg.bn_recalibrate)
    ran = min(seen[0], cfg.bn_recalibrate)  # the loop draws one batch past its limit before it stops
    acc, loss = evaluate(ctx.model, ctx.test_loader, ctx.device)
    if ran < cfg.bn_recalibrate:
        ctx.logger.info(f"--bn-recalibrate {cfg.bn_recalibrate}: the training split has only {ran} batches")
    ctx.logger.info(layout.BN_LINE.format(layers=count, batches=ran))
    ctx.logger.info(layout.BN_ACC_LINE.format(before=ori_acc, after=acc))
    return acc


def run_test(ctx: Context) -> dict:
    """Evaluate ``--restore`` (pruned or not): params, FLOPs, accuracy and loss."""
    load_model(ctx.cfg.restore, ctx.model, ctx.device)
    flops, params = count_flops_params(ctx.model, ctx.example_inputs)
    ctx.logger.info(f"Params: {params / 1e6:.2f} M")
    ctx.logger.info(f"ops: {flops / 1e6:.2f} M")
    acc, loss = evaluate(ctx.model, ctx.test_loader, ctx.device)
    ctx.logger.info(f"Acc: {acc:.4f} Val Loss: {loss:.4f}")
    return {"acc": acc, "loss": loss, "flops": flops, "params": params}


RUNNERS = {"pretrain": run_pretrain, "prune": run_prune, "test": run_test}


def run(cfg: CNNConfig) -> dict:
    """Run ``cfg.mode``; returns the run's numbers plus ``model`` (the final model, for tests).

    A finished run of the same arguments in the same place is kept, not rerun: returns its stored
    result with ``skipped=True``. A run of other arguments there is refused (ValueError) before
    anything is logged or written.
    """
    validate(cfg)
    kept = previous_run(cfg)
    if kept is not None:
        print(f"{kept['checkpoint']} is the finished {cfg.mode} run of these arguments: kept, nothing rerun "
              f"(delete it to run again)")
        return kept
    ctx = build_context(cfg)
    try:
        result = RUNNERS[cfg.mode](ctx)
        result["model"] = ctx.model
        result["run_dir"] = str(ctx.run_dir)
        result["log"] = str(layout.log_path(cfg.output_dir, cfg.dataset, cfg.mode, ctx.run_name))
        return result
    finally:
        close_logger(ctx.logger)
        cleanup_distributed()
