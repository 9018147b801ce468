"""Shared classifier training/evaluation loops, the SGD schedule, sparsity learning and
DistributedDataParallel helpers (CPU gloo or CUDA nccl under ``torchrun``).

:func:`train_model` logs one ``Epoch e/E, Acc=..., Val Loss=..., lr=...`` line per epoch
and ``Best Acc=...`` at the end (the format the log parser reads), calls ``on_best``
whenever the accuracy improves, and - given ``resume_path`` - writes an atomic checkpoint
after every epoch from which a killed run continues. Every run warms the lr up over its first
epoch and clips the gradient norm (``WARMUP_EPOCHS``, ``MAX_GRAD_NORM``); a step with a NaN/Inf
loss or gradient is skipped with a ``Non-finite ...: step skipped`` warning in the log, and the run
stops (FloatingPointError) after ``MAX_SKIPPED_STEPS`` of them in a row.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from engine.classify import classifier_totals
from engine.harness import load_checkpoint, progress, save_checkpoint, split_list
from projprune.surgery import adapt_to_shapes, tensor_shapes


# --------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistInfo:
    """Rank layout of this process (``world_size == 1``: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE``/``RANK``/``LOCAL_RANK``).

    gloo on CPU, nccl on CUDA; a no-op (``world_size=1``) outside ``torchrun``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world_size, local_rank)


def cleanup_distributed() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# --------------------------------------------------------------------------- data
def make_loader(dataset: Dataset, batch_size: int, train: bool, seed: int = 0, workers: int = 0) -> DataLoader:
    """A loader that shuffles reproducibly (``set_loader_epoch`` reseeds it each epoch) and shards
    across ranks when a process group is active."""
    if _distributed():
        sampler = DistributedSampler(dataset, shuffle=train, seed=seed)
    elif train:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = None
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        drop_last=False, persistent_workers=False)
    loader.base_seed = seed  # type: ignore[attr-defined]
    return loader


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Make epoch ``epoch``'s shuffle a function of (seed, epoch) only, so resumed runs match."""
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
    elif isinstance(sampler, RandomSampler) and sampler.generator is not None:
        sampler.generator.manual_seed(getattr(loader, "base_seed", 0) * 1000003 + epoch)


# --------------------------------------------------------------------------- loops
@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu") -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy over ``loader`` (summed over ranks when distributed)."""
    totals = classifier_totals(model, loader, device=device)  # [top-1, top-5, loss, images]
    if _distributed():
        dist.all_reduce(totals)
    count = max(totals[3].item(), 1.0)
    return totals[0].item() / count, totals[2].item() / count


def parse_milestones(text: str | list[int]) -> list[int]:
    """``"60,80"`` -> ``[60, 80]`` (empty string: no decay)."""
    if isinstance(text, list):
        return text
    return split_list(str(text), int, name="lr decay milestones (comma-separated epochs like '60,80')")


def _optimizer_tensors(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> dict[str, torch.Tensor]:
    out = {}
    for i, param in enumerate(params):
        buffer = optimizer.state.get(param, {}).get("momentum_buffer")
        if buffer is not None:
            out[f"optim.{i}.momentum_buffer"] = buffer
    return out


def _load_optimizer_tensors(optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
                            tensors: dict[str, torch.Tensor]) -> None:
    for i, param in enumerate(params):
        key = f"optim.{i}.momentum_buffer"
        if key in tensors:
            optimizer.state[param]["momentum_buffer"] = tensors[key].to(param.device, param.dtype)


def save_model(path: str | os.PathLike, model: nn.Module, meta: dict | None = None,
               extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Atomic safetensors checkpoint of ``model`` whose metadata carries every tensor shape."""
    state = {f"model.{k}": v for k, v in unwrap(model).state_dict().items()}
    state.update(extra or {})
    return save_checkpoint(path, state, {**(meta or {}), "shapes": tensor_shapes(unwrap(model))})


def load_model(path: str | os.PathLike, model: nn.Module, device: torch.device | str = "cpu") -> dict:
    """Load a checkpoint into ``model``, first resizing its layers to the stored (pruned) shapes.

    Also reads plain state dicts saved with ``torch.save`` (loaded with ``weights_only=True``).

    Returns:
        The checkpoint's metadata.

    Raises:
        FileNotFoundError: ``path`` is missing.
        ValueError: the file is corrupt or its tensors do not fit the model.
    """
    try:
        tensors, meta = load_checkpoint(path, device)
    except ValueError:
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception:
            # torch's own message is a page of advice about weights_only; the file is simply unreadable.
            raise ValueError(f"checkpoint {path} is damaged (corrupt or truncated): neither a safetensors "
                             f"checkpoint nor a torch state dict; restore a good copy or delete it") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"checkpoint {path} does not hold a state dict of tensors") from None
        tensors, meta = {f"model.{k}": v for k, v in state.items()}, {}
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    adapt_to_shapes(model, meta.get("shapes") or {k: list(v.shape) for k, v in state.items()})
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"checkpoint {path} does not fit model {type(model).__name__}: {first}") from None
    model.to(device)
    meta["_tensors"] = {k: v for k, v in tensors.items() if not k.startswith("model.")}
    return meta


def check_checkpoint(path: str | os.PathLike, model: nn.Module, expected: dict, example_inputs: torch.Tensor,
                     task: str) -> None:
    """Refuse a checkpoint written for another task, before anything is modified.

    Loads ``path`` into a copy of ``model``; the stored metadata (``model``, ``dataset``,
    ``num_classes``, ``in_channels``; whichever it holds) must equal ``expected``, and the copy must
    map ``example_inputs`` ``(1, *sample)`` to ``(1, expected["num_classes"])`` logits (this catches
    metadata-less state dicts too). ``task`` describes the run in messages (``"--dataset digits"``).

    Raises:
        ValueError: one line naming ``path`` and the mismatch.
    """
    trial = copy.deepcopy(unwrap(model)).cpu()
    meta = load_model(path, trial)
    labels = {"model": "model", "dataset": "dataset", "num_classes": "classes", "in_channels": "input channels"}
    differ = [f"{labels[key]} {meta[key]} (expected {expected[key]})" for key in labels
              if key in meta and key in expected and meta[key] != expected[key]]
    if differ:
        raise ValueError(f"checkpoint {path} belongs to another task: {', '.join(differ)} for {task}")
    trial.eval()
    try:
        with torch.no_grad():
            logits = trial(example_inputs.cpu())
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"checkpoint {path} does not read the input channels of {task} "
                         f"({expected.get('in_channels')} expected): {first}") from None
    if logits.shape[-1] != expected["num_classes"]:
        raise ValueError(f"checkpoint {path} has {logits.shape[-1]} classes, but {task} has "
                         f"{expected['num_classes']}")


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _regularize(regularizer, model: nn.Module) -> None:
    if regularizer is not None:
        regularizer.regularize(model)


def check_resume(path: str | os.PathLike, resume_meta: dict, logger: logging.Logger | None = None) -> bool:
    """Whether ``path`` is a resumable checkpoint of the run described by ``resume_meta``.

    Missing: False. Damaged: moved aside as ``<path>.corrupt`` (reported to ``logger``), False, so
    the run restarts from scratch. Written with other arguments: ValueError naming them and how to
    start afresh (nothing is changed).
    """
    path = Path(path)
    if not path.is_file():
        return False
    try:
        _, meta = load_checkpoint(path)
    except ValueError as exc:
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        if logger is not None:
            logger.warning(f"{path} is damaged ({exc}); moved it aside to {aside} and starting this phase afresh")
        return False
    stored = meta.get("resume") or {}
    if stored != resume_meta:
        keys = sorted(k for k in set(stored) | set(resume_meta) if stored.get(k) != resume_meta.get(k))
        flags = ", ".join(f"--{k.replace('_', '-').removesuffix('-sha256')}" for k in keys)
        raise ValueError(f"{path} is the interrupted run of other arguments ({flags} differ); rerun with the "
                         f"original arguments to resume it, or delete it (or its run directory) to start afresh")
    return True


def _diverged(what: str, epoch: int, step: int | None, optimizer: torch.optim.Optimizer) -> str:
    where = f"epoch {epoch}" + (f" (step {step})" if step is not None else "")
    return (f"{what} at {where} with lr={optimizer.param_groups[0]['lr']:g}: training diverged; lower --lr "
            f"(or the regularisation); nothing of this epoch was saved, earlier checkpoints are kept")


# Defaults of every training run (pretraining, sparsity learning, fine-tuning after pruning). A pruned network's
# first steps, and a deep plain network's (VGG-19 on 8x8 digits) first epoch at full lr, can blow up on one CPU and
# not on another (the kernels' reduction order differs): the lr ramps up linearly over the first epoch, gradients
# are clipped to this global norm, and a step with a non-finite loss or gradient is skipped (and logged).
WARMUP_EPOCHS = 1
MAX_GRAD_NORM = 5.0
MAX_SKIPPED_STEPS = 10  # consecutive skipped steps (or a whole epoch of them): the run stops
SKIPPED_STEP_LINE = ("Non-finite {what} at epoch {epoch} (step {step}) with lr={lr:g}: step skipped, weights "
                     "unchanged ({count} in a row)")  # no leading "word: ": not a config line


def _warmup_factor(epoch: int, step: int, steps: int, warmup_epochs: int) -> float:
    """The lr multiplier of ``step`` (0-based, of ``steps`` per epoch) in ``epoch``: linear up to 1."""
    if epoch >= warmup_epochs or steps <= 0:
        return 1.0
    return (epoch * steps + step + 1) / (warmup_epochs * steps)


def _train_epoch(net: nn.Module, model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                 regularizer, device: torch.device | str, epoch: int, epochs: int,
                 logger: logging.Logger, verbose: bool, warmup_epochs: int = WARMUP_EPOCHS,
                 max_grad_norm: float | None = MAX_GRAD_NORM) -> int:
    """One pass over ``loader``; returns the number of skipped (non-finite) steps.

    Verbose runs log the loss every 10 steps; every skipped step is logged as a warning. Raises
    FloatingPointError (nothing saved) after ``MAX_SKIPPED_STEPS`` skipped steps in a row or an
    epoch whose every step was skipped.
    """
    set_loader_epoch(loader, epoch)
    net.train()
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    params = [p for p in model.parameters() if p.requires_grad]
    steps, skipped, in_row, first_bad = len(loader), 0, 0, None
    try:
        for step, (inputs, targets) in enumerate(loader):
            factor = _warmup_factor(epoch, step, steps, warmup_epochs)
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * factor
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(net(inputs), targets)
            loss.backward()  # also when non-finite: under DDP every rank must join the gradient all-reduce
            _regularize(regularizer, model)
            norm = (torch.nn.utils.clip_grad_norm_(params, max_grad_norm) if max_grad_norm
                    else torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
            if not (torch.isfinite(loss) and torch.isfinite(norm)):
                kind, value = ("loss", loss.item()) if not torch.isfinite(loss) else ("gradient norm", norm.item())
                what = f"{kind} {value}"
                skipped, in_row = skipped + 1, in_row + 1
                first_bad = first_bad if in_row > 1 else (f"training {kind} became {value}", step)
                optimizer.zero_grad()
                logger.warning(SKIPPED_STEP_LINE.format(what=what, epoch=epoch, step=step, count=in_row,
                                                        lr=optimizer.param_groups[0]["lr"]))
                if in_row >= MAX_SKIPPED_STEPS or in_row == steps:
                    raise FloatingPointError(_diverged(first_bad[0], epoch, first_bad[1], optimizer))
                continue
            in_row = 0
            optimizer.step()
            if verbose and step % 10 == 0:
                logger.info(f"Epoch {epoch}/{epochs}, iter {step}/{steps}, loss={loss.item():.4f}, "
                            f"lr={optimizer.param_groups[0]['lr']:.4f}")
    finally:  # the scheduler owns the epoch's lr: undo the warm-up's per-step values
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base
    return skipped


def train_model(
    model: nn.Module,
    train_loader: DataLoader,
    test_loader: DataLoader,
    *,
    epochs: int,
    lr: float,
    milestones: str | list[int],
    gamma: float = 0.1,
    weight_decay: float = 5e-4,
    logger: logging.Logger,
    device: torch.device | str = "cpu",
    regularizer=None,
    reg_warmup: int = 0,
    on_best: Callable[[nn.Module, float], None] | None = None,
    resume_path: str | os.PathLike | None = None,
    resume_meta: dict | None = None,
    verbose: bool = False,
    desc: str = "epochs",
    warmup_epochs: int = WARMUP_EPOCHS,
    max_grad_norm: float | None = MAX_GRAD_NORM,
) -> float:
    """SGD (momentum 0.9) with a multi-step schedule; returns the best test accuracy.

    The lr ramps up linearly over the first ``warmup_epochs`` (per step), gradients are clipped
    to the global norm ``max_grad_norm`` (None: not clipped), and a step whose loss or gradient is
    NaN/Inf is skipped and logged (``SKIPPED_STEP_LINE``) instead of corrupting the weights.

    Args:
        regularizer: a Torch-Pruning pruner whose ``regularize(model)`` adds the sparsity
            penalty's gradient (sparsity learning); weight decay is then off, as in the paper.
        reg_warmup: epochs over which the regulariser strength ramps linearly up to its value.
        on_best: called with the (unwrapped) model and accuracy when the accuracy improves
            (rank 0 only).
        resume_path: per-epoch checkpoint; if it exists and its ``resume_meta`` matches, training
            continues after its last epoch. Deleted when training completes.

    Raises:
        ValueError: ``epochs < 1``.
        FloatingPointError: ``MAX_SKIPPED_STEPS`` steps in a row (or a whole epoch) were
            non-finite, or the weights became NaN/Inf; nothing of that epoch is saved (neither as
            best nor as the resume checkpoint).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}: there is nothing to train")
    if not warmup_epochs >= 0 or (max_grad_norm is not None and not max_grad_norm > 0):
        raise ValueError(f"warmup_epochs {warmup_epochs} / max_grad_norm {max_grad_norm}: expected warmup_epochs "
                         f">= 0 and max_grad_norm > 0 (or None: no clipping)")
    milestones = parse_milestones(milestones)
    resume_meta = dict(resume_meta or {})
    is_main = not _distributed() or dist.get_rank() == 0
    start_epoch, best_acc, restored = 0, -1.0, None
    if resume_path is not None and check_resume(resume_path, resume_meta, logger):
        meta = load_model(resume_path, model, device)
        start_epoch, best_acc, restored = meta["epoch"] + 1, meta["best_acc"], meta["_tensors"]
        logger.info(f"Resuming from {resume_path} after epoch {meta['epoch']}")
    model.to(device)
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay if regularizer is None else 0)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=gamma)
    if restored is not None:
        _load_optimizer_tensors(optimizer, params, restored)
        if "rng.cpu" in restored:
            torch.set_rng_state(restored["rng.cpu"])
        with warnings.catch_warnings():  # fast-forwarding the schedule, no optimizer step is due
            warnings.simplefilter("ignore")
            for _ in range(start_epoch):
                scheduler.step()
    net = nn.parallel.DistributedDataParallel(model) if _distributed() else model
    base_reg = getattr(regularizer, "reg", None)
    bar_kwargs = {} if is_main else {"disable": True}
    for epoch in progress(range(start_epoch, epochs), desc=desc, **bar_kwargs):
        if regularizer is not None and reg_warmup > 0 and isinstance(base_reg, float):
            regularizer.reg = base_reg * min(1.0, (epoch + 1) / reg_warmup)
        skipped = _train_epoch(net, model, train_loader, optimizer, regularizer, device, epoch, epochs, logger,
                               verbose, warmup_epochs, max_grad_norm)
        if skipped:
            logger.warning(f"{skipped} of {len(train_loader)} step(s) of epoch {epoch} skipped (non-finite loss or "
                           f"gradient); the epoch's other steps trained normally")
        if hasattr(regularizer, "update_reg"):
            regularizer.update_reg()  # growing regularisation
        if not all(torch.isfinite(t).all() for t in unwrap(model).state_dict().values() if t.is_floating_point()):
            raise FloatingPointError(_diverged("the weights became NaN/Inf", epoch, None, optimizer))
        acc, val_loss = evaluate(net, test_loader, device)
        logger.info(f"Epoch {epoch}/{epochs}, Acc={acc:.4f}, Val Loss={val_loss:.4f}, "
                    f"lr={optimizer.param_groups[0]['lr']:.4f}")
        if acc > best_acc:
            best_acc = acc
            if on_best is not None and is_main:
                on_best(model, acc)
        scheduler.step()
        if resume_path is not None and is_main:
            extra = {**_optimizer_tensors(optimizer, params), "rng.cpu": torch.get_rng_state()}
            save_model(resume_path, model, {"resume": resume_meta, "epoch": epoch, "best_acc": best_acc}, extra)
    if regularizer is not None and isinstance(base_reg, float):
        regularizer.reg = base_reg
    logger.info(f"Best Acc={best_acc:.4f}")
    if resume_path is not None and is_main and Path(resume_path).exists():
        Path(resume_path).unlink()
    if _distributed():
        dist.barrier()
    return best_acc
