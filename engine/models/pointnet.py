"""PointNet classifier (Qi et al. 2017) with the 3x3 input transform.

Input ``(B, 3, N)`` point clouds. The shared per-point MLPs are 1x1 ``Conv2d`` on
``(B, C, N, 1)`` (the same maths as ``Conv1d``), so every Torch-Pruning importance,
including EigenDamage's Kronecker factors (Linear/Conv2d only), applies to them.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _scaled(width: int, width_mult: float) -> int:
    return max(4, round(width * width_mult))


def _point_mlp(widths: list[int], relu_last: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        if relu_last or i < len(widths) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class InputTransform(nn.Module):
    """Predicts a ``(B, k, k)`` alignment matrix from the points (identity-initialised)."""

    def __init__(self, k: int = 3, width_mult: float = 1.0) -> None:
        super().__init__()
        w = [_scaled(c, width_mult) for c in (64, 128, 1024, 512, 256)]
        self.k = k
        self.mlp = _point_mlp([k, w[0], w[1], w[2]])
        self.fc = nn.Sequential(nn.Linear(w[2], w[3], bias=False), nn.BatchNorm1d(w[3]), nn.ReLU(inplace=True),
                                nn.Linear(w[3], w[4], bias=False), nn.BatchNorm1d(w[4]), nn.ReLU(inplace=True))
        self.out = nn.Linear(w[4], k * k)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        feat = self.mlp(points.unsqueeze(-1)).amax(dim=(2, 3))
        matrix = self.out(self.fc(feat)).view(-1, self.k, self.k)
        return matrix + torch.eye(self.k, device=points.device, dtype=points.dtype)


class PointNet(nn.Module):
    """PointNet classifier: ``(B, 3, N) -> (B, num_classes)``.

    Args:
        num_classes: output width (40 for ModelNet40).
        in_channels: coordinates per point (3).
        width_mult: scales every hidden width (tests use small ones).
        input_transform: use the 3x3 input alignment network.
        dropout: dropout before the last layer.
    """

    def __init__(self, num_classes: int = 40, in_channels: int = 3, width_mult: float = 1.0,
                 input_transform: bool = True, dropout: float = 0.4) -> None:
        super().__init__()
        w = [_scaled(c, width_mult) for c in (64, 128, 1024, 512, 256)]
        self.stn = InputTransform(in_channels, width_mult) if input_transform else None
        self.features = _point_mlp([in_channels, w[0], w[1], w[2]], relu_last=False)
        self.head = nn.Sequential(nn.Linear(w[2], w[3], bias=False), nn.BatchNorm1d(w[3]), nn.ReLU(inplace=True),
                                  nn.Linear(w[3], w[4], bias=False), nn.BatchNorm1d(w[4]), nn.ReLU(inplace=True),
                                  nn.Dropout(dropout))
        self.classifier = nn.Linear(w[4], num_classes)

    def pruning_ignored_layers(self) -> list[nn.Module]:
        """Layers whose outputs are reshaped into the alignment matrix: never pruned."""
        return [self.stn.out] if self.stn is not None else []

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        if self.stn is not None:
            points = torch.bmm(self.stn(points), points)
        feat = self.features(points.unsqueeze(-1)).amax(dim=(2, 3))
        return self.classifier(self.head(feat))
