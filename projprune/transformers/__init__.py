"""Prune the feed-forward blocks of Hugging Face transformers in one call.

    >>> from projprune.transformers import prune_ffn, from_pretrained
    >>> report = prune_ffn(model, 0.3, method="exact_oac")     # in place
    >>> model.save_pretrained("pruned")                         # config carries the new widths
    >>> model = from_pretrained("pruned")                       # also restores per-layer widths
    >>> prune_heads(model, 0.25, "calib", calibration=batches)  # whole attention heads, in place

The only subpackage of ``projprune`` that imports ``transformers`` (lazily, where it can).
See :mod:`~projprune.transformers.families` for the supported architectures and
:mod:`~projprune.transformers.prunenet` for the PruneNet baseline.
"""

from projprune.transformers.blocks import BLOCK_METHODS, BlocksReport, prune_blocks
from projprune.transformers.families import (
    ATTENTION_FAMILIES,
    FAMILIES,
    HEADS_KEY,
    AttentionBlock,
    AttentionFamily,
    FFNBlock,
    FFNFamily,
    find_attention_blocks,
    find_ffn_blocks,
    resize_attention_blocks,
    resize_ffn_blocks,
)
from projprune.transformers.heads import (
    CALIB_HEADS_LMBDA,
    CALIBRATED_HEAD_METHODS,
    HEAD_METHODS,
    HeadCurve,
    collect_head_stats,
    head_costs,
    head_curves,
    prune_heads,
)
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
    "ATTENTION_FAMILIES",
    "BLOCK_METHODS",
    "CALIBRATED_HEAD_METHODS",
    "CALIB_HEADS_LMBDA",
    "FAMILIES",
    "FFN_METHODS",
    "HEADS_KEY",
    "HEAD_METHODS",
    "WIDTHS_KEY",
    "AttentionBlock",
    "AttentionFamily",
    "BlocksReport",
    "FFNBlock",
    "FFNFamily",
    "HeadCurve",
    "LayerReport",
    "PruneNetPolicy",
    "PruneReport",
    "SparsityPredictor",
    "collect_head_stats",
    "find_attention_blocks",
    "find_ffn_blocks",
    "from_pretrained",
    "head_costs",
    "head_curves",
    "load_policy",
    "policy_filename",
    "prune_blocks",
    "prune_ffn",
    "prune_heads",
    "resize_attention_blocks",
    "resize_ffn_blocks",
    "save_policy",
    "train_policy",
    "with_ffn_widths",
]
