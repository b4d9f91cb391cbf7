"""Residual building blocks with one switch for the skip connection.

``shortcut=None`` gives the plain ("noshort") twin with exactly the same layers, so ResNet vs
plain comparisons change nothing but the skip. Options follow He et al. 2015: "A" zero-pads the
identity on a dimension change (no parameters), "B" projects (1x1 conv + BN) only there, "C"
projects in every block. Layer names match tomgoldstein/loss-landscape (``conv1``, ``bn1``,
``shortcut.0``, ``shortcut.1``) so its checkpoints load directly.
"""
from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

Shortcut = Literal["A", "B", "C"] | None
SHORTCUTS = ("A", "B", "C", None)
DropMode = Literal["row", "batch"]


def check_shortcut(shortcut: Shortcut) -> None:
    if shortcut not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of 'A', 'B', 'C' or None (no skip), got {shortcut!r}")


class ZeroPadShortcut(nn.Module):
    """Option A: subsample the identity and zero-pad the new channels (no parameters)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.stride, self.pad = stride, out_planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x


def make_shortcut(shortcut: Shortcut, in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    """The skip path of a block, or None for a plain block."""
    check_shortcut(shortcut)
    if shortcut is None:
        return None
    reshapes = stride != 1 or in_planes != out_planes
    if shortcut == "C" or (shortcut == "B" and reshapes):
        return nn.Sequential(
            nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
        )
    if shortcut == "A" and reshapes:
        return ZeroPadShortcut(in_planes, out_planes, stride)
    return nn.Sequential()  # identity, keeps the reference's (empty) `shortcut` module


class SqueezeExcite(nn.Module):
    """Channel gating of Hu et al. 2018, applied to the residual branch before the addition."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1, self.fc2 = nn.Conv2d(channels, hidden, 1), nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016) on a residual branch.

    ``mode="row"`` drops the branch per sample, ``"batch"`` for the whole batch (torchvision's
    ``StochasticDepth`` modes). ``scale_at="train"`` divides kept branches by the survival
    probability while training (torchvision); ``"test"`` multiplies by it at test time (Huang et
    al.). Either way the expected training output equals the eval output.
    """

    def __init__(self, drop_prob: float = 0.0, mode: DropMode = "row", scale_at: str = "test"):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop probability must lie in [0, 1), got {drop_prob}")
        if mode not in ("row", "batch") or scale_at not in ("train", "test"):
            raise ValueError(f"mode must be 'row'|'batch' and scale_at 'train'|'test', got {mode!r}, {scale_at!r}")
        self.drop_prob, self.mode, self.scale_at = drop_prob, mode, scale_at

    @property
    def survival(self) -> float:
        return 1.0 - self.drop_prob

    def skip_branch(self) -> bool:
        """Batch mode draws once per batch; a dropped branch is never computed (the time saving)."""
        return (self.training and self.drop_prob > 0 and self.mode == "batch"
                and bool(torch.rand(()) < self.drop_prob))

    def add(self, identity: torch.Tensor, branch_fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``identity + self(branch_fn())``, except that in batch mode a dropped branch is never
        computed: residual blocks call this so that dropping saves the branch's compute."""
        if self.skip_branch():
            return identity
        return identity + self._kept(branch_fn())

    def forward(self, branch: torch.Tensor) -> torch.Tensor:
        # Standalone use (the branch is already computed): batch mode must draw here too.
        if self.skip_branch():
            return torch.zeros_like(branch)
        return self._kept(branch)

    def _kept(self, branch: torch.Tensor) -> torch.Tensor:
        """A branch that survived the batch draw: row mask (row mode) and scaling."""
        if self.drop_prob == 0:
            return branch
        if not self.training:
            return branch * self.survival if self.scale_at == "test" else branch
        if self.mode == "row":
            keep = torch.empty(branch.shape[:1] + (1,) * (branch.dim() - 1), device=branch.device,
                               dtype=branch.dtype).bernoulli_(self.survival)
            branch = branch * keep
        return branch / self.survival if self.scale_at == "train" else branch

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, mode={self.mode}, scale_at={self.scale_at}"


class ResidualBlock(nn.Module):
    """Shared forward: relu(branch(x) + shortcut(x)), or relu(branch(x)) with no skip."""

    shortcut: nn.Module | None
    drop_path: DropPath

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            return F.relu(self.se(self.branch(x)))
        identity = self.shortcut(x)
        return F.relu(self.drop_path.add(identity, lambda: self.se(self.branch(x))))


class BasicBlock(ResidualBlock):
    """Two 3x3 convolutions (He et al. 2015, CIFAR and ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: Shortcut = "A",
                 se: bool = False, drop_prob: float = 0.0, drop_mode: DropMode = "row",
                 drop_scale_at: str = "test"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = make_shortcut(shortcut, in_planes, planes, stride)
        self.se = SqueezeExcite(planes) if se else nn.Identity()
        self.drop_path = DropPath(drop_prob, drop_mode, drop_scale_at)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3, 1x1 expand by 4 (ResNet-50 and deeper); stride on the 3x3 as torchvision."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: Shortcut = "B",
                 se: bool = False, drop_prob: float = 0.0, drop_mode: DropMode = "row",
                 drop_scale_at: str = "test"):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = make_shortcut(shortcut, in_planes, out_planes, stride)
        self.se = SqueezeExcite(out_planes) if se else nn.Identity()
        self.drop_path = DropPath(drop_prob, drop_mode, drop_scale_at)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def linear_decay(num_blocks: int, final_drop: float) -> list[float]:
    """Huang et al.'s rule p_l = 1 - l/L (1 - p_L), as drop probabilities 1 - p_l for l = 1..L."""
    if not 0.0 <= final_drop < 1.0:
        raise ValueError(f"drop_path (drop probability of the last block) must lie in [0, 1), got {final_drop}")
    return [final_drop * l / num_blocks for l in range(1, num_blocks + 1)]
