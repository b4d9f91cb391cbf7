"""Continuous depth: a time-dependent conv vector field, an ODE block solved by torchdiffeq with
exact function-evaluation (NFE) counters, its discrete twins (a shared-weight Euler stack and a
pre-activation ResNet stack), and the Neural ODE paper's MNIST models registered by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import DropMode, DropPath, linear_decay
from .checks import positive_int
from .registry import register

# torchdiffeq's solvers (odeint's SOLVERS), split by how their steps are chosen.
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_GRID_METHODS = ("euler", "midpoint", "rk4", "heun2", "heun3", "explicit_adams", "implicit_adams")
METHODS = ADAPTIVE_METHODS + FIXED_GRID_METHODS


def check_solver(method: str, rtol: float, atol: float, steps: int | None, T: float) -> None:
    """Validate one solver setting; fixed-grid methods take ``steps`` K (step T/K), adaptive ones not."""
    if method not in METHODS:
        raise ValueError(f"unknown ODE method {method!r}; accepted: adaptive {', '.join(ADAPTIVE_METHODS)}; "
                         f"fixed-grid {', '.join(FIXED_GRID_METHODS)}")
    if method in FIXED_GRID_METHODS:
        positive_int("steps", steps, note=f"fixed-grid method {method!r} takes K uniform steps of size T/K")
    elif steps is not None:
        raise ValueError(f"{method!r} is adaptive and chooses its own steps; steps={steps!r} applies only to "
                         f"the fixed-grid methods {', '.join(FIXED_GRID_METHODS)}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got rtol={rtol}, atol={atol}")
    if not T > 0:
        raise ValueError(f"integration time T must be positive, got {T}")


def norm(dim: int) -> nn.GroupNorm:
    """GroupNorm(min(32, dim)) as in Chen et al.: no running statistics, so an ODE block's field is
    the same function in training and evaluation and at every time t."""
    return nn.GroupNorm(min(32, dim), dim)


class ConcatConv2d(nn.Module):
    """A convolution that also sees the time t, as one extra constant input channel."""

    def __init__(self, dim_in: int, dim_out: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
                 bias: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(dim_in + 1, dim_out, kernel_size, stride, padding, bias=bias)

    def forward(self, t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        tt = torch.ones_like(x[:, :1]) * t
        return self.conv(torch.cat([tt, x], 1))


class ODEFunc(nn.Module):
    """f(t, y) = norm(conv_t(relu(norm(conv_t(relu(norm(y))))))), Chen et al.'s MNIST vector field."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm1, self.conv1 = norm(dim), ConcatConv2d(dim, dim)
        self.norm2, self.conv2 = norm(dim), ConcatConv2d(dim, dim)
        self.norm3 = norm(dim)

    def forward(self, t: torch.Tensor | float, y: torch.Tensor) -> torch.Tensor:
        out = self.conv1(t, F.relu(self.norm1(y)))
        out = self.conv2(t, F.relu(self.norm2(out)))
        return self.norm3(out)


@dataclass(frozen=True)
class NFE:
    """Vector-field work of the last batch. ``forward``: evaluations of f in the forward solve.
    ``backward``: evaluations of f during backward (the adjoint solve; 0 when backpropagating
    through the solver, which replays its graph instead). ``vjp``: vector-Jacobian products through
    f during backward (= backward for the adjoint, = the recorded forward evaluations otherwise)."""

    forward: int = 0
    backward: int = 0
    vjp: int = 0

    def __add__(self, other: NFE) -> NFE:
        return NFE(self.forward + other.forward, self.backward + other.backward, self.vjp + other.vjp)


class CountedField(nn.Module):
    """Base of the modules that integrate ``self.func``: every evaluation goes through
    :meth:`field`, which counts it, and hooks its output to count the VJPs taken through it.

    Counters are per batch: ``nfe`` is valid after ``loss.backward()`` and until the next forward.
    ``calls``/``vjps`` are running totals for whole epochs.
    """

    func: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.vjps = 0
        self._mark = (0, 0)  # (calls, vjps) at the end of the last forward solve
        self.nfe_forward = 0

    def field(self, t: torch.Tensor | float, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.func(t, y)
        if out.requires_grad:
            out.register_hook(self._count_vjp)
        return out

    def _count_vjp(self, grad: torch.Tensor) -> None:
        self.vjps += 1

    def _begin(self) -> int:
        return self.calls

    def _end(self, start: int) -> None:
        self.nfe_forward = self.calls - start
        self._mark = (self.calls, self.vjps)

    @property
    def nfe(self) -> NFE:
        return NFE(self.nfe_forward, self.calls - self._mark[0], self.vjps - self._mark[1])


class ODEBlock(CountedField):
    """y(T) for dy/dt = func(t, y), y(0) = x, solved by torchdiffeq.

    ``method`` is any of :data:`METHODS`; adaptive ones use ``rtol``/``atol``, fixed-grid ones take
    exactly ``steps`` uniform steps of T/K (a grid, not torchdiffeq's ``step_size``, whose rounding
    can add a sliver step). ``adjoint=True`` uses ``odeint_adjoint`` (memory constant in the number
    of steps; gradients from a second, backward solve), else backprop through the solver.
    """

    def __init__(self, func: nn.Module, T: float = 1.0, method: str = "dopri5", rtol: float = 1e-3,
                 atol: float = 1e-3, steps: int | None = None, adjoint: bool = False):
        super().__init__()
        self.func = func
        self.set_solver(method=method, rtol=rtol, atol=atol, steps=steps, adjoint=adjoint, T=T)

    def set_solver(self, method: str, rtol: float, atol: float, steps: int | None, adjoint: bool,
                   T: float) -> None:
        """Swap the solver (the field and its weights stay): one trained field, any solver or K."""
        check_solver(method, rtol, atol, steps, T)
        self.method, self.rtol, self.atol, self.steps = method, float(rtol), float(atol), steps
        self.adjoint, self.T = bool(adjoint), float(T)

    def solver_kwargs(self) -> dict[str, Any]:
        return {"method": self.method, "rtol": self.rtol, "atol": self.atol, "steps": self.steps,
                "adjoint": self.adjoint, "T": self.T}

    def _uniform_grid(self, func: Callable, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # t may arrive reversed (-T..0) in the adjoint's backward solve; keep its exact endpoints.
        k = torch.arange(self.steps + 1, dtype=t.dtype, device=t.device)
        grid = t[0] + (t[-1] - t[0]) * k / self.steps
        grid[0], grid[-1] = t[0], t[-1]
        return grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.tensor([0.0, self.T], dtype=x.dtype, device=x.device)
        options = {"grid_constructor": self._uniform_grid} if self.method in FIXED_GRID_METHODS else None
        kw: dict[str, Any] = dict(rtol=self.rtol, atol=self.atol, method=self.method, options=options)
        start = self._begin()
        if self.adjoint:
            from torchdiffeq import odeint_adjoint  # lazily: torchdiffeq imports scipy (~0.5 s)
            y = odeint_adjoint(self.field, x, t, adjoint_params=tuple(self.func.parameters()), **kw)
        else:
            from torchdiffeq import odeint  # lazily, as above: start-up time of every models import
            y = odeint(self.field, x, t, **kw)
        self._end(start)
        return y[-1]

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.solver_kwargs().items())


class EulerStack(CountedField):
    """K explicit Euler steps y <- y + (T/K) f(t_k, y), t_k = kT/K, of one shared field: a
    weight-tied residual stack and the exact discretization of the ODE block's equation, so
    a field trained in an :class:`ODEBlock` loads here (same ``func.*`` keys) and vice versa."""

    def __init__(self, func: nn.Module, steps: int = 6, T: float = 1.0):
        super().__init__()
        check_solver("euler", 1.0, 1.0, steps, T)
        self.func, self.steps, self.T = func, steps, float(T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.T / self.steps
        start = self._begin()
        for k in range(self.steps):
            x = x + h * self.field(k * h, x)
        self._end(start)
        return x

    def extra_repr(self) -> str:
        return f"steps={self.steps}, T={self.T}"


def counted_blocks(model: nn.Module) -> list[CountedField]:
    return [m for m in model.modules() if isinstance(m, CountedField)]


def ode_blocks(model: nn.Module) -> list[ODEBlock]:
    return [m for m in model.modules() if isinstance(m, ODEBlock)]


def nfe(model: nn.Module) -> NFE:
    """Summed per-batch counters of every ODE block / Euler stack in ``model`` (see :class:`NFE`)."""
    total = NFE()
    for block in counted_blocks(model):
        total = total + block.nfe
    return total


class PreActResBlock(nn.Module):
    """Chen et al.'s ResBlock: x + conv(relu(norm(conv(relu(norm(x)))))), one Euler step of size 1
    of an unshared field; a 1x1 projection of relu(norm(x)) when the shape changes. The branch can
    be dropped by stochastic depth (``drop_prob``), which keeps the expectation exactly here since
    no nonlinearity follows the addition."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_prob: float = 0.0,
                 drop_mode: DropMode = "row", drop_scale_at: str = "test"):
        super().__init__()
        self.norm1 = norm(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.norm2 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.downsample = (nn.Conv2d(in_planes, planes, 1, stride, bias=False)
                           if stride != 1 or in_planes != planes else None)
        self.drop_path = DropPath(drop_prob, drop_mode, drop_scale_at)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(x))
        shortcut = x if self.downsample is None else self.downsample(out)
        return self.drop_path.add(shortcut, lambda: self.conv2(F.relu(self.norm2(self.conv1(out)))))


DOWNSAMPLING = ("conv", "res")


def downsampling_stem(in_channels: int, width: int, method: str = "conv") -> nn.Sequential:
    """Chen et al.'s stem to 1/4 resolution: 3x3 conv, then two stride-2 stages, either
    (norm, relu, 4x4 conv) ("conv", their default) or a projecting ResBlock ("res")."""
    if method == "conv":
        return nn.Sequential(nn.Conv2d(in_channels, width, 3, 1), norm(width), nn.ReLU(inplace=True),
                             nn.Conv2d(width, width, 4, 2, 1), norm(width), nn.ReLU(inplace=True),
                             nn.Conv2d(width, width, 4, 2, 1))
    if method == "res":
        return nn.Sequential(nn.Conv2d(in_channels, width, 3, 1), PreActResBlock(width, width, 2),
                             PreActResBlock(width, width, 2))
    raise ValueError(f"downsampling must be one of {DOWNSAMPLING}, got {method!r}")


class ODENet(nn.Module):
    """``stem`` (downsampling) -> ``feature`` (ODE block, Euler stack or ResBlocks) -> ``head``
    (norm, relu, global average pool, linear): the three MNIST models of Chen et al. Table 1."""

    def __init__(self, feature: nn.Module, width: int = 64, in_channels: int = 1, num_classes: int = 10,
                 downsampling: str = "conv"):
        super().__init__()
        self.stem = downsampling_stem(in_channels, width, downsampling)
        self.feature = feature
        self.head = nn.Sequential(norm(width), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feature(self.stem(x)))


def odenet(num_classes: int = 10, in_channels: int = 1, width: int = 64, downsampling: str = "conv",
           method: str = "dopri5", rtol: float = 1e-3, atol: float = 1e-3, steps: int | None = None,
           adjoint: bool = True, T: float = 1.0) -> ODENet:
    """ODE-Net (adjoint, dopri5 by default) or RK-Net (a fixed-grid method, ``adjoint=False``)."""
    positive_int("width", width)
    block = ODEBlock(ODEFunc(width), T, method, rtol, atol, steps, adjoint)
    return ODENet(block, width, in_channels, num_classes, downsampling)


def eulernet(num_classes: int = 10, in_channels: int = 1, width: int = 64, downsampling: str = "conv",
             steps: int = 6, T: float = 1.0) -> ODENet:
    """A weight-tied ResNet: the ODE-Net's field applied by K explicit Euler steps."""
    positive_int("width", width)
    return ODENet(EulerStack(ODEFunc(width), steps, T), width, in_channels, num_classes, downsampling)


def preact_resnet(num_classes: int = 10, in_channels: int = 1, width: int = 64, downsampling: str = "conv",
                  blocks: int = 6, drop_path: float = 0.0, drop_mode: DropMode = "row",
                  drop_scale_at: str = "test") -> ODENet:
    """Chen et al.'s ResNet: ``blocks`` unshared ResBlocks; ``drop_path`` is the last block's
    drop probability under the linear decay rule of stochastic depth."""
    positive_int("width", width)
    positive_int("blocks", blocks)
    feature = nn.Sequential(*(PreActResBlock(width, width, drop_prob=p, drop_mode=drop_mode,
                                             drop_scale_at=drop_scale_at)
                              for p in linear_decay(blocks, drop_path)))
    return ODENet(feature, width, in_channels, num_classes, downsampling)


register("odenet_mnist", odenet, "ODE-Net of Chen et al. 2018 (dopri5, tol 1e-3, adjoint)")
register("rknet_mnist", odenet, "RK-Net of Chen et al. 2018 (2 RK4 steps, backprop through the solver)",
         method="rk4", steps=2, adjoint=False)
register("eulernet_mnist", eulernet, "ODE-Net's field as 6 weight-tied Euler steps (a tied ResNet)")
register("resnet_mnist", preact_resnet, "ResNet of Chen et al. 2018 (6 pre-activation GroupNorm ResBlocks)")
register("odenet_cifar", odenet, "ODE-Net for 32x32 RGB (residual downsampling, dopri5, adjoint)",
         downsampling="res")
