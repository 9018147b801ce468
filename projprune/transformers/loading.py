"""Load a model whose FFN blocks were pruned to different widths per layer, or whose heads were pruned.

Uniform widths need nothing special: :func:`projprune.transformers.prune_ffn` writes them
to the config's width attribute and plain ``from_pretrained`` rebuilds the model. Per-layer
widths cannot be expressed by ``transformers`` configs, so ``prune_ffn`` stores them as
``config.projprune_ffn_widths`` (one entry per FFN block, in module order) and
:func:`from_pretrained` loads through a subclass of the model class whose ``__init__``
narrows the blocks right after building them. ``transformers`` then loads the checkpoint
as usual (safetensors, sharding, dtype, meta-device initialisation), and the shapes match.

Pruned attention heads are always recorded that way: a head count cannot be written to the
config (``head_dim = hidden_size / num_attention_heads`` in most families), so
:func:`projprune.transformers.prune_heads` stores ``config.projprune_attention_heads`` (query
heads per attention block, which output projections have a bias, and the original head
counts) and the head-count attributes are saved as a note naming this loader.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from projprune.transformers.families import (
    FAMILIES,
    HEADS_KEY,
    HEADS_NOTE,
    PER_LAYER_NOTE,
    find_attention_blocks,
    guard_config,
    resize_attention_blocks,
    resize_ffn_blocks,
)
from projprune.transformers.families import WIDTHS_KEY as _WIDTHS_KEY

_WIDTH_KEYS = tuple(dict.fromkeys(k for family in FAMILIES.values() for k in family.width_keys))

__all__ = ["from_pretrained", "with_ffn_widths"]


_SUBCLASSES: dict[type, type] = {}


def with_ffn_widths(model_class: type) -> type:
    """A subclass of a ``transformers`` model class that applies ``config.projprune_ffn_widths`` and
    ``config.projprune_attention_heads``.

    The subclass keeps the base class's name, so ``save_pretrained`` writes the usual
    ``architectures`` entry.
    """
    if model_class in _SUBCLASSES:
        return _SUBCLASSES[model_class]

    def __init__(self, config, *args, **kwargs):  # noqa: N807 - becomes the subclass's __init__
        model_class.__init__(self, config, *args, **kwargs)
        widths = getattr(config, _WIDTHS_KEY, None)
        if widths:
            resize_ffn_blocks(self, [int(w) for w in widths])
            keys = [k for k in _WIDTH_KEYS if isinstance(getattr(config, k, None), int)]
            guard_config(config, keys)  # saving again keeps stock loaders refusing it
        heads = getattr(config, HEADS_KEY, None)
        if heads:
            resize_attention_blocks(self, [int(h) for h in heads["heads"]], heads.get("output_bias"))
            keys = {k for block in find_attention_blocks(self) for k in block.family.config_keys
                    if isinstance(getattr(config, k, None), int)}
            guard_config(config, sorted(keys), HEADS_KEY, HEADS_NOTE)

    subclass = type(model_class.__name__, (model_class,), {"__init__": __init__, "__module__": model_class.__module__})
    subclass.__qualname__ = model_class.__qualname__
    _SUBCLASSES[model_class] = subclass
    return subclass


def _resolve_class(model_class: Any, config: Any) -> type:
    import transformers

    if model_class is None:
        architectures = getattr(config, "architectures", None) or []
        if not architectures or not hasattr(transformers, architectures[0]):
            raise ValueError(
                f"model_class: the config names no loadable architecture ({architectures!r}); pass model_class"
            )
        return getattr(transformers, architectures[0])
    mapping = getattr(model_class, "_model_mapping", None)
    if mapping is not None:  # an Auto class: resolve it for this config
        try:
            return mapping[type(config)]
        except KeyError as exc:
            raise ValueError(f"model_class: {model_class.__name__} has no model for {type(config).__name__}") from exc
    if not (isinstance(model_class, type) and issubclass(model_class, nn.Module)):
        raise ValueError(f"model_class: expected a transformers model class, got {model_class!r}")
    return model_class


def from_pretrained(path: str | os.PathLike, model_class: Any = None, **kwargs: Any) -> nn.Module:
    """``model_class.from_pretrained(path)`` that also restores per-layer FFN widths and pruned heads.

    Args:
        path: a directory written by ``save_pretrained`` (or a hub name).
        model_class: a model class or Auto class (default: ``config.architectures[0]``).
        **kwargs: passed to ``from_pretrained`` (``dtype``, ``device_map``, ...).

    Raises:
        FileNotFoundError: ``path`` is a local path that does not exist.
        ValueError: the model class cannot be determined.
    """
    from transformers import AutoConfig, PretrainedConfig

    if (str(path).startswith((".", "/")) or os.sep in str(path)) and not os.path.exists(path):
        raise FileNotFoundError(f"path: {path} does not exist (expected a directory written by save_pretrained)")
    raw, _ = PretrainedConfig.get_config_dict(path)
    widths = raw.get(_WIDTHS_KEY)
    heads = raw.get(HEADS_KEY)
    if heads and not (isinstance(heads, dict) and isinstance(heads.get("heads"), list)
                      and isinstance(heads.get("config"), dict)):
        raise ValueError(f"path: {path} has a malformed {HEADS_KEY} entry in its config; expected the record "
                         "written by projprune.transformers.prune_heads")
    if widths or heads:  # the noted attributes make stock loaders fail: build at the original sizes
        fixed = {**raw, **(heads["config"] if heads else {})}
        if widths:
            fixed = {k: (max(int(w) for w in widths) if v == PER_LAYER_NOTE else v) for k, v in fixed.items()}
        config = AutoConfig.for_model(**fixed)
    else:
        config = AutoConfig.from_pretrained(path)
    cls = _resolve_class(model_class, config)
    if widths or heads:
        cls = with_ffn_widths(cls)
        kwargs.setdefault("config", config)
    return cls.from_pretrained(path, **kwargs)
