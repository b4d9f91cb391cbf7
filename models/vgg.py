"""VGG-9 and VGG-16 (Simonyan & Zisserman 2015) with batch norm.

The CIFAR head matches tomgoldstein/loss-landscape (``features``, ``fc`` = Linear+BN1d+ReLU,
``classifier``); its input is adaptively pooled to the reference's feature-map size so 28x28
(MNIST) inputs work too. ``head="imagenet"`` is the 4096-4096 classifier of the paper (138M
parameters with ``num_classes=1000``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import register

CONFIGS = {
    9: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3, head: str = "cifar"):
        super().__init__()
        if depth not in CONFIGS:
            raise ValueError(f"VGG depth must be one of {sorted(CONFIGS)}, got {depth}")
        layers: list[nn.Module] = []
        channels = in_channels
        for item in CONFIGS[depth]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))  # ceil: 28x28 inputs survive 5 pools
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        pools = CONFIGS[depth].count("M")
        if head == "cifar":
            side = max(32 >> pools, 1)  # the reference flattens the 32x32 feature map
            self.pool = nn.AdaptiveAvgPool2d(side)
            self.fc = nn.Sequential(nn.Linear(channels * side * side, channels), nn.BatchNorm1d(channels),
                                    nn.ReLU(inplace=True))
            self.classifier = nn.Linear(channels, num_classes)
        elif head == "imagenet":
            self.pool = nn.AdaptiveAvgPool2d(7)
            self.fc = nn.Sequential(nn.Linear(channels * 49, 4096), nn.ReLU(inplace=True), nn.Dropout(),
                                    nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout())
            self.classifier = nn.Linear(4096, num_classes)
        else:
            raise ValueError(f"head must be 'cifar' or 'imagenet', got {head!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc(torch.flatten(self.pool(self.features(x)), 1)))


register("vgg9", VGG, "VGG-9 with BN (Li et al. 2018)", depth=9)
register("vgg16", VGG, "VGG-16 with BN", depth=16)
