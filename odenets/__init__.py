"""Continuous-depth networks beside discrete ones: ODE blocks with counted NFE, solver settings,
re-solving a trained field, memory measurement, and the ResNet / RK-Net / ODE-Net comparison.

The blocks live in ``models.ode`` (the model registry builds them); they are re-exported here.
"""
from typing import Any

from models.blocks import DropPath, linear_decay
from models.ode import (ADAPTIVE_METHODS, FIXED_GRID_METHODS, METHODS, NFE, ConcatConv2d, CountedField,
                        EulerStack, ODEBlock, ODEFunc, ODENet, PreActResBlock, check_solver, counted_blocks,
                        nfe, ode_blocks)

from .memory import MemoryReport, memory_vs_depth, peak_memory, training_step_memory
from .solvers import (SolveResult, SolverConfig, euler_configs, evaluate_counted, evaluate_solver, set_solver,
                      sweep, tolerance_configs, using_solver)

__all__ = [
    "ADAPTIVE_METHODS", "FIXED_GRID_METHODS", "METHODS", "NFE", "ConcatConv2d", "CountedField", "DropPath",
    "EulerStack", "MemoryReport", "ODEBlock", "ODEFunc", "ODENet", "PreActResBlock", "SolveResult",
    "SolverConfig", "check_solver", "counted_blocks", "euler_configs", "evaluate_counted", "evaluate_solver",
    "linear_decay", "memory_vs_depth", "nfe", "ode_blocks", "peak_memory", "set_solver", "sweep",
    "tolerance_configs", "training_step_memory", "using_solver", "TimingConfig", "survival_probabilities",
    "time_training_steps",
]


def __getattr__(name: str) -> Any:
    # Imported lazily so `python -m odenets.stochastic_depth` does not find itself pre-imported.
    if name in ("TimingConfig", "survival_probabilities", "time_training_steps"):
        from . import stochastic_depth
        return getattr(stochastic_depth, name)
    raise AttributeError(f"module 'odenets' has no attribute {name!r}")
