"""Trace a model with torch.fx and fold each eval-mode BatchNorm into the conv/linear layer before it.

BN with fixed statistics is a per-channel affine map, so conv -> BN is one conv with rescaled
weights and a bias. Folding is kept a pure function of the weights (:func:`fold_state`), so every
landscape point folds its own weights and statistics on the device, batched over points by vmap.
"""
from __future__ import annotations

import copy
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
        mean, var = state[f"{p.bn}.running_mean"], state[f"{p.bn}.running_var"]
        scale = torch.rsqrt(var + p.eps)
        if p.bn_affine:
            scale = state[f"{p.bn}.weight"] * scale
        weight = state[f"{p.layer}.weight"]
        shift = state[f"{p.layer}.bias"] - mean if p.layer_bias else -mean
        bias = shift * scale
        if p.bn_affine:
            bias = state[f"{p.bn}.bias"] + bias
        out[f"{p.layer}.weight"] = weight * scale.reshape(scale.shape + (1,) * (weight.dim() - 1))
        out[f"{p.layer}.bias"] = bias
        for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            out.pop(f"{p.bn}.{key}", None)
    return out
