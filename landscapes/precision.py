"""Scoped numeric modes for an evaluation: true float32, TF32 or bfloat16 autocast.

The TF32 switches work on every torch the package accepts: torch 2.9 added
``torch.backends.*.fp32_precision`` ("ieee" / "tf32") and deprecated the older ``allow_tf32``
booleans; the declared floor ``torch>=2.4`` has only the booleans, so :func:`get_fp32_precision`
and :func:`set_fp32_precision` use the new API where it exists and the booleans otherwise."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

__all__ = ["precision", "get_fp32_precision", "set_fp32_precision"]

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


@contextmanager
def precision(dtype: str, device: torch.device) -> Iterator[None]:
    """Scoped numeric mode: true fp32 (no TF32), TF32, or bf16 autocast; restores the flags."""
    cuda = device.type == "cuda"
    saved = get_fp32_precision()
    if cuda:
        set_fp32_precision("tf32" if dtype == "tf32" else "ieee")
    try:
        if dtype == "bfloat16":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        if cuda:
            set_fp32_precision(saved)
