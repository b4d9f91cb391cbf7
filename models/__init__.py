"""Plain and residual CNNs by name, data as device tensors, training and checkpoints.

Everything else in the toolkit (landscapes, odenets, studies) builds on this package.
"""
from typing import Any

from . import densenet, ode, resnet, vgg  # noqa: F401  (registers the families)
from .device import resolve_device
from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from .registry import ModelSpec, build, describe, names, register, resolve_name

__all__ = ["build", "names", "describe", "register", "resolve_name", "ModelSpec", "load_checkpoint",
           "save_checkpoint", "read_checkpoint", "CheckpointError", "summarize", "count_params",
           "resolve_device"]


def __getattr__(name: str) -> Any:
    # Imported lazily so `python -m models.summary` does not find itself pre-imported.
    if name in ("summarize", "count_params"):
        from . import summary
        return getattr(summary, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
