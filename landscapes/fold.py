"""Trace a model with torch.fx and fold each eval-mode BatchNorm into the conv/linear layer before it
(BN with fixed statistics is a per-channel affine map). Folding is a pure function of the weights
(:func:`fold_state`), so each landscape point folds its own, on the device, batched under vmap.
"""
from __future__ import annotations

import copy
import operator
from collections import Counter
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

# Layers whose output channels are dim 0 of the weight, so a per-channel scale folds into it.
FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class FoldPair:
    """One folded pair: ``layer`` (conv/linear) whose output fed only the BN ``bn``."""

    layer: str
    bn: str
    eps: float
    layer_bias: bool  # the layer had its own bias before folding
    bn_affine: bool


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolic trace of a copy (torch.nn layers stay leaves), so folding never touches ``model``.
    Raises what fx raises for Python control flow on tensor values (e.g. adaptive ODE solvers)."""
    return fx.symbolic_trace(copy.deepcopy(model))


def _out_channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def fold_batchnorm(gm: fx.GraphModule) -> tuple[FoldPair, ...]:
    """Remove every BN whose input is a foldable layer used nowhere else; give that layer a bias.

    Mutates ``gm`` (trace a copy). BNs that only ever use batch statistics
    (``track_running_stats=False``) and layers called more than once are left alone.
    """
    modules = dict(gm.named_modules())
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    pairs = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], _BatchNorm):
            continue
        bn, prev = modules[node.target], node.args[0]
        if not (isinstance(prev, fx.Node) and prev.op == "call_module"
                and isinstance(modules[prev.target], FOLDABLE)):
            continue
        layer = modules[prev.target]
        if (len(prev.users) != 1 or calls[prev.target] != 1 or calls[node.target] != 1
                or bn.running_mean is None or _out_channels(layer) != bn.num_features):
            continue
        pairs.append(FoldPair(prev.target, node.target, float(bn.eps), layer.bias is not None, bn.affine))
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(_out_channels(layer), device=layer.weight.device,
                                                  dtype=layer.weight.dtype))
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return tuple(pairs)


def _is_global(size) -> bool:
    return size == 1 or (isinstance(size, (tuple, list)) and all(s == 1 for s in size))


def simplify_global_pool(gm: fx.GraphModule) -> int:
    """Rewrite adaptive average pooling to 1x1 as a mean over H, W (same value).

    vmap has no batching rule for the strided path adaptive_avg_pool2d takes on channels-last
    input and falls back to a slow per-point loop; a mean batches natively. Returns the count.
    """
    modules = dict(gm.named_modules())
    count = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
            size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        elif node.op == "call_module" and isinstance(modules.get(node.target), nn.AdaptiveAvgPool2d):
            size = modules[node.target].output_size
        else:
            continue
        if not _is_global(size):
            continue
        with gm.graph.inserting_after(node):
            mean = gm.graph.call_method("mean", (node.args[0], (-2, -1)), {"keepdim": True})
        node.replace_all_uses_with(mean)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return count


def fold_state(state: Mapping[str, torch.Tensor], pairs: tuple[FoldPair, ...]) -> dict[str, torch.Tensor]:
    """Weights of the folded module from a full (unfolded) state_dict-like mapping.

    For each pair, with s = gamma / sqrt(running_var + eps): W' = W * s (per output channel),
    b' = beta + (b - running_mean) * s. Pure tensor math: works on one point or under vmap.
    The BN entries are dropped; every other entry passes through.
    """
    out = dict(state)
    for p in pairs:
        weight = state[f"{p.layer}.weight"]

        def wide(key: str) -> torch.Tensor:  # fold in float64: one rounding, at the end
            return state[key].double() if state[key].dtype == torch.float32 else state[key]

        scale = torch.rsqrt(wide(f"{p.bn}.running_var") + p.eps)
        if p.bn_affine:
            scale = wide(f"{p.bn}.weight") * scale
        mean = wide(f"{p.bn}.running_mean")
        shift = wide(f"{p.layer}.bias") - mean if p.layer_bias else -mean
        bias = shift * scale
        if p.bn_affine:
            bias = wide(f"{p.bn}.bias") + bias
        out[f"{p.layer}.weight"] = (wide(f"{p.layer}.weight") * scale.reshape(scale.shape + (1,) * (weight.dim() - 1))
                                    ).to(weight.dtype)
        out[f"{p.layer}.bias"] = bias.to(weight.dtype)
        for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            out.pop(f"{p.bn}.{key}", None)
    return out


# -- CPU: convolution + ReLU (+ residual add) as one oneDNN call -----------------------------------

_RELUS = (F.relu, torch.relu)
_ADDS = (operator.add, torch.add)


def onednn_fusion_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class FusedConv2d(nn.Conv2d):
    """A Conv2d (same parameter names) that applies ReLU and/or adds a residual inside the oneDNN
    convolution: on CPU the separate add and ReLU passes over memory cost ~20% of a ResNet forward.

    The residual is written in place, so :func:`fuse_conv_pointwise` only passes one that nothing
    reads afterwards. Outside fp32 CPU inference (autocast, autograd, another device) it runs the
    unfused ops out of place, with the same result.
    """

    relu: bool = False

    @classmethod
    def of(cls, conv: nn.Conv2d, relu: bool) -> FusedConv2d:
        fused = cls.__new__(cls)
        fused.__dict__.update(conv.__dict__)  # shares the parameters and their names
        fused.relu = relu
        return fused

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if (x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled()
                or torch.is_autocast_enabled("cpu")):
            out = super().forward(x)
            out = out if residual is None else out + residual
            return F.relu(out) if self.relu else out
        args = (self.weight, self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups)
        unary = "relu" if self.relu else None
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(x, *args, unary or "none", [], "")
        return torch.ops.mkldnn._convolution_pointwise_.binary(residual, x, *args, "add", 1.0, unary, [],
                                                               "" if unary else None)


def _relu(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """"relu", "relu_" (in place: its output is its input) or None."""
    if node.op == "call_function" and node.target in _RELUS and len(node.args) == 1:
        return "relu_" if node.kwargs.get("inplace", False) else "relu"
    if node.op == "call_module" and type(modules.get(node.target)) is nn.ReLU:
        return "relu_" if modules[node.target].inplace else "relu"
    return None


def _fresh(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """The node's output is a new tensor (no view of anything else), safe to overwrite."""
    relu = _relu(node, modules)
    if relu == "relu_":
        return isinstance(node.args[0], fx.Node) and _fresh(node.args[0], modules)
    return (relu == "relu" or node.target is F.pad
            or (node.op == "call_module" and isinstance(modules.get(node.target), (nn.Conv2d, nn.Linear))))


def fuse_conv_pointwise(gm: fx.GraphModule) -> int:
    """Rewrite conv -> [add residual] -> [relu] chains as :class:`FusedConv2d` calls; returns the count.

    Inference on CPU only (the fused op has no vmap rule); mutates ``gm``. A residual is fused
    only when it is a fresh tensor computed before the convolution whose last reader is the add,
    since the add happens in place.
    Identity modules (e.g. an unused squeeze-excite slot) are dropped first.
    """
    graph, count = gm.graph, 0
    modules = dict(gm.named_modules())
    for node in list(graph.nodes):
        if node.op == "call_module" and type(modules.get(node.target)) is nn.Identity:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    position = {n: i for i, n in enumerate(graph.nodes)}
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")  # a shared conv fuses nowhere
    for node in list(graph.nodes):
        conv = modules.get(node.target) if node.op == "call_module" else None
        if (type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" or isinstance(conv.padding, str)
                or calls[node.target] != 1 or len(node.args) != 1 or node.kwargs or len(node.users) != 1):
            continue
        last, residual = node, None
        add = next(iter(node.users))
        if add.op == "call_function" and add.target in _ADDS and len(add.args) == 2 and not add.kwargs:
            other = add.args[1] if add.args[0] is node else add.args[0]
            if (isinstance(other, fx.Node) and position.get(other, len(position)) < position[node]
                    and _fresh(other, modules) and all(position[u] <= position[add] for u in other.users)):
                last, residual = add, other
        relu = next(iter(last.users)) if len(last.users) == 1 else None
        relu = relu if relu is not None and _relu(relu, modules) else None  # sole reader: in place is fine
        if residual is None and relu is None:
            continue
        fused = FusedConv2d.of(conv, relu is not None)
        parent, _, name = node.target.rpartition(".")
        setattr(gm.get_submodule(parent), name, fused)
        modules[node.target] = fused
        if residual is not None:
            node.args = (node.args[0], residual)
        (relu or last).replace_all_uses_with(node)
        for done in (relu, add if residual is not None else None):
            if done is not None:
                graph.erase_node(done)
        count += 1
    graph.lint()
    gm.recompile()
    return count
