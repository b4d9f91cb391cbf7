"""Optimization paths in a 2-D plane: PCA of the checkpoints' offsets theta_i - theta_final (Li et al.
2018, Sec. 7) gives two directions that capture most of the path, written as a direction file a scan
can use, plus the path's coordinates in that plane for plotting it over the landscape.

    python -m landscapes.trajectory runs/resnet8_mnist_traj
"""
from __future__ import annotations

import argparse
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import h5py
import numpy as np
from scipy.stats import wishart
import torch
import torch.nn as nn
from tqdm import tqdm

from models import load_checkpoint, read_checkpoint
from models.cli import fail
from models.fileio import atomic_path, package_version, sha256

from .directions import State, save_directions
from .surface import open_hdf5

FORMAT = "resnet-toolkit/1"
PCA_IGNORES = ("biasbn", "none")
PROJECTIONS = ("lstsq", "cos")
# Where the columns of the difference matrix are read in pieces, so float64 copies stay small.
_CHUNK = 1 << 20

__all__ = ["PCAConfig", "PCADirections", "Projection", "TrajectoryConfig", "TrajectoryResult", "PCA_IGNORES",
           "PROJECTIONS", "difference_matrix", "pca_directions", "project", "save_pca_directions",
           "write_projection", "read_projection", "projection_path", "run_checkpoints", "pca_trajectory", "main"]


@dataclass(frozen=True)
class PCAConfig:
    """How to turn checkpoints into PCA directions.

    ignore "biasbn" (the paper's choice, our default) zeroes every 1-D parameter (biases, BN
    affine) in the offsets, so the directions move only conv/linear weights, like the
    filter-normalized random directions of a scan; "none" keeps them. center: subtract the mean
    offset before the decomposition, as the reference code's sklearn PCA does (the directions are
    then the principal axes of the path's spread; without it, of its displacement from the end).
    projection: "lstsq" gives the coordinates (a, b) minimizing ||offset - a dx - b dy||, the
    right ones for any two directions; "cos" is the reference's dot product with each unit
    direction, equal to lstsq only when dx and dy are orthonormal (PCA directions are).
    """

    ignore: str = "biasbn"
    center: bool = True
    projection: str = "lstsq"

    def __post_init__(self) -> None:
        if self.ignore not in PCA_IGNORES:
            raise ValueError(f"ignore must be one of {', '.join(PCA_IGNORES)}; got {self.ignore!r}")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {', '.join(PROJECTIONS)}; got {self.projection!r}")


@dataclass
class PCADirections:
    """The two leading principal directions (unit vectors over all parameters together), keyed by
    parameter name; ignored parameters are absent (zero). Arrays hold the first two components,
    named as sklearn's PCA attributes that the reference stores: explained_variance_ratio (of the
    total variance over all components), explained_variance (s^2 / (T - 1)), singular_values."""

    directions: list[State]
    explained_variance_ratio: np.ndarray
    explained_variance: np.ndarray
    singular_values: np.ndarray
    names: list[str]
    center: bool = True
    ignore: str = "biasbn"


@dataclass
class Projection:
    """A path in a direction plane: x[i], y[i] are the coordinates of checkpoint i relative to the
    final model; residual[i] is its distance from the plane, distance[i] its distance from the final
    model (both over the tensors the directions move), so residual / distance says how much of
    that checkpoint's offset the plane misses."""

    x: np.ndarray
    y: np.ndarray
    labels: list[str]
    epochs: np.ndarray
    residual: np.ndarray
    distance: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)
    path: str = ""


StateOrPath = Union[State, str, os.PathLike]


def _load(item: StateOrPath) -> State:
    """A state_dict, or the one in a checkpoint file (read when needed, so a long run's
    checkpoints are never all in memory at once)."""
    return read_checkpoint(item)["state_dict"] if isinstance(item, (str, os.PathLike)) else item


def _parameter_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def _kept(names: Sequence[str], state: State, ignore: str) -> list[str]:
    return [n for n in names if ignore == "none" or state[n].dim() > 1]


def difference_matrix(states: Sequence[StateOrPath], final: State, names: Sequence[str], ignore: str = "biasbn",
                      progress: bool = False) -> torch.Tensor:
    """Rows theta_i - theta_final (float32, shape (T, N)), one per state or checkpoint path, over
    the parameters ``names`` in order. ``ignore="biasbn"`` zeroes the 1-D tensors, which are then
    simply left out of the columns (N counts the kept tensors only). A ResNet-56 run of 300
    epochs is 300 x 0.85M floats, 1 GB; the differences are taken in float64."""
    if ignore not in PCA_IGNORES:
        raise ValueError(f"ignore must be one of {', '.join(PCA_IGNORES)}; got {ignore!r}")
    kept = _kept(names, final, ignore)
    numel = sum(final[n].numel() for n in kept)
    M = torch.empty((len(states), numel), dtype=torch.float32)
    for i, item in enumerate(tqdm(states, desc="offsets", unit="ckpt", disable=not progress)):
        state, off = _load(item), 0
        for n in kept:
            if n not in state:
                raise ValueError(f"checkpoint {i} lacks parameter {n!r}: all checkpoints must be the same architecture")
            t, ref = state[n], final[n]
            if t.shape != ref.shape:
                raise ValueError(f"checkpoint {i}: {n} has shape {tuple(t.shape)} but the final model's is "
                                 f"{tuple(ref.shape)}: all checkpoints must be the same architecture")
            M[i, off:off + ref.numel()] = (t.detach().cpu().double() - ref.detach().cpu().double()).reshape(-1).float()
            off += ref.numel()
    return M


def _gram(M: torch.Tensor) -> torch.Tensor:
    """M M^T in float64, accumulated over column chunks (no float64 copy of M)."""
    G = torch.zeros((M.shape[0], M.shape[0]), dtype=torch.float64)
    for start in range(0, M.shape[1], _CHUNK):
        block = M[:, start:start + _CHUNK].double()
        G += block @ block.T
    return G


def pca_directions(states: Sequence[StateOrPath], final: State, model: nn.Module, config: PCAConfig = PCAConfig(),
                   progress: bool = False) -> PCADirections:
    """PCA of the offsets theta_i - theta_final of ``states`` (the checkpoints along the path, in
    order) from ``final``. ``model`` names the parameters (``model.parameters()`` order).

    With T checkpoints and N parameters the decomposition goes through the T x T Gram matrix
    (eigh in float64): exact, and cheap for N in the millions, where an SVD of M would not be.
    """
    if len(states) < 2:
        raise ValueError(f"PCA of a path needs at least 2 checkpoints, got {len(states)}")
    names = _parameter_names(model)
    kept = _kept(names, final, config.ignore)
    M = difference_matrix(states, final, names, config.ignore, progress)
    mean = None
    if config.center:
        mean = torch.cat([M[:, s:s + _CHUNK].double().mean(0) for s in range(0, M.shape[1], _CHUNK)])
        M -= mean.float()
    G = _gram(M)
    evals, U = torch.linalg.eigh(G)
    evals, U = evals.flip(0).clamp_min(0), U.flip(1)
    if float(evals[1]) <= 1e-12 * max(float(evals[0]), 1e-300):
        raise ValueError("the checkpoints span fewer than 2 dimensions (identical checkpoints, or only one that "
                         "differs from the final model): there is no PCA plane to project on")
    sing = evals.sqrt()
    comps = []
    for k in range(2):
        v = torch.empty(M.shape[1], dtype=torch.float64)
        for start in range(0, M.shape[1], _CHUNK):
            v[start:start + _CHUNK] = M[:, start:start + _CHUNK].double().T @ U[:, k]
        comps.append(v / v.norm())
    # Deterministic signs (as sklearn's svd_flip): the path's largest coordinate is positive.
    for k in range(2):
        coords = _dot_rows(M, comps[k])
        if mean is not None:
            coords += float(mean @ comps[k])  # back to the raw offsets theta_i - theta_final
        if coords[coords.abs().argmax()] < 0:
            comps[k] = -comps[k]
    directions = []
    for v in comps:
        direction, off = {}, 0
        for n in kept:
            ref = final[n]
            direction[n] = v[off:off + ref.numel()].view(ref.shape).to(ref.dtype)
            off += ref.numel()
        directions.append(direction)
    total = float(evals.sum())
    dof = max(len(states) - 1, 1)
    return PCADirections(directions, (evals[:2] / total).numpy(), (evals[:2] / dof).numpy(), sing[:2].numpy(),
                         kept, config.center, config.ignore)


def _dot_rows(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(M.shape[0], dtype=torch.float64)
    for start in range(0, M.shape[1], _CHUNK):
        out += M[:, start:start + _CHUNK].double() @ v[start:start + _CHUNK]
    return out


def project(states: Sequence[StateOrPath], final: State, directions: Sequence[State], method: str = "lstsq",
            labels: Sequence[str] | None = None, epochs: Sequence[int] | None = None) -> Projection:
    """Coordinates of each offset theta_i - theta_final in the plane of two directions (dicts keyed
    by state names; absent keys are zeros). Offsets, residuals and distances are taken over the
    tensors the directions move (for biasbn-ignoring directions: the conv/linear weights), the
    space the plane lives in. See :class:`PCAConfig` for lstsq vs cos."""
    if method not in PROJECTIONS:
        raise ValueError(f"projection must be one of {', '.join(PROJECTIONS)}; got {method!r}")
    if len(directions) != 2:
        raise ValueError(f"projecting a path needs 2 directions (a plane), got {len(directions)}")
    keys = sorted(set(directions[0]) | set(directions[1]))
    D = torch.stack([torch.cat([d[k].detach().cpu().double().reshape(-1) if k in d
                                else torch.zeros(final[k].numel(), dtype=torch.float64) for k in keys])
                     for d in directions], 1)  # (N, 2)
    gram = D.T @ D
    if torch.linalg.matrix_rank(gram) < 2:
        raise ValueError("the two directions are parallel (or one is zero): they do not span a plane")
    xs, ys, res, dist = [], [], [], []
    for item in states:
        state = _load(item)
        m = torch.cat([(state[k].detach().cpu().double() - final[k].detach().cpu().double()).reshape(-1) for k in keys])
        b = D.T @ m
        exact = torch.linalg.solve(gram, b)
        c = exact if method == "lstsq" else b / gram.diagonal().sqrt()
        in_span = float((m - D @ exact).pow(2).sum())
        xs.append(float(c[0]))
        ys.append(float(c[1]))
        res.append(in_span ** 0.5)
        dist.append(float(m.pow(2).sum()) ** 0.5)
    n = len(states)
    return Projection(np.array(xs), np.array(ys), list(labels) if labels is not None else [str(i) for i in range(n)],
                      np.asarray(epochs if epochs is not None else np.arange(n), dtype=np.int64), np.array(res),
                      np.array(dist), {"projection": method})


def save_pca_directions(path: str | os.PathLike, pca: PCADirections, model: nn.Module,
                        meta: dict[str, Any] | None = None) -> Path:
    """A direction file in the reference layout (``xdirection``/``ydirection``, ``model.parameters()``
    order) plus its top-level datasets ``explained_variance_ratio_``, ``explained_variance_``,
    ``singular_values_`` (as the reference writes them), written under a temporary name."""
    path = Path(path)
    attrs = {"source": "pca", "pca_center": pca.center, "ignore": pca.ignore,
             "explained_variance_ratio": pca.explained_variance_ratio, **(meta or {})}
    with atomic_path(path) as tmp:
        save_directions(tmp, pca.directions, model, "weights", meta=attrs)
        with h5py.File(tmp, "a") as f:
            f["explained_variance_ratio_"] = pca.explained_variance_ratio
            f["explained_variance_"] = pca.explained_variance
            f["singular_values_"] = pca.singular_values
    return path


def projection_path(dir_file: str | os.PathLike) -> Path:
    """``<dir_file stem>_trajectory.h5`` next to the direction file."""
    p = Path(dir_file)
    return p.with_name(f"{p.stem}_trajectory.h5")


def write_projection(path: str | os.PathLike, proj: Projection, attrs: dict[str, Any] | None = None) -> Path:
    """Write a path's coordinates: ``proj_xcoord``/``proj_ycoord`` as the reference's
    ``*_proj_cos.h5`` (its plotting scripts read ours), plus epochs, labels, residuals, distances."""
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f["proj_xcoord"] = proj.x
        f["proj_ycoord"] = proj.y
        f["epoch"] = proj.epochs
        f["label"] = np.array(proj.labels, dtype=h5py.string_dtype())
        f["residual"] = proj.residual
        f["distance"] = proj.distance
        for k, v in {**proj.attrs, **(attrs or {})}.items():
            f.attrs[k] = "" if v is None else v
        f.attrs["format"] = FORMAT
        f.attrs["kind"] = "trajectory"
        f.attrs["version"] = package_version()
    return path


def read_projection(path: str | os.PathLike) -> Projection:
    """Read ours or the reference's ``*_proj_cos.h5`` (which holds only the two coordinate arrays)."""
    path = Path(path)
    with open_hdf5(path, "trajectory") as f:
        if "proj_xcoord" not in f or "proj_ycoord" not in f:
            raise ValueError(f"{path} has no proj_xcoord/proj_ycoord datasets: not a trajectory file "
                             f"(write one with python -m landscapes.trajectory RUN_DIR)")
        x = np.asarray(f["proj_xcoord"][()], dtype=np.float64).reshape(-1)
        y = np.asarray(f["proj_ycoord"][()], dtype=np.float64).reshape(-1)
        n = len(x)
        epochs = np.asarray(f["epoch"][()], dtype=np.int64) if "epoch" in f else np.arange(n)
        labels = [v.decode() if isinstance(v, bytes) else str(v) for v in f["label"][()]] if "label" in f \
            else [str(e) for e in epochs]
        nan = np.full(n, np.nan)
        residual = np.asarray(f["residual"][()], dtype=np.float64) if "residual" in f else nan
        distance = np.asarray(f["distance"][()], dtype=np.float64) if "distance" in f else nan
        attrs = {k: (v.decode() if isinstance(v, bytes) else v.item() if isinstance(v, np.generic) else v)
                 for k, v in f.attrs.items()}
    return Projection(x, y, labels, epochs, residual, distance, attrs, str(path))


# --------------------------------------------------------------------------------------------
# From a training run's directory to the two files
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrajectoryConfig:
    """PCA directions and the projected path of one training run.

    run_dir: a ``models.train`` output (``epoch_<k>.pt`` ..., ``final.pt``); or give
    ``checkpoints`` explicitly (in path order; reference ``model_<k>.t7`` files work with
    ``model``). final: the model the directions are centred on (default run_dir/final.pt, else the
    last checkpoint). dir_file: default run_dir/pca_directions.h5 (ignore=none adds a suffix);
    proj_file: default ``<dir_file stem>_trajectory.h5``.
    """

    run_dir: str | None = None
    checkpoints: tuple[str, ...] = ()
    final: str | None = None
    model: str | None = None
    pca: PCAConfig = PCAConfig()
    dir_file: str | None = None
    proj_file: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoints", tuple(str(c) for c in self.checkpoints))
        if self.run_dir is None and not self.checkpoints:
            raise ValueError("give a run directory (models.train --out) or a list of checkpoints")


def run_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(epoch, path) of ``epoch_<k>.pt`` (ours) or ``model_<k>.t7`` (reference) files, by epoch."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist")
    found = []
    for p in run_dir.iterdir():
        m = re.fullmatch(r"(?:epoch|model)_(\d+)\.(?:pt|t7|pth)", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


@dataclass
class TrajectoryResult:
    """Paths written and what they hold."""

    dir_file: Path
    proj_file: Path
    pca: PCADirections
    projection: Projection
    seconds: float


def _epoch_of(path: Path, fallback: int) -> int:
    """The epoch in a checkpoint's name (epoch_12.pt, model_12.t7), else its stored one, else its index."""
    m = re.search(r"(\d+)", path.stem)
    if m:
        return int(m.group(1))
    epoch = read_checkpoint(path)["meta"].get("epoch")
    return int(epoch) if isinstance(epoch, int) else fallback


def pca_trajectory(config: TrajectoryConfig) -> TrajectoryResult:
    """Read the checkpoints, compute the PCA directions, project the path; write both files."""
    start = time.perf_counter()
    if config.checkpoints:
        paths = [Path(c) for c in config.checkpoints]
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist")
    else:
        found = run_checkpoints(config.run_dir)
        paths = [p for _, p in found]
        if len(paths) < 2:
            raise ValueError(f"{config.run_dir} holds {len(paths)} epoch checkpoints (epoch_<k>.pt); a path needs "
                             f"at least 2. Train with checkpoints every epoch (models.train saves them by default)")
    run_dir = Path(config.run_dir) if config.run_dir is not None else paths[-1].parent
    final_path = Path(config.final) if config.final else (run_dir / "final.pt" if (run_dir / "final.pt").is_file()
                                                          else paths[-1])
    model, meta = load_checkpoint(final_path, name=config.model)
    final = {k: v.detach() for k, v in model.state_dict().items()}
    epochs = [_epoch_of(p, i) for i, p in enumerate(paths)]
    pca = pca_directions(paths, final, model, config.pca, progress=config.progress)
    proj = project(paths, final, pca.directions, config.pca.projection, [p.name for p in paths], epochs)
    suffix = "" if config.pca.ignore == "biasbn" else f"_ignore={config.pca.ignore}"
    dir_file = Path(config.dir_file) if config.dir_file else run_dir / f"pca_directions{suffix}.h5"
    proj_file = Path(config.proj_file) if config.proj_file else projection_path(dir_file)
    model_name = getattr(getattr(model, "spec", None), "name", config.model or "")
    common = {"model": model_name, "final": str(final_path), "final_sha256": sha256(final_path),
              "dataset": str(meta.get("dataset", "")), "checkpoints": np.array([str(p) for p in paths],
                                                                            dtype=h5py.string_dtype())}
    save_pca_directions(dir_file, pca, model, {**common, "pca_checkpoints": len(paths)})
    write_projection(proj_file, proj, {**common, "dir_file": str(dir_file),
                                       "explained_variance_ratio": pca.explained_variance_ratio})
    return TrajectoryResult(dir_file, proj_file, pca, proj, time.perf_counter() - start)


def suggested_axes(proj: Projection, margin: float = 0.25, num: int = 31) -> tuple[str, str]:
    """--x/--y grid specs covering the path (and the final model at 0) with a margin."""
    specs = []
    for v in (proj.x, proj.y):
        lo, hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
        pad = margin * max(hi - lo, 1e-3)
        specs.append(f"{lo - pad:.3g}:{hi + pad:.3g}:{num}")
    return specs[0], specs[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m landscapes.trajectory", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", nargs="?", help="training run directory (epoch_<k>.pt ..., final.pt)")
    p.add_argument("--checkpoints", nargs="+", help="explicit checkpoint files in path order (instead of run_dir)")
    p.add_argument("--final", help="the model the plane is centred on (default: RUN_DIR/final.pt)")
    p.add_argument("--model", help="model name, needed only for reference-project checkpoints")
    p.add_argument("--ignore", default=PCAConfig.ignore, choices=PCA_IGNORES,
                   help="biasbn: zero biases and BN parameters in the offsets (the paper)")
    p.add_argument("--no-center", dest="center", action="store_false",
                   help="decompose the raw offsets instead of their spread around the mean")
    p.add_argument("--projection", default=PCAConfig.projection, choices=PROJECTIONS)
    p.add_argument("--dir-file", help="direction file to write (default: RUN_DIR/pca_directions.h5)")
    p.add_argument("--proj-file", help="trajectory file to write (default: <dir-file stem>_trajectory.h5)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        config = TrajectoryConfig(run_dir=args.run_dir, checkpoints=tuple(args.checkpoints or ()), final=args.final,
                                  model=args.model, pca=PCAConfig(args.ignore, args.center, args.projection),
                                  dir_file=args.dir_file, proj_file=args.proj_file, progress=args.progress)
        result = pca_trajectory(config)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    r, pr = result.pca.explained_variance_ratio, result.projection
    gx, gy = suggested_axes(pr)
    total = float((pr.distance ** 2).sum())
    in_plane = 1 - float((pr.residual ** 2).sum()) / total if total > 0 else float("nan")
    print(f"{result.dir_file}: PCA of {len(pr.x)} checkpoints, explained variance {100 * r[0]:.1f}% + "
          f"{100 * r[1]:.1f}% = {100 * r.sum():.1f}%")
    print(f"{result.proj_file}: path from ({pr.x[0]:.3g}, {pr.y[0]:.3g}) to ({pr.x[-1]:.3g}, {pr.y[-1]:.3g}); "
          f"{100 * in_plane:.1f}% of the path's squared offsets lie in the plane ({result.seconds:.1f} s)")
    final = result.dir_file.parent / "final.pt"
    print(f"scan it: python -m landscapes.scan --checkpoint {final} --dir-file {result.dir_file} --x={gx} --y={gy} ...")
    print(f"plot it: python -m landscapes.plot SURFACE.h5 --trajectory {result.proj_file}")


if __name__ == "__main__":
    main()


def random_walk_variance(points: int, dim: int, components: int = 2, repeats: int = 200,
                         seed: int = 0) -> tuple[float, float]:
    """(mean, sd) over ``repeats`` walks of the fraction of variance that the first ``components``
    PCA directions explain for an isotropic Gaussian random walk of ``points`` positions (the start
    and ``points - 1`` steps) in ``dim`` dimensions, mean-centred as :func:`pca_directions` does.

    The null baseline for "the path lies in a low-dimensional subspace": a random walk is already
    far from isotropic in PCA (Antognini & Sohl-Dickstein 2018: ~6/(pi^2 k^2) of the variance on
    component k, so ~76% on two), so a trajectory's PC1+PC2 share means something only beside it.
    Exact for any ``dim``: only the Gram matrix of the steps matters, and it is Wishart(dim, I), so
    no ``dim``-sized vector is drawn."""
    if points < components + 1 or dim < 1:
        raise ValueError(f"need points > components ({components}) and dim >= 1, got points={points}, dim={dim}")
    steps = points - 1
    cumulate = np.tril(np.ones((points, steps)), k=-1)  # position t = sum of the first t steps
    centre = np.eye(points) - 1.0 / points
    walk = centre @ cumulate
    rng = np.random.default_rng(seed)
    shares = []
    for _ in range(repeats):
        gram_steps = wishart.rvs(df=dim, scale=np.eye(steps), random_state=rng) if steps > 1 else \
            np.array([[rng.chisquare(dim)]])
        eig = np.sort(np.linalg.eigvalsh(walk @ np.atleast_2d(gram_steps) @ walk.T))[::-1]
        shares.append(eig[:components].sum() / eig.sum())
    return float(np.mean(shares)), float(np.std(shares, ddof=1)) if repeats > 1 else float("nan")
