"""How many points and images one forward takes: the memory budget, the activation memory of
one image, and the (points, images) pair that fits."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from models.checks import positive_int
from models.device import cuda_peak_bytes

__all__ = ["memory_budget", "choose_pass_size", "activation_bytes", "balanced"]


def memory_budget(device: torch.device | str, fraction: float = 0.6) -> int:
    """``fraction`` of the memory free on ``device`` now, in bytes (CPU: MemAvailable)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = 4 << 30
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        free = int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return int(free * fraction)


def balanced(total: int, size: int) -> int:
    """The smallest chunk size giving the same number of chunks as ``size`` (no tiny last chunk)."""
    return math.ceil(total / math.ceil(total / size))


def choose_pass_size(n_points: int, n_images: int, point_bytes: int, image_bytes: int, budget: int, *,
                     batch_size: int | None = None, points_per_pass: int | None = None,
                     max_batch: int = 1024) -> tuple[int, int]:
    """Points K and images B per forward with K * point_bytes + K * B * image_bytes <= budget.

    ``point_bytes``: memory one point needs whatever the batch (its weights, folded copies);
    ``image_bytes``: activation memory per image per point. B is first set to ``batch_size`` or
    min(n_images, max_batch), then K is as large as fits (at most n_points); when not even one
    point fits, B shrinks. Given values are honoured as they are; chosen ones are balanced so
    that the last chunk is not a sliver. Raises ValueError when one point and one image do not fit.
    """
    for name, v in (("n_points", n_points), ("n_images", n_images), ("max_batch", max_batch)):
        positive_int(name, v)
    if point_bytes < 0 or image_bytes <= 0:
        raise ValueError(f"point_bytes must be >= 0 and image_bytes > 0; got {point_bytes}, {image_bytes}")
    per_point = point_bytes + image_bytes
    if budget < per_point and (batch_size is None or points_per_pass is None):
        raise ValueError(f"memory budget {budget} B is below the {per_point} B that one point on one image "
                         f"needs; raise memory_budget/memory_fraction or free device memory")
    b = min(batch_size or min(n_images, max_batch), n_images)
    if points_per_pass is not None:
        k = min(points_per_pass, n_points)
        if batch_size is None:
            b = max(1, min(b, (budget - k * point_bytes) // (k * image_bytes)))
    else:
        k = budget // (point_bytes + b * image_bytes)
        if k < 1:
            if batch_size is None:
                b = max(1, (budget - point_bytes) // image_bytes)
            k = 1
        k = min(k, n_points)
    k = k if points_per_pass is not None else balanced(n_points, k)
    return k, (b if batch_size is not None else balanced(n_images, b))



def activation_bytes(net: nn.Module, gm: fx.GraphModule | None, probe: torch.Tensor, device: torch.device) -> int:
    """Activation memory per image of one forward: measured on CUDA; on CPU the peak of the
    tensors alive at once along the fx graph, or 4x the largest layer output without a graph."""
    b = probe.shape[0]
    if device.type == "cuda":
        return max(1, math.ceil(cuda_peak_bytes(lambda: net(probe), device) / b))
    if gm is not None:
        try:
            ShapeProp(gm).propagate(probe)
        except Exception:  # only an estimate: fall through to the hook count
            pass
        else:
            nodes = list(gm.graph.nodes)
            last_use = {a: i for i, n in enumerate(nodes) for a in n.all_input_nodes}
            live: dict[fx.Node, int] = {}
            peak = 0
            for i, n in enumerate(nodes):
                meta = n.meta.get("tensor_meta")
                if isinstance(meta, TensorMetadata):
                    live[n] = meta.shape.numel() * meta.dtype.itemsize
                peak = max(peak, sum(live.values()))
                for a in n.all_input_nodes:
                    if last_use.get(a) == i:
                        live.pop(a, None)
            return max(1, math.ceil(peak / b))
    sizes: list[int] = []

    def record(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel() * output.element_size())

    hooks = [m.register_forward_hook(record) for m in net.modules() if not list(m.children())]
    try:
        net(probe)
    finally:
        for h in hooks:
            h.remove()
    return max(1, math.ceil(4 * max(sizes, default=probe.numel() * probe.element_size()) / b))
