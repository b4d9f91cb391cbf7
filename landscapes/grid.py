"""The grid of a scan: axes (``START:STOP:NUM``), their parsing for configs and CLIs, and the
coordinates of flat grid indices in the reference's meshgrid order."""
from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.checks import positive_int

__all__ = ["AXIS_HELP", "Axis", "parse_axis", "grid_coords", "axis_arg", "glue_grid_args", "spread_indices"]

AXIS_HELP = "START:STOP:NUM, e.g. -1:1:51 (NUM points from START to STOP, both included)"


@dataclass(frozen=True)
class Axis:
    """``num`` evenly spaced coordinates from ``start`` to ``stop`` inclusive (``np.linspace``)."""

    start: float
    stop: float
    num: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start) and math.isfinite(self.stop)):
            raise ValueError(f"grid bounds must be finite numbers, got {self.start}:{self.stop}")
        positive_int("NUM", self.num, note="points of the grid START:STOP:NUM")
        if self.num == 1 and self.start != self.stop:
            raise ValueError(f"one point cannot span {self.start:g}..{self.stop:g}: use START:START:1 or NUM >= 2")
        if self.num > 1 and not self.start < self.stop:
            raise ValueError(f"grid start must be below stop, got {self.start:g}:{self.stop:g} "
                             f"(write the smaller bound first, e.g. -1:1:{self.num})")

    def coordinates(self) -> np.ndarray:
        return np.linspace(self.start, self.stop, self.num)

    def __str__(self) -> str:
        return f"{self.start:g}:{self.stop:g}:{self.num}"


def parse_axis(spec: str | Axis, name: str = "x") -> Axis:
    """``"-1:1:51"`` -> ``Axis(-1.0, 1.0, 51)``, with an error that says what is accepted."""
    if isinstance(spec, Axis):
        return spec
    parts = str(spec).split(":")
    if len(parts) != 3:
        raise ValueError(f"--{name} {spec!r}: expected {AXIS_HELP}")
    try:
        start, stop = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"--{name} {spec!r}: START and STOP must be numbers; expected {AXIS_HELP}") from None
    try:
        num = int(parts[2])
    except ValueError:
        raise ValueError(f"--{name} {spec!r}: NUM must be a whole number of points; expected {AXIS_HELP}") from None
    try:
        return Axis(start, stop, num)
    except ValueError as err:
        raise ValueError(f"--{name} {spec!r}: {err}") from None


def grid_coords(x: np.ndarray, y: np.ndarray | None, index: np.ndarray) -> torch.Tensor:
    """Coordinates (K, D) of flat indices k = iy * nx + ix (the reference's meshgrid order)."""
    if y is None:
        return torch.from_numpy(x[index][:, None].astype(np.float64))
    iy, ix = np.divmod(index, len(x))
    return torch.from_numpy(np.stack([x[ix], y[iy]], axis=1).astype(np.float64))


def axis_arg(name: str):
    def parse(text: str) -> Axis:
        try:
            return parse_axis(text, name)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    parse.__name__ = f"{name} grid"
    return parse


def glue_grid_args(argv: Sequence[str]) -> list[str]:
    """``--x -1:1:51`` -> ``--x=-1:1:51``: argparse would take "-1:1:51" for an option."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in ("--x", "--y"):
            value = next(it, None)
            out.append(arg if value is None else f"{arg}={value}")
        else:
            out.append(arg)
    return out


def spread_indices(total: int, count: int) -> np.ndarray:
    """Up to ``count`` distinct indices evenly spread over range(total), first and last included
    (for re-running a few points of many, e.g. to measure a lower precision's deviation)."""
    return np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(np.int64))
