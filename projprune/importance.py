"""Projective importance for Torch-Pruning's dependency-graph pruners (docs/algorithm.md §6).

A Torch-Pruning importance is called with a dependency group and returns one score per
channel of the group. :class:`ProjectiveImportance` scores every conv/linear member of the
group by the projection distance of its rows (a small distance = the unit is almost a
linear combination of the others = prune it first), BatchNorm by ``|gamma|`` and LayerNorm
by ``|weight|``, then reduces over the group and normalises like Torch-Pruning's own
magnitude importance.

Example::

    import torch_pruning as tp
    from projprune.importance import ProjectiveImportance

    pruner = tp.pruner.MagnitudePruner(model, example_inputs, importance=ProjectiveImportance(),
                                       pruning_ratio=0.5, ignored_layers=[model.fc])
    pruner.step()
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.pruner import function

from projprune._checks import check_lmbda

__all__ = ["ProjectiveImportance"]

_OUT_FNS = (function.prune_conv_out_channels, function.prune_linear_out_channels)
_IN_FNS = (function.prune_conv_in_channels, function.prune_linear_in_channels)


def _distances(rows: torch.Tensor, lmbda: float) -> torch.Tensor:
    """Projection distance of every row among all rows: ``rows (n, m) -> (n,)`` (float32).

    The core's closed form, computed in float64: ``W W^T + lambda I`` is conditioned like
    ``||W||^2 / lambda`` when ``n > m`` (many channels, small kernels), which float32 cannot
    resolve; tall matrices go through the core's ``m x m`` form, so ResNet-50's 2048-channel
    groups cost ``O(n m^2)`` rather than ``O(n^3)``.
    """
    from projprune import projection_distances  # lazy: keeps `import projprune` free of torch-pruning

    return projection_distances(rows.detach().to(torch.float64), lmbda).to(torch.float32)


class ProjectiveImportance(tp.importance.GroupMagnitudeImportance):
    """Per-channel projection-distance importance of a Torch-Pruning group.

    Args:
        lmbda: ridge regulariser of the projection (docs/algorithm.md §1), default ``1e-3``.
        group_reduction: how member scores are combined per channel (``"mean"`` as the paper).
        normalizer: ``"mean"`` for ``proj``, ``"max"`` for ``proj_sl`` (any Torch-Pruning
            normaliser name or a callable).
        target_types: module types that contribute scores.
    """

    def __init__(
        self,
        lmbda: float = 1e-3,
        group_reduction: str = "mean",
        normalizer: str | None = "mean",
        target_types: tuple[type, ...] = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm,
                                          nn.LayerNorm),
    ) -> None:
        check_lmbda(lmbda)
        super().__init__(p=2, group_reduction=group_reduction, normalizer=normalizer, bias=False,
                         target_types=list(target_types))
        self.lmbda = float(lmbda)

    def member_scores(self, layer: nn.Module, prune_fn, idxs: list[int]) -> torch.Tensor | None:
        """Scores of one group member for the channels ``idxs`` (``None``: the member does not vote)."""
        if prune_fn in _OUT_FNS:
            weight = layer.weight.data
            if getattr(layer, "transposed", False):
                weight = weight.transpose(0, 1)
            return _distances(weight[idxs].flatten(1), self.lmbda)
        if prune_fn in _IN_FNS:
            weight = layer.weight.data
            rows = weight.flatten(1) if getattr(layer, "transposed", False) else weight.transpose(0, 1).flatten(1)
            scores = _distances(rows, self.lmbda)
            # A grouped conv sees only in_channels/groups inputs per filter: repeat over groups.
            if prune_fn == function.prune_conv_in_channels and layer.groups not in (1, layer.in_channels):
                scores = scores.repeat(layer.groups)
            return scores[idxs]
        if prune_fn == function.prune_batchnorm_out_channels:
            return layer.weight.data[idxs].abs().float() if layer.affine else None
        if prune_fn == function.prune_layernorm_out_channels:
            return layer.weight.data[idxs].abs().float() if layer.elementwise_affine else None
        return None

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        """One score per channel of ``group`` (length ``len(group[0].idxs)``), or ``None``."""
        scores, root_idxs = [], []
        for i, (dep, idxs) in enumerate(group):
            layer = dep.layer
            if not isinstance(layer, tuple(self.target_types)):
                continue
            member = self.member_scores(layer, dep.pruning_fn, idxs)
            if member is not None:
                scores.append(member)
                root_idxs.append(group[i].root_idxs)
        if not scores:
            return None
        return self._normalize(self._reduce(scores, root_idxs), self.normalizer)
