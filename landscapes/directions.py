"""Directions in weight space for loss-landscape plots: seeded random Gaussian directions with
filter normalization (Li et al. 2018), target directions between two models, and direction files
in the HDF5 layout of tomgoldstein/loss-landscape (groups ``xdirection``/``ydirection``).

A direction is a ``dict[str, Tensor]`` keyed by state_dict names. It holds only the tensors it
moves: ignored (zeroed) entries and integer buffers are left out, and stay as in the center.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import h5py
import numpy as np
import torch
import torch.nn as nn

from models.fileio import atomic_path, package_version

from .surface import open_hdf5

State = dict[str, torch.Tensor]
ModelOrState = Union[nn.Module, Mapping[str, torch.Tensor]]

DIR_TYPES = ("weights", "states")
NORMS = ("filter", "layer", "weight", "none")
IGNORES = ("biasbn", "none", "copy")
AXES = ("xdirection", "ydirection")
FORMAT = "resnet-toolkit/1"

__all__ = ["DirectionConfig", "State", "DIR_TYPES", "NORMS", "IGNORES", "direction_keys", "random_direction",
           "normalize_direction", "target_direction", "orthogonalize", "create_directions", "cosine",
           "directions_digest", "save_directions", "load_directions", "direction_file_info",
           "resolve_dir_type"]


@dataclass(frozen=True)
class DirectionConfig:
    """How to draw the plotting directions.

    dir_type: "weights" (``model.parameters()``) or "states" (the whole state_dict, BN running
    statistics included). norm: "filter" (the paper's method), "layer", "weight" or "none".
    ignore: "biasbn" zeroes every 1-D tensor (biases, BN affine and running statistics);
    "none" treats them like the other tensors (random, normalized the same way); "copy" is the
    reference code's behaviour when ``--xignore`` is not given (the direction entry *is* the
    weight, so moving along it rescales biases and BN parameters), kept for reproducing its plots.
    seed: x and y are drawn from two independent streams derived from it, so the x direction of a
    1-D scan equals the x direction of the 2-D scan with the same seed. orthogonalize: make y
    orthogonal to x within each normalization block (filter / layer / whole vector), then restore
    each block's norm, so y stays exactly filter-normalized and x . y = 0 overall.
    same_dir: y is a copy of x (the reference's ``--same_dir``).
    """

    dir_type: str = "weights"
    xnorm: str = "filter"
    xignore: str = "biasbn"
    ynorm: str = "filter"
    yignore: str = "biasbn"
    ndim: int = 2
    seed: int = 0
    orthogonalize: bool = False
    same_dir: bool = False

    def __post_init__(self) -> None:
        _check_choice("dir_type", self.dir_type, DIR_TYPES)
        for name in ("xnorm", "ynorm"):
            _check_choice(name, getattr(self, name), NORMS)
        for name in ("xignore", "yignore"):
            _check_choice(name, getattr(self, name), IGNORES)
        if self.ndim not in (1, 2):
            raise ValueError(f"ndim must be 1 (x only) or 2 (x and y), got {self.ndim}")
        if self.same_dir and self.orthogonalize:
            raise ValueError("same_dir and orthogonalize contradict each other (y = x cannot be orthogonal to x)")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")


def _check_choice(name: str, value: str, accepted: Sequence[str]) -> None:
    if value not in accepted:
        raise ValueError(f"{name} must be one of {', '.join(accepted)}; got {value!r}")


def _state_of(model_or_state: ModelOrState) -> Mapping[str, torch.Tensor]:
    return model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state


def direction_keys(model_or_state: ModelOrState, dir_type: str) -> list[str]:
    """The tensors a direction file lists, in file order: ``model.parameters()`` order for
    "weights", ``state_dict()`` order (integer buffers included) for "states"."""
    _check_choice("dir_type", dir_type, DIR_TYPES)
    if dir_type == "weights":
        if not isinstance(model_or_state, nn.Module):
            raise ValueError("dir_type='weights' needs the nn.Module (a state_dict does not say which entries "
                             "are parameters); pass the model, or use dir_type='states'")
        return [name for name, _ in model_or_state.named_parameters()]
    return list(_state_of(model_or_state).keys())


def _movable(t: torch.Tensor) -> bool:
    """Integer buffers (BN's num_batches_tracked) are counters, never perturbed."""
    return t.is_floating_point()


def normalize_direction(direction: torch.Tensor, weight: torch.Tensor, norm: str = "filter") -> torch.Tensor:
    """Rescale one tensor of a direction to the scale of ``weight`` (returns a new tensor).

    filter: every filter (slice along dim 0: a conv output channel, a linear row; each entry of a
    1-D tensor) gets the norm of the matching filter of ``weight``. layer: the whole tensor gets
    ``weight``'s norm. weight: elementwise product with ``weight``. none: unchanged.
    """
    _check_choice("norm", norm, NORMS)
    if direction.shape != weight.shape:
        raise ValueError(f"direction shape {tuple(direction.shape)} != weight shape {tuple(weight.shape)}")
    w = weight.detach().to(direction.dtype)
    if norm == "filter":
        d2, w2 = _blocks(direction, "filter"), _blocks(w, "filter")
        scale = w2.norm(dim=1, keepdim=True) / (d2.norm(dim=1, keepdim=True) + 1e-10)
        return (d2 * scale).reshape(direction.shape)
    if norm == "layer":
        return direction * (w.norm() / (direction.norm() + 1e-10))
    if norm == "weight":
        return direction * w
    return direction.clone()


def random_direction(model_or_state: ModelOrState, dir_type: str = "weights", norm: str = "filter",
                     ignore: str = "biasbn", *, generator: torch.Generator) -> State:
    """One random Gaussian direction, normalized per tensor (see :class:`DirectionConfig`).

    Gaussians are drawn on the CPU from ``generator`` for every floating tensor of the kind, in file
    order and whether ignored or not, so a seed gives the same draws on every device and for every
    norm/ignore choice. Returns CPU tensors in the center's dtype; zero entries are left out.
    """
    _check_choice("norm", norm, NORMS)
    _check_choice("ignore", ignore, IGNORES)
    state = _state_of(model_or_state)
    direction: State = {}
    for key in direction_keys(model_or_state, dir_type):
        w = state[key].detach().cpu()
        if not _movable(w):
            continue
        d = torch.randn(w.shape, generator=generator, dtype=torch.float32).to(w.dtype)
        if w.dim() <= 1 and ignore == "biasbn":
            continue
        if w.dim() <= 1 and ignore == "copy":
            d = w.clone()
        else:
            d = normalize_direction(d, w, norm)
        if torch.any(d):  # e.g. a copied zero bias: absent means "does not move"
            direction[key] = d
    return direction


def target_direction(model_or_state: ModelOrState, target: ModelOrState, dir_type: str = "states") -> State:
    """``target - center`` over the tensors of the kind: moving by 1 along it turns the first model
    into the second (exactly so for "states", which carries BN running statistics along)."""
    state, other = _state_of(model_or_state), _state_of(target)
    keys = direction_keys(model_or_state, dir_type)
    missing, extra = sorted(set(state) - set(other)), sorted(set(other) - set(state))
    if missing or extra:
        raise ValueError(f"the second model lacks {missing[:3]} and has extra {extra[:3]} tensors: both "
                         f"checkpoints must be the same architecture")
    direction: State = {}
    for key in keys:
        a, b = state[key].detach().cpu(), other[key].detach().cpu()
        if a.shape != b.shape:
            raise ValueError(f"{key}: shape {tuple(a.shape)} in the first model vs {tuple(b.shape)} in the "
                             f"second; both checkpoints must be the same architecture")
        if _movable(a) and not torch.equal(a, b):
            direction[key] = (b.to(a.dtype) - a)
    if not direction:
        raise ValueError("the two models are identical: the interpolation direction is zero")
    return direction


def _blocks(t: torch.Tensor, norm: str) -> torch.Tensor:
    """Rows that are normalized together: filters for "filter", the tensor for "layer"."""
    if norm == "filter":
        return t.reshape(t.shape[0] if t.dim() else 1, -1)
    return t.reshape(1, -1)


def orthogonalize(y: State, x: State, norm: str = "filter") -> State:
    """Gram-Schmidt of ``y`` against ``x`` inside each normalization block of ``y``, each block's
    norm restored afterwards: y keeps its normalization and ``cosine(x, y) == 0``.

    For norm "weight"/"none" the block is the whole direction (a single global projection).
    """
    _check_choice("norm", norm, NORMS)
    eps = 1e-30
    out: State = {}
    if norm in ("filter", "layer"):
        for key, yt in y.items():
            if key not in x:
                out[key] = yt.clone()
                continue
            yb, xb = _blocks(yt.double(), norm), _blocks(x[key].double(), norm)
            coef = (yb * xb).sum(1, keepdim=True) / ((xb * xb).sum(1, keepdim=True) + eps)
            proj = yb - coef * xb
            scale = yb.norm(dim=1, keepdim=True) / (proj.norm(dim=1, keepdim=True) + eps)
            out[key] = (proj * scale).reshape(yt.shape).to(yt.dtype)
        return out
    dot = sum(float((yt.double() * x[k].double()).sum()) for k, yt in y.items() if k in x)
    xx = sum(float((xt.double() ** 2).sum()) for xt in x.values())
    coef = dot / (xx + eps)
    proj = {k: yt.double() - coef * x[k].double() if k in x else yt.double() for k, yt in y.items()}
    old = sum(float((yt.double() ** 2).sum()) for yt in y.values()) ** 0.5
    new = sum(float((p ** 2).sum()) for p in proj.values()) ** 0.5
    return {k: (p * (old / (new + eps))).to(y[k].dtype) for k, p in proj.items()}


def cosine(a: State, b: State) -> float:
    """Cosine of the angle between two directions (absent keys count as zeros)."""
    dot = sum(float((t.double() * b[k].double()).sum()) for k, t in a.items() if k in b)
    na = sum(float((t.double() ** 2).sum()) for t in a.values()) ** 0.5
    nb = sum(float((t.double() ** 2).sum()) for t in b.values()) ** 0.5
    return dot / (na * nb) if na > 0 and nb > 0 else float("nan")


def _axis_generators(seed: int) -> tuple[torch.Generator, torch.Generator]:
    """Independent CPU streams for x and y (seed and seed + 1 would share draws across seeds)."""
    x_seed, y_seed = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64)
    return (torch.Generator().manual_seed(int(x_seed) >> 1), torch.Generator().manual_seed(int(y_seed) >> 1))


def create_directions(model_or_state: ModelOrState, config: DirectionConfig = DirectionConfig(),
                      target: ModelOrState | None = None) -> list[State]:
    """The plotting directions ``[x]`` or ``[x, y]`` for the model's current weights.

    With ``target`` (a second model of the same architecture) x is ``target - model`` and is
    neither normalized nor masked (moving by 1 reaches the target); y, if asked for, is random.
    """
    gx, gy = _axis_generators(config.seed)
    if target is not None:
        x = target_direction(model_or_state, target, config.dir_type)
    else:
        x = random_direction(model_or_state, config.dir_type, config.xnorm, config.xignore, generator=gx)
    if config.ndim == 1:
        return [x]
    if config.same_dir:
        return [x, {k: v.clone() for k, v in x.items()}]
    y = random_direction(model_or_state, config.dir_type, config.ynorm, config.yignore, generator=gy)
    if config.orthogonalize:
        y = orthogonalize(y, x, config.ynorm)
    return [x, y]


def state_digest(states: Sequence[State], dtype: torch.dtype | None = None) -> str:
    """SHA-256 of named tensors' contents (names, shapes and values, cast to ``dtype`` if given, else
    with their own dtype recorded): identifies weights or directions independently of the file that
    holds them (its archive name, metadata or resume state), so a published copy of a net is the net."""
    h = hashlib.sha256()
    for i, state in enumerate(states):
        h.update(f"axis{i}".encode())
        for key in sorted(state):
            t = state[key].detach().to("cpu", dtype or state[key].dtype).contiguous()
            h.update(f"{key}:{tuple(t.shape)}{'' if dtype else f':{t.dtype}'}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def directions_digest(directions: Sequence[State]) -> str:
    """:func:`state_digest` of the directions as float32, whatever precision they were stored in."""
    return state_digest(directions, torch.float32)


def _attr_value(v: Any) -> Any:
    return "" if v is None else v


def save_directions(path: str | os.PathLike, directions: Sequence[State], model_or_state: ModelOrState,
                    dir_type: str = "weights", meta: Mapping[str, Any] | None = None) -> Path:
    """Write the directions in the reference project's layout: group ``xdirection`` (and
    ``ydirection``) with datasets "0", "1", ... one per tensor in :func:`direction_keys` order
    (zeros for entries a direction leaves out), so the reference code can read our files.
    ``meta`` lands in the file's attributes (with dir_type and a content digest). The file is
    written under a temporary name and renamed, so a kill never leaves half of one."""
    if not 1 <= len(directions) <= 2:
        raise ValueError(f"a direction file holds 1 or 2 directions, got {len(directions)}")
    state = _state_of(model_or_state)
    keys = direction_keys(model_or_state, dir_type)
    for i, direction in enumerate(directions):
        unknown = sorted(set(direction) - set(keys))
        if unknown:
            raise ValueError(f"{AXES[i]} has entries that are not {dir_type} of the model: {unknown[:3]}")
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for i, direction in enumerate(directions):
            group = f.create_group(AXES[i])
            for j, key in enumerate(keys):
                ref = state[key]
                if key in direction:
                    arr = direction[key].detach().cpu().numpy()
                else:
                    arr = np.zeros(tuple(ref.shape), dtype=np.float32 if ref.is_floating_point() else np.int64)
                group.create_dataset(str(j), data=arr)
        f.attrs["format"] = FORMAT
        f.attrs["kind"] = "directions"
        f.attrs["dir_type"] = dir_type
        f.attrs["keys"] = np.array(keys, dtype=h5py.string_dtype())
        f.attrs["digest"] = directions_digest(directions)
        f.attrs["version"] = package_version()
        for k, v in (meta or {}).items():
            f.attrs[k] = _attr_value(v)
    return path


def direction_file_info(path: str | os.PathLike) -> dict[str, Any]:
    """What a direction file holds without reading the tensors: ``ndim`` (1 or 2), ``dir_type``
    (None for reference-project files, which do not say), ``count`` (tensors per direction) and
    ``attrs`` (our metadata; empty for theirs)."""
    path = Path(path)
    with open_hdf5(path, "direction") as f:
        if "xdirection" not in f:
            kind = "a surface file" if "xcoordinates" in f else "not a direction file"
            raise ValueError(f"{path} has no 'xdirection' group ({kind}); a direction file holds groups "
                             f"xdirection (and ydirection) with datasets '0', '1', ...")
        ndim = 2 if "ydirection" in f else 1
        counts = {len(f[a]) for a in AXES[:ndim]}
        if len(counts) != 1:
            raise ValueError(f"{path}: xdirection and ydirection hold different numbers of tensors {sorted(counts)}")
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    dir_type = attrs.get("dir_type") or None
    return {"ndim": ndim, "dir_type": dir_type, "count": counts.pop(), "attrs": attrs}


def _infer_dir_type(count: int, model: ModelOrState, path: Path) -> str:
    n_states = len(_state_of(model))
    n_float_states = sum(1 for t in _state_of(model).values() if _movable(t))
    n_params = len(direction_keys(model, "weights")) if isinstance(model, nn.Module) else -1
    if count == n_params:
        return "weights"
    if count in (n_states, n_float_states):
        return "states"
    raise ValueError(f"{path} holds {count} tensors per direction, but the model has {n_params} parameters "
                     f"('weights') and {n_states} state_dict entries ('states'): it was written for another model")


def resolve_dir_type(path: str | os.PathLike, model_or_state: ModelOrState, dir_type: str | None = None) -> str:
    """The kind of the directions in ``path``: ``dir_type`` if given (checked against the file's
    own, for ours), else the file's (ours), else inferred from the tensor count (the reference's)."""
    path = Path(path)
    info = direction_file_info(path)
    if dir_type is None:
        dir_type = info["dir_type"] or _infer_dir_type(info["count"], model_or_state, path)
    elif info["dir_type"] not in (None, dir_type):
        raise ValueError(f"{path} holds {info['dir_type']!r} directions, not {dir_type!r}: "
                         f"pass --dir-type {info['dir_type']} or another direction file")
    _check_choice("dir_type", dir_type, DIR_TYPES)
    return dir_type


def load_directions(path: str | os.PathLike, model_or_state: ModelOrState, dir_type: str | None = None) -> list[State]:
    """Read ``[x]`` or ``[x, y]`` from a direction file, ours or the reference project's.

    ``dir_type`` None takes it from the file (ours) or infers it from the tensor count (theirs).
    Reference files written before PyTorch 0.4.1 lack ``num_batches_tracked`` and still load for
    "states". Shapes are checked against the model; integer buffers and all-zero entries are
    dropped (they never move), so ``load_directions(save_directions(d))`` returns ``d``.
    """
    path = Path(path)
    info = direction_file_info(path)
    dir_type = resolve_dir_type(path, model_or_state, dir_type)
    state = _state_of(model_or_state)
    keys = direction_keys(model_or_state, dir_type)
    if info["count"] != len(keys) and dir_type == "states":
        keys = [k for k in keys if _movable(state[k])]  # a pre-0.4.1 reference file
    if info["count"] != len(keys):
        raise ValueError(f"{path} holds {info['count']} tensors per direction but the model has {len(keys)} "
                         f"{dir_type}: it was written for another model (or the other --dir-type)")
    directions: list[State] = []
    with h5py.File(path, "r") as f:
        for axis in AXES[:info["ndim"]]:
            group, direction = f[axis], {}
            for j, key in enumerate(keys):
                if str(j) not in group:
                    raise ValueError(f"{path}: {axis} lacks dataset '{j}' (expected '0'..'{len(keys) - 1}')")
                arr = np.asarray(group[str(j)][()])
                ref = state[key]
                if tuple(arr.shape) != tuple(ref.shape):
                    raise ValueError(f"{path}: {axis}/{j} has shape {tuple(arr.shape)} but {key} of the model has "
                                     f"{tuple(ref.shape)}: the file was written for another model")
                if not _movable(ref) or not np.any(arr):
                    continue
                direction[key] = torch.from_numpy(np.array(arr, dtype=np.float32)).to(ref.dtype)
            directions.append(direction)
    return directions
