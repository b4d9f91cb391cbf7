"""Loss and accuracy at many points theta0 + sum_d c_d * d_d: points built on the device, BN folded
per point (torch.fx), data resident, K points per forward under vmap (GPU) or points in parallel
threads (CPU). ``evaluate_naive`` (:mod:`landscapes.reference`) is the per-point reference the
engine is tested against.

The engine's neighbours, one job each: :mod:`landscapes.evalconfig` (options, results),
:mod:`landscapes.reference` (the reference loop), :mod:`landscapes.sizing` (points and images per
forward), :mod:`landscapes.pointbn` (the BatchNorm stand-in), :mod:`landscapes.precision`
(numeric modes), :mod:`landscapes.inputs` (input checks), :mod:`landscapes.workunits` (CPU threads).
"""
from __future__ import annotations

import copy
import queue
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, vmap
from torch.utils._pytree import tree_map
from tqdm import tqdm

from models.data import DeviceData

from .directions import State
from .evalconfig import BatchingFallbackWarning, EvalConfig, EvalInfo
from .fold import (FoldPair, fold_batchnorm, fold_state, fuse_conv_pointwise, onednn_fusion_available,
                   simplify_global_pool, trace)
from .grid import spread_indices
from .inputs import check_coords, check_data, check_state, select_calibration_data
from .pointbn import PointBatchNorm, swap_batchnorm
from .precision import precision
from .reference import bn_layers, evaluate_naive
from .sizing import activation_bytes, balanced, choose_pass_size, memory_budget
from .workunits import work_units

# The public surface; the option names (ENGINES, ...) live in landscapes.evalconfig.
__all__ = ["EvalConfig", "EvalInfo", "Evaluator", "BatchingFallbackWarning", "evaluate_points", "evaluate_naive"]


def channels_last(x: torch.Tensor) -> torch.Tensor:
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
                                                       if isinstance(m, PointBatchNorm)]
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
        check_data(data)
        check_state(model, center, directions)
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
        nhwc = config.channels_last and self.gm is not None
        layout = torch.channels_last if nhwc else torch.contiguous_format

        def resident(t: torch.Tensor) -> torch.Tensor:
            t = t.detach().to(self.device)
            return t.contiguous(memory_format=layout) if t.dim() == 4 else t

        def images(x: torch.Tensor) -> torch.Tensor:
            return channels_last(x.to(self.device)) if nhwc and x.dim() == 4 else resident(x)

        self._x = images(data.x)
        self._calib: DeviceData | None = None
        if config.bn_mode == "recalibrate":
            calib = select_calibration_data(data, calibration_data, config)
            self._calib = DeviceData(images(calib.x), calib.y.to(self.device))
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
        :class:`PointBatchNorm`; eval_net has BN folded where the BN mode allows."""
        cfg = self.config
        base = copy.deepcopy(model).to(self.device).eval()
        has_bn = bool(bn_layers(base))
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
        swap_batchnorm(eval_net, "batch" if cfg.bn_mode == "batch" else "stored")
        stats_net = None
        if cfg.bn_mode == "recalibrate":
            stats_net, _ = prepared_copy(False)
            swap_batchnorm(stats_net, "collect")
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
            with torch.no_grad(), precision("float32", self.device):
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
            with torch.no_grad(), precision("float32", self.device):
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
        threads = self.config.workers or torch.get_num_threads()
        # Fewer points than threads: the points' image batches are shared out (work_units), except
        # under recalibration, whose per-point preparation would be repeated for every share.
        return max(1, min(threads, n_points) if self.config.bn_mode == "recalibrate" else threads)

    # -- per-point math (pure, vmappable) -------------------------------------------------------------

    def _states(self, coords: torch.Tensor) -> tuple[State, dict[str, int | None]]:
        """Point states for K coordinates: moved entries get a leading K dim, the rest are shared.
        Terms are added in :func:`landscapes.reference.point_state`'s order, so float32 rounding matches the reference."""
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
                with torch.no_grad(), precision(cfg.dtype, self.device):
                    self._image_bytes = 2 * activation_bytes(self.nets.eval_net, self.gm,
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
        coords = check_coords(coords, self.n_dirs)
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
        coords = check_coords(coords, self.n_dirs)
        if self.engine == "naive":
            raise ValueError("per-image sums need the engine (batched or loop), not the naive reference")
        start, stop, _ = images.indices(len(self.data))
        k_pass, b = self.pass_size(coords.shape[0])
        b = balanced(max(stop - start, 1), min(b, max(stop - start, 1)))
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
            with precision(dtype, self.device):
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
        run of its image batches: :func:`landscapes.workunits.work_units`) in turn.

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
        units = work_units(n_points, workers, n_batches, split_tail=self.config.bn_mode != "recalibrate")

        def run(unit: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            i, first, stop = unit
            nets = free.get()
            try:
                with torch.no_grad(), precision(dtype, self.device):  # both are thread-local
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
        coords = check_coords(coords, self.n_dirs)
        n_points = self.config.deviation_points if n_points is None else n_points
        idx = torch.from_numpy(spread_indices(coords.shape[0], n_points))
        ref_loss, ref_acc, _ = self.evaluate(coords[idx], dtype="float32")
        d_loss = (loss[idx] - ref_loss).abs()
        return {"points": float(len(idx)), "max_abs_loss": d_loss.max().item(),
                "max_rel_loss": (d_loss / ref_loss.abs().clamp_min(1e-12)).max().item(),
                "max_abs_acc": (acc[idx] - ref_acc).abs().max().item()}


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
