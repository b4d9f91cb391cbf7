"""A BatchNorm stand-in whose statistics come from a mode chosen per evaluation, so one traced
module serves stored statistics, batch statistics and the collection of statistics for
recalibration, with the original layer's parameter and buffer names."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["PointBatchNorm", "swap_batchnorm"]


class PointBatchNorm(nn.Module):
    """Stand-in for a BN layer with the same parameter/buffer names, whose statistics come from
    ``mode``: "stored" (running buffers), "batch" (this batch), or "collect" (this batch, and the
    batch mean / unbiased variance are appended to ``sink``, a dict owned by one forward call)."""

    def __init__(self, bn: _BatchNorm, name: str, mode: str):
        super().__init__()
        self.name, self.mode, self.eps = name, mode, float(bn.eps)
        self.sink: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] | None = None
        self.weight, self.bias = bn.weight, bn.bias
        for key in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(key, getattr(bn, key, None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "stored" and self.running_mean is not None:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0,
                                self.eps)
        if self.mode == "collect" and self.sink is not None:
            dims = [0] + list(range(2, x.dim()))
            xf = x.to(torch.promote_types(x.dtype, torch.float32))
            self.sink.setdefault(self.name, []).append((xf.mean(dims), xf.var(dims, correction=1)))
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


def swap_batchnorm(net: nn.Module, mode: str) -> list[PointBatchNorm]:
    """Replace every BN of ``net`` in place by a :class:`PointBatchNorm` in ``mode``."""
    swapped = []
    for name, module in list(net.named_modules()):
        if isinstance(module, _BatchNorm):
            parent, _, child = name.rpartition(".")
            new = PointBatchNorm(module, name, mode)
            setattr(net.get_submodule(parent) if parent else net, child, new)
            swapped.append(new)
    return swapped
