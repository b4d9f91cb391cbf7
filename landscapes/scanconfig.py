"""What a scan is: :class:`ScanConfig` (model, checkpoint and data; grid; directions; evaluation;
output), shared by ``landscapes.scan``, ``landscapes.hessian`` and the studies."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from models.checks import positive_int
from models import resolve_name
from models.data import DATASETS, NORMALIZATIONS

from .directions import DIR_TYPES, DirectionConfig
from .evalconfig import EvalConfig
from .grid import Axis, parse_axis
from .sampling import SamplingConfig, check_eval_config

__all__ = ["DEFAULT_X", "DEFAULT_DEVICE", "ScanConfig", "ScanTarget", "DirectionOptions", "OutputOptions", "FLAT_KEYWORDS", "SPLITS", "DEFAULT_MODEL", "DEFAULT_DATASET", "DIRECTION_OPTIONS"]

SPLITS = ("train", "test", "both")
DEFAULT_MODEL, DEFAULT_DATASET = "resnet56", "cifar10"  # only without a checkpoint that says otherwise
DEFAULT_X, DEFAULT_DEVICE = "-1:1:51", "auto"
# Direction options an existing direction file decides (given ones must agree with it).
DIRECTION_OPTIONS = ("xnorm", "xignore", "ynorm", "yignore", "seed", "orthogonalize")


@dataclass(frozen=True)
class ScanTarget:
    """What is scanned: a trained model (``checkpoint``; None: ``runs/<model>_<dataset>/final.pt``
    as ``models.train`` writes it, never a random initialization) on a data set. model, dataset,
    normalization None: what the checkpoint records (:func:`landscapes.scan.resolve_config`).
    model2: a second checkpoint, x = model2 - model (a 1-D interpolation). data_kwargs None: those
    the checkpoint was trained with when the data set matches."""

    model: str | None = None           # None: the checkpoint's, else DEFAULT_MODEL
    noshort: bool = False
    checkpoint: str | None = None
    model2: str | None = None
    dataset: str | None = None         # None: the checkpoint's, else DEFAULT_DATASET
    data_root: str | None = None       # None: $RESNET_TOOLKIT_DATA, else the checkpoint's if present, else ./data
    normalization: str | None = None   # input constants (models.data.NORMALIZATIONS); None: the checkpoint's
    data_kwargs: Mapping[str, Any] | None = None
    split: str = "train"
    samples: int | None = None         # the first N images of the split (None: all)

    def __post_init__(self) -> None:
        if self.data_kwargs is not None:
            object.__setattr__(self, "data_kwargs", dict(self.data_kwargs))
        if self.model is not None:
            resolve_name(self.model, self.noshort)  # unknown names fail here, with suggestions
        if self.dataset is not None and self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid names: {', '.join(DATASETS)}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {self.split!r}")
        positive_int("samples", self.samples, allow_none=True)
        if self.normalization is not None and self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}; got {self.normalization!r}")


@dataclass(frozen=True)
class DirectionOptions:
    """The options of the :class:`~landscapes.directions.DirectionConfig` a scan draws, plus the
    file that holds them. An option left None is the DirectionConfig default, or an existing
    ``dir_file``'s own value (a value given must agree with that file). dir_type None: "states"
    with model2 (so that 1 lands exactly on model2, BN statistics included), else "weights".
    dir_file: an existing direction file (ours or the reference's) is reused as it is; otherwise
    the directions are drawn and saved there (default: next to the output)."""

    dir_type: str | None = None
    xnorm: str | None = None
    xignore: str | None = None
    ynorm: str | None = None
    yignore: str | None = None
    seed: int | None = None
    orthogonalize: bool | None = None
    same_dir: bool = False
    dir_file: str | None = None

    def __post_init__(self) -> None:
        if self.dir_type is not None and self.dir_type not in DIR_TYPES:
            raise ValueError(f"dir_type must be one of {', '.join(DIR_TYPES)}; got {self.dir_type!r}")
        self.config(2, interpolation=False)  # validates norms, ignores, seed, same_dir/orthogonalize

    def config(self, ndim: int, interpolation: bool) -> DirectionConfig:
        """The DirectionConfig to draw with: the given options, the defaults for those left out."""
        given = {k: getattr(self, k) for k in DIRECTION_OPTIONS if getattr(self, k) is not None}
        return replace(DirectionConfig(self.dir_type or ("states" if interpolation else "weights"), ndim=ndim,
                                       same_dir=self.same_dir), **given)


@dataclass(frozen=True)
class OutputOptions:
    """Where the surface goes and how it is written. out None:
    results/surfaces/<model>_<dataset>_<grid>.h5. chunk_size: grid points per unit of work,
    flushed and gathered together (None: from the grid, or the existing file's)."""

    out: str | None = None
    chunk_size: int | None = None
    flush_seconds: float = 5.0
    force: bool = False                # replace an output computed with other arguments
    progress: bool = True
    plot: bool = False                 # plot the finished surface (landscapes.plot)

    def __post_init__(self) -> None:
        positive_int("chunk_size", self.chunk_size, allow_none=True)
        if self.flush_seconds < 0:
            raise ValueError(f"flush_seconds must be >= 0, got {self.flush_seconds}")


# Flat keywords of ScanConfig (the CLI's option names) -> (part, field of that part).
_EVAL_FLAT = {"batch_size": "batch_size", "points_per_pass": "points_per_pass", "engine": "engine",
              "workers": "workers", "compile": "compile", "dtype": "dtype", "bn": "bn_mode",
              "calibration_samples": "calibration_samples"}
FLAT_KEYWORDS: dict[str, tuple[str, str]] = {
    **{f.name: ("target", f.name) for f in fields(ScanTarget)},
    **{f.name: ("directions", f.name) for f in fields(DirectionOptions)},
    **{k: ("evaluation", v) for k, v in _EVAL_FLAT.items()},
    **{f.name: ("output", f.name) for f in fields(OutputOptions)},
}


@dataclass(frozen=True, init=False)
class ScanConfig:
    """One scan, composed of parts: what is scanned (:class:`ScanTarget`), the grid (``x``, ``y``),
    the directions (:class:`DirectionOptions`), how points are evaluated (``evaluation``, an
    :class:`~landscapes.evalconfig.EvalConfig`; ``sampling`` for adaptive sample counts), where
    (``device``) and the output (:class:`OutputOptions`). Defaults are the paper's method (filter
    normalization, biases and BN ignored, stored BN statistics, model in eval mode).

    Every part's field is also a keyword and an attribute under the CLI's option name, so
    ``ScanConfig(model="resnet56", checkpoint=..., x="-1:1:51", samples=1000, out=...)`` and
    ``dataclasses.replace(config, force=True)`` work (``bn`` is ``evaluation.bn_mode``); a keyword
    overrides the same field of a part given whole.
    """

    target: ScanTarget
    x: Axis
    y: Axis | None
    directions: DirectionOptions
    evaluation: EvalConfig
    output: OutputOptions
    device: str
    sampling: SamplingConfig | None   # adaptive sample counts (landscapes.sampling); None: all images

    def __init__(self, target: ScanTarget = ScanTarget(), x: Axis | str = DEFAULT_X, y: Axis | str | None = None,
                 directions: DirectionOptions = DirectionOptions(), evaluation: EvalConfig = EvalConfig(),
                 output: OutputOptions = OutputOptions(), device: str = DEFAULT_DEVICE,
                 sampling: SamplingConfig | None = None, **flat: Any) -> None:
        parts = {"target": target, "directions": directions, "evaluation": evaluation, "output": output}
        unknown = sorted(set(flat) - set(FLAT_KEYWORDS))
        if unknown:
            raise TypeError(f"ScanConfig got unexpected keywords {unknown}; valid: the parts "
                            f"({', '.join(f.name for f in fields(self))}) and {', '.join(FLAT_KEYWORDS)}")
        for part in parts:
            given = {FLAT_KEYWORDS[k][1]: v for k, v in flat.items() if FLAT_KEYWORDS[k][0] == part}
            if given:
                parts[part] = replace(parts[part], **given)
        for name, value in {**parts, "x": parse_axis(x, "x"), "y": None if y is None else parse_axis(y, "y"),
                            "device": device, "sampling": sampling}.items():
            object.__setattr__(self, name, value)
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N; got {self.device!r}")
        if self.dir_file is not None and self.out is not None and \
                Path(self.dir_file).resolve() == Path(self.out).resolve():
            raise ValueError(f"--out and --dir-file name the same file {self.out}: the surface would overwrite its "
                             f"directions; give them different names")
        if self.sampling is not None:
            check_eval_config(self.evaluation)

    def __getattr__(self, name: str) -> Any:
        """A part's field under its flat (CLI) name, e.g. ``config.seed`` is ``config.directions.seed``."""
        if name in FLAT_KEYWORDS:
            part, attr = FLAT_KEYWORDS[name]
            return getattr(object.__getattribute__(self, part), attr)
        raise AttributeError(f"'ScanConfig' object has no attribute {name!r}")

    @property
    def direction_config(self) -> DirectionConfig:
        """The DirectionConfig that new directions are drawn with (an existing file decides its own)."""
        return self.directions.config(self.ndim, interpolation=self.model2 is not None)

    @property
    def eval_config(self) -> EvalConfig:
        return self.evaluation

    @property
    def model_name(self) -> str:
        return resolve_name(self.model or DEFAULT_MODEL, self.noshort)

    @property
    def dataset_name(self) -> str:
        return self.dataset or DEFAULT_DATASET

    @property
    def ndim(self) -> int:
        return 1 if self.y is None else 2

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", "test") if self.split == "both" else (self.split,)

    @property
    def out_path(self) -> Path:
        """The surface file: ``out``, else results/surfaces/<model>_<dataset>_<grid>.h5."""
        if self.out is not None:
            return Path(self.out)
        x, y = self.x, self.y
        grid = f"{x.num}" if y is None else f"{x.num}x{y.num}"
        ranges = [f"{a.start:g}_{a.stop:g}" for a in (x, y) if a is not None and (a.start, a.stop) != (-1, 1)]
        tag = ("interp_" if self.model2 else "") + grid + "".join(f"_{r}" for r in ranges)
        return Path("results") / "surfaces" / f"{self.model_name}_{self.dataset_name}_{tag}.h5"

    @property
    def dir_path(self) -> Path:
        if self.dir_file is not None:
            return Path(self.dir_file)
        out = self.out_path
        return out.with_name(f"{out.stem}_dirs.h5")
