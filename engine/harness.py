"""The shared experiment harness: seeding, logging, run directories, atomic writes,
results CSVs, checkpoints and dataclass-driven command lines.

Every entry point (``main.py``, ``vit/``, ``gpt2/``, ``params/``, ``engine.demo``)
uses these helpers instead of its own copy, so run layouts, log lines and checkpoint
formats are the same everywhere.

Importing this module is cheap (no torch, no NumPy): entry points build their parser from it and
answer ``--help`` before anything heavy is imported; torch is imported by the functions that use it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime
import errno
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import socket
import sys
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

LOG_FORMAT = "[%(asctime)s] %(name)s %(levelname)s: %(message)s"
LOG_DATEFMT = "%m/%d %H:%M:%S"

C = TypeVar("C")
T = TypeVar("T")


# --------------------------------------------------------------------------- seeding
def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA); optionally ask for deterministic kernels."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def default_device() -> torch.device:
    """``cuda`` when available, else ``cpu``."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def machine_description() -> str:
    """One line naming what a table was measured on: the date, the CPU model with the vector extension torch's
    kernels use on it (a CPU's name alone does not say which kernels ran), logical CPUs, torch threads and
    version. Benchmarks print it above their tables."""
    import platform

    import torch

    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    return (f"{datetime.date.today().isoformat()}, {model or 'unknown CPU'} "
            f"({os.cpu_count()} logical CPUs, torch kernels: {torch.backends.cpu.get_cpu_capability()}), "
            f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}")


# --------------------------------------------------------------------------- run lock
class RunLockedError(RuntimeError):
    """Another live process holds the run's lock."""


_HELD_LOCKS: dict[str, int] = {}  # lock path -> open descriptor holding its flock (this process's runs)


def _read_lock(path: Path) -> dict:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def acquire_run_lock(path: str | os.PathLike) -> dict:
    """Take the lock file ``path`` (an ``flock`` held while this process runs; JSON pid/host/argv inside).

    A lock whose process is gone (killed) is free again and taken over. Returns the previous
    holder's record when a stale lock was taken over, else ``{}``.

    Raises:
        RunLockedError: a live process holds the lock (its PID and host are named).
    """
    import fcntl

    path = Path(path)
    release_run_lock(path)  # this process's earlier run of the same directory
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            info = _read_lock(path)
            raise RunLockedError(
                f"run directory {path.parent} is in use: {path} is held by PID {info.get('pid', '?')} on "
                f"{info.get('host', '?')} (started {info.get('started', '?')}); wait for that run to end or stop "
                f"it - two runs in one directory would mix their logs and checkpoints") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # released and removed by its holder meanwhile: lock the new file
            os.close(fd)
            continue
        previous = _read_lock(path)
        record = {"pid": os.getpid(), "host": _host(), "argv": sys.argv,
                  "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        _HELD_LOCKS[str(path.resolve())] = fd
        remove_orphan_temps(path.parent)
        return previous if previous.get("pid") not in (None, os.getpid()) else {}
    raise RunLockedError(f"could not take the lock {path}: it keeps changing hands")


def release_run_lock(path: str | os.PathLike) -> None:
    """Give up a lock taken by :func:`acquire_run_lock` (removes the file); no-op when not held."""
    path = Path(path)
    fd = _HELD_LOCKS.pop(str(path.resolve()), None)
    if fd is None:
        return
    try:
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            path.unlink()
    except FileNotFoundError:
        pass
    os.close(fd)


def lock_path_for(log_path: str | os.PathLike) -> Path:
    """The lock file of the run logging to ``log_path``: ``.<log stem>.lock`` beside it."""
    log_path = Path(log_path)
    return log_path.parent / f".{log_path.stem}.lock"


# --------------------------------------------------------------------------- logging
class _StrictFileHandler(logging.FileHandler):
    """A log file that stops the run when it cannot be written (full disk, removed folder), instead of
    logging's default: a printed traceback, then the run going on without its log."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            raise error
        super().handleError(record)


def get_logger(name: str, path: str | os.PathLike | None = None, console: bool = True) -> logging.Logger:
    """A logger writing ``[MM/DD HH:MM:SS] <name> INFO: message`` to the console and to ``path``.

    Calling it again with the same name replaces the handlers (one logger per run). The log
    file is opened in append mode so that a resumed run keeps its history. With a ``path`` the
    run is locked first (:func:`acquire_run_lock` on :func:`lock_path_for`, released by
    :func:`close_logger`): a second live run into the same place raises :class:`RunLockedError`.
    """
    logger = logging.getLogger(name)
    close_logger(logger)
    stale = acquire_run_lock(lock_path_for(path)) if path is not None else {}
    logger.setLevel(logging.INFO)
    logger.propagate = False
    formatter = logging.Formatter(LOG_FORMAT, datefmt=LOG_DATEFMT)
    if console:
        stream = logging.StreamHandler(sys.stdout)
        stream.setFormatter(formatter)
        logger.addHandler(stream)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        file_handler = _StrictFileHandler(path, mode="a")
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
        logger._projprune_lock = lock_path_for(path)  # type: ignore[attr-defined]
    if stale:
        logger.warning(f"took over the stale lock of PID {stale.get('pid')} on {stale.get('host')} "
                       f"(that process is gone)")
    return logger


def close_logger(logger: logging.Logger) -> None:
    """Flush and detach every handler and release the run's lock (lets tests reopen the same run)."""
    for handler in list(logger.handlers):
        handler.flush()
        logger.removeHandler(handler)
        handler.close()
    lock = getattr(logger, "_projprune_lock", None)
    if lock is not None:
        release_run_lock(lock)
        logger._projprune_lock = None  # type: ignore[attr-defined]


def log_config(logger: logging.Logger, config: Any) -> None:
    """Log every field of a dataclass or namespace as ``<arg>: <value>``, first thing in a run."""
    items = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else vars(config)
    for key, value in items.items():
        logger.info(f"{key}: {value}")


# --------------------------------------------------------------------------- atomic files
def _atomic_target(path: str | os.PathLike) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _host() -> str:
    """This machine's short host name, safe inside file names (no dots)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0]) or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


# ".<target name>.<host>.<pid>.<random>.tmp": who wrote a temp file, so orphans can be told apart.
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")


def remove_orphan_temps(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete temp files of :func:`atomic_write_bytes` left in ``directory`` by killed processes.

    Only files of this host whose writer is no longer running (and, given ``name``, only those
    for that target file) are removed; returns them.
    """
    removed = []
    directory = Path(directory)
    pattern = f".{name}.*.tmp" if name else ".*.tmp"
    for candidate in directory.glob(pattern):
        match = _TEMP_RE.match(candidate.name)
        if not match or (name and match["name"] != name) or match["host"] != _host():
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and not _pid_alive(pid):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place.

    A killed process leaves either the old file or the new one, never half of one; its temp
    file (``.<name>.<host>.<pid>.<random>.tmp``) is removed by the next write of ``path``.
    """
    from projprune._io import atomic_write_bytes as _atomic_write

    target = _atomic_target(path)
    remove_orphan_temps(target.parent, target.name)
    try:
        return _atomic_write(target, data, temp_prefix=f".{target.name}.{_host()}.{os.getpid()}.")
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        # a failed write (full disk: ENOSPC) names no file; name the one that was being written
        raise OSError(exc.errno, os.strerror(exc.errno), str(target)) from exc


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomic text write (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic JSON write, indented and key-sorted for diffable outputs."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_csv(
    path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str] | None = None
) -> Path:
    """Write a list of dicts as CSV atomically; columns in first-seen order unless given."""
    if fieldnames is None:
        seen: dict[str, None] = {}
        for row in rows:
            for key in row:
                seen.setdefault(key, None)
        fieldnames = list(seen)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return atomic_write_text(path, buffer.getvalue())


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read a CSV written by :func:`atomic_write_csv` (all values as strings)."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


class ResultsCSV:
    """Rows of results, rewritten atomically on every :meth:`append` (a crash loses nothing)."""

    def __init__(self, path: str | os.PathLike, resume: bool = False) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        if resume and self.path.exists():
            self.rows = [dict(row) for row in read_csv(self.path)]

    def append(self, row: Mapping[str, Any]) -> None:
        self.rows.append(dict(row))
        atomic_write_csv(self.path, self.rows)

    def __len__(self) -> int:
        return len(self.rows)


def save_figure(fig: Any, path_stem: str | os.PathLike, formats: Iterable[str] = ("png", "pdf")) -> list[Path]:
    """Save a matplotlib figure as ``<stem>.png`` and ``<stem>.pdf`` atomically; returns the paths."""
    written = []
    for fmt in formats:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, bbox_inches="tight", dpi=150)
        written.append(atomic_write_bytes(f"{path_stem}.{fmt}", buffer.getvalue()))
    return written


# --------------------------------------------------------------------------- checkpoints
_CONTENT_HASH_KEY = "content_sha256"  # in a checkpoint's meta: sha256 of its tensors (see content_sha256)


class CheckpointIntegrityError(ValueError):
    """A readable checkpoint whose tensors are not what was saved (hash mismatch) or hold NaN/Inf."""


def content_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order (independent of the file layout)."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        if value.numel():
            digest.update(value.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, no copy
    return digest.hexdigest()


def save_checkpoint(
    path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], meta: Mapping | None = None
) -> Path:
    """Save tensors (safetensors format) plus JSON-able ``meta`` atomically.

    ``meta`` should carry whatever rebuilds the model's shapes (config, per-layer widths),
    so the file is loadable without unpickling anything. The meta also records the tensors'
    :func:`content_sha256`, which :func:`load_checkpoint` verifies.
    """
    from safetensors.torch import save

    tensors = {key: value.detach().contiguous().cpu() for key, value in state_dict.items()}
    # safetensors refuses tensors that share storage; clone them apart.
    seen: set[int] = set()
    for key, value in tensors.items():
        ptr = value.untyped_storage().data_ptr() if value.numel() else -1
        if ptr in seen and ptr != -1:
            tensors[key] = value.clone()
        seen.add(ptr)
    stored = {**dict(meta or {}), _CONTENT_HASH_KEY: content_sha256(tensors)}
    metadata = {"projprune_meta": json.dumps(stored, default=str)}
    return atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a checkpoint written by :func:`save_checkpoint`: ``(state_dict, meta)``.

    The tensors are verified against the stored content hash (files written before it was
    recorded load without that check) and every floating-point tensor must be finite.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointIntegrityError: (a ValueError) the tensors differ from what was saved, or hold
            NaN/Inf; names the file and the tensor.
        ValueError: the file is not a readable safetensors checkpoint (truncated, corrupt,
            or another format).
    """
    import torch

    from projprune._io import load_tensors as _load_tensors

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (expected a file written by a previous run)")
    try:
        tensors, meta = _load_tensors(path)
    except ValueError as exc:  # the library's message; say what it means for a run
        cause = exc.__cause__ or exc
        reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise ValueError(f"checkpoint {path} is damaged (corrupt or truncated) or not a safetensors "
                         f"checkpoint: {reason}") from None
    expected = meta.pop(_CONTENT_HASH_KEY, None)
    if expected is not None and content_sha256(tensors) != expected:
        raise CheckpointIntegrityError(f"checkpoint {path} is damaged: its tensors do not match the content hash "
                                       f"recorded when it was saved (a changed byte); restore a good copy")
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointIntegrityError(f"checkpoint {path} holds NaN/Inf values in {key}: it was saved from a "
                                           f"diverged run or damaged; use another checkpoint")
    return {key: value.to(device) for key, value in tensors.items()}, meta


def load_cached(
    path: str | os.PathLike,
    key: Mapping[str, Any],
    retrain: bool = False,
    key_field: str | None = None,
    what: str = "cached model",
) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The one train-or-load cache policy of every experiment family.

    ``key`` holds the settings that produced the cached checkpoint; it is recorded in the
    checkpoint's meta (under ``key_field``, or at the top level) when the model is saved.

    Returns:
        ``(state_dict, meta)`` when ``path`` holds a model trained with ``key``; ``None`` when
        there is no file or ``retrain`` is set: the caller trains and saves (overwriting).

    Raises:
        ValueError: ``path`` holds a model trained with other settings (names the file and the
            fields); nothing is trained or written, and ``--retrain`` overwrites it.
    """
    path = Path(path)
    if retrain or not path.is_file():
        return None
    state, meta = load_checkpoint(path)
    expected = json.loads(json.dumps(dict(key), default=str))  # tuples -> lists, as stored
    cached = meta.get(key_field, {}) if key_field else meta
    differing = sorted(name for name in expected if cached.get(name) != expected[name])
    if differing:
        raise ValueError(f"{what} {path} was trained with other settings ({', '.join(differing)} differ); "
                         "pass --retrain to overwrite it or choose another output directory")
    return state, meta


# --------------------------------------------------------------------------- configs
def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def _finite_float(text: str) -> float:
    """``float(text)``, refusing NaN and infinities (no flag of a run means anything with them)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


_REST_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def plain_text(text: str | None) -> str | None:
    """``text`` (a docstring) without reStructuredText markup, for ``--help``: roles and double backquotes
    dropped (``:func:`x``` and ````x```` read ``x``), a literal block's ``::`` made ``:``."""
    if text is None:
        return None
    text = _REST_ROLE.sub(r"\1", text).replace("``", "")
    return re.sub(r"::$", ":", text, flags=re.M)


def config_parser(
    cls: type, description: str | None = None, parser: argparse.ArgumentParser | None = None
) -> argparse.ArgumentParser:
    """An ``argparse`` parser generated from a dataclass.

    Field ``total_epochs`` becomes ``--total-epochs``; a field's ``metadata`` may give
    ``flag`` (the exact flag name, e.g. ``--delta_reg``), ``help`` and ``choices``.
    ``bool`` fields default False become ``store_true`` switches; others take a value.
    """
    parser = parser or argparse.ArgumentParser(description=plain_text(description))
    hints = typing.get_type_hints(cls)  # resolves string annotations (``from __future__ import annotations``)
    for field in dataclasses.fields(cls):
        flag = field.metadata.get("flag", "--" + field.name.replace("_", "-"))
        help_text = field.metadata.get("help", "")
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        # argparse %-formats help strings: a literal "%" must be doubled.
        help_line = plain_text(f"{help_text} (default: {default})").replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": field.name, "default": default, "help": help_line}
        ftype = hints[field.name]
        if ftype is bool:
            if default is False:
                kwargs["action"] = "store_true"
            else:
                kwargs["type"] = _parse_bool
        elif ftype in (int, str):
            kwargs["type"] = ftype
        elif ftype is float:
            kwargs["type"] = _finite_float
        else:
            # Optional[...] and friends: take the first concrete scalar type mentioned.
            text = str(ftype)
            kwargs["type"] = int if "int" in text and "float" not in text else _finite_float if "float" in text else str
        if "choices" in field.metadata:
            kwargs["choices"] = field.metadata["choices"]
        parser.add_argument(flag, **kwargs)
    return parser


def parse_config(cls: type[C], argv: Sequence[str] | None = None, description: str | None = None) -> C:
    """Parse ``argv`` into an instance of the dataclass ``cls`` (see :func:`config_parser`)."""
    namespace = config_parser(cls, description).parse_args(argv)
    return cls(**vars(namespace))


def config_to_dict(config: Any) -> dict:
    """A JSON-able dict of a dataclass config (for checkpoints and ``config.json``)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def run_cli(main: Callable[[], Any], prog: str | None = None) -> Any:
    """Run an entry point's ``main()``; returns what it returns.

    A bad argument or file (ValueError, FileNotFoundError, FloatingPointError, RunLockedError) or a
    file-system failure (OSError: read-only or missing directory, full disk, ...) ends it with one
    ``<prog>: error: ...`` line and exit code 2. ``PROJPRUNE_TRACEBACK=1`` shows the full traceback instead.
    """
    try:
        return main()
    except (ValueError, FloatingPointError, RunLockedError, OSError) as exc:
        if os.environ.get("PROJPRUNE_TRACEBACK") == "1":
            raise
        name = prog or os.path.basename(sys.argv[0])
        message = _os_error_line(exc) if isinstance(exc, OSError) and exc.errno is not None else str(exc)
        print(f"{name}: error: {' '.join(message.split())}", file=sys.stderr)
        raise SystemExit(2) from None


def _os_error_line(exc: OSError) -> str:
    """``<path>: <what the errno means> [Errno N]`` (plus a hint for the common cases)."""
    meaning = exc.strerror or os.strerror(exc.errno)
    where = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None) or "(no file named)"
    hints = {errno.ENOSPC: "free some space or choose another --output-dir",
             errno.EROFS: "choose a writable --output-dir", errno.EACCES: "check its permissions",
             errno.ENOTDIR: "a part of the path is a file, not a directory",
             errno.EDQUOT: "free some space or choose another --output-dir"}
    hint = hints.get(exc.errno)
    return f"{where}: {meaning} [Errno {exc.errno}]" + (f"; {hint}" if hint else "")


def wrote(*paths: str | os.PathLike) -> None:
    """Print where an entry point wrote its files: one ``wrote <path>, ...`` line at its end."""
    print("wrote " + ", ".join(str(p) for p in paths), flush=True)


# --------------------------------------------------------------------------- progress
def progress(iterable: Iterable | None = None, **kwargs: Any):
    """A tqdm progress bar (to stderr; quiet when ``PROJPRUNE_NO_TQDM=1``)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", os.environ.get("PROJPRUNE_NO_TQDM") == "1")
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


# --------------------------------------------------------------------------- small shared helpers
def split_list(text: str | None, cast: Callable[[str], T] = str, name: str = "list",  # type: ignore[assignment]
               unique: bool = False) -> list[T]:
    """The items of a comma-separated ``text`` (blanks dropped, each stripped and passed to ``cast``).

    ``unique`` drops repeats (first kept). A ``cast`` failure is one ValueError naming ``name``.
    """
    parts = [part.strip() for part in (text or "").split(",") if part.strip()]
    if unique:
        parts = list(dict.fromkeys(parts))
    try:
        return [cast(part) for part in parts]
    except ValueError:
        kind = getattr(cast, "__name__", "value")
        raise ValueError(f"{name}: expected comma-separated {kind} values, got {text!r}") from None


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(threads)`` (0/None: leave it) and restore the old count.

    Yields the count in effect inside the block.
    """
    import torch

    previous = torch.get_num_threads()
    if threads:
        if threads < 0:
            raise ValueError(f"threads: expected a positive count or 0 (torch's default), got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def count_params(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (``trainable_only``: those with ``requires_grad``).

    A pruning mask's ``weight_orig`` counts in full: masks do not shrink a model.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
