"""Adaptive sample counts: each grid point's loss is a mean over N images, so its standard error
comes free from the per-image losses of the same forwards, and a point can stop once that error
is small enough for the picture.

- One seeded random order of the N images, the same at every point (common random numbers:
  neighbouring points share their sampling noise, so contours stay smooth). Images are taken in
  chunks of that order; a point that has seen n images has seen exactly the first n. After the
  first chunk, a point's next chunk runs to the size its current variance predicts (whole
  chunks, at most doubling n: :func:`next_stop`), so points that need many images take few rounds.
- Standard errors are those of sampling without replacement from the N images (finite-population
  correction): 0 once n = N, so the full evaluation is the limit of the adaptive one.
- Precision-progressive: the first chunk is evaluated at every point before any point gets its
  second, so a partial file is already a full-resolution, low-precision picture.
- The running sums (n, sum, sum of squares, correct count) are stored in the surface file beside
  the values, so a killed scan resumes exactly and a seed gives one result; a rerun with a tighter
  precision continues from them.

Stopping rule for a point and split: SE(loss) <= max(precision * loss, abs_precision), or the
loss lies more than 3 SE above ``cap`` (a value the plot clips needs no digits), or n = N.

Defaults (precision 0.02, abs_precision 0, chunk 512): a 2% relative SE bounds the 99th-percentile
relative error by about 2.6 SE ~ 5% (measured: 3.4% on a trained ResNet-8, MNIST, 9x9,
N = 10,000: results/sampling/README.md), and at loss 2.5 an SE of 0.05 is a tenth of the paper's
0.5 contour spacing; the low-loss basin, where per-image losses are most skewed (coefficients
of variation up to ~6), takes up to all N images. ``cap`` is off by default (the bench's
relative-error target counts clipped points too); 10, the plot's default top level, suits
contour plots of the paper's kind.
Whatever the chunking, a point's value is the mean over the first n images of the order, so it
depends on its final n only.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from models.data import DeviceData

from .evalconfig import EvalConfig
from .evaluate import Evaluator

__all__ = ["SamplingConfig", "image_order", "ordered", "standard_error", "stopped", "next_stop", "sampled_names",
           "compute_sampled", "precision_note", "se_hover", "sampling_summary", "SUMS"]

# Per split: stored running sums (float64 datasets, exact for counts below 2**53).
SUMS = ("n", "loss_sum", "loss_sumsq", "correct")
# Per split: derived standard errors stored beside the values.
SES = ("loss_se", "acc_se")
STOP_SIGMAS = 3.0  # "far above the cap": the loss minus this many SE still lies above it


@dataclass(frozen=True)
class SamplingConfig:
    """How many images each point sees (see the module docstring for the rule and defaults).

    precision: relative SE of the loss at which a point stops (0: only abs_precision / N stop it).
    abs_precision: absolute SE of the loss (loss units) at which a point stops.
    chunk: images per chunk of the shared order (the first chunk is also the minimum sample).
    seed: seed of the image order.
    cap: stop a point whose loss lies more than 3 SE above this value (None: off).
    """

    precision: float = 0.02
    abs_precision: float = 0.0
    chunk: int = 512
    seed: int = 0
    cap: float | None = None

    def __post_init__(self) -> None:
        for name in ("precision", "abs_precision"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
        if isinstance(self.chunk, bool) or not isinstance(self.chunk, int) or self.chunk < 2:
            raise ValueError(f"chunk must be an integer >= 2 (a standard error needs two images); got {self.chunk!r}")
        if self.cap is not None and not math.isfinite(self.cap):
            raise ValueError(f"cap must be a finite number or None; got {self.cap!r}")

    def identity(self) -> dict[str, int]:
        """What a resumed file must share: the image order. The precision may change between runs
        (a tighter one continues from the stored sums)."""
        return {"seed": self.seed, "chunk": self.chunk}

    def attrs(self) -> dict[str, float]:
        return {f"sampling_{k}": (math.nan if v is None else v) for k, v in asdict(self).items()}


def check_eval_config(config: EvalConfig) -> None:
    """One clear line where per-image sampling does not apply."""
    if config.engine == "naive":
        raise ValueError("adaptive sampling (--precision/--abs-precision) needs the engine; --engine naive has "
                         "no per-image losses: use auto, batched or loop")
    if config.bn_mode != "stored":
        raise ValueError(f"adaptive sampling needs per-image losses that do not depend on the other images; "
                         f"--bn {config.bn_mode} makes them depend on the batch or the calibration pass: use --bn "
                         f"stored, or drop --precision/--abs-precision")


def image_order(n: int, seed: int) -> torch.Tensor:
    """The fixed random order of ``n`` images for ``seed`` (a CPU generator: same on every device)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def ordered(data: DeviceData, seed: int) -> DeviceData:
    """``data`` with its images in :func:`image_order`: chunk k is then images [k*m, (k+1)*m)."""
    order = image_order(len(data), seed).to(data.x.device)
    return DeviceData(data.x.index_select(0, order), data.y.index_select(0, order))


def standard_error(n: np.ndarray, total: np.ndarray, sumsq: np.ndarray, population: int) -> np.ndarray:
    """Standard error of the mean of n values drawn without replacement from ``population``,
    from their sum and sum of squares: sqrt(s^2 / n * (1 - n / N)), s^2 the unbiased sample
    variance. 0 at n = N, inf at n = 1 < N, NaN at n = 0."""
    n, total, sumsq = (np.asarray(a, dtype=np.float64) for a in (n, total, sumsq))
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.maximum(sumsq - total * total / n, 0.0) / (n - 1)
        se = np.sqrt(var / n * np.maximum(1.0 - n / population, 0.0))
    se = np.where(n >= population, 0.0, np.where(n == 1, np.inf, se))
    return np.where(n == 0, np.nan, se)


def stopped(n: np.ndarray, total: np.ndarray, sumsq: np.ndarray, population: int, config: SamplingConfig
            ) -> np.ndarray:
    """True where a point needs no more images (module docstring)."""
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.asarray(total) / n
    se = standard_error(n, total, sumsq, population)
    enough = se <= np.maximum(config.precision * np.abs(mean), config.abs_precision)
    if config.cap is not None:
        enough |= mean - STOP_SIGMAS * se > config.cap
    return (n >= population) | ((n > 0) & enough)


def next_stop(n: int, total: np.ndarray, sumsq: np.ndarray, population: int, config: SamplingConfig
              ) -> np.ndarray:
    """Where the next chunk of points that have seen ``n`` images ends: the first chunk; then
    the sample size the stopping rule predicts from the current mean and variance
    (n* = s^2 / (t^2 + s^2 / N) for target SE t), rounded up to whole chunks, at least one chunk
    further and at most double n (an early variance estimate of skewed losses is rough). Points
    needing many images thus take few rounds; it depends on a point's own sums only."""
    if n == 0:
        return np.full(np.shape(total), min(config.chunk, population), dtype=np.int64)
    total, sumsq = np.asarray(total, dtype=np.float64), np.asarray(sumsq, dtype=np.float64)
    mean = total / n
    var = np.maximum(sumsq - total * mean, 0.0) / (n - 1)
    target = np.maximum(config.precision * np.abs(mean), config.abs_precision)
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.where(target > 0, var / (target ** 2 + var / population), population)
    need = np.ceil(np.nan_to_num(need, nan=population) / config.chunk) * config.chunk
    stop = np.maximum(n + config.chunk, np.minimum(need, 2 * n))
    return np.minimum(stop, population).astype(np.int64)


def sampled_names(splits: Sequence[str]) -> list[str]:
    """The datasets an adaptive surface holds per split beyond ``<split>_loss`` / ``_acc``."""
    return [f"{s}_{what}" for s in splits for what in SES + SUMS]


def _derived(n: np.ndarray, sums: Mapping[str, np.ndarray], population: int) -> dict[str, np.ndarray]:
    """Loss, accuracy (%) and their standard errors from the running sums of one split."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"loss": sums["loss_sum"] / n, "acc": 100.0 * sums["correct"] / n,  # as the engine rounds it
                "loss_se": standard_error(n, sums["loss_sum"], sums["loss_sumsq"], population),
                "acc_se": 100.0 * standard_error(n, sums["correct"], sums["correct"], population)}


def compute_sampled(evaluators: Mapping[str, Evaluator], coords: torch.Tensor, store, config: SamplingConfig, *, chunk_size: int, rank: int = 0, world: int = 1,
                    progress: bool = True) -> None:
    """Fill ``store`` (a SurfaceStore holding the values of :func:`sampled_names` too) adaptively.

    ``coords``: (points, D) coordinates of the store's flat indices. ``evaluators`` must be built
    on :func:`ordered` data. Rounds: the points (of every split) with
    the fewest images seen, n, get images [n, n + chunk), in groups of ``chunk_size`` points (under
    torch.distributed, one group per rank at a time, gathered after each); the round is flushed
    whole. A point's result depends only on its own sums, never on the grouping, the number of
    ranks or where a run was killed. The done mask is recomputed from the sums and ``config`` at
    the start, so a tighter precision continues a finished file.
    """
    splits = list(evaluators)
    sizes = {s: len(ev.data) for s, ev in evaluators.items()}
    if world > 1:  # ranks > 0 hold an empty mirror: take rank 0's values and sums
        box = [dict(store.values)]
        dist.broadcast_object_list(box, src=0)
        for name, v in box[0].items():
            store.values[name] = np.asarray(v, dtype=np.float64).copy()
    for s in splits:
        n = store.values[f"{s}_n"]
        n[np.isnan(n)] = 0.0
        for k in SUMS[1:]:
            v = store.values[f"{s}_{k}"]
            v[n == 0] = 0.0
    store.attrs.update(config.attrs())

    def is_stopped(s: str) -> np.ndarray:
        v = store.values
        return stopped(v[f"{s}_n"], v[f"{s}_loss_sum"], v[f"{s}_loss_sumsq"], sizes[s], config)

    store.done[:] = np.logical_and.reduce([is_stopped(s) for s in splits])
    total = sum(sizes.values()) * store.done.size
    seen = int(sum(store.values[f"{s}_n"].sum() for s in splits))
    bar = tqdm(total=total, initial=seen, desc="scan (adaptive)", unit="img", unit_scale=True,
               disable=not progress or rank != 0, dynamic_ncols=True)
    try:
        while True:
            todo = {s: np.flatnonzero(~is_stopped(s)) for s in splits}
            if not any(len(t) for t in todo.values()):
                break
            first = min(int(store.values[f"{s}_n"][t].min()) for s, t in todo.items() if len(t))
            groups = []  # (split, stop, points): the points at n = first that go on to the same stop
            for s, t in todo.items():
                v = store.values
                idx = t[v[f"{s}_n"][t] == first]
                stops = next_stop(first, v[f"{s}_loss_sum"][idx], v[f"{s}_loss_sumsq"][idx], sizes[s], config)
                for stop in np.unique(stops):
                    same = idx[stops == stop]
                    groups += [(s, int(stop), same[i:i + chunk_size]) for i in range(0, len(same), chunk_size)]
            for start in range(0, len(groups), world):
                mine = groups[start + rank] if start + rank < len(groups) else (splits[0], first, np.arange(0))
                part = _sums(evaluators, coords, mine[0], mine[2], first, mine[1])
                gathered = [part]
                if world > 1:
                    gathered = [None] * world
                    dist.all_gather_object(gathered, part)
                for s, index, sums, seconds in gathered:  # type: ignore[misc]
                    if len(index):
                        bar.update(_record(store, s, index, sums, seconds, sizes[s], is_stopped, splits))
            store.attrs["image_evaluations"] = int(sum(store.values[f"{s}_n"].sum() for s in splits))
            store.attrs["image_evaluations_full"] = int(total)
            store.flush()  # a whole round: every open point one chunk further
    finally:
        bar.close()


def _sums(evaluators: Mapping[str, Evaluator], coords: torch.Tensor, split: str, index: np.ndarray, first: int,
          stop: int) -> tuple[str, np.ndarray, dict[str, np.ndarray], float]:
    """One group's sums over images [first, stop) of the shared order."""
    if not len(index):
        return split, index, {}, 0.0
    start = time.perf_counter()
    loss, sq, correct = evaluators[split].sums(coords[torch.from_numpy(index)], slice(first, stop))
    sums = {"n": np.full(len(index), float(stop - first)), "loss_sum": loss.numpy(), "loss_sumsq": sq.numpy(),
            "correct": correct.double().numpy()}
    return split, index, sums, (time.perf_counter() - start) / len(index)


def _record(store, split: str, index: np.ndarray, sums: Mapping[str, np.ndarray], seconds: float, population: int,
            is_stopped, splits: Sequence[str]) -> int:
    """Add a group's sums to the store, with the derived values and done flags; returns images added."""
    values = {f"{split}_{k}": store.values[f"{split}_{k}"][index] + sums[k] for k in SUMS}
    n = values[f"{split}_n"]
    values.update({f"{split}_{k}": v for k, v in
                   _derived(n, {k: values[f"{split}_{k}"] for k in SUMS[1:]}, population).items()})
    for name, v in values.items():  # the sums first: the done flags below read them
        store.values[name][index] = v
    done = np.logical_and.reduce([is_stopped(s)[index] for s in splits])
    store.record(index, values, seconds, done=done)
    return int(sums["n"].sum())


def precision_note(surface) -> str | None:
    """One short line saying at what precision an adaptive surface's loss stands, e.g. "partial:
    40/81 points at SE ≤ 2% (median 3.1%, max 12% of the loss) · 5.1% of the full cost"; None for
    a surface without standard errors."""
    names = [n for n in surface.values if n.endswith("_loss_se")]
    if not names:
        return None
    name = names[0]
    loss = surface.values[name[: -len("_se")]]
    se = surface.values[name]
    seen = np.isfinite(loss)
    if not seen.any():
        return "adaptive: no point evaluated yet"
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(se[seen] / loss[seen])
    rel = rel[np.isfinite(rel)]
    a = surface.attrs
    want = a.get("sampling_precision")
    target = f"SE ≤ {100 * want:g}%" if isinstance(want, (int, float)) and want > 0 else "the requested SE"
    done = int(np.asarray(surface.done).sum()) if surface.done is not None else int(seen.sum())
    size = int(np.asarray(loss).size)
    head = f"adaptive, {target}" if done == size else f"partial: {done}/{size} points at {target}"
    spread = f" (median {100 * np.median(rel):.2g}%, max {100 * rel.max():.2g}% of the loss)" if rel.size else ""
    evals, full = a.get("image_evaluations"), a.get("image_evaluations_full")
    cost = f" · {100 * evals / full:.3g}% of the full cost" if evals and full else ""
    return f"{head}{spread}{cost}"


def se_hover(surface, name: str) -> dict[str, Any]:
    """Plotly hover text "value ± SE (n images)" for ``name`` where the surface stores its SE, else {}."""
    se = surface.values.get(f"{name}_se")
    if se is None:
        return {}
    split = name.rpartition("_")[0]
    n = surface.values.get(f"{split}_n", np.full(se.shape, np.nan))
    text = [[f"{v:.4g} ± {e:.2g} (1 SE, {k:.0f} images)" if np.isfinite(v) else "not computed"
             for v, e, k in zip(*rows)] for rows in zip(surface.values[name], se, n)]
    return {"text": text, "hovertemplate": "α %{x:.3g}, β %{y:.3g}<br>%{text}<extra></extra>"}


def sampling_summary(values: Mapping[str, np.ndarray], split: str = "train") -> dict[str, Any]:
    """Image-evaluations used and the loss SE's relative spread (for logs and benches)."""
    n = np.asarray(values[f"{split}_n"])
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.asarray(values[f"{split}_loss_se"]) / np.abs(np.asarray(values[f"{split}_loss"]))
    rel = rel[np.isfinite(rel)]
    return {"image_evaluations": int(n.sum()), "images_min": int(n.min()), "images_max": int(n.max()),
            "rel_se_median": float(np.median(rel)) if rel.size else math.nan,
            "rel_se_max": float(rel.max()) if rel.size else math.nan}
