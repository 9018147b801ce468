"""The small VGG-16 of the params ablation (``params/vgg.py``): BatchNorm, narrowed, adapted to small inputs."""

from __future__ import annotations

import torch
from torch import nn

from params.vgg import SCOPES

# torchvision's VGG-16 ("D"): 13 convs in five blocks, "M" = 2x2 max-pool.
VGG16_LAYOUT: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)

class VGG16(nn.Module):
    """VGG-16 with BatchNorm, narrowed by ``width_divisor`` and adapted to small inputs.

    A max-pool is skipped once the feature map is 1x1 (8x8 digits keep three of the five), so the
    classifier always reads ``channels x 1 x 1`` features: Linear -> hidden -> hidden -> classes.

    Args:
        input_size: side of the square input (8 digits, 28 FashionMNIST, 32 CIFAR).
        in_channels: 1 (grey) or 3 (colour).
        num_classes: outputs.
        width_divisor: every conv width and the hidden width are divided by this (1 = full size).
        hidden: classifier width before dividing (512, as in the CIFAR VGGs).
        dropout: dropout after each hidden Linear.
    """

    def __init__(
        self,
        input_size: int = 32,
        in_channels: int = 1,
        num_classes: int = 10,
        width_divisor: int = 1,
        hidden: int = 512,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if width_divisor < 1 or 64 % width_divisor:
            raise ValueError(f"width_divisor must divide 64, got {width_divisor}")
        if input_size < 1:
            raise ValueError(f"input_size must be positive, got {input_size}")
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.pool_after: list[bool] = []
        channels, size = in_channels, input_size
        for item in VGG16_LAYOUT:
            if item == "M":
                if size >= 2:
                    self.pool_after[-1] = True
                    size //= 2
                continue
            width = int(item) // width_divisor
            self.convs.append(nn.Conv2d(channels, width, kernel_size=3, padding=1))
            self.norms.append(nn.BatchNorm2d(width))
            self.pool_after.append(False)
            channels = width
        self.feature_size = size
        width_h = hidden // width_divisor
        self.fc1 = nn.Linear(channels * size * size, width_h)
        self.fc2 = nn.Linear(width_h, width_h)
        self.fc3 = nn.Linear(width_h, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, S, S) -> logits (B, num_classes)."""
        for conv, norm, pool in zip(self.convs, self.norms, self.pool_after):
            x = torch.relu(norm(conv(x)))
            if pool:
                x = nn.functional.max_pool2d(x, 2)
        h = self.dropout(torch.relu(self.fc1(x.flatten(1))))
        h = self.dropout(torch.relu(self.fc2(h)))
        return self.fc3(h)

    def prunable_pairs(self, scope: str = "linear") -> list[tuple[nn.Module, nn.Module, nn.Module | None]]:
        """``linear``: (fc1, fc2), (fc2, fc3). ``conv``: each conv with the next conv and its own BatchNorm."""
        if scope == "linear":
            return [(self.fc1, self.fc2, None), (self.fc2, self.fc3, None)]
        if scope == "conv":
            return [(self.convs[i], self.convs[i + 1], self.norms[i]) for i in range(len(self.convs) - 1)]
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")

    def hidden_widths(self, scope: str = "linear") -> tuple[int, ...]:
        """Current widths of the pruned layers of ``scope``."""
        return tuple(layer.weight.shape[0] for layer, _, _ in self.prunable_pairs(scope))
