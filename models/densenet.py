"""DenseNet-BC (Huang et al. 2017) for 32x32 inputs: bottleneck layers and 0.5 compression."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 (4k) -> BN-ReLU-3x3 (k), output concatenated to its input."""

    def __init__(self, in_channels: int, growth: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(in_channels), nn.Conv2d(in_channels, 4 * growth, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(4 * growth), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], 1)


class Transition(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.BatchNorm2d(in_channels), nn.ReLU(), nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         nn.AvgPool2d(2, ceil_mode=True))


class DenseNet(nn.Module):
    def __init__(self, depth: int = 100, growth: int = 12, num_classes: int = 10, in_channels: int = 3,
                 compression: float = 0.5):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"DenseNet-BC depth must be 6n+4 (40, 100, ...), got {depth}")
        n = (depth - 4) // 6
        channels = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i in range(3):
            for _ in range(n):
                stages.append(DenseLayer(channels, growth))
                channels += growth
            if i < 2:
                out = int(channels * compression)
                stages.append(Transition(channels, out))
                channels = out
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(channels)
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.features(self.conv1(x))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


register("densenet_bc100", DenseNet, "DenseNet-BC-100, k=12", depth=100, growth=12)
register("densenet_bc40", DenseNet, "DenseNet-BC-40, k=12 (small, for tests)", depth=40, growth=12)
