"""The reference evaluation: load each point's state_dict into a copy of the model and pass over
the data with its own modules. Slow by design; the engine (:mod:`landscapes.evaluate`) is tested
against it."""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from .directions import State
from .evalconfig import EvalConfig
from .inputs import check_coords, check_data, select_calibration_data

__all__ = ["point_state", "bn_layers", "evaluate_naive"]


def point_state(center: State, directions: Sequence[State], coord: Sequence[float]) -> State:
    """center + sum_d coord[d] * directions[d]; keys absent from a direction stay as in center."""
    state = dict(center)
    for c, direction in zip(coord, directions):
        for key, d in direction.items():
            state[key] = state[key] + float(c) * d
    return state


def bn_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


@torch.no_grad()
def evaluate_naive(model: nn.Module, center: State, directions: Sequence[State], coords: torch.Tensor,
                   data, config: EvalConfig = EvalConfig(), *, calibration_data=None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: on a copy of the model, load each point's state_dict and pass over the data
    with the model's own modules, BN per ``config.bn_mode`` done the plain PyTorch way (for
    "recalibrate" exactly ``torch.optim.swa_utils.update_bn`` restricted to the BN layers).
    Float32 and slow by design; the engine is tested against it."""
    coords = check_coords(coords, len(directions))
    check_data(data)
    net = copy.deepcopy(model).to(data.x.device).eval()
    bns = bn_layers(net)
    batch = config.stats_batch_size if config.bn_mode == "batch" else (config.batch_size or 128)
    calib = select_calibration_data(data, calibration_data, config) if config.bn_mode == "recalibrate" else None
    losses, accs = [], []
    for coord in coords.tolist():
        net.load_state_dict(point_state(center, directions, coord))
        if calib is not None:
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None  # cumulative average over the calibration batches
                bn.train()
            for x, _ in calib.batches(config.stats_batch_size):
                net(x)
            for bn in bns:
                bn.eval()
        elif config.bn_mode == "batch":
            for bn in bns:  # batch statistics; the buffers it updates are reloaded at the next point
                bn.train()
        total_loss, correct = 0.0, 0
        for x, y in data.batches(batch):
            out = net(x)
            total_loss += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
        losses.append(total_loss / len(data))
        accs.append(100.0 * correct / len(data))
    return torch.tensor(losses, dtype=torch.float64), torch.tensor(accs, dtype=torch.float64)
