"""VGG-11/13/16/19 with BatchNorm for small images (CIFAR variant).

Max-pooling stops once the feature map is 1x1, so the network also runs on 8x8 ``digits``;
a global average pool and a two-layer classifier follow the convolutions.
"""

from __future__ import annotations

import torch
import torch.nn as nn

CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG with BatchNorm: ``(B, in_channels, H, W) -> (B, num_classes)``.

    Args:
        name: ``vgg11``, ``vgg13``, ``vgg16`` or ``vgg19``.
        num_classes: output width.
        in_channels: input channels.
        width_mult: scales every conv width.
        input_size: image side; pools that would shrink below 1x1 are left out.
    """

    def __init__(self, name: str = "vgg19", num_classes: int = 10, in_channels: int = 3,
                 width_mult: float = 1.0, input_size: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, input_size
        for item in CONFIGS[name]:
            if item == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2, 2))
                    size //= 2
                continue
            width = max(1, round(int(item) * width_mult))
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(inplace=True),
                                        nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
