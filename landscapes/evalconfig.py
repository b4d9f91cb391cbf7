"""What an evaluation is asked to do (:class:`EvalConfig`) and what it did (:class:`EvalInfo`).

Kept apart from the engine so that the reference loop, the memory sizing and the CLIs can name
the options without importing the engine.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from models.checks import positive_int

ENGINES = ("auto", "batched", "loop", "naive")
EVAL_DTYPES = ("float32", "tf32", "bfloat16")
BN_MODES = ("stored", "batch", "recalibrate")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")

__all__ = ["EvalConfig", "EvalInfo", "BatchingFallbackWarning", "ENGINES", "EVAL_DTYPES", "BN_MODES", "COMPILE_MODES"]


class BatchingFallbackWarning(UserWarning):
    """The engine fell back to a slower path (no BN folding, or per-point instead of batched)."""


@dataclass(frozen=True)
class EvalConfig:
    """How points are evaluated. Results do not depend on the speed settings (engine, batch_size,
    points_per_pass, channels_last, fuse_cpu, workers, compile) beyond float32 rounding; they do depend on dtype and
    bn_mode, and in the "batch"/"recalibrate" BN modes on ``stats_batch_size``.

    engine: "auto" (batched on CUDA; loop on CPU, where grouped convolutions measured slower than
      points evaluated in parallel threads),
      "batched" (K points per forward under vmap; falls back to loop, with a warning, for modules
      vmap cannot batch), "loop" (one point per forward, still folded and device resident),
      "naive" (the reference: load_state_dict per point, unfolded model).
    dtype: "float32" (true fp32: TF32 is switched off for the evaluation), "tf32" (CUDA only),
      "bfloat16" (autocast). Lower precisions report their deviation from float32 (EvalInfo).
    bn_mode: "stored" (running statistics, the paper's choice), "batch" (statistics of each
      evaluation batch of ``stats_batch_size`` images, buffers untouched), "recalibrate" (at each
      point: reset the running statistics, run the calibration data in batches of
      ``stats_batch_size`` with BN in training mode and momentum=None, i.e. the running stats
      become the plain average over batches of each batch's mean and unbiased variance, exactly
      as ``torch.optim.swa_utils.update_bn``; then evaluate with them. Only BN layers switch to
      training mode, dropout and stochastic depth stay in eval).
    batch_size / points_per_pass: images and points per forward; None picks them from
      ``memory_budget`` bytes (None: ``memory_fraction`` of the device's free memory).
    workers: the CPU loop engine evaluates this many points at once, each in its own thread with
      one intra-op thread (None: ``torch.get_num_threads()``); small convolutions scale better
      over independent points than over threads inside one op.
    channels_last: NHWC images and weights for models torch.fx can trace (the others keep their
      own layout, as the naive loop runs them).
    fuse_cpu: the CPU loop engine runs conv -> [+ residual] -> ReLU as one oneDNN convolution
      with post-ops (:func:`landscapes.fold.fuse_conv_pointwise`), saving two passes over memory.
    """

    batch_size: int | None = None
    points_per_pass: int | None = None
    engine: str = "auto"
    dtype: str = "float32"
    bn_mode: str = "stored"
    stats_batch_size: int = 128
    calibration_samples: int | None = None  # "recalibrate": first N calibration images (None: all)
    fold_bn: bool = True
    channels_last: bool = True
    fuse_cpu: bool = True                    # CPU loop engine: conv+add+ReLU as one oneDNN call
    memory_budget: int | None = None
    memory_fraction: float = 0.6
    max_batch: int | None = None             # cap for automatic batch_size (None: 128 CPU, 1024 CUDA)
    workers: int | None = None               # CPU loop: points in parallel threads (None: torch threads)
    compile: str | None = None               # torch.compile mode; "reduce-overhead" = CUDA graphs
    deviation_points: int = 3                # points re-run in float32 to measure a lower dtype
    progress: bool = False

    def __post_init__(self) -> None:
        for name, value, accepted in (("engine", self.engine, ENGINES), ("dtype", self.dtype, EVAL_DTYPES),
                                      ("bn_mode", self.bn_mode, BN_MODES)):
            if value not in accepted:
                raise ValueError(f"{name} must be one of {', '.join(accepted)}; got {value!r}")
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be None or one of {', '.join(COMPILE_MODES)}; got {self.compile!r}")
        for name in ("batch_size", "points_per_pass", "calibration_samples", "memory_budget", "max_batch", "workers"):
            positive_int(name, getattr(self, name), allow_none=True, note="None: chosen automatically")
        if isinstance(self.stats_batch_size, bool) or not isinstance(self.stats_batch_size, int) \
                or self.stats_batch_size < 2:
            raise ValueError(f"stats_batch_size must be an integer >= 2 (batch statistics need two images); "
                             f"got {self.stats_batch_size!r}")
        if not 0.0 < self.memory_fraction <= 1.0:
            raise ValueError(f"memory_fraction must lie in (0, 1]; got {self.memory_fraction}")
        if isinstance(self.deviation_points, bool) or not isinstance(self.deviation_points, int) \
                or self.deviation_points < 0:
            raise ValueError(f"deviation_points must be an integer >= 0; got {self.deviation_points!r}")


@dataclass
class EvalInfo:
    """What one evaluation did, for logs and surface-file attributes (see :meth:`attrs`)."""

    engine: str                 # engine that ran: "batched", "loop" or "naive"
    device: str
    dtype: str
    bn_mode: str
    points: int
    images: int
    batch_size: int
    points_per_pass: int
    folded_bn: int              # BN layers folded into the preceding conv/linear
    traced: bool                # torch.fx could trace the model
    seconds: float = 0.0
    notices: list[str] = field(default_factory=list)
    deviation: dict[str, float] | None = None  # lower dtype vs float32 at a few points
    workers: int = 1            # threads evaluating points concurrently (CPU loop engine)
    fused: int = 0              # convolutions with their add/ReLU fused (CPU loop engine)

    @property
    def image_evals_per_s(self) -> float:
        return self.points * self.images / self.seconds if self.seconds > 0 else math.nan

    def attrs(self) -> dict[str, Any]:
        """Flat, HDF5-attribute-friendly values (strings, numbers), keys prefixed ``eval_``."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if key == "deviation":
                for k, v in (value or {}).items():
                    out[f"eval_deviation_{k}"] = v
            elif key == "notices":
                out["eval_notices"] = "\n".join(value)
            else:
                out[f"eval_{key}"] = value
        out["eval_image_evals_per_s"] = self.image_evals_per_s
        return out
