"""Loss and accuracy at many points theta0 + sum_d c_d * d_d: points built on the device, BN folded
per point (torch.fx), data resident, K points per forward under vmap (GPU) or points in parallel
threads (CPU). ``evaluate_naive`` is the per-point reference the engine is tested against.
"""
from __future__ import annotations

import copy
import math
import queue
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, vmap
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils._pytree import tree_map
from tqdm import tqdm

from .fold import (FoldPair, fold_batchnorm, fold_state, fuse_conv_pointwise, onednn_fusion_available,
                   simplify_global_pool, trace)

State = dict[str, torch.Tensor]

ENGINES = ("auto", "batched", "loop", "naive")
DTYPES = ("float32", "tf32", "bfloat16")
BN_MODES = ("stored", "batch", "recalibrate")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")

__all__ = ["EvalConfig", "EvalInfo", "Evaluator", "BatchingFallbackWarning", "evaluate_points", "evaluate_naive",
           "precision_deviation", "point_state", "choose_pass_size", "memory_budget", "ENGINES", "DTYPES",
           "BN_MODES"]


class BatchingFallbackWarning(UserWarning):
    """The engine fell back to a slower path (no BN folding, or per-point instead of batched)."""


@dataclass(frozen=True)
class EvalConfig:
    """How points are evaluated. Results do not depend on the speed settings (engine, batch_size,
    points_per_pass, channels_last, fuse_cpu, workers, compile) beyond float32 rounding; they do depend on dtype and
    bn_mode, and in the "batch"/"recalibrate" BN modes on ``stats_batch_size``.

    engine: "auto" (batched on CUDA; loop on CPU, where grouped convolutions measured slower than
      points evaluated in parallel threads),
      "batched" (K points per forward under vmap; falls back to loop, with a warning, for modules
      vmap cannot batch), "loop" (one point per forward, still folded and device resident),
      "naive" (the reference: load_state_dict per point, unfolded model).
    dtype: "float32" (true fp32: TF32 is switched off for the evaluation), "tf32" (CUDA only),
      "bfloat16" (autocast). Lower precisions report their deviation from float32 (EvalInfo).
    bn_mode: "stored" (running statistics, the paper's choice), "batch" (statistics of each
      evaluation batch of ``stats_batch_size`` images, buffers untouched), "recalibrate" (at each
      point: reset the running statistics, run the calibration data in batches of
      ``stats_batch_size`` with BN in training mode and momentum=None, i.e. the running stats
      become the plain average over batches of each batch's mean and unbiased variance, exactly
      as ``torch.optim.swa_utils.update_bn``; then evaluate with them. Only BN layers switch to
      training mode, dropout and stochastic depth stay in eval).
    batch_size / points_per_pass: images and points per forward; None picks them from
      ``memory_budget`` bytes (None: ``memory_fraction`` of the device's free memory).
    workers: the CPU loop engine evaluates this many points at once, each in its own thread with
      one intra-op thread (None: ``torch.get_num_threads()``); small convolutions scale better
      over independent points than over threads inside one op.
    channels_last: NHWC images and weights for models torch.fx can trace (the others keep their
      own layout, as the naive loop runs them).
    fuse_cpu: the CPU loop engine runs conv -> [+ residual] -> ReLU as one oneDNN convolution
      with post-ops (:func:`landscapes.fold.fuse_conv_pointwise`), saving two passes over memory.
    """

    batch_size: int | None = None
    points_per_pass: int | None = None
    engine: str = "auto"
    dtype: str = "float32"
    bn_mode: str = "stored"
    stats_batch_size: int = 128
    calibration_samples: int | None = None  # "recalibrate": first N calibration images (None: all)
    fold_bn: bool = True
    channels_last: bool = True
    fuse_cpu: bool = True                    # CPU loop engine: conv+add+ReLU as one oneDNN call
    memory_budget: int | None = None
    memory_fraction: float = 0.6
    max_batch: int | None = None             # cap for automatic batch_size (None: 128 CPU, 1024 CUDA)
    workers: int | None = None               # CPU loop: points in parallel threads (None: torch threads)
    compile: str | None = None               # torch.compile mode; "reduce-overhead" = CUDA graphs
    deviation_points: int = 3                # points re-run in float32 to measure a lower dtype
    progress: bool = False

    def __post_init__(self) -> None:
        for name, value, accepted in (("engine", self.engine, ENGINES), ("dtype", self.dtype, DTYPES),
                                      ("bn_mode", self.bn_mode, BN_MODES)):
            if value not in accepted:
                raise ValueError(f"{name} must be one of {', '.join(accepted)}; got {value!r}")
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be None or one of {', '.join(COMPILE_MODES)}; got {self.compile!r}")
        for name in ("batch_size", "points_per_pass", "calibration_samples", "memory_budget", "max_batch", "workers"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None; got {value!r}")
        if isinstance(self.stats_batch_size, bool) or not isinstance(self.stats_batch_size, int) \
                or self.stats_batch_size < 2:
            raise ValueError(f"stats_batch_size must be an integer >= 2 (batch statistics need two images); "
                             f"got {self.stats_batch_size!r}")
        if not 0.0 < self.memory_fraction <= 1.0:
            raise ValueError(f"memory_fraction must lie in (0, 1]; got {self.memory_fraction}")
        if isinstance(self.deviation_points, bool) or not isinstance(self.deviation_points, int) \
                or self.deviation_points < 0:
            raise ValueError(f"deviation_points must be an integer >= 0; got {self.deviation_points!r}")


@dataclass
class EvalInfo:
    """What one evaluation did, for logs and surface-file attributes (see :meth:`attrs`)."""

    engine: str                 # engine that ran: "batched", "loop" or "naive"
    device: str
    dtype: str
    bn_mode: str
    points: int
    images: int
    batch_size: int
    points_per_pass: int
    folded_bn: int              # BN layers folded into the preceding conv/linear
    traced: bool                # torch.fx could trace the model
    seconds: float = 0.0
    notices: list[str] = field(default_factory=list)
    deviation: dict[str, float] | None = None  # lower dtype vs float32 at a few points
    workers: int = 1            # threads evaluating points concurrently (CPU loop engine)
    fused: int = 0              # convolutions with their add/ReLU fused (CPU loop engine)

    @property
    def image_evals_per_s(self) -> float:
        return self.points * self.images / self.seconds if self.seconds > 0 else math.nan

    def attrs(self) -> dict[str, Any]:
        """Flat, HDF5-attribute-friendly values (strings, numbers), keys prefixed ``eval_``."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if key == "deviation":
                for k, v in (value or {}).items():
                    out[f"eval_deviation_{k}"] = v
            elif key == "notices":
                out["eval_notices"] = "\n".join(value)
            else:
                out[f"eval_{key}"] = value
        out["eval_image_evals_per_s"] = self.image_evals_per_s
        return out


# ------------------------------------------------------------------------------------------------
# The reference
# ------------------------------------------------------------------------------------------------

def point_state(center: State, directions: Sequence[State], coord: Sequence[float]) -> State:
    """center + sum_d coord[d] * directions[d]; keys absent from a direction stay as in center."""
    state = dict(center)
    for c, direction in zip(coord, directions):
        for key, d in direction.items():
            state[key] = state[key] + float(c) * d
    return state


def _bn_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


@torch.no_grad()
def evaluate_naive(model: nn.Module, center: State, directions: Sequence[State], coords: torch.Tensor,
                   data, config: EvalConfig = EvalConfig(), *, calibration_data=None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: on a copy of the model, load each point's state_dict and pass over the data
    with the model's own modules, BN per ``config.bn_mode`` done the plain PyTorch way (for
    "recalibrate" exactly ``torch.optim.swa_utils.update_bn`` restricted to the BN layers).
    Float32 and slow by design; the engine is tested against it."""
    coords = _check_coords(coords, len(directions))
    _check_data(data)
    net = copy.deepcopy(model).to(data.x.device).eval()
    bns = _bn_layers(net)
    batch = config.stats_batch_size if config.bn_mode == "batch" else (config.batch_size or 128)
    calib = _calibration_data(data, calibration_data, config) if config.bn_mode == "recalibrate" else None
    losses, accs = [], []
    for coord in coords.tolist():
        net.load_state_dict(point_state(center, directions, coord))
        if calib is not None:
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None  # cumulative average over the calibration batches
                bn.train()
            for x, _ in calib.batches(config.stats_batch_size):
                net(x)
            for bn in bns:
                bn.eval()
        elif config.bn_mode == "batch":
            for bn in bns:  # batch statistics; the buffers it updates are reloaded at the next point
                bn.train()
        total_loss, correct = 0.0, 0
        for x, y in data.batches(batch):
            out = net(x)
            total_loss += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
        losses.append(total_loss / len(data))
        accs.append(100.0 * correct / len(data))
    return torch.tensor(losses, dtype=torch.float64), torch.tensor(accs, dtype=torch.float64)


# ------------------------------------------------------------------------------------------------
# Memory: budget and pass size
# ------------------------------------------------------------------------------------------------

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


def _balanced(total: int, size: int) -> int:
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
        if v < 1:
            raise ValueError(f"{name} must be >= 1; got {v}")
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
    k = k if points_per_pass is not None else _balanced(n_points, k)
    return k, (b if batch_size is not None else _balanced(n_images, b))


# ------------------------------------------------------------------------------------------------
# The engine
# ------------------------------------------------------------------------------------------------

class _PointBatchNorm(nn.Module):
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


def _swap_batchnorm(net: nn.Module, mode: str) -> list[_PointBatchNorm]:
    """Replace every BN of ``net`` in place by a :class:`_PointBatchNorm` in ``mode``."""
    swapped = []
    for name, module in list(net.named_modules()):
        if isinstance(module, _BatchNorm):
            parent, _, child = name.rpartition(".")
            new = _PointBatchNorm(module, name, mode)
            setattr(net.get_submodule(parent) if parent else net, child, new)
            swapped.append(new)
    return swapped


@contextmanager
def _precision(dtype: str, device: torch.device) -> Iterator[None]:
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


def _check_coords(coords: torch.Tensor | Sequence, n_dirs: int) -> torch.Tensor:
    coords = torch.as_tensor(coords, dtype=torch.float64)
    if coords.dim() == 1 and n_dirs == 1:
        coords = coords[:, None]
    if coords.dim() != 2 or coords.shape[1] != n_dirs:
        raise ValueError(f"coords must have shape (K, {n_dirs}) for {n_dirs} direction(s); got "
                         f"{tuple(coords.shape)}")
    if not torch.isfinite(coords).all():
        raise ValueError("coords must be finite")
    return coords


def _check_data(data) -> None:
    if not (hasattr(data, "x") and hasattr(data, "y") and hasattr(data, "batches")):
        raise ValueError(f"data must be a models.data.DeviceData (x, y tensors on one device); got "
                         f"{type(data).__name__}")
    if len(data) < 1 or data.x.shape[0] != data.y.shape[0] or data.x.device != data.y.device:
        raise ValueError(f"data must hold N >= 1 images and N labels on one device; got x "
                         f"{tuple(data.x.shape)} on {data.x.device}, y {tuple(data.y.shape)} on {data.y.device}")


def _check_state(model: nn.Module, center: Mapping[str, torch.Tensor], directions: Sequence[State]) -> None:
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


def _calibration_data(data, calibration_data, config: EvalConfig):
    calib = data if calibration_data is None else calibration_data
    if calibration_data is not None:
        _check_data(calibration_data)
    n = config.calibration_samples
    if n is not None and n < len(calib):
        calib = type(calib)(calib.x[:n], calib.y[:n])
    return calib


def _activation_bytes(net: nn.Module, gm: fx.GraphModule | None, probe: torch.Tensor, device: torch.device) -> int:
    """Activation memory per image of one forward: measured on CUDA; on CPU the peak of the
    tensors alive at once along the fx graph, or 4x the largest layer output without a graph."""
    b = probe.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        net(probe)
        return max(1, math.ceil((torch.cuda.max_memory_allocated(device) - base) / b))
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


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """NHWC images. With one channel, ``contiguous(channels_last)`` keeps NCHW strides, which are
    also valid NHWC ones, and convolutions then pick NCHW for the whole network (measured 2x slower
    on MNIST here); the explicit channel stride 1 makes them choose channels-last."""
    x = x.contiguous(memory_format=torch.channels_last)
    if x.shape[1] == 1 and x.stride(1) != 1:
        n, _, h, w = x.shape
        x = torch.empty_strided(x.shape, (h * w, 1, w, 1), dtype=x.dtype, device=x.device).copy_(x)
    return x


def _batches(x: torch.Tensor, y: torch.Tensor, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, x.shape[0], size):
        yield x[start:start + size], y[start:start + size]


def _first(tree: Any, dims: Any) -> Any:
    """Point 0 of an argument whose batched entries (per ``dims``) lead with the point dim."""
    if dims is None:
        return tree
    if isinstance(tree, dict):
        return {k: v if (dims.get(k) if isinstance(dims, dict) else dims) is None else v[0]
                for k, v in tree.items()}
    return tree[0]


def _vmap_or_single(fn: Callable, in_dims: tuple, batched: bool) -> Callable:
    """vmap(fn), or for a single point the same contract without vmap (outputs get the K=1 dim)."""
    if batched:
        return vmap(fn, in_dims=in_dims)

    def single(*args: Any) -> Any:
        out = fn(*(_first(a, d) for a, d in zip(args, in_dims)))
        return tree_map(lambda t: t.unsqueeze(0), out)
    return single


def _work_units(n_points: int, workers: int, n_batches: int, split_tail: bool = True
                ) -> list[tuple[int, int, int]]:
    """(point, first batch, stop batch) units for ``workers`` threads: whole points, except that the
    points of an incomplete last round are cut into ``workers`` runs of batches each, so no thread
    idles while another finishes them (5 points on 2 threads would otherwise run at 5/6 speed).
    ``split_tail=False`` keeps points whole (when per-point preparation is costly)."""
    whole = n_points - (n_points % workers if split_tail else 0)
    units = [(i, 0, n_batches) for i in range(whole)]
    parts = min(workers, n_batches)
    for i in range(whole, n_points):
        units += [(i, k * n_batches // parts, (k + 1) * n_batches // parts) for k in range(parts)]
    return units


def _mismatch(logits: torch.Tensor, reference: torch.Tensor, name: str, reference_name: str) -> str | None:
    """None if ``logits`` reproduce ``reference`` (finite in the same places, equal to 1e-4 of scale)."""
    finite = torch.isfinite(reference)
    if not torch.equal(finite, torch.isfinite(logits)):
        return f"{name} logits are non-finite where {reference_name} logits are not (or vice versa)"
    if not finite.any():
        return None
    diff = (logits - reference)[finite].abs().max().item()
    scale = reference[finite].abs().max().item()
    if not diff <= 1e-4 * (scale + 1e-6):
        return f"{name} logits differ from {reference_name} logits by {diff:.3g} (scale {scale:.3g})"
    return None


class _Nets:
    """The modules one thread evaluates with: functional_call swaps a module's tensors while it
    runs, so concurrent threads each need their own (:meth:`replica`)."""

    def __init__(self, eval_net: nn.Module, stats_net: nn.Module | None):
        self.eval_net, self.stats_net = eval_net, stats_net
        self.eval_names = set(eval_net.state_dict())
        self.stats_bns = [] if stats_net is None else [m for m in stats_net.modules()
                                                       if isinstance(m, _PointBatchNorm)]
        self.stats_names = set() if stats_net is None else set(stats_net.state_dict())

    def replica(self) -> _Nets:
        return _Nets(copy.deepcopy(self.eval_net), copy.deepcopy(self.stats_net))

    def forward(self, params: State, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.eval_net, params, (x,))

    def collect(self, state: State, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per BN: summed batch means and unbiased variances over its calls in one forward, and
        the number of calls (a BN applied twice contributes two batches, as in PyTorch)."""
        sink: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for bn in self.stats_bns:
            bn.sink = sink
        try:
            functional_call(self.stats_net, {k: v for k, v in state.items() if k in self.stats_names}, (x,))
        finally:
            for bn in self.stats_bns:
                bn.sink = None
        return {name: (sum(m for m, _ in calls), sum(v for _, v in calls),
                       torch.tensor(float(len(calls)), device=x.device))
                for name, calls in sink.items()}


class Evaluator:
    """One model, center, directions and data set, prepared once, evaluated at any points.

    Preparation copies the model to the data's device, traces it with torch.fx, folds BN into the
    convolutions, and checks on a few images that vmap reproduces the per-point forward. Where fx
    cannot trace the model, BN stays unfolded; where vmap cannot batch it (data-dependent control
    flow such as adaptive ODE solvers), points run one at a time. Both emit a
    :class:`BatchingFallbackWarning` and are listed in ``notices``. On CPU the loop engine runs
    ``workers`` points concurrently. Not thread-safe itself: one Evaluator per calling thread.
    """

    def __init__(self, model: nn.Module, center: Mapping[str, torch.Tensor], directions: Sequence[State],
                 data, config: EvalConfig = EvalConfig(), *, calibration_data=None):
        _check_data(data)
        _check_state(model, center, directions)
        self.config, self.data, self.device = config, data, data.x.device
        if config.dtype == "tf32" and self.device.type != "cuda":
            raise ValueError(f"dtype 'tf32' exists only on CUDA devices and the data is on {self.device}; "
                             f"use 'float32' or 'bfloat16'")
        self.model, self.n_dirs = model, len(directions)
        self.notices: list[str] = []
        self.gm: fx.GraphModule | None = None
        self.folds: tuple[FoldPair, ...] = ()
        self.fused = 0  # convolutions fused with their add/ReLU (CPU loop engine)
        if config.engine != "naive":
            self._build_nets(model)
        # Untraceable models run as the reference runs them: their own layout. (Adaptive ODE
        # solvers, the usual reason, can turn the rounding of another layout into a different
        # step sequence and a visibly different loss.)
        channels_last = config.channels_last and self.gm is not None
        layout = torch.channels_last if channels_last else torch.contiguous_format

        def resident(t: torch.Tensor) -> torch.Tensor:
            t = t.detach().to(self.device)
            return t.contiguous(memory_format=layout) if t.dim() == 4 else t

        def images(x: torch.Tensor) -> torch.Tensor:
            return _channels_last(x.to(self.device)) if channels_last and x.dim() == 4 else resident(x)

        self._x = images(data.x)
        self._calib: _Data | None = None
        if config.bn_mode == "recalibrate":
            calib = _calibration_data(data, calibration_data, config)
            self._calib = _Data(images(calib.x), calib.y.to(self.device))
        self.center: State = {k: resident(v) for k, v in center.items()}
        # key -> [(direction index, tensor)]; integer buffers cannot move and stay as in the center.
        self._terms: dict[str, list[tuple[int, torch.Tensor]]] = {}
        for i, direction in enumerate(directions):
            for key, d in direction.items():
                if self.center[key].is_floating_point():
                    self._terms.setdefault(key, []).append((i, resident(d.to(self.center[key].dtype))))
        self.directions: list[State] = [{} for _ in directions]  # on the device, floating entries
        for key, terms in self._terms.items():
            for i, d in terms:
                self.directions[i][key] = d
        self._sizes: dict[int, tuple[int, int]] = {}
        self._image_bytes: int | None = None
        self._compiled: dict[bool, Callable] = {}
        if config.engine == "naive":
            self.engine = "naive"
            return
        self.engine = self._pick_engine()
        if (self.engine == "loop" and self.device.type == "cpu" and config.fuse_cpu and config.compile is None
                and isinstance(self.nets.eval_net, fx.GraphModule) and onednn_fusion_available()):
            self._fuse()

    # -- preparation ------------------------------------------------------------------------------

    def _build_nets(self, model: nn.Module) -> None:
        """eval_net computes the logits; stats_net (recalibrate only) collects BN statistics.
        Both are traced copies where fx can trace the model, with BN swapped for
        :class:`_PointBatchNorm`; eval_net has BN folded where the BN mode allows."""
        cfg = self.config
        base = copy.deepcopy(model).to(self.device).eval()
        has_bn = bool(_bn_layers(base))
        try:
            self.gm = trace(base)
        except Exception as err:  # fx raises many types for untraceable Python
            message = f"torch.fx cannot trace {type(model).__name__} ({_short(err)})"
            if has_bn:
                self._notice(f"{message}; its BN layers stay unfolded")
            else:  # nothing would have been folded: record it, do not warn
                self.notices.append(message)

        def prepared_copy(fold: bool) -> tuple[nn.Module, tuple[FoldPair, ...]]:
            if self.gm is None:
                return copy.deepcopy(base), ()
            net = copy.deepcopy(self.gm)
            simplify_global_pool(net)
            return net, fold_batchnorm(net) if fold else ()

        eval_net, self.folds = prepared_copy(cfg.fold_bn and cfg.bn_mode in ("stored", "recalibrate"))
        _swap_batchnorm(eval_net, "batch" if cfg.bn_mode == "batch" else "stored")
        stats_net = None
        if cfg.bn_mode == "recalibrate":
            stats_net, _ = prepared_copy(False)
            _swap_batchnorm(stats_net, "collect")
        self.nets = _Nets(eval_net, stats_net)
        self._replicas = [self.nets]

    def _notice(self, message: str) -> None:
        self.notices.append(message)
        warnings.warn(message, BatchingFallbackWarning, stacklevel=4)

    def _pick_engine(self) -> str:
        requested = self.config.engine
        if requested == "loop" or (requested == "auto" and self.device.type != "cuda"):
            return "loop"
        reason = self._probe_vmap()
        if reason is None:
            return "batched"
        self._notice(f"vmap cannot batch {type(self.model).__name__} ({reason}); evaluating one point "
                     f"per forward instead")
        return "loop"

    def _probe_vmap(self) -> str | None:
        """None if two points under vmap give the logits of two separate forwards on a few images."""
        n = min(len(self.data), self.config.stats_batch_size if self.config.bn_mode == "batch" else 8)
        coords = torch.zeros(2, self.n_dirs, dtype=torch.float64)
        coords[1] = 0.5
        x, nets = self._x[:n], self.nets
        try:
            with torch.no_grad(), _precision("float32", self.device):
                logits = [_vmap_or_single(nets.forward, (0, None), batched)(self._prepared(nets, c, batched, x), x)
                          for batched, c in ((True, coords), (False, coords[:1]), (False, coords[1:]))]
        except Exception as err:  # whatever vmap raises: data-dependent control flow, missing rules
            return _short(err)
        return _mismatch(logits[0], torch.cat(logits[1:]), "batched", "per-point")

    def _fuse(self) -> None:
        """CPU loop engine: fuse conv/add/ReLU (:func:`fuse_conv_pointwise`) in a copy of eval_net,
        and keep it only if it reproduces the unfused logits on a few images (oneDNN builds differ
        across platforms); otherwise say why and stay unfused."""
        fused = copy.deepcopy(self.nets.eval_net)
        count = fuse_conv_pointwise(fused)
        if not count:
            return
        nets = _Nets(fused, self.nets.stats_net)
        x = self._x[: min(len(self.data), 4)]
        center = torch.zeros(1, self.n_dirs, dtype=torch.float64)
        try:
            with torch.no_grad(), _precision("float32", self.device):
                logits = [_vmap_or_single(n.forward, (0, None), False)(self._prepared(n, center, False, x), x)
                          for n in (nets, self.nets)]
        except Exception as err:  # whatever the oneDNN op raises on this platform
            problem: str | None = _short(err)
        else:
            problem = _mismatch(*logits, "fused", "unfused")
        if problem is not None:
            self._notice(f"oneDNN conv+add+ReLU fusion is off: {problem}")
            return
        self.nets, self._replicas, self.fused = nets, [nets], count

    def workers(self, n_points: int) -> int:
        """Threads evaluating points concurrently: CPU loop engine only (see EvalConfig.workers)."""
        if self.engine != "loop" or self.device.type != "cpu" or self.config.compile is not None:
            return 1
        return max(1, min(self.config.workers or torch.get_num_threads(), n_points))

    # -- per-point math (pure, vmappable) -------------------------------------------------------------

    def _states(self, coords: torch.Tensor) -> tuple[State, dict[str, int | None]]:
        """Point states for K coordinates: moved entries get a leading K dim, the rest are shared.
        Terms are added in :func:`point_state`'s order, so float32 rounding matches the reference."""
        k = coords.shape[0]
        c = coords.to(self.device, torch.float32)
        state, dims = dict(self.center), dict.fromkeys(self.center)
        for key, terms in self._terms.items():
            v = self.center[key]
            for i, d in terms:
                v = v + c[:, i].reshape((k,) + (1,) * d.dim()) * d
            state[key], dims[key] = v, 0
        if all(d is None for d in dims.values()):  # vmap needs one batched input
            key = next(iter(self.center))
            state[key], dims[key] = self.center[key].expand((k,) + self.center[key].shape), 0
        return state, dims

    def _eval_params(self, state: State) -> State:
        """eval_net's tensors for one point: BN folded where it applies."""
        if self.folds:
            state = fold_state(state, self.folds)
        return {k: v for k, v in state.items() if k in self.nets.eval_names}

    def _recalibrate(self, nets: _Nets, state: State, dims: dict, batched: bool, calib_x: torch.Tensor
                     ) -> tuple[State, dict]:
        """Each BN's running statistics become the average of its calibration batches' statistics."""
        collect = _vmap_or_single(nets.collect, (dims, None), batched)
        totals: dict[str, list[torch.Tensor]] = {}
        for start in range(0, calib_x.shape[0], self.config.stats_batch_size):
            x = calib_x[start:start + self.config.stats_batch_size]
            for name, stats in collect(state, x).items():
                previous = totals.get(name)
                totals[name] = list(stats) if previous is None else [t + s for t, s in zip(previous, stats)]
        state, dims = dict(state), dict(dims)
        for name, (mean, var, count) in totals.items():
            count = count.reshape(count.shape + (1,))
            state[f"{name}.running_mean"], state[f"{name}.running_var"] = mean / count, var / count
            dims[f"{name}.running_mean"] = dims[f"{name}.running_var"] = 0
        return state, dims

    def _prepared(self, nets: _Nets, coords: torch.Tensor, batched: bool, calib_x: torch.Tensor | None = None
                  ) -> State:
        """eval_net's tensors for K points, each with a leading K dim (``calib_x``: calibration
        images for bn_mode "recalibrate", default the configured calibration data)."""
        state, dims = self._states(coords)
        if self.config.bn_mode == "recalibrate":
            calib_x = self._calib.x if calib_x is None else calib_x
            state, dims = self._recalibrate(nets, state, dims, batched, calib_x)
        return _vmap_or_single(self._eval_params, (dims,), batched)(state)

    # -- sizes ----------------------------------------------------------------------------------------

    def pass_size(self, n_points: int) -> tuple[int, int]:
        """(points, images) per forward for ``n_points`` points: from the config, else from memory
        (shared by the concurrent CPU workers)."""
        if n_points in self._sizes:
            return self._sizes[n_points]
        cfg = self.config
        fixed_batch = cfg.stats_batch_size if cfg.bn_mode == "batch" else cfg.batch_size
        points = 1 if self.engine in ("loop", "naive") else cfg.points_per_pass
        if self.engine == "naive":
            sizes = (1, min(fixed_batch or 128, len(self.data)))
        elif fixed_batch is not None and points is not None:
            sizes = (min(points, n_points), min(fixed_batch, len(self.data)))
        else:
            budget = (cfg.memory_budget or memory_budget(self.device, cfg.memory_fraction)) // self.workers(n_points)
            # A point holds its moved weights, their folded copies and vmap's reshaped copies.
            point_bytes = 3 * sum(v.numel() * v.element_size() for v in self.center.values())
            if self._image_bytes is None:  # x2: workspaces, allocator slack, vmap's layout copies
                with torch.no_grad(), _precision(cfg.dtype, self.device):
                    self._image_bytes = 2 * _activation_bytes(self.nets.eval_net, self.gm,
                                                              self._x[: min(len(self.data), 4)], self.device)
            # CPU: batches beyond 128 images measured no faster per image, and cost each thread memory.
            max_batch = cfg.max_batch or (1024 if self.device.type == "cuda" else 128)
            sizes = choose_pass_size(n_points, len(self.data), point_bytes, self._image_bytes, budget,
                                     batch_size=fixed_batch, points_per_pass=points, max_batch=max_batch)
        self._sizes[n_points] = sizes
        return sizes

    # -- evaluation -----------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, coords: torch.Tensor | Sequence, dtype: str | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, EvalInfo]:
        """Mean cross-entropy and accuracy (%) at each row of ``coords`` (K, n_dirs): two float64
        CPU tensors of shape (K,), and the :class:`EvalInfo` of the call. ``dtype`` overrides the
        config's (used to re-run points in float32)."""
        coords = _check_coords(coords, self.n_dirs)
        dtype = dtype or self.config.dtype
        start = time.perf_counter()
        k_pass, b = self.pass_size(coords.shape[0])
        workers = 1
        if self.engine == "naive":
            loss, acc = evaluate_naive(self.model, self.center, self.directions, coords, self.data, self.config,
                                       calibration_data=self._calib)
        elif self.workers(coords.shape[0]) > 1:
            workers = self.workers(coords.shape[0])
            loss, _, correct = self._run_parallel(coords, b, dtype, workers)
            loss, acc = loss / len(self.data), 100.0 * correct.double() / len(self.data)
        else:
            loss, _, correct, k_pass, b = self._run(coords, k_pass, b, dtype)
            loss, acc = loss / len(self.data), 100.0 * correct.double() / len(self.data)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        info = EvalInfo(self.engine, str(self.device), dtype, self.config.bn_mode, coords.shape[0], len(self.data),
                        b, k_pass, len(self.folds), self.gm is not None, time.perf_counter() - start,
                        list(self.notices), workers=workers, fused=self.fused)
        return loss, acc, info

    @torch.no_grad()
    def sums(self, coords: torch.Tensor | Sequence, images: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per point over the images ``images`` (a range of the data): summed cross-entropy, summed
        squared cross-entropy (float64) and correct count (int64), CPU tensors of shape (K,). The
        per-image statistics behind standard errors and adaptive sampling (landscapes.sampling),
        from the same forwards as the loss."""
        coords = _check_coords(coords, self.n_dirs)
        if self.engine == "naive":
            raise ValueError("per-image sums need the engine (batched or loop), not the naive reference")
        start, stop, _ = images.indices(len(self.data))
        k_pass, b = self.pass_size(coords.shape[0])
        b = _balanced(max(stop - start, 1), min(b, max(stop - start, 1)))
        if self.workers(coords.shape[0]) > 1:
            return self._run_parallel(coords, b, self.config.dtype, self.workers(coords.shape[0]), images)
        return self._run(coords, k_pass, b, self.config.dtype, images)[:3]

    def _run(self, coords: torch.Tensor, k_pass: int, b: int, dtype: str, images: slice = slice(None)
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
        """Summed loss, summed squared loss and correct count over ``images``, and the (points,
        images) per forward finally used: on running out of memory the chunk is retried with half
        the points, then half the images (never below the BN-statistics batch in bn_mode "batch"),
        and later calls start from the smaller size."""
        n_points = coords.shape[0]
        loss = torch.zeros(n_points, dtype=torch.float64, device=self.device)
        sq = torch.zeros(n_points, dtype=torch.float64, device=self.device)
        correct = torch.zeros(n_points, dtype=torch.int64, device=self.device)
        batched = self.engine == "batched"
        if not batched:
            k_pass = 1
        bar = tqdm(total=n_points, unit="pt", desc="evaluate", disable=None if self.config.progress else True,
                   leave=False)
        first = 0
        try:
            with _precision(dtype, self.device):
                while first < n_points:
                    c = coords[first:first + k_pass]
                    try:
                        chunk_loss, chunk_sq, chunk_correct = self._chunk(self.nets, c, k_pass, b, batched, images)
                    except torch.OutOfMemoryError:
                        if self.device.type == "cuda":
                            torch.cuda.empty_cache()
                        if k_pass > 1:
                            k_pass = (k_pass + 1) // 2
                        elif b > 1 and self.config.bn_mode != "batch":
                            b = (b + 1) // 2
                        else:
                            raise
                        self._notice(f"out of memory; continuing with {k_pass} points x {b} images per forward")
                        self._sizes = {key: (min(k, k_pass), min(bb, b)) for key, (k, bb) in self._sizes.items()}
                        continue
                    loss[first:first + len(c)] = chunk_loss
                    sq[first:first + len(c)] = chunk_sq
                    correct[first:first + len(c)] = chunk_correct
                    first += len(c)
                    bar.update(len(c))
        finally:
            bar.close()
        return loss.cpu(), sq.cpu(), correct.cpu(), k_pass, b

    def _run_parallel(self, coords: torch.Tensor, b: int, dtype: str, workers: int, images: slice = slice(None)
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CPU: ``workers`` threads with one intra-op thread each, taking work units (a point, or a
        run of its image batches: :func:`_work_units`) in turn.

        Small convolutions scale poorly over intra-op threads (2 threads on one point: 1.6x; on two
        points: 2.0x, RESULTS.md), and OpenMP threads waiting at barriers for a descheduled sibling
        suffer most on a shared machine; independent points need no synchronisation. Each thread
        gets its own module replica, since functional_call swaps a module's tensors while it runs.
        """
        n_points = coords.shape[0]
        lo, hi, _ = images.indices(len(self.data))
        n = hi - lo
        while len(self._replicas) < workers:
            self._replicas.append(self.nets.replica())
        free: queue.SimpleQueue[_Nets] = queue.SimpleQueue()
        for nets in self._replicas[:workers]:
            free.put(nets)
        n_batches = -(-n // b)
        units = _work_units(n_points, workers, n_batches, split_tail=self.config.bn_mode != "recalibrate")

        def run(unit: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            i, first, stop = unit
            nets = free.get()
            try:
                with torch.no_grad(), _precision(dtype, self.device):  # both are thread-local
                    return self._chunk(nets, coords[i:i + 1], 1, b, False,
                                       images=slice(lo + first * b, min(lo + stop * b, hi)))
            finally:
                free.put(nets)

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # read by each new worker thread when it first runs an op
        bar = tqdm(total=n_points, unit="pt", desc="evaluate", disable=None if self.config.progress else True,
                   leave=False)
        loss = torch.zeros(n_points, dtype=torch.float64)
        sq = torch.zeros(n_points, dtype=torch.float64)
        correct = torch.zeros(n_points, dtype=torch.int64)
        try:
            with ThreadPoolExecutor(workers) as pool:
                futures = {pool.submit(run, unit): unit for unit in units}
                for future in as_completed(futures):
                    future.result()
                    _, first, stop = futures[future]
                    bar.update((stop - first) / n_batches)
            for future, (i, _, _) in futures.items():  # summed in unit order: the same result every run
                part_loss, part_sq, part_correct = future.result()
                loss[i] += part_loss.cpu()[0]
                sq[i] += part_sq.cpu()[0]
                correct[i] += part_correct.cpu()[0]
        finally:
            torch.set_num_threads(threads)
            bar.close()
        return loss, sq, correct

    def _chunk(self, nets: _Nets, c: torch.Tensor, k_pass: int, b: int, batched: bool, images: slice = slice(None)
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Summed cross-entropy, summed squared cross-entropy (float64) and correct counts of the
        points ``c`` over the data (``images``: a range of it)."""
        k = c.shape[0]
        static = self.config.compile is not None  # fixed shapes (CUDA graphs): pad chunk and batch
        if static and batched and k < k_pass:
            c = torch.cat([c, c[-1:].expand(k_pass - k, -1)])
        fwd = self._forward_fn(nets, batched)
        params = self._prepared(nets, c, batched)
        loss = torch.zeros(k, dtype=torch.float64, device=self.device)
        sq = torch.zeros(k, dtype=torch.float64, device=self.device)
        correct = torch.zeros(k, dtype=torch.int64, device=self.device)
        for x, y in _batches(self._x[images], self.data.y[images], b):
            valid = x.shape[0]
            if static and valid < b:
                x = torch.cat([x, x[-1:].expand((b - valid,) + x.shape[1:])])
            out = fwd(params, x)[:k, :valid]
            out = out.to(torch.promote_types(out.dtype, torch.float32))  # bf16 up; float64 stays
            ce = F.cross_entropy(out.flatten(0, 1), y.repeat(k), reduction="none")
            ce = ce.view(k, valid).double()
            loss += ce.sum(1)
            sq += ce.square().sum(1)
            correct += (out.argmax(-1) == y).sum(1)
        return loss, sq, correct

    def _forward_fn(self, nets: _Nets, batched: bool) -> Callable:
        """The (vmapped) forward, compiled once per Evaluator when config.compile is set."""
        fwd = _vmap_or_single(nets.forward, (0, None), batched)
        if self.config.compile is None:
            return fwd
        if batched not in self._compiled:
            self._compiled[batched] = torch.compile(fwd, mode=self.config.compile, dynamic=False)
        return self._compiled[batched]

    def deviation(self, coords: torch.Tensor | Sequence, loss: torch.Tensor, acc: torch.Tensor,
                  n_points: int | None = None) -> dict[str, float]:
        """Deviation of results computed in a lower dtype (``loss``, ``acc`` at ``coords``) from
        float32, re-running ``n_points`` of them (evenly spread; default config.deviation_points)."""
        coords = _check_coords(coords, self.n_dirs)
        n_points = self.config.deviation_points if n_points is None else n_points
        idx = torch.linspace(0, coords.shape[0] - 1, min(n_points, coords.shape[0])).round().long().unique()
        ref_loss, ref_acc, _ = self.evaluate(coords[idx], dtype="float32")
        d_loss = (loss[idx] - ref_loss).abs()
        return {"points": float(len(idx)), "max_abs_loss": d_loss.max().item(),
                "max_rel_loss": (d_loss / ref_loss.abs().clamp_min(1e-12)).max().item(),
                "max_abs_acc": (acc[idx] - ref_acc).abs().max().item()}


class _Data:
    """Minimal DeviceData stand-in for tensors the engine already holds."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.y.shape[0]

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return _batches(self.x, self.y, batch_size)


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def evaluate_points(model: nn.Module, center: State, directions: Sequence[State], coords: torch.Tensor,
                    data, config: EvalConfig = EvalConfig(), *, calibration_data=None, return_info: bool = False):
    """Mean cross-entropy and accuracy (%) at each row of ``coords`` (shape (K, len(directions))).

    ``center`` is a full state_dict; each direction holds the keys it perturbs. ``data`` is a
    ``models.data.DeviceData`` (its device is where the work runs). Returns two float64 CPU
    tensors of shape (K,); with ``return_info=True`` also an :class:`EvalInfo` whose
    ``deviation`` (for dtype "tf32"/"bfloat16") compares ``config.deviation_points`` points with
    float32. ``calibration_data`` feeds bn_mode "recalibrate" (default: ``data``). For many
    calls on one model, build an :class:`Evaluator` once instead.
    """
    evaluator = Evaluator(model, center, directions, data, config, calibration_data=calibration_data)
    loss, acc, info = evaluator.evaluate(coords)
    if not return_info:
        return loss, acc
    if config.dtype != "float32" and config.deviation_points > 0:
        info.deviation = evaluator.deviation(coords, loss, acc)
    return loss, acc, info


def precision_deviation(model: nn.Module, center: State, directions: Sequence[State], coords: torch.Tensor,
                        data, config: EvalConfig, n_points: int | None = None, *, calibration_data=None
                        ) -> dict[str, float]:
    """Max abs / relative deviation of loss, and max abs deviation of accuracy (points of %),
    between ``config.dtype`` and float32 at ``n_points`` of ``coords`` (evenly spread)."""
    evaluator = Evaluator(model, center, directions, data, config, calibration_data=calibration_data)
    coords = _check_coords(coords, len(directions))
    n_points = config.deviation_points if n_points is None else n_points
    idx = torch.linspace(0, coords.shape[0] - 1, min(max(n_points, 1), coords.shape[0])).round().long().unique()
    loss, acc, _ = evaluator.evaluate(coords[idx])
    return evaluator.deviation(coords[idx], loss, acc, n_points=len(idx))
