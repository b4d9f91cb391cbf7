"""Loss and accuracy of a model at many points theta0 + sum_d c_d * direction_d.

(Initial per-point reference implementation; the batched engine replaces the internals of
`evaluate_points` while keeping its signature.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 512           # images per forward pass
    points_per_pass: int | None = None  # grid points per pass (None: chosen from free memory)
    engine: str = "auto"            # "auto" | "batched" | "naive"
    dtype: str = "float32"          # "float32" | "tf32" | "bfloat16"
    bn_mode: str = "stored"         # "stored" | "recalibrate" | "batch"


def point_state(center: State, directions: Sequence[State], coord: Sequence[float]) -> State:
    """center + sum_d coord[d] * directions[d]; keys absent from a direction stay as in center."""
    state = dict(center)
    for c, direction in zip(coord, directions):
        for key, d in direction.items():
            state[key] = state[key] + float(c) * d
    return state


@torch.no_grad()
def evaluate_naive(model: nn.Module, center: State, directions: Sequence[State], coords: torch.Tensor,
                   data, config: EvalConfig = EvalConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference loop: load each point's weights, then one pass over the data."""
    model.eval()
    losses, accs = [], []
    for coord in coords.tolist():
        model.load_state_dict(point_state(center, directions, coord))
        total_loss, correct = 0.0, 0
        for x, y in data.batches(config.batch_size):
            out = model(x)
            total_loss += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
        losses.append(total_loss / len(data))
        accs.append(100.0 * correct / len(data))
    model.load_state_dict(center)
    return torch.tensor(losses, dtype=torch.float64), torch.tensor(accs, dtype=torch.float64)


def evaluate_points(model: nn.Module, center: State, directions: Sequence[State], coords: torch.Tensor,
                    data, config: EvalConfig = EvalConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy (%) at each row of ``coords`` (shape (K, len(directions))).

    ``center`` is a full state_dict; each direction holds the keys it perturbs. ``data`` is a
    ``models.data.DeviceData``. Returns two float64 CPU tensors of shape (K,).
    """
    return evaluate_naive(model, center, directions, coords, data, config)
