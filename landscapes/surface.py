"""Surface files: loss/accuracy on a 1-D or 2-D grid in the HDF5 layout of
tomgoldstein/loss-landscape, plus a done-mask and the attributes needed to reproduce them.

Ours store 2-D values as (ny, nx) with value[iy, ix] at (x[ix], y[iy]), NaN where not computed,
and are only ever replaced whole (temporary file + rename), so a kill at any moment leaves the
previous complete version on disk. :func:`read_surface` also reads the reference project's files.
"""
from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from models.fileio import atomic_path, package_version
from models.locking import LockHeldError, file_lock

FORMAT = "resnet-toolkit/1"
REFERENCE_FORMAT = "tomgoldstein/loss-landscape"
# Attributes stored as JSON text because HDF5 attributes cannot hold dicts or lists of dicts.
JSON_ATTRS = frozenset({"identity", "history", "model_kwargs", "data_kwargs", "eval_config", "directions_meta",
                        "num_samples"})
_RESERVED = frozenset({"xcoordinates", "ycoordinates", "dir_file", "done", "point_seconds"})

__all__ = ["Surface", "SurfaceStore", "SurfaceConflictError", "SurfaceWriteError", "available_memory", "read_surface", "write_surface", "FORMAT",
           "REFERENCE_FORMAT"]


def open_hdf5(path: str | os.PathLike, kind: str) -> h5py.File:
    """``path`` opened for reading, or an error that names the ``kind`` of file expected
    (surface, direction, trajectory) instead of h5py's own."""
    path = Path(path)
    if path.exists() and not path.is_file():
        what = "a directory" if path.is_dir() else "not a regular file"
        raise ValueError(f"{kind} file {str(path)!r} is {what}; give the path of a file")
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file {str(path)!r} does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path} is not a readable HDF5 {kind} file: {err}") from None


class SurfaceConflictError(ValueError):
    """An existing surface file was computed with other arguments (or is not ours)."""


class SurfaceWriteError(OSError):
    """A surface could not be written (full disk, ...); the message says what is on disk."""


def available_memory() -> int:
    """Bytes of physical memory of this machine (the ceiling for a grid's in-memory arrays)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 1 << 62


@dataclass
class Surface:
    """A surface in memory. ``values[name]`` has shape (ny, nx) (2-D) or (nx,) (1-D), with
    ``values[name][iy, ix]`` at ``(x[ix], y[iy])`` and NaN where not computed; ``done`` says
    which points were computed (a computed loss may itself be NaN when a model diverges)."""

    x: np.ndarray
    y: np.ndarray | None
    values: dict[str, np.ndarray]
    attrs: dict[str, Any]
    path: str
    done: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.x),) if self.y is None else (len(self.y), len(self.x))

    @property
    def complete(self) -> bool:
        return self.done is not None and bool(self.done.all())


def _decode(value: Any, name: str = "") -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        value = [_decode(v) for v in value.tolist()]
    if name in JSON_ATTRS and isinstance(value, str) and value:
        value = json.loads(value)
    return value


def _encode(value: Any, name: str) -> Any:
    if name in JSON_ATTRS or isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, str) for v in value):
            return np.array(value, dtype=h5py.string_dtype())
        return np.asarray(value, dtype=np.float64)
    if isinstance(value, str):
        return str(value)  # str subclasses (torch's TorchVersion) have no HDF5 type
    return "" if value is None else value


def read_surface(path: str | os.PathLike) -> Surface:
    """Read a surface file written by this toolkit or by the reference project.

    The reference code declares 2-D datasets as (nx, ny) but fills them in ``np.meshgrid(x, y)``
    ravel order and marks missing points with -1: its flat buffer is reshaped to (ny, nx), and -1
    in ``*_loss``/``*_acc``/``*_err`` values becomes NaN.
    """
    path = Path(path)
    try:
        return _read_surface(path)
    except FileNotFoundError:
        raise
    except (OSError, KeyError, RuntimeError) as err:  # h5py: checksum mismatch, truncated or garbled blocks
        raise ValueError(f"{path} is damaged ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
                         f"its values cannot be trusted: move it away, or rerun with --force to recompute "
                         f"it") from None


def _read_surface(path: Path) -> Surface:
    with open_hdf5(path, "surface") as f:
        if "xcoordinates" not in f:
            kind = "a direction file" if "xdirection" in f else "not a surface file"
            raise ValueError(f"{path} has no 'xcoordinates' dataset ({kind})")
        x = np.asarray(f["xcoordinates"][()], dtype=np.float64).reshape(-1)
        y = np.asarray(f["ycoordinates"][()], dtype=np.float64).reshape(-1) if "ycoordinates" in f else None
        shape = (len(x),) if y is None else (len(y), len(x))
        size = math.prod(shape)
        attrs = {k: _decode(v, k) for k, v in f.attrs.items()}
        if "dir_file" in f:
            attrs["dir_file"] = _decode(f["dir_file"][()])
        ours = attrs.get("format") == FORMAT
        values: dict[str, np.ndarray] = {}
        for name, ds in f.items():
            if name in _RESERVED or not isinstance(ds, h5py.Dataset) or ds.size != size or ds.dtype.kind != "f":
                continue
            raw = np.array(ds[()], dtype=np.float64).reshape(shape)  # theirs: flat buffer is (ny, nx)
            if not ours and name.endswith(("_loss", "_acc", "_err")):
                raw[raw == -1] = np.nan
            values[name] = raw
        if ours and "done" in f:
            done = np.asarray(f["done"][()], dtype=bool).reshape(shape)
        else:
            attrs.setdefault("format", REFERENCE_FORMAT)
            done = np.logical_and.reduce([~np.isnan(v) for v in values.values()]) if values \
                else np.zeros(shape, bool)
        if ours and "point_seconds" in f:
            attrs["point_seconds"] = np.asarray(f["point_seconds"][()], dtype=np.float64).reshape(shape)
    return Surface(x, y, values, attrs, str(path), done)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _dataset(f: h5py.File, name: str, data: np.ndarray) -> None:
    """A chunked dataset with HDF5's Fletcher32 checksum per chunk: a flipped bit in the file
    then fails the read instead of handing back a wrong value that a resume would adopt."""
    f.create_dataset(name, data=data, chunks=True if data.size else None, fletcher32=bool(data.size))


def _write_file(path: Path, x: np.ndarray, y: np.ndarray | None, values: Mapping[str, np.ndarray],
                done: np.ndarray, point_seconds: np.ndarray | None, attrs: Mapping[str, Any], dir_file: str) -> None:
    """Write a complete file under a temporary name, fsync, rename over ``path``."""
    shape = (len(x),) if y is None else (len(y), len(x))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            _dataset(f, "xcoordinates", x)
            if y is not None:
                _dataset(f, "ycoordinates", y)
            for name, v in values.items():
                _dataset(f, name, np.asarray(v, dtype=np.float64).reshape(shape))
            _dataset(f, "done", np.asarray(done, dtype=bool).reshape(shape))
            if point_seconds is not None:
                _dataset(f, "point_seconds", np.asarray(point_seconds, dtype=np.float64).reshape(shape))
            f["dir_file"] = dir_file  # a scalar string dataset, as the reference writes it
            for k, v in attrs.items():
                f.attrs[k] = _encode(v, k)
            f.attrs["format"] = FORMAT
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(path.parent)


def write_surface(path: str | os.PathLike, x: np.ndarray, y: np.ndarray | None, values: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any] | None = None, dir_file: str = "", done: np.ndarray | None = None) -> Path:
    """Write a whole surface at once (e.g. a Hessian map or a test fixture) in our layout.

    ``values`` are (ny, nx) or (nx,); ``done`` defaults to "not NaN"."""
    x = np.asarray(x, dtype=np.float64)
    y = None if y is None else np.asarray(y, dtype=np.float64)
    shape = (len(x),) if y is None else (len(y), len(x))
    for name, v in values.items():
        if np.shape(v) != shape:
            raise ValueError(f"value {name!r} has shape {np.shape(v)}, expected {shape} ((ny, nx) or (nx,))")
        if name in _RESERVED:
            raise ValueError(f"{name!r} is a reserved dataset name in surface files")
    if done is None:
        done = np.logical_and.reduce([~np.isnan(np.asarray(v, float)) for v in values.values()]) \
            if values else np.zeros(shape, bool)
    _write_file(Path(path), x, y, values, done, None, {"version": package_version(), **(attrs or {})}, dir_file)
    return Path(path)


def _lock(path: Path) -> ExitStack:
    """Hold :func:`models.locking.file_lock` on ``.<name>.lock`` beside ``path`` until the returned
    stack is closed, so two runs never write one surface at once (the lock file is kept: deleting
    it would let a waiter on the old inode and a newcomer both hold the lock)."""
    stack = ExitStack()
    try:
        stack.enter_context(file_lock(path.with_name(f".{path.name}.lock"), what="scan"))
    except LockHeldError as err:
        raise SurfaceConflictError(f"{err} (it is writing {path})") from None
    return stack


class SurfaceStore:
    """A surface being computed: arrays in memory, flushed to ``path`` whole and atomically.

    Points are addressed by flat index ``k = iy * nx + ix`` (the reference's meshgrid ravel
    order). :meth:`record` stores values of computed points and flushes when ``flush_seconds``
    have passed since the last write; values and the done mask always land in the same file
    version, so a file never claims a point it does not hold. With ``path=None`` nothing is
    written (studies that only want arrays).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray | None, names: Sequence[str], attrs: Mapping[str, Any] | None = None,
                 path: str | os.PathLike | None = None, dir_file: str = "", flush_seconds: float = 5.0):
        self.x = np.asarray(x, dtype=np.float64)
        self.y = None if y is None else np.asarray(y, dtype=np.float64)
        self.shape = (len(self.x),) if self.y is None else (len(self.y), len(self.x))
        n = math.prod(self.shape)
        need = n * (8 * (len(names) + 1) + 1) * 2  # values, seconds, done; a copy of each when written
        if need > available_memory():
            raise ValueError(f"a grid of {n:,} points with {len(names)} values needs about {need / 2**30:.3g} GiB of "
                             f"memory for its arrays, more than this machine's {available_memory() / 2**30:.3g} GiB: "
                             f"use fewer points per axis")
        self.values = {name: np.full(n, np.nan) for name in names}
        self.done = np.zeros(n, dtype=bool)
        self.point_seconds = np.full(n, np.nan)
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.path = None if path is None else Path(path)
        self.dir_file = dir_file
        self.flush_seconds = flush_seconds
        self._last_flush = time.monotonic()
        self._dirty = False
        self._flushed = 0  # points in the last version written
        # A store resumed from a file that then records nothing writes nothing: rerunning a study over
        # complete (committed) surfaces must leave them byte for byte as they were.
        self._adopted = False
        self._recorded = False
        self._lock: ExitStack | None = None
        self._run: dict[str, Any] | None = None

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, x: np.ndarray, y: np.ndarray | None, names: Sequence[str],
             identity: Mapping[str, Any], attrs: Mapping[str, Any] | None = None, dir_file: str = "",
             force: bool = False, flush_seconds: float = 5.0) -> SurfaceStore:
        """Continue the surface at ``path`` if its stored identity equals ``identity``, else start
        a new one. A file computed with other arguments raises :class:`SurfaceConflictError`
        unless ``force`` (it is then replaced at the first flush, not before). Takes a lock that
        :meth:`close` releases."""
        path = Path(path)
        if path.exists() and not path.is_file():
            what = "a directory" if path.is_dir() else "not a regular file"
            raise ValueError(f"output {str(path)!r} is {what}; give the path of a surface file (e.g. {path.name}.h5 "
                             f"in a folder of yours)")
        identity = json.loads(json.dumps(dict(identity), sort_keys=True))
        try:
            lock = _lock(path)
        except PermissionError as err:
            raise ValueError(f"cannot write {path}: permission denied on {err.filename or path.parent}; choose a "
                             f"writable --out") from None
        try:
            for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a killed run
                stale.unlink(missing_ok=True)
            store = cls(x, y, names, attrs, path, dir_file, flush_seconds)
            store.attrs["identity"] = identity
            if path.exists() and not force:
                store._adopt(read_surface(path), identity)
            store._lock = lock
        except BaseException:
            lock.close()
            raise
        return store

    def _adopt(self, old: Surface, identity: dict[str, Any]) -> None:
        path = old.path
        if old.attrs.get("format") != FORMAT:
            raise SurfaceConflictError(f"{path} is not a resnet-toolkit surface ({old.attrs.get('format')}); it is "
                                       f"left untouched: choose another --out, or --force to replace it")
        stored = old.attrs.get("identity") or {}
        diff = sorted(k for k in stored.keys() | identity.keys() if stored.get(k) != identity.get(k))
        if diff or set(old.values) != set(self.values) or old.shape != self.shape:
            details = [f"{k}: {_short(stored.get(k))} in the file vs {_short(identity.get(k))} now" for k in diff]
            if set(old.values) != set(self.values):
                details.append(f"values: {sorted(old.values)} in the file vs {sorted(self.values)} now")
            raise SurfaceConflictError(
                f"{path} was computed with other arguments ({'; '.join(details)}). Use another --out, or "
                f"--force to discard it and recompute.")
        for name in self.values:
            self.values[name] = old.values[name].reshape(-1).copy()
        self.done = old.done.reshape(-1).copy()
        self._flushed = int(self.done.sum())
        if isinstance(old.attrs.get("point_seconds"), np.ndarray):
            self.point_seconds = old.attrs["point_seconds"].reshape(-1).copy()
        for k, v in old.attrs.items():
            if k not in ("point_seconds", "format", "dir_file", "identity"):
                self.attrs.setdefault(k, v)
        self.attrs["history"] = list(old.attrs.get("history") or [])
        self._adopted = True

    # -- writing -----------------------------------------------------------------------------
    def begin_run(self, **info: Any) -> None:
        """Start a history entry (host, device, ...) that each flush updates; it joins the file's
        history with this run's first recorded point (a run that computes nothing leaves none)."""
        self._run = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": socket.gethostname(),
                     "points": 0, "seconds": 0.0, **info}
        self.attrs.setdefault("history", [])

    def note_run(self, **info: Any) -> None:
        """Add ``info`` (e.g. the engine settings) to this run's history entry (no-op outside a run)."""
        if self._run is not None:
            self._run.update(info)

    def record(self, index: np.ndarray, values: Mapping[str, np.ndarray], seconds_per_point: float,
               done: np.ndarray | bool = True) -> None:
        """Store computed values at flat indices ``index``; flushes when one is due. ``done``
        (per index) False keeps a point open: an adaptive scan records each chunk of images, and
        its seconds add up."""
        index = np.asarray(index, dtype=np.int64)
        for name, v in values.items():
            self.values[name][index] = np.asarray(v, dtype=np.float64)
        self.point_seconds[index] = np.nan_to_num(self.point_seconds[index]) + seconds_per_point
        self.done[index] = done
        self._recorded = True
        if self._run is not None:
            if not any(run is self._run for run in self.attrs["history"]):
                self.attrs["history"] = list(self.attrs["history"]) + [self._run]
            self._run["points"] += len(index)
            self._run["seconds"] = round(self._run["seconds"] + seconds_per_point * len(index), 4)
        self._dirty = True
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the whole file now (no-op without a path)."""
        if self.path is None or (self._adopted and not self._recorded):
            return
        spent = self.point_seconds[self.done & ~np.isnan(self.point_seconds)]
        self.attrs["points_done"] = int(self.done.sum())
        self.attrs["points_total"] = int(self.done.size)
        self.attrs["seconds_per_point"] = float(spent.mean()) if spent.size else float("nan")
        self.attrs["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        try:
            _write_file(self.path, self.x, self.y, {k: v.reshape(self.shape) for k, v in self.values.items()},
                        self.done.reshape(self.shape), self.point_seconds.reshape(self.shape), self.attrs,
                        self.dir_file)
        except OSError as err:
            on_disk = (f"the file on disk is intact (its last complete version, {self._flushed} of {self.done.size} "
                       f"points)" if self.path.exists() else "nothing was written")
            raise SurfaceWriteError(f"could not write {self.path}: {err.strerror or err}; {on_disk}. Free space (or "
                                    f"fix the folder) and rerun the same command: it resumes") from None
        self._flushed = int(self.done.sum())
        self._last_flush = time.monotonic()
        self._dirty = False

    def close(self) -> None:
        """Flush pending results and release the lock."""
        try:
            if self._dirty:
                self.flush()
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def __enter__(self) -> SurfaceStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------------
    def todo(self) -> np.ndarray:
        """Flat indices of the points not computed yet, in order."""
        return np.flatnonzero(~self.done)

    def surface(self) -> Surface:
        attrs = {**self.attrs, "point_seconds": self.point_seconds.reshape(self.shape).copy(),
                 "dir_file": self.dir_file, "format": FORMAT}
        return Surface(self.x.copy(), None if self.y is None else self.y.copy(),
                       {k: v.reshape(self.shape).copy() for k, v in self.values.items()}, attrs,
                       "" if self.path is None else str(self.path), self.done.reshape(self.shape).copy())


def _short(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, str) else repr(v)
    return text if len(text) <= 40 else text[:37] + "..."

