"""Scoped numeric modes for an evaluation: true float32, TF32 or bfloat16 autocast."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

__all__ = ["precision"]


@contextmanager
def precision(dtype: str, device: torch.device) -> Iterator[None]:
    """Scoped numeric mode: true fp32 (no TF32), TF32, or bf16 autocast; restores the flags."""
    cuda = device.type == "cuda"
    saved = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    if cuda:
        mode = "tf32" if dtype == "tf32" else "ieee"
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
    try:
        if dtype == "bfloat16":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        if cuda:
            torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved
