"""What a scan is: :class:`ScanConfig` (model, checkpoint and data; grid; directions; evaluation;
output), shared by ``landscapes.scan``, ``landscapes.hessian`` and the studies."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from models import resolve_name
from models.data import DATASETS, NORMALIZATIONS

from .directions import DIR_TYPES, DirectionConfig
from .evalconfig import EvalConfig
from .grid import Axis, parse_axis
from .sampling import SamplingConfig, check_eval_config

__all__ = ["ScanConfig", "SPLITS", "DEFAULT_MODEL", "DEFAULT_DATASET", "DIRECTION_OPTIONS"]

SPLITS = ("train", "test", "both")
DEFAULT_MODEL, DEFAULT_DATASET = "resnet56", "cifar10"  # only without a checkpoint that says otherwise
# Direction options an existing direction file decides (given ones must agree with it).
DIRECTION_OPTIONS = ("xnorm", "xignore", "ynorm", "yignore", "seed", "orthogonalize")
@dataclass(frozen=True)
class ScanConfig:
    """One scan. Defaults are the paper's method (filter normalization, biases and BN ignored,
    stored BN statistics, model in eval mode) on the CIFAR-10 training set.

    checkpoint None: ``runs/<model>_<dataset>/final.pt`` as ``models.train`` writes it (a scan
    never silently runs on a random initialization). model2: x = model2 - model (1-D
    interpolation; norm and ignore do not apply to it). dir_type None: "states" with model2 (so
    that 1 lands exactly on model2, BN statistics included), else "weights". dir_file: an
    existing direction file (ours or the reference's) is reused as it is; otherwise the
    directions are drawn and saved there (default: next to ``out``). data_kwargs None: those the
    checkpoint was trained with when the data set matches. chunk_size: grid points per unit of
    work, flushed and gathered together (None: from the grid, or the existing file's).
    """

    model: str | None = None           # None: the checkpoint's, else DEFAULT_MODEL
    noshort: bool = False
    checkpoint: str | None = None
    model2: str | None = None
    dataset: str | None = None         # None: the checkpoint's, else DEFAULT_DATASET
    data_root: str | None = None       # None: $RESNET_TOOLKIT_DATA, else the checkpoint's if present, else ./data
    normalization: str | None = None   # input constants (models.data.NORMALIZATIONS); None: the checkpoint's
    data_kwargs: Mapping[str, Any] | None = None
    split: str = "train"
    samples: int | None = None
    x: Axis | str = "-1:1:51"
    y: Axis | str | None = None
    dir_type: str | None = None
    # None: an existing dir_file's values, else DirectionConfig's defaults (a given value must match the file)
    xnorm: str | None = None
    xignore: str | None = None
    ynorm: str | None = None
    yignore: str | None = None
    seed: int | None = None
    orthogonalize: bool | None = None
    same_dir: bool = False
    dir_file: str | None = None
    batch_size: int | None = None
    points_per_pass: int | None = None
    engine: str = "auto"
    workers: int | None = None         # CPU loop engine: points in parallel threads (None: torch's threads)
    compile: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    bn: str = "stored"
    calibration_samples: int | None = None
    out: str | None = None
    chunk_size: int | None = None
    flush_seconds: float = 5.0
    force: bool = False
    progress: bool = True
    plot: bool = False
    sampling: SamplingConfig | None = None  # adaptive sample counts (landscapes.sampling); None: all images

    def __post_init__(self) -> None:
        object.__setattr__(self, "x", parse_axis(self.x, "x"))
        object.__setattr__(self, "y", None if self.y is None else parse_axis(self.y, "y"))
        if self.data_kwargs is not None:
            object.__setattr__(self, "data_kwargs", dict(self.data_kwargs))
        if self.model is not None:
            resolve_name(self.model, self.noshort)  # unknown names fail here, with suggestions
        if self.dataset is not None and self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid names: {', '.join(DATASETS)}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {self.split!r}")
        if self.dir_type is not None and self.dir_type not in DIR_TYPES:
            raise ValueError(f"dir_type must be one of {', '.join(DIR_TYPES)}; got {self.dir_type!r}")
        for name in ("samples", "chunk_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N; got {self.device!r}")
        if self.flush_seconds < 0:
            raise ValueError(f"flush_seconds must be >= 0, got {self.flush_seconds}")
        if self.normalization is not None and self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}; got {self.normalization!r}")
        if self.dir_file is not None and self.out is not None and \
                Path(self.dir_file).resolve() == Path(self.out).resolve():
            raise ValueError(f"--out and --dir-file name the same file {self.out}: the surface would overwrite its "
                             f"directions; give them different names")
        self.directions  # noqa: B018  (validates norms, ignores, seed, same_dir/orthogonalize)
        self.eval_config  # noqa: B018  (validates engine, dtype, bn mode, batch sizes)
        if self.sampling is not None:
            check_eval_config(self.eval_config)

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
    def directions(self) -> DirectionConfig:
        """The directions to draw: the given options, DirectionConfig's defaults for those left out."""
        given = {k: getattr(self, k) for k in DIRECTION_OPTIONS if getattr(self, k) is not None}
        return replace(DirectionConfig(self.dir_type or ("states" if self.model2 else "weights"), ndim=self.ndim,
                                       same_dir=self.same_dir), **given)

    @property
    def eval_config(self) -> EvalConfig:
        return EvalConfig(batch_size=self.batch_size, points_per_pass=self.points_per_pass, engine=self.engine,
                          dtype=self.dtype, bn_mode=self.bn, calibration_samples=self.calibration_samples,
                          compile=self.compile, workers=self.workers)

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
