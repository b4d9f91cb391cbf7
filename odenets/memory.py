"""Peak memory of a piece of work, on GPU and CPU alike, and memory against depth for the
adjoint method versus backprop through the solver (Chen et al.'s O(1) vs O(L) claim).

On CUDA the caching allocator's own peak counter is read. On CPU neither ``tracemalloc`` (torch
allocates outside Python) nor RSS (allocator caching, monotone high-water mark) measures it, so
every ATen op's output storages are traced while alive: the peak of their summed bytes.
"""
from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from models.device import cuda_peak_bytes
from models.ode import nfe, ode_blocks

from .solvers import SolverConfig, using_solver

CUDA_METHOD = "CUDA caching allocator: max_memory_allocated above the starting allocation"
CPU_METHOD = ("traced ATen output storages (CPU): peak of the live bytes of tensors created during the "
              "work; parameters and inputs that existed before are not counted, allocator overhead neither")


class StorageTracker(TorchDispatchMode):
    """Sums the bytes of every tensor storage created by an op while it is alive (a weak reference
    on the storage tells when it dies); ``peak`` is the high-water mark of that sum."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def _release(self, key: int, nbytes: int) -> Callable[[Any], None]:
        def callback(_: Any) -> None:
            self.live -= nbytes
            self._refs.pop(key, None)
        return callback

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta" or t.is_sparse:
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self._refs:  # a view of a storage already counted
                continue
            self._refs[key] = weakref.ref(storage, self._release(key, nbytes))
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        return out


@dataclass(frozen=True)
class MemoryReport:
    peak_bytes: int
    method: str

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20


def peak_memory(fn: Callable[[], Any], device: str | torch.device = "cpu") -> MemoryReport:
    """Peak extra memory while ``fn()`` runs on ``device`` (see the module docstring for how)."""
    device = torch.device(device)
    if device.type == "cuda":
        return MemoryReport(cuda_peak_bytes(fn, device), CUDA_METHOD)
    if device.type != "cpu":
        raise ValueError(f"peak memory is measured on cpu or cuda devices, got {device}")
    with StorageTracker() as tracker:
        fn()
    return MemoryReport(tracker.peak, CPU_METHOD)


def training_step_memory(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> MemoryReport:
    """Peak memory of one forward + backward of the cross-entropy (gradient buffers included)."""
    def step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    model.train()
    report = peak_memory(step, x.device)
    model.zero_grad(set_to_none=True)
    return report


@dataclass(frozen=True)
class DepthMemory:
    """Peak memory of a training step with the ODE blocks solved by ``steps`` Euler steps."""

    steps: int
    adjoint: bool
    peak_bytes: int
    nfe_forward: int
    nfe_backward: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def memory_vs_depth(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: Sequence[int] = (1, 2, 4, 8, 16, 32),
                    method: str = "euler") -> list[DepthMemory]:
    """For each depth K and for adjoint / backprop through the solver: the peak memory of one
    training step of ``model`` with its ODE blocks re-solved by K fixed steps of ``method``."""
    blocks = ode_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no ODE block whose depth could be varied")
    rows = []
    for adjoint in (False, True):
        for k in steps:
            with using_solver(model, SolverConfig(method, steps=k, adjoint=adjoint, T=blocks[0].T)):
                report = training_step_memory(model, x, y)
                counts = nfe(model)
            rows.append(DepthMemory(k, adjoint, report.peak_bytes, counts.forward, counts.backward))
    return rows
