"""TF32 switches for CUDA matmul and cuDNN convolution on every torch the package accepts.

torch 2.9 added ``torch.backends.*.fp32_precision`` ("ieee" / "tf32"; "none" = unset) and
deprecated the older ``allow_tf32`` booleans; the package declares ``torch>=2.4``, which has only
the booleans. These two functions use the new API where it exists and the booleans otherwise.
"""
from __future__ import annotations

import torch

__all__ = ["get_fp32_precision", "set_fp32_precision"]

Flags = tuple[object, object]  # (matmul, conv): fp32_precision strings, or allow_tf32 booleans


def _backends() -> tuple[object, object]:
    """The objects holding the matmul and the convolution setting (looked up at each call, so a
    monkeypatched torch is seen)."""
    cudnn = torch.backends.cudnn
    return torch.backends.cuda.matmul, getattr(cudnn, "conv", cudnn)


def get_fp32_precision() -> Flags:
    """The current (matmul, conv) setting, to hand back to :func:`set_fp32_precision` later."""
    matmul, conv = _backends()
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "fp32_precision"):
        return matmul.fp32_precision, conv.fp32_precision
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def set_fp32_precision(setting: str | Flags) -> None:
    """Set both to "tf32" or "ieee" (true fp32), or restore a :func:`get_fp32_precision` value."""
    matmul, conv = _backends()
    pair = (setting, setting) if isinstance(setting, str) else setting
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "fp32_precision"):
        matmul.fp32_precision, conv.fp32_precision = pair
    else:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = (
            v == "tf32" if isinstance(v, str) else bool(v) for v in pair)
