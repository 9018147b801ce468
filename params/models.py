"""The paper's small LeNet-style classifier for the hyper-parameter analysis (§4.3).

Two 3x3 convolutions (1 -> 8 -> 16 channels) produce a 16x3x3 = 144 feature map, followed
by the fully connected stack 144 -> 64 -> 32 -> 16 -> 10 with ReLU and dropout after each
hidden layer. Only the three hidden Linear layers (``fc1``, ``fc2``, ``fc3``) are pruned,
each with the next Linear as ``V``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# Input side -> (conv1 padding, pool after conv1, conv2 padding, pool after conv2); both variants end
# in a 16x3x3 = 144 feature map so the pruned Linear stack is identical.
_FEATURE_LAYOUTS: dict[int, tuple[int, int, int, int]] = {
    28: (0, 2, 0, 3),  # FashionMNIST: 28 -conv-> 26 -pool2-> 13 -conv-> 11 -pool3-> 3
    8: (0, 2, 1, 1),  # digits: 8 -conv-> 6 -pool2-> 3 -conv(pad 1)-> 3
}

HIDDEN_WIDTHS = (64, 32, 16)  # the paper's Linear 144 -> 64 -> 32 -> 16 -> 10


class LeNetParams(nn.Module):
    """conv 1->8->16, then Linear 144 -> 64 -> 32 -> 16 -> num_classes with dropout.

    Args:
        input_size: side of the square grey input, 28 (FashionMNIST) or 8 (digits).
        num_classes: outputs of the last Linear.
        hidden: widths of the three hidden Linear layers (pruned checkpoints rebuild from these).
        dropout: dropout probability after each hidden ReLU.
    """

    def __init__(
        self,
        input_size: int = 28,
        num_classes: int = 10,
        hidden: Sequence[int] = HIDDEN_WIDTHS,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if input_size not in _FEATURE_LAYOUTS:
            raise ValueError(f"input_size must be one of {sorted(_FEATURE_LAYOUTS)}, got {input_size}")
        if len(hidden) != 3 or min(hidden) < 1:
            raise ValueError(f"hidden must be three positive widths, got {tuple(hidden)}")
        pad1, pool1, pad2, pool2 = _FEATURE_LAYOUTS[input_size]
        self.input_size = input_size
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=3, padding=pad1),
            nn.ReLU(),
            nn.MaxPool2d(pool1),
            nn.Conv2d(8, 16, kernel_size=3, padding=pad2),
            nn.ReLU(),
            nn.MaxPool2d(pool2),
        )
        h1, h2, h3 = (int(width) for width in hidden)
        self.fc1 = nn.Linear(144, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, h3)
        self.fc4 = nn.Linear(h3, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, input_size, input_size) -> logits (B, num_classes)."""
        h = self.features(x).flatten(1)  # (B, 144)
        for layer in (self.fc1, self.fc2, self.fc3):
            h = self.dropout(torch.relu(layer(h)))
        return self.fc4(h)

    def prunable_pairs(self, scope: str = "linear") -> list[tuple[nn.Module, nn.Module, nn.Module | None]]:
        """The pruned ``(layer, next layer, norm)`` triples: (fc1, fc2), (fc2, fc3), (fc3, fc4), no norms."""
        if scope != "linear":
            raise ValueError(f"LeNetParams prunes scope 'linear' only, got {scope!r}")
        return [(self.fc1, self.fc2, None), (self.fc2, self.fc3, None), (self.fc3, self.fc4, None)]

    def linear_pairs(self) -> list[tuple[nn.Linear, nn.Linear]]:
        """The pruned (layer, next layer) pairs: (fc1, fc2), (fc2, fc3), (fc3, fc4)."""
        return [(layer, nxt) for layer, nxt, _ in self.prunable_pairs()]

    def hidden_widths(self, scope: str = "linear") -> tuple[int, ...]:
        """Current widths of the pruned layers."""
        return tuple(layer.weight.shape[0] for layer, _, _ in self.prunable_pairs(scope))
