"""ResNets: CIFAR-style (6n+2 layers, 16/32/64 channels, He et al. 2015), wide CIFAR ResNets, and
ImageNet-style ResNet-18..152 (torchvision's layout: 7x7 stem + max-pool, bottleneck from 50 up).

One class covers all of them; the registry names pin depth, width, block and stem.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import BLOCKS, DropMode, Shortcut, check_shortcut, linear_decay
from .registry import register


class ResNet(nn.Module):
    """Stem -> stages of residual blocks -> global average pool -> ``linear``.

    ``drop_path`` is the drop probability of the last block; earlier blocks follow the linear
    decay rule of stochastic depth. ``shortcut=None`` removes every skip (the plain twin).
    """

    def __init__(self, block: str, stage_blocks: list[int], widths: list[int], num_classes: int = 10,
                 in_channels: int = 3, shortcut: Shortcut = "A", stem: str = "cifar", se: bool = False,
                 drop_path: float = 0.0, drop_mode: DropMode = "row", drop_scale_at: str = "test"):
        super().__init__()
        check_shortcut(shortcut)
        if shortcut is None and drop_path > 0:
            raise ValueError(f"drop_path={drop_path} needs skip connections: stochastic depth drops a block's branch "
                             f"and keeps its shortcut, and a plain (noshort) net has none; use drop_path=0")
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' (3x3) or 'imagenet' (7x7 + max-pool), got {stem!r}")
        block_cls = BLOCKS[block]
        self.stem = stem
        self.conv1 = (nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False) if stem == "cifar"
                      else nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False))
        self.bn1 = nn.BatchNorm2d(widths[0])
        drops = iter(linear_decay(sum(stage_blocks), drop_path))
        in_planes = widths[0]
        for i, (n, planes) in enumerate(zip(stage_blocks, widths)):
            layers = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(block_cls(in_planes, planes, stride, shortcut=shortcut, se=se,
                                        drop_prob=next(drops), drop_mode=drop_mode,
                                        drop_scale_at=drop_scale_at))
                in_planes = planes * block_cls.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        self.num_stages = len(stage_blocks)
        self.linear = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        if self.stem == "imagenet":
            out = F.max_pool2d(out, 3, stride=2, padding=1)
        for i in range(self.num_stages):
            out = getattr(self, f"layer{i + 1}")(out)
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def cifar_resnet(depth: int, width: int = 1, **kw) -> ResNet:
    """ResNet-(6n+2) on 16k/32k/64k channels (k = ``width``; k > 1 is a wide ResNet)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 20, 32, 44, 56, 110, ...), got {depth}")
    n = (depth - 2) // 6
    return ResNet("basic", [n] * 3, [16 * width, 32 * width, 64 * width], **kw)


_IMAGENET_STAGES = {18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]),
                    50: ("bottleneck", [3, 4, 6, 3]), 101: ("bottleneck", [3, 4, 23, 3]),
                    152: ("bottleneck", [3, 8, 36, 3])}


def imagenet_resnet(depth: int, stem: str = "imagenet", shortcut: Shortcut = "B", **kw) -> ResNet:
    """ResNet-18/34/50/101/152 as torchvision builds them (option B projections)."""
    if depth not in _IMAGENET_STAGES:
        raise ValueError(f"ImageNet ResNet depth must be one of {sorted(_IMAGENET_STAGES)}, got {depth}")
    block, stages = _IMAGENET_STAGES[depth]
    return ResNet(block, stages, [64, 128, 256, 512], stem=stem, shortcut=shortcut, **kw)


for _d in (8, 20, 32, 44, 56, 110, 1202):
    register(f"resnet{_d}", cifar_resnet, f"CIFAR ResNet-{_d}", depth=_d)
    register(f"resnet{_d}_noshort", cifar_resnet, f"CIFAR plain-{_d} (no skips)", depth=_d, shortcut=None)
    register(f"plain{_d}", cifar_resnet, f"CIFAR plain-{_d} (= resnet{_d}_noshort)", depth=_d, shortcut=None)
for _k in (2, 4, 8):
    register(f"wrn56_{_k}", cifar_resnet, f"wide ResNet-56, width x{_k}", depth=56, width=_k)
    register(f"wrn56_{_k}_noshort", cifar_resnet, f"wide plain-56, width x{_k}", depth=56, width=_k,
             shortcut=None)
for _d in _IMAGENET_STAGES:
    register(f"resnet{_d}", imagenet_resnet, f"ImageNet ResNet-{_d}", depth=_d)
    register(f"resnet{_d}_noshort", imagenet_resnet, f"ImageNet plain-{_d}", depth=_d, shortcut=None)
