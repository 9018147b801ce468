"""Prune the feed-forward blocks of Hugging Face transformers in one call.

    >>> from projprune.transformers import prune_ffn, from_pretrained
    >>> report = prune_ffn(model, 0.3, method="exact_oac")     # in place
    >>> model.save_pretrained("pruned")                         # config carries the new widths
    >>> model = from_pretrained("pruned")                       # also restores per-layer widths

The only subpackage of ``projprune`` that imports ``transformers`` (lazily, where it can).
See :mod:`~projprune.transformers.families` for the supported architectures and
:mod:`~projprune.transformers.prunenet` for the PruneNet baseline.
"""

from projprune.transformers.families import FAMILIES, FFNBlock, FFNFamily, find_ffn_blocks, resize_ffn_blocks
from projprune.transformers.loading import from_pretrained, with_ffn_widths
from projprune.transformers.prune import FFN_METHODS, WIDTHS_KEY, LayerReport, PruneReport, prune_ffn
from projprune.transformers.prunenet import (
    PruneNetPolicy,
    SparsityPredictor,
    load_policy,
    policy_filename,
    save_policy,
    train_policy,
)

__all__ = [
    "FAMILIES",
    "FFN_METHODS",
    "WIDTHS_KEY",
    "FFNBlock",
    "FFNFamily",
    "LayerReport",
    "PruneNetPolicy",
    "PruneReport",
    "SparsityPredictor",
    "find_ffn_blocks",
    "from_pretrained",
    "load_policy",
    "policy_filename",
    "prune_ffn",
    "resize_ffn_blocks",
    "save_policy",
    "train_policy",
    "with_ffn_widths",
]
