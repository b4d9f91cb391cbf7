"""Extreme eigenvalues of the loss Hessian from Hessian-vector products, at one point or over a grid.

Li et al. (2018, Sec. 6) map |lambda_min / lambda_max| over a landscape slice: where it is near 0 the
slice is locally convex, where it is large the "convex-looking" plot hides strong negative curvature.

    python -m landscapes.hessian --model resnet20 --dataset mnist --samples 64 --x -1:1:5 --y -1:1:5
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch.func import functional_call
from tqdm import tqdm

from models.checks import positive_int
from models.cli import fail

from .directions import State
from .grid import Axis, glue_grid_args, grid_coords
from .options import add_scan_options, scan_config_kwargs
from .reference import point_state
from .scan import ScanConfig, prepare_scan, resolve_config
from .scanconfig import DirectionOptions, OutputOptions, ScanTarget
from .surface import Surface, SurfaceStore, read_surface
MatVec = Callable[[torch.Tensor], torch.Tensor]

EIG_METHODS = ("lanczos", "arpack", "power")
PARAMS = ("weights", "all")
HESSIAN_DTYPES = {"float32": torch.float32, "float64": torch.float64}

__all__ = ["HessianConfig", "EigResult", "HessianOperator", "EIG_METHODS", "HESSIAN_DTYPES", "PARAMS", "HESSIAN_VALUES", "hessian_eigs",
           "hessian_map", "HessianScanConfig", "hessian_scan", "extreme_eigs", "lanczos_extremes", "arpack_extremes",
           "power_extremes", "main"]


@dataclass(frozen=True)
class HessianConfig:
    """How to find the top and bottom Hessian eigenvalues of the mean cross-entropy at a point.

    method: "lanczos" (default; one Krylov run with full reorthogonalization yields both ends),
    "arpack" (scipy eigsh, which="BE", on a LinearOperator) or "power" (power iteration for the
    dominant eigenvalue, then on H - mu I for the other end; slow, kept for comparison).
    params: "weights" differentiates w.r.t. parameters of dim > 1 (conv/linear weights) as the
    reference code does, consistent with biasbn-ignoring directions; "all" adds biases and BN affine.
    tol: stop when each extreme Ritz pair has residual ||Hv - theta v|| <= tol * max(|theta|,
    tol * |lambda_max|) (see :func:`lanczos_extremes` for why relative to theta itself); the
    eigenvalue error is then below the residual (usually far below: ~ residual^2 / gap).
    max_iter: Hessian-vector products per point (power: per end). reuse_graph: keep each batch's
    gradient graph across products (one double-backward pass per product instead of forward +
    backward + double-backward; memory grows with the data subset).
    """

    method: str = "lanczos"
    params: str = "weights"
    tol: float = 1e-3
    max_iter: int = 100
    batch_size: int = 128
    dtype: str = "float32"
    seed: int = 0
    reuse_graph: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        for name, accepted in (("method", EIG_METHODS), ("params", PARAMS), ("dtype", tuple(HESSIAN_DTYPES))):
            if getattr(self, name) not in accepted:
                raise ValueError(f"{name} must be one of {', '.join(accepted)}; got {getattr(self, name)!r}")
        if not self.tol > 0:
            raise ValueError(f"tol must be > 0, got {self.tol}")
        for name in ("max_iter", "batch_size"):
            positive_int(name, getattr(self, name))


@dataclass
class EigResult:
    """Extreme eigenvalues at one point. residuals are ||Hv - lambda v|| for (max, min); hvps counts
    Hessian-vector products; converged says whether both ends met the tolerance."""

    max_eig: float
    min_eig: float
    hvps: int
    converged: bool
    seconds: float = 0.0
    residuals: tuple[float, float] = (math.nan, math.nan)
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """|lambda_min / lambda_max|, the quantity Li et al. map."""
        return abs(self.min_eig / self.max_eig) if self.max_eig != 0 else math.nan


class HessianOperator:
    """v -> H v for the mean cross-entropy of ``model`` (eval mode: BN uses the running statistics
    in ``state``) over all of ``data``, w.r.t. the parameters ``config.params`` selects, flattened in
    ``model.parameters()`` order. ``state`` (default: the model's own) is the point; the model's
    weights are never modified (it is put in eval mode).

    Double backward rather than forward-over-reverse (torch.func.jvp of grad): measured on this CPU
    for ResNet-20 on 64 MNIST images (2 threads), one product costs 0.46 s forward-over-reverse,
    0.38 s by double backward, and 0.25 s with ``reuse_graph`` (the gradient graph is built once
    per point, then each product is one backward pass through it); a plain gradient costs 0.10 s.
    """

    def __init__(self, model: nn.Module, data, config: HessianConfig = HessianConfig(),
                 state: State | None = None) -> None:
        dtype = HESSIAN_DTYPES[config.dtype]
        if len(data) == 0:
            raise ValueError("data is empty: the Hessian needs at least one sample")
        self.model = model.eval()
        base = dict(model.state_dict()) if state is None else dict(state)
        pnames = [name for name, _ in model.named_parameters()]
        missing = [n for n in pnames if n not in base]
        if missing:
            raise ValueError(f"state lacks parameters of the model: {missing[:3]}")
        self.names = [n for n in pnames if config.params == "all" or base[n].dim() > 1]
        device = next(iter(base.values())).device
        self.fixed = {k: (v.detach().to(dtype) if v.is_floating_point() else v)
                      for k, v in base.items() if k not in self.names}
        self.params = [base[n].detach().to(dtype).clone().requires_grad_(True) for n in self.names]
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.dim = sum(self.numels)
        self.dtype, self.device = dtype, device
        self.data, self.config = data, config
        self.hvps = 0
        self._grads: list[tuple[torch.Tensor, ...]] | None = None

    def _batch_grads(self):
        """Yield (flat gradient graph of one batch's share of the mean loss) per batch."""
        n = len(self.data)
        for x, y in self.data.batches(self.config.batch_size):
            x = x.to(self.device, self.dtype)
            weights = dict(zip(self.names, self.params))
            out = functional_call(self.model, {**self.fixed, **weights}, (x,))
            loss = F.cross_entropy(out, y.to(self.device), reduction="sum") / n
            yield torch.autograd.grad(loss, self.params, create_graph=True)

    def loss_and_grad(self) -> tuple[float, torch.Tensor]:
        """Mean loss and its flat gradient at the point (for tests and diagnostics)."""
        n, total, grads = len(self.data), 0.0, torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for x, y in self.data.batches(self.config.batch_size):
            x = x.to(self.device, self.dtype)
            out = functional_call(self.model, {**self.fixed, **dict(zip(self.names, self.params))}, (x,))
            loss = F.cross_entropy(out, y.to(self.device), reduction="sum") / n
            grads += torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, self.params)])
            total += float(loss.detach())
        return total, grads

    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        return [t.view(s) for t, s in zip(v.split(self.numels), self.shapes)]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector v of length ``dim`` (any dtype/device; returned in the operator's)."""
        if v.shape != (self.dim,):
            raise ValueError(f"vector must have shape ({self.dim},), got {tuple(v.shape)}")
        vs = self.split(v.to(self.device, self.dtype))
        self.hvps += 1
        if self.config.reuse_graph and self._grads is None:
            self._grads = list(self._batch_grads())
        grads = self._grads if self.config.reuse_graph else self._batch_grads()
        out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for g in grads:
            hv = torch.autograd.grad(g, self.params, grad_outputs=vs, retain_graph=self.config.reuse_graph)
            out += torch.cat([h.reshape(-1) for h in hv])
        return out

    def release(self) -> None:
        """Free the retained gradient graphs."""
        self._grads = None


def _start_vector(dim: int, seed: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(dim, generator=g, dtype=torch.float64)
    return (v / v.norm()).to(device, dtype)


def lanczos_extremes(matvec: MatVec, dim: int, v0: torch.Tensor, tol: float = 1e-3, max_iter: int = 100,
                     progress: Callable[[int, float, float, float, float], None] | None = None) -> EigResult:
    """Both extreme eigenvalues of a symmetric operator from one Lanczos run.

    Full reorthogonalization (two Gram-Schmidt passes against all previous vectors) keeps the
    Ritz values free of ghost copies; its O(k dim) cost is small next to a Hessian-vector product.
    The residual of Ritz pair i is r_i = beta_k |s_{k,i}| (last entry of its eigenvector of T_k), and
    some eigenvalue lies within r_i of theta_i. An end counts as converged when
    r_i <= tol * max(|theta_i|, tol * max|theta|): relative to the eigenvalue itself, as ARPACK does,
    because a bound relative to lambda_max alone accepts a Ritz value parked in the dense bulk of
    near-zero eigenvalues (any value there is within the bulk's width of some eigenvalue) long before
    an isolated negative lambda_min emerges. The tol * max|theta| floor lets a lambda_min that really is
    ~0 (|lambda_min / lambda_max| < tol, a locally convex point) stop as well.
    """
    steps = min(max_iter, dim)
    Q = torch.empty((steps + 1, dim), dtype=v0.dtype, device=v0.device)
    Q[0] = v0 / v0.norm()
    alphas: list[float] = []
    betas: list[float] = []
    theta = np.array([0.0])
    res = (math.inf, math.inf)
    converged = False
    k = 0
    for k in range(1, steps + 1):
        w = matvec(Q[k - 1])
        alpha = float(torch.dot(w, Q[k - 1]))
        w = w - alpha * Q[k - 1] - (betas[-1] * Q[k - 2] if betas else 0.0)
        for _ in range(2):
            w = w - Q[:k].T @ (Q[:k] @ w)
        beta = float(w.norm())
        alphas.append(alpha)
        theta, s = scipy.linalg.eigh_tridiagonal(np.array(alphas), np.array(betas))
        scale = max(abs(theta[0]), abs(theta[-1]), np.finfo(np.float64).tiny)
        res = (beta * abs(s[-1, -1]), beta * abs(s[-1, 0]))
        if progress is not None:
            progress(k, float(theta[-1]), float(theta[0]), float(res[0]), float(res[1]))
        # beta ~ 0: the Krylov space is invariant, the Ritz values are exact eigenvalues.
        exhausted = beta <= 100 * torch.finfo(v0.dtype).eps * scale or k == dim
        if (res[0] <= tol * max(abs(theta[-1]), tol * scale) and res[1] <= tol * max(abs(theta[0]), tol * scale)) \
                or exhausted:
            converged = True
            break
        betas.append(beta)
        Q[k] = w / beta
    return EigResult(float(theta[-1]), float(theta[0]), k, converged, residuals=(float(res[0]), float(res[1])))


def arpack_extremes(matvec: MatVec, dim: int, v0: torch.Tensor, tol: float = 1e-3,
                    max_iter: int = 100) -> EigResult:
    """scipy's ARPACK (implicitly restarted Lanczos) with which="BE": one run, both ends.

    ARPACK's tol is relative to each eigenvalue, so a near-zero lambda_min converges slowly. The
    products are capped at max_iter; past it ARPACK cannot hand back its current estimates, and the
    point is reported as NaN and not converged. Residuals are not computed (two more products).
    """

    count = [0]

    def mv(x: np.ndarray) -> np.ndarray:
        count[0] += 1
        if count[0] > max_iter:
            raise _Budget()
        out = matvec(torch.from_numpy(np.asarray(x, dtype=np.float64).ravel()).to(v0.device, v0.dtype))
        return out.detach().to("cpu", torch.float64).numpy()

    op = LinearOperator((dim, dim), matvec=mv, dtype=np.float64)
    if dim <= 3:  # ARPACK needs k < dim; tiny operators are solved densely
        dense = np.column_stack([mv(e) for e in np.eye(dim)])
        vals = np.linalg.eigvalsh((dense + dense.T) / 2)
        return EigResult(float(vals[-1]), float(vals[0]), count[0], True, residuals=(0.0, 0.0))
    ncv = min(dim, max(20, min(40, max_iter // 2)))
    try:
        vals = eigsh(op, k=2, which="BE", tol=tol, v0=v0.detach().cpu().double().numpy(), ncv=ncv,
                     maxiter=max(1, max_iter), return_eigenvectors=False)
        converged = True
    except ArpackNoConvergence as err:
        vals, converged = err.eigenvalues, False
    except _Budget:
        return EigResult(math.nan, math.nan, max_iter, False)
    if len(vals) < 2:
        lo = hi = float(vals[0]) if len(vals) else math.nan
        return EigResult(hi, lo, count[0], False)
    return EigResult(float(np.max(vals)), float(np.min(vals)), count[0], converged)


class _Budget(Exception):
    """Raised inside ARPACK's callback when max_iter products are spent."""


def power_extremes(matvec: MatVec, dim: int, v0: torch.Tensor, tol: float = 1e-3, max_iter: int = 100) -> EigResult:
    """Power iteration for the dominant eigenvalue mu, then on (H - mu I) for the opposite end.

    Shifting by mu itself (not the reference code's 0.51 * lambda_max, which returns lambda_max
    again whenever lambda_min > -0.02 lambda_max) makes the other end dominant in every case.
    Converges at rate |lambda_2 / lambda_1| per product, hence slowly when the spectrum's edge is
    crowded; Lanczos needs roughly the square root of its iterations. The stopping test is
    Lanczos's (relative to the eigenvalue of H found, floored at tol * |mu|): on (H - mu I) a test
    relative to the shifted eigenvalue accepts a Rayleigh quotient still inside the bulk (on a
    trained ResNet-20 it reported lambda_min = -3.5e-5 for a true -0.27).
    """

    def run(op: MatVec, shift: float) -> tuple[float, float, int, bool]:
        """Power iteration on op = H - shift I; the test is on the eigenvalue of H, mu + shift."""
        v = v0 / v0.norm()
        mu, res = 0.0, math.inf
        for it in range(1, max_iter + 1):
            w = op(v)
            mu = float(torch.dot(v, w))
            res = float((w - mu * v).norm())
            if res <= tol * max(abs(mu + shift), tol * abs(shift)):
                return mu, res, it, True
            norm = float(w.norm())
            if norm == 0.0:
                return 0.0, 0.0, it, True
            v = w / norm
        return mu, res, max_iter, False

    mu1, r1, it1, ok1 = run(matvec, 0.0)
    mu2, r2, it2, ok2 = run(lambda v: matvec(v) - mu1 * v, mu1)
    other = mu2 + mu1
    hi, lo = (mu1, other) if mu1 >= other else (other, mu1)
    res = (r1, r2) if mu1 >= other else (r2, r1)
    return EigResult(hi, lo, it1 + it2, ok1 and ok2, residuals=res)


def extreme_eigs(matvec: MatVec, dim: int, config: HessianConfig, dtype: torch.dtype = torch.float64,
                 device: torch.device | str = "cpu",
                 progress: Callable[[int, float, float, float, float], None] | None = None
                 ) -> EigResult:
    """Largest and smallest eigenvalue of a symmetric operator given as a matvec, per config.method."""
    v0 = _start_vector(dim, config.seed, dtype, torch.device(device))
    start = time.perf_counter()
    if config.method == "lanczos":
        result = lanczos_extremes(matvec, dim, v0, config.tol, config.max_iter, progress)
    elif config.method == "arpack":
        result = arpack_extremes(matvec, dim, v0, config.tol, config.max_iter)
    else:
        result = power_extremes(matvec, dim, v0, config.tol, config.max_iter)
    result.seconds = time.perf_counter() - start
    return result


def hessian_eigs(model: nn.Module, data, config: HessianConfig = HessianConfig(),
                 state: State | None = None) -> EigResult:
    """Top and bottom eigenvalue of the Hessian of the mean cross-entropy over ``data`` at ``state``
    (default: the model's current weights), w.r.t. the parameters ``config.params`` selects.

    ``data`` is a ``models.data.DeviceData`` (a fixed subset: the eigenvalues are of that subset's
    loss). Eval-mode BN. In ``config.dtype`` (use float64 to compare with exact Hessians).
    """
    start = time.perf_counter()
    op = HessianOperator(model, data, config, state)
    result = extreme_eigs(op.matvec, op.dim, config, op.dtype, op.device)
    op.release()
    result.seconds = time.perf_counter() - start
    result.extra["dim"] = op.dim
    return result


def hessian_map(model: nn.Module, center: State, directions: Sequence[State], coords: torch.Tensor, data,
                config: HessianConfig = HessianConfig(),
                on_point: Callable[[int, EigResult], None] | None = None) -> list[EigResult]:
    """:func:`hessian_eigs` at center + sum_d coords[k, d] * directions[d] for each row k of ``coords``
    (shape (K, len(directions))). ``on_point(k, result)`` is called after each point, e.g. to write
    it to a surface file so that an interrupted map resumes where it stopped."""
    coords = torch.as_tensor(coords, dtype=torch.float64)
    if coords.dim() != 2 or coords.shape[1] != len(directions):
        raise ValueError(f"coords must have shape (K, {len(directions)}), got {tuple(coords.shape)}")
    results = []
    bar = tqdm(coords.tolist(), desc="hessian", unit="pt", disable=not config.progress)
    for k, coord in enumerate(bar):
        result = hessian_eigs(model, data, config, point_state(center, directions, coord))
        results.append(result)
        bar.set_postfix(max=f"{result.max_eig:.3g}", min=f"{result.min_eig:.3g}", hvp=result.hvps)
        if on_point is not None:
            on_point(k, result)
    return results


# --------------------------------------------------------------------------------------------
# A Hessian map over a grid, written as a surface file (values max_eig, min_eig)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, init=False)
class HessianScanConfig:
    """A Hessian eigenvalue map: which model and data (``target``; one split, a fixed subset of
    ``samples``), the grid and directions (as for ``landscapes.scan``: the same checkpoint and
    direction file give the same plane), where, the output, and how the eigenvalues are found at
    each point (``hessian``). Built from a :class:`~landscapes.scan.ScanConfig` (its evaluation
    and sampling options do not apply to Hessian-vector products and are not kept) or from those
    parts. The surface holds ``max_eig``, ``min_eig``, ``hessian_hvps`` and ``hessian_converged`` (1/0)."""

    target: ScanTarget
    x: Axis
    y: Axis | None
    directions: DirectionOptions
    output: OutputOptions
    device: str
    hessian: HessianConfig

    def __init__(self, scan: ScanConfig | None = None, hessian: HessianConfig = HessianConfig(), **parts: Any):
        base = scan if scan is not None else ScanConfig()
        kept = {name: getattr(base, name) for name in ("target", "x", "y", "directions", "output", "device")}
        unknown = sorted(set(parts) - set(kept))
        if unknown:
            raise TypeError(f"HessianScanConfig got unexpected keywords {unknown}")
        for name, value in {**kept, **parts, "hessian": hessian}.items():
            object.__setattr__(self, name, value)
        if self.target.split == "both":
            raise ValueError("a Hessian map uses one split (train or test), not both")
        if self.target.samples is None:
            raise ValueError("give a fixed subset size (samples): every Hessian-vector product passes over all of "
                             "it, and the eigenvalues are those of that subset's loss")

    @property
    def scan(self) -> ScanConfig:
        """The ScanConfig that :func:`landscapes.scan.prepare_scan` resolves (default evaluation)."""
        return ScanConfig(target=self.target, x=self.x, y=self.y, directions=self.directions, output=self.output,
                          device=self.device)


HESSIAN_VALUES = ("max_eig", "min_eig", "hessian_hvps", "hessian_converged")


# Attributes of a loss scan that say how losses were evaluated: a Hessian map has its own.
_LOSS_ONLY = ("dtype", "bn_mode", "stats_batch_size", "calibration_samples", "eval_config", "world_size")


def hessian_scan(config: HessianScanConfig) -> Surface:
    """Compute (or continue) a Hessian map; returns the surface as written.

    Model, data, directions and grid come from :func:`landscapes.scan.prepare_scan`, so a map made
    with the same --checkpoint/--dir-file/--x/--y lies on exactly the plane of the loss surface.
    """
    setup = prepare_scan(config.scan)
    cfg, hcfg = setup.config, config.hessian
    hess = {k: getattr(hcfg, k) for k in ("method", "params", "tol", "max_iter", "dtype", "seed", "batch_size")}
    identity = {k: v for k, v in setup.identity.items() if k not in _LOSS_ONLY} | {"hessian": hess}
    attrs = {k: v for k, v in setup.attrs.items() if k not in _LOSS_ONLY} | {
        "hessian_method": hcfg.method, "hessian_params": hcfg.params, "hessian_tol": hcfg.tol,
        "hessian_max_iter": hcfg.max_iter, "dtype": hcfg.dtype, "kind": "hessian"}
    x, y = setup.x, setup.y
    store = SurfaceStore.open(cfg.out_path, x, y, HESSIAN_VALUES, identity, attrs, dir_file=str(cfg.dir_path),
                              force=cfg.force, flush_seconds=cfg.flush_seconds)
    try:
        setup.save_directions()
        store.begin_run(device=str(setup.device), method=hcfg.method)
        center, directions, data = setup.on_device()
        todo = store.todo()

        def record(k: int, r: EigResult) -> None:
            store.record(todo[k:k + 1], {"max_eig": [r.max_eig], "min_eig": [r.min_eig], "hessian_hvps": [r.hvps],
                                         "hessian_converged": [float(r.converged)]}, r.seconds)

        if len(todo):
            hessian_map(setup.model, center, directions, grid_coords(x, y, todo), data[cfg.split],
                        replace(hcfg, progress=cfg.progress), record)
        store.flush()
    finally:
        store.close()
    return read_surface(cfg.out_path)


def build_parser():
    p = argparse.ArgumentParser(prog="python -m landscapes.hessian",
                                description="Map the top and bottom Hessian eigenvalues over a 1-D or 2-D grid "
                                            "(values max_eig, min_eig; plot with python -m landscapes.plot).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_scan_options(p, x="-1:1:11", splits=("train", "test"), samples=256,
                     samples_help="fixed subset: the first N images of the split",
                     out_help="surface file (default: results/surfaces/<model>_<dataset>_<grid>_hessian.h5)")
    h = p.add_argument_group("eigenvalues")
    h.add_argument("--method", default=HessianConfig.method, choices=EIG_METHODS)
    h.add_argument("--params", default=HessianConfig.params, choices=PARAMS)
    h.add_argument("--tol", type=float, default=HessianConfig.tol,
                   help="residual bound relative to each extreme eigenvalue (floored at tol * lambda_max)")
    h.add_argument("--max-iter", type=int, default=HessianConfig.max_iter, help="Hessian-vector products per point")
    h.add_argument("--batch-size", type=int, default=HessianConfig.batch_size)
    h.add_argument("--dtype", default=HessianConfig.dtype, choices=tuple(HESSIAN_DTYPES))
    h.add_argument("--start-seed", type=int, default=0, help="seed of the Lanczos start vector")
    h.add_argument("--no-reuse-graph", dest="reuse_graph", action="store_false",
                   help="rebuild the gradient graph for every product (less memory, slower)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(glue_grid_args(sys.argv[1:] if argv is None else argv))
    try:
        hcfg = HessianConfig(method=args.method, params=args.params, tol=args.tol, max_iter=args.max_iter,
                             batch_size=args.batch_size, dtype=args.dtype, seed=args.start_seed,
                             reuse_graph=args.reuse_graph, progress=args.progress)
        scan_cfg = ScanConfig(**scan_config_kwargs(args))
        scan_cfg = resolve_config(scan_cfg)  # the checkpoint's model and data name the default output
        if args.out is None:
            default = scan_cfg.out_path
            scan_cfg = replace(scan_cfg, out=str(default.with_name(f"{default.stem}_hessian.h5")))
        surface = hessian_scan(HessianScanConfig(scan_cfg, hcfg))
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    except OSError as err:  # e.g. a full disk: the message says what is on disk and how to go on
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    mx, mn = surface.values["max_eig"], surface.values["min_eig"]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(mn / mx)
    conv = surface.values["hessian_converged"]
    print(f"{surface.path}: {int(surface.done.sum())}/{surface.done.size} points, "
          f"{surface.attrs.get('seconds_per_point', float('nan')):.3g} s/point, "
          f"{int(np.nansum(conv))} converged; lambda_max {np.nanmin(mx):.4g}..{np.nanmax(mx):.4g}, "
          f"lambda_min {np.nanmin(mn):.4g}..{np.nanmax(mn):.4g}, |min/max| up to {np.nanmax(ratio):.3g}")
    print(f"plot it: python -m landscapes.plot {surface.path} --kind heat")


if __name__ == "__main__":
    main()
