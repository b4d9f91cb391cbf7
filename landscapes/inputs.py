"""Input checks shared by the engine and the reference loop: coordinates, data, states, and the
calibration data of bn_mode "recalibrate". Each raises ValueError naming what was expected."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn

from models.data import DeviceData

from .directions import State
from .evalconfig import EvalConfig

__all__ = ["check_coords", "check_data", "check_state", "select_calibration_data"]


def check_coords(coords: torch.Tensor | Sequence, n_dirs: int) -> torch.Tensor:
    coords = torch.as_tensor(coords, dtype=torch.float64)
    if coords.dim() == 1 and n_dirs == 1:
        coords = coords[:, None]
    if coords.dim() != 2 or coords.shape[1] != n_dirs:
        raise ValueError(f"coords must have shape (K, {n_dirs}) for {n_dirs} direction(s); got "
                         f"{tuple(coords.shape)}")
    if not torch.isfinite(coords).all():
        raise ValueError("coords must be finite")
    return coords


def check_data(data) -> None:
    if not (hasattr(data, "x") and hasattr(data, "y") and hasattr(data, "batches")):
        raise ValueError(f"data must be a models.data.DeviceData (x, y tensors on one device); got "
                         f"{type(data).__name__}")
    if len(data) < 1 or data.x.shape[0] != data.y.shape[0] or data.x.device != data.y.device:
        raise ValueError(f"data must hold N >= 1 images and N labels on one device; got x "
                         f"{tuple(data.x.shape)} on {data.x.device}, y {tuple(data.y.shape)} on {data.y.device}")


def check_state(model: nn.Module, center: Mapping[str, torch.Tensor], directions: Sequence[State]) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in center]
    if missing:
        raise ValueError(f"center lacks {len(missing)} of the model's state_dict entries, e.g. "
                         f"{', '.join(missing[:3])}; pass the full state_dict of the center model")
    for i, direction in enumerate(directions):
        for key, d in direction.items():
            if key not in center:
                raise ValueError(f"direction {i} moves {key!r}, which is not in the center state_dict")
            if d.shape != center[key].shape:
                raise ValueError(f"direction {i}[{key!r}] has shape {tuple(d.shape)}, the center "
                                 f"{tuple(center[key].shape)}")


def select_calibration_data(data, calibration_data, config: EvalConfig):
    calib = data if calibration_data is None else calibration_data
    if calibration_data is not None:
        check_data(calibration_data)
    n = config.calibration_samples
    if n is not None and n < len(calib):
        calib = DeviceData(calib.x[:n], calib.y[:n])
    return calib
