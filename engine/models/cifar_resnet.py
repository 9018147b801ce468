"""ResNet-20/32/44/56/110 for CIFAR (He et al. 2016, 6n+2 layers, projection shortcuts).

The first conv keeps the resolution (stride 1), so the same network runs on 32x32 CIFAR
images and on 8x8 ``digits`` (stages 8 -> 4 -> 2 pixels).
"""

from __future__ import annotations

import torch
import torch.nn as nn

DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56, "resnet110": 110}


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm; a 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """CIFAR ResNet of ``depth = 6n + 2`` layers: ``(B, in_channels, H, W) -> (B, num_classes)``.

    Args:
        depth: 20, 32, 44, 56 or 110.
        num_classes: output width.
        in_channels: input image channels (3 for CIFAR, 1 for digits).
        width_mult: scales the stage widths 16/32/64 (tests use small widths).
    """

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        widths = [max(1, round(w * width_mult)) for w in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, in_planes = [], widths[0]
        for stage, planes in enumerate(widths):
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(in_planes, planes, stride=2 if (stage > 0 and b == 0) else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def cifar_resnet(name: str, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> CifarResNet:
    """Build ``resnet20`` ... ``resnet110`` by name."""
    return CifarResNet(DEPTHS[name], num_classes, in_channels, width_mult)
