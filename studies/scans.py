"""Loss landscapes of cached runs. The landscape studies scan the final model of a `train_cached` run
with landscapes.scan. Their direction files (model-sized) live in the run cache, named by the
checkpoint's hash, so that two studies scanning the same checkpoint with the same seed share one
plane, and a retrained checkpoint never reuses directions normalized to the old weights."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from landscapes.values import value_array
from landscapes.scan import ScanConfig, scan
from landscapes.surface import Surface, SurfaceConflictError
from models import read_checkpoint
from models.fileio import sha256
from studies.common import StudyArgs


def direction_file(args: StudyArgs, run: Path, ndim: int, seed: int | None = None) -> Path:
    """``runs/directions/<run>_<sha10>_<ndim>d_seed<s>.h5`` for the final model of ``run``."""
    seed = args.seed if seed is None else seed
    digest = sha256(Path(run) / "final.pt")[:10]
    return Path(args.runs) / "directions" / f"{Path(run).name}_{digest}_{ndim}d_seed{seed}.h5"


def scan_config(args: StudyArgs, run: Path, out: Path, x: str, y: str | None = None, samples: int | None = None,
                dir_file: Path | None = None, seed: int | None = None, **overrides: Any) -> Any:
    """The landscapes.scan.ScanConfig that scans ``run``/final.pt on the data set it was trained on
    (train split, first ``samples`` images) into ``out``, with this study's device and direction
    seed (``seed``, default the study's ``--seed``).
    Directions: ``dir_file``, else the run's cached file (:func:`direction_file`), so that every
    study scanning this checkpoint with this seed lies in the same plane."""
    ck = Path(run) / "final.pt"
    meta = read_checkpoint(ck)["meta"]
    if dir_file is None and overrides.get("model2"):
        # The direction is model2 - model, re-derived exactly on every run; scan refuses a stored
        # one beside --model2, so the cached copy is only written, never read.
        other = Path(overrides["model2"])
        dir_file = Path(args.runs) / "directions" / (f"{Path(run).name}_{sha256(ck)[:10]}_to_{other.parent.name}_"
                                                     f"{sha256(other)[:10]}.h5")
        dir_file.unlink(missing_ok=True)
    elif dir_file is None:
        dir_file = direction_file(args, Path(run), 1 if y is None else 2, seed)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return ScanConfig(model=meta["model"], checkpoint=str(ck), dataset=meta["config"]["dataset"],
                      data_root=args.data_root, samples=samples, x=x, y=y, seed=args.seed if seed is None else seed,
                      dir_file=str(dir_file),
                      device=args.device, out=str(out), progress=args.mode != "smoke", **overrides)


def replacing_conflicts(compute: Any, config: Any) -> Any:
    """``compute(config)``; a surface file computed with other arguments is replaced (rerun with
    ``force``) instead of refused: a study owns its results folder, and a changed mode or seed
    makes its old surface stale. An identical surface is resumed as usual."""
    try:
        return compute(config)
    except SurfaceConflictError as err:
        print(f"note: recomputing {config.out}: {str(err).split(' (')[0]}", file=sys.stderr)
        return compute(replace(config, force=True))


def scan_run(args: StudyArgs, run: Path, out: Path, x: str, y: str | None = None, samples: int | None = None,
             dir_file: Path | None = None, seed: int | None = None, **overrides: Any) -> Any:
    """``landscapes.scan.scan`` of :func:`scan_config` (same arguments); returns the ScanResult.
    ``overrides`` go to ScanConfig (e.g. ``model2``, ``split``)."""
    return replacing_conflicts(scan, scan_config(args, run, out, x, y, samples, dir_file, seed, **overrides))


def merge_surfaces(surfaces: dict[str, Any], value: str = "train_loss") -> Any:
    """One landscapes.surface.Surface holding ``value`` (stored, or derived such as ``eig_ratio``) of
    several surfaces on the same grid, named ``"<label> <value>"``, so that landscapes.plot draws
    them side by side on one colour scale."""
    first = next(iter(surfaces.values()))
    for label, s in surfaces.items():
        if not (np.array_equal(s.x, first.x) and (s.y is None) == (first.y is None)
                and (s.y is None or np.array_equal(s.y, first.y))):
            raise ValueError(f"surface {label!r} lies on another grid than {next(iter(surfaces))!r}")
    values = {f"{label} {value}": value_array(s, value) for label, s in surfaces.items()}  # derived ones too
    done = np.logical_and.reduce([s.done for s in surfaces.values()])
    attrs = {k: v for k, v in first.attrs.items() if k in ("dataset", "split", "num_samples", "directions_source")}
    return Surface(first.x, first.y, values, attrs, "", done)
