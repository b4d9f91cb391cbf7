"""The distributed computation of a surface: loss and accuracy at every grid point, cut into
fixed chunks that a :class:`~landscapes.surface.SurfaceStore` records, sharded over the ranks of
torch.distributed. :func:`landscapes.scan.scan` prepares its inputs; studies call
:func:`compute_surface` directly for in-memory surfaces."""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from models.data import DeviceData

from .directions import State
from .evalconfig import EvalConfig, EvalInfo
from .evaluate import Evaluator
from .grid import grid_coords, spread_indices
from .sampling import SamplingConfig, check_eval_config, compute_sampled, ordered, sampled_names
from .surface import Surface, SurfaceStore

__all__ = ["compute_surface", "value_names", "rank_and_world", "default_chunk_size", "MIXED"]

# EvalInfo fields that describe how every chunk ran (not one chunk's timing).
_INFO_ATTRS = ("engine", "device", "dtype", "bn_mode", "images", "batch_size", "points_per_pass", "folded_bn",
               "traced", "notices", "workers", "fused")


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def default_chunk_size(points: int) -> int:
    """About 16 flushes per scan, at most 64 points each; depends only on the grid so that
    reruns cut the grid into the same chunks."""
    return max(1, min(64, math.ceil(points / 16)))


def value_names(splits: Sequence[str]) -> list[str]:
    return [f"{s}_{m}" for s in splits for m in ("loss", "acc")]


def compute_surface(model: nn.Module, directions: Sequence[State], x: np.ndarray, y: np.ndarray | None,
                    data: Mapping[str, DeviceData], eval_config: EvalConfig = EvalConfig(), *,
                    center: State | None = None, store: SurfaceStore | None = None, chunk_size: int | None = None,
                    progress: bool = True, sampling: SamplingConfig | None = None) -> Surface:
    """Loss and accuracy (%) of ``model`` at ``center + x[ix] * directions[0] (+ y[iy] * directions[1])``
    for every grid point and each split in ``data`` (values ``<split>_loss``, ``<split>_acc``), plus
    the center itself (attributes ``<split>_loss_center``, ``<split>_acc_center``).

    Points already done in ``store`` are skipped (resume). The flat indices are cut into fixed
    chunks of ``chunk_size``; a chunk is computed as one unit and recorded in ``store``, which
    flushes it to disk, so a rerun or another number of ranks evaluates exactly the same groups
    of points. Under torch.distributed every rank computes whole chunks in turn and the results
    are gathered once per round of chunks (never inside the evaluation loop); every rank ends
    with the full surface, and only rank 0's ``store`` should have a path. ``center`` defaults to
    the model's current state_dict. ``sampling``: adaptive sample counts with standard errors
    (:func:`landscapes.sampling.compute_sampled`; the store then needs their values too).
    """
    x = np.asarray(x, dtype=np.float64)
    y = None if y is None else np.asarray(y, dtype=np.float64)
    if len(directions) != (1 if y is None else 2):
        raise ValueError(f"a {'1-D' if y is None else '2-D'} grid needs {1 if y is None else 2} directions, "
                         f"got {len(directions)}")
    # An engine that loads points into the model would overwrite a center aliasing its tensors.
    own = {v.data_ptr() for v in model.state_dict().values()}
    center = {k: v.detach().clone() if v.data_ptr() in own else v
              for k, v in (center if center is not None else model.state_dict()).items()}
    names = value_names(list(data)) + (sampled_names(list(data)) if sampling is not None else [])
    if sampling is not None:
        check_eval_config(eval_config)
        data = {split: ordered(d, sampling.seed) for split, d in data.items()}
    if store is None:
        store = SurfaceStore(x, y, names)
    missing = set(names) - set(store.values)
    if missing:
        raise ValueError(f"the store has no room for {sorted(missing)}")
    evaluators = {split: Evaluator(model, center, directions, d, eval_config) for split, d in data.items()}
    rank, world = rank_and_world()
    done = store.done.copy()
    if world > 1:
        box = [done]
        dist.broadcast_object_list(box, src=0)
        done = np.asarray(box[0], dtype=bool)
    if rank == 0 and any(f"{split}_loss_center" not in store.attrs for split in data):
        zero = torch.zeros(1, len(directions), dtype=torch.float64)
        for split, evaluator in evaluators.items():
            loss, acc, _ = evaluator.evaluate(zero)
            store.attrs[f"{split}_loss_center"], store.attrs[f"{split}_acc_center"] = float(loss[0]), float(acc[0])
        store.flush()  # the file exists, with the center, before the first chunk is done
    n = done.size
    chunk = chunk_size or default_chunk_size(n)
    if sampling is not None:
        compute_sampled(evaluators, grid_coords(x, y, np.arange(n)), store, sampling, chunk_size=chunk, rank=rank,
                        world=world, progress=progress)
        return store.surface()
    chunks = [idx for start in range(0, n, chunk)
              if (idx := np.arange(start, min(start + chunk, n))[~done[start:start + chunk]]).size]
    bar = tqdm(total=int((~done).sum()), desc="scan", unit="pt", disable=not progress or rank != 0,
               dynamic_ncols=True)
    info: EvalInfo | None = None
    try:
        for first in range(0, len(chunks), world):
            mine = chunks[first + rank] if first + rank < len(chunks) else np.arange(0)
            index, values, seconds, chunk_info = _compute_chunk(evaluators, x, y, mine)
            info = chunk_info or info
            if info is not None:  # this run's settings travel with its points (a resume may differ)
                store.note_run(eval=_info_attrs(info))
            gathered = [(index, values, seconds)]
            if world > 1:
                gathered = [None] * world
                dist.all_gather_object(gathered, (index, values, seconds))
            for index, values, seconds in gathered:  # type: ignore[misc]
                if len(index):
                    store.record(index, values, seconds)
                    bar.update(len(index))
    finally:
        bar.close()
    if info is not None and rank == 0:
        store.attrs.update(_runs_info(store.attrs.get("history") or [], _info_attrs(info)))
        if eval_config.dtype != "float32" and eval_config.deviation_points > 0:
            store.attrs.update(_deviation(evaluators, store, x, y, eval_config.deviation_points))
        store.flush()
    return store.surface()


def _info_attrs(info: EvalInfo) -> dict[str, Any]:
    return {k: v for k, v in info.attrs().items() if k.removeprefix("eval_") in _INFO_ATTRS}


MIXED = "mixed: per run in history"


def _runs_info(history: Sequence[Mapping[str, Any]], last: Mapping[str, Any]) -> dict[str, Any]:
    """The surface-wide engine attributes: a setting shared by every run that computed points,
    else :data:`MIXED` (each run's own settings stay in its history entry)."""
    runs = [h["eval"] for h in history if h.get("points") and isinstance(h.get("eval"), Mapping)] or [last]
    return {k: v if all(r.get(k) == v for r in runs) else MIXED for k, v in last.items()}


def _compute_chunk(evaluators: Mapping[str, Evaluator], x: np.ndarray, y: np.ndarray | None, index: np.ndarray
                   ) -> tuple[np.ndarray, dict[str, np.ndarray], float, EvalInfo | None]:
    """Evaluate one chunk of flat indices on every split: (index, values, seconds per point, info)."""
    if not len(index):
        return index, {}, 0.0, None
    coords = grid_coords(x, y, index)
    start = time.perf_counter()
    values: dict[str, np.ndarray] = {}
    info = None
    for split, evaluator in evaluators.items():
        loss, acc, info = evaluator.evaluate(coords)
        values[f"{split}_loss"] = loss.double().cpu().numpy()
        values[f"{split}_acc"] = acc.double().cpu().numpy()
    return index, values, (time.perf_counter() - start) / len(index), info


def _deviation(evaluators: Mapping[str, Evaluator], store: SurfaceStore, x: np.ndarray, y: np.ndarray | None,
               points: int) -> dict[str, float]:
    """How far the lower-precision values of a few computed points are from float32."""
    split, evaluator = next(iter(evaluators.items()))
    done = np.flatnonzero(store.done)
    index = done[spread_indices(len(done), points)]
    loss = torch.from_numpy(store.values[f"{split}_loss"][index])
    acc = torch.from_numpy(store.values[f"{split}_acc"][index])
    dev = evaluator.deviation(grid_coords(x, y, index), loss, acc, n_points=len(index))
    return {f"eval_deviation_{k}": v for k, v in dev.items()}
