"""Solver settings for ODE blocks, and re-solving one trained vector field with any solver.

A trained field is a function; the solver is a choice made at run time. These helpers swap it
(Euler with K steps, RK4, dopri5 at any tolerance, adjoint or not) and measure accuracy against
the function evaluations (NFE) it costs.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from models.data import DeviceData
from models.ode import FIXED_GRID_METHODS, check_solver, counted_blocks, ode_blocks
from models.train import evaluate


@dataclass(frozen=True)
class SolverConfig:
    """How an ODE block integrates dy/dt = f(t, y) over [0, T].

    Adaptive methods (dopri5, ...) use ``rtol``/``atol``; fixed-grid methods (euler, rk4, ...)
    take ``steps`` K or, equivalently, a ``step_size`` that divides T. ``adjoint`` selects
    ``odeint_adjoint`` (constant memory in the number of steps) over backprop through the solver.
    """

    method: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-3
    steps: int | None = None
    step_size: float | None = None
    adjoint: bool = False
    T: float = 1.0

    def __post_init__(self) -> None:
        if self.step_size is not None:
            if self.steps is not None:
                raise ValueError(f"give steps or step_size, not both (got steps={self.steps}, "
                                 f"step_size={self.step_size})")
            if self.method not in FIXED_GRID_METHODS:
                raise ValueError(f"step_size applies only to fixed-grid methods "
                                 f"({', '.join(FIXED_GRID_METHODS)}), not {self.method!r}")
            if not self.step_size > 0:
                raise ValueError(f"step_size must be positive, got {self.step_size}")
            k = round(self.T / self.step_size)
            if k < 1 or not math.isclose(k * self.step_size, self.T, rel_tol=1e-9):
                raise ValueError(f"step_size={self.step_size} does not divide T={self.T} into whole steps; "
                                 f"use steps=K for K steps of T/K")
            object.__setattr__(self, "steps", k)
        check_solver(self.method, self.rtol, self.atol, self.steps, self.T)

    def block_kwargs(self) -> dict[str, Any]:
        """Keywords of ``models.ode.ODEBlock.set_solver`` (and of the ODE models' builders)."""
        return {"method": self.method, "rtol": self.rtol, "atol": self.atol, "steps": self.steps,
                "adjoint": self.adjoint, "T": self.T}

    def label(self) -> str:
        if self.method in FIXED_GRID_METHODS:
            return f"{self.method} K={self.steps}"
        return f"{self.method} tol={self.rtol:g}"


def _blocks_of(model: nn.Module) -> list:
    blocks = ode_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no ODE block to re-solve (build an ODE model such as "
                         f"odenet_mnist or rknet_mnist; an Euler stack loads the same weights into one)")
    return blocks


def set_solver(model: nn.Module, config: SolverConfig) -> int:
    """Use ``config`` in every ODE block of ``model``; returns how many blocks changed."""
    blocks = _blocks_of(model)
    for block in blocks:
        block.set_solver(**config.block_kwargs())
    return len(blocks)


@contextmanager
def using_solver(model: nn.Module, config: SolverConfig) -> Iterator[nn.Module]:
    """Temporarily re-solve ``model``'s ODE blocks with ``config``; the old solver comes back after."""
    blocks = _blocks_of(model)
    saved = [b.solver_kwargs() for b in blocks]
    try:
        set_solver(model, config)
        yield model
    finally:
        for block, kw in zip(blocks, saved):
            block.set_solver(**kw)


@dataclass(frozen=True)
class SolveResult:
    """A model's test loss / error (%) under one solver and the forward NFE it took per batch
    (summed over its ODE blocks; an adaptive solver picks one step sequence per whole batch).
    ``logit_deviation`` (mean over images of the max |logit - reference logit|) and
    ``agreement`` (% of predictions equal to the reference's) measure the solution error against
    a reference solve, ``None`` without one."""

    solver: str
    method: str
    rtol: float
    atol: float
    steps: int | None
    loss: float
    error: float
    nfe_per_batch: float
    batch_size: int
    images: int
    seconds: float
    logit_deviation: float | None = None
    agreement: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_counted(model: nn.Module, data: DeviceData, batch_size: int = 500
                     ) -> tuple[float, float, float | None, float]:
    """(loss, error %, mean forward NFE per batch or None without ODE blocks, seconds) of
    ``model`` in eval mode on ``data`` with whatever solver its blocks hold."""
    blocks = counted_blocks(model)
    before = sum(b.calls for b in blocks)
    start = time.perf_counter()
    loss, error = evaluate(model, data, batch_size=batch_size)
    seconds = time.perf_counter() - start
    calls = sum(b.calls for b in blocks) - before
    per_batch = calls / math.ceil(len(data) / batch_size) if blocks else None
    return loss, error, per_batch, seconds


@torch.no_grad()
def predict(model: nn.Module, data: DeviceData, batch_size: int = 500) -> torch.Tensor:
    """Logits (N, classes) of ``model`` in eval mode over ``data``, in order."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(xb) for xb, _ in data.batches(batch_size)]).float()
    finally:
        model.train(was_training)


def _solve(model: nn.Module, data: DeviceData, config: SolverConfig, batch_size: int
           ) -> tuple[torch.Tensor, float, float]:
    """Logits under ``config``, forward NFE per batch, seconds."""
    blocks = counted_blocks(model)
    with using_solver(model, config):
        before = sum(b.calls for b in blocks)
        start = time.perf_counter()
        logits = predict(model, data, batch_size)
        seconds = time.perf_counter() - start
        calls = sum(b.calls for b in blocks) - before
    return logits, calls / math.ceil(len(data) / batch_size), seconds


def _result(config: SolverConfig, data: DeviceData, logits: torch.Tensor, per_batch: float, seconds: float,
            batch_size: int, reference: torch.Tensor | None) -> SolveResult:
    loss = F.cross_entropy(logits, data.y).item()
    error = 100.0 * (logits.argmax(1) != data.y).sum().item() / len(data)
    deviation = agreement = None
    if reference is not None:
        deviation = (logits - reference).abs().amax(1).mean().item()
        agreement = 100.0 * (logits.argmax(1) == reference.argmax(1)).sum().item() / len(data)
    return SolveResult(config.label(), config.method, config.rtol, config.atol, config.steps, loss, error,
                       per_batch, batch_size, len(data), seconds, deviation, agreement)


def evaluate_solver(model: nn.Module, data: DeviceData, config: SolverConfig, batch_size: int = 500,
                    reference: torch.Tensor | None = None) -> SolveResult:
    """Loss, error and mean forward NFE per batch of ``model`` on ``data`` solved with ``config``;
    with ``reference`` logits (from :func:`predict` under an accurate solver), the deviation too."""
    logits, per_batch, seconds = _solve(model, data, config, batch_size)
    return _result(config, data, logits, per_batch, seconds, batch_size, reference)


def sweep(model: nn.Module, data: DeviceData, configs: Sequence[SolverConfig], batch_size: int = 500,
          progress: bool = False, reference_tol: float | None = 1e-7
          ) -> tuple[list[SolveResult], SolveResult | None]:
    """:func:`evaluate_solver` for each config: accuracy and solution error against NFE for one
    trained field, the error measured against dopri5 at ``reference_tol`` (over the blocks' own
    [0, T]). Returns (results, the reference's result or None)."""
    ref_result, ref_logits = None, None
    if reference_tol is not None:
        reference = SolverConfig("dopri5", rtol=reference_tol, atol=reference_tol, T=_blocks_of(model)[0].T)
        ref_logits, per_batch, seconds = _solve(model, data, reference, batch_size)
        ref_result = _result(reference, data, ref_logits, per_batch, seconds, batch_size, ref_logits)
    results = [evaluate_solver(model, data, c, batch_size, ref_logits)
               for c in tqdm(configs, desc="solver sweep", disable=not progress, leave=False)]
    return results, ref_result


def euler_configs(steps: Sequence[int] = (1, 2, 4, 8, 16, 32, 64), T: float = 1.0) -> list[SolverConfig]:
    return [SolverConfig("euler", steps=k, T=T) for k in steps]


def tolerance_configs(tolerances: Sequence[float] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5), method: str = "dopri5",
                      T: float = 1.0) -> list[SolverConfig]:
    return [SolverConfig(method, rtol=tol, atol=tol, T=T) for tol in tolerances]
