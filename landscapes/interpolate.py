"""1-D linear interpolation between two models (Goodfellow et al. 2015; Li et al. 2018, Sec. 3):
loss and accuracy of theta1 + a * (theta2 - theta1) along a grid of a, for studies that hold the
two models in memory. The CLI route is ``python -m landscapes.scan --model2 F``.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch.nn as nn

from models.data import DeviceData

from .directions import State, target_direction
from .evaluate import EvalConfig
from .scan import compute_surface
from .surface import Surface

__all__ = ["interpolate"]


def interpolate(model: nn.Module, state1: State, state2: State, alphas: np.ndarray,
                data: Mapping[str, DeviceData] | DeviceData, eval_config: EvalConfig = EvalConfig(), *,
                dir_type: str = "states", progress: bool = False) -> Surface:
    """Surface (values ``<split>_loss``/``<split>_acc`` of shape (len(alphas),)) along the segment
    from ``state1`` (a = 0) to ``state2`` (a = 1); a outside [0, 1] extrapolates.

    ``dir_type="states"`` moves BN running statistics too, so a = 1 is exactly the second model;
    with "weights" they stay those of the first. ``model`` supplies the architecture; its own
    weights are restored afterwards. A bare DeviceData counts as the "train" split.
    """
    if isinstance(data, DeviceData):
        data = {"train": data}
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        model.load_state_dict(state1)
        device = next(iter(saved.values())).device
        direction = {k: v.to(device) for k, v in target_direction(model, state2, dir_type).items()}
        center = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return compute_surface(model, [direction], np.asarray(alphas, dtype=np.float64), None, data, eval_config,
                               center=center, progress=progress)
    finally:
        model.load_state_dict(saved)
