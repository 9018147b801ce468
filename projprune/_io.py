"""The little file I/O projprune itself needs (saving PruneNet policies): private, imports nothing outside projprune.

Files are written beside their target and renamed into place, so a killed process leaves the
old file or the new one, never half of one. Tensors go to safetensors with JSON metadata
(never pickle).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

_META_KEY = "projprune_meta"


def atomic_write_bytes(path: str | os.PathLike, data: bytes, temp_prefix: str | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename; usual permissions).

    ``temp_prefix`` names the temp file (default ``.<name>.``) so callers can recognise orphans.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = temp_prefix if temp_prefix is not None else f".{target.name}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Save ``tensors`` (safetensors) with JSON-able ``meta``, atomically."""
    from safetensors.torch import save

    plain = {key: value.detach().cpu().clone().contiguous() for key, value in tensors.items()}
    return atomic_write_bytes(path, save(plain, metadata={_META_KEY: json.dumps(dict(meta), default=str)}))


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_tensors`: ``(tensors, meta)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a readable safetensors file.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: {path} does not exist (expected a safetensors file)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = json.loads((handle.metadata() or {}).get(_META_KEY, "{}"))
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises several types for damaged files
        raise ValueError(f"path: {path} is corrupt or not a safetensors file: {exc}") from exc
    return tensors, meta
