"""Device names as the CLIs and configs accept them ("auto", "cpu", "cuda", "cuda:N")."""
from __future__ import annotations

import os
from typing import Any, Callable

import torch

__all__ = ["resolve_device", "cuda_peak_bytes"]


def resolve_device(name: str | torch.device, world: int = 1) -> torch.device:
    """The torch.device for ``name``: "auto" is CUDA where available, else the CPU. Asking for CUDA
    where there is none raises ValueError at once (not at the first tensor moved). With ``world``
    > 1 processes (torchrun), a bare "cuda" becomes this process's ``cuda:LOCAL_RANK``."""
    text = str(name)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(name)!r} asked for but CUDA is not available here; use --device cpu")
        if world > 1 and text == "cuda":
            text = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return torch.device(text)


def cuda_peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Bytes the CUDA caching allocator held at its peak while ``fn()`` ran, above what was
    allocated before it. Synchronizes before and after so that queued kernels are counted."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base
