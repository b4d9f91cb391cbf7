"""The command-line options every scan-like CLI shares (model, data, grid, directions, device,
output), added by one function with defaults taken from the parts of :class:`~landscapes.scanconfig.ScanConfig`,
so that ``landscapes.scan`` and ``landscapes.hessian`` cannot drift apart."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from models.data import DATA_ENV, DATASETS, NORMALIZATIONS
from models.registry import parse_key_values  # one parser for KEY=VALUE options across CLIs

from .directions import DIR_TYPES, IGNORES, NORMS, DirectionConfig
from .grid import AXIS_HELP, axis_arg
from .scanconfig import DEFAULT_DATASET, DEFAULT_DEVICE, DEFAULT_MODEL, DEFAULT_X, SPLITS, OutputOptions, ScanTarget

__all__ = ["add_scan_options", "scan_config_kwargs"]

# Namespace entries add_scan_options creates that are ScanConfig keywords as they are.
_SHARED = ("model", "noshort", "checkpoint", "model2", "dataset", "data_root", "normalization", "split", "samples",
           "x", "y", "dir_type", "xnorm", "xignore", "ynorm", "yignore", "seed", "orthogonalize", "same_dir",
           "dir_file", "device", "out", "flush_seconds", "force", "progress")


def add_scan_options(p: argparse.ArgumentParser, *, x: str = DEFAULT_X, splits: Sequence[str] = SPLITS,
                     samples: int | None = ScanTarget.samples, samples_help: str = "the first N images of the "
                     "split, in data set order", out_help: str = "surface file (default: "
                     "results/surfaces/<model>_<dataset>_<grid>.h5)") -> None:
    """Add the options that say what is scanned, on which grid and directions, where, and into
    which file. Options a checkpoint or an existing direction file decides default to None (see
    :func:`landscapes.scan.resolve_config`); :func:`scan_config_kwargs` reads them back."""
    g = p.add_argument_group("model")
    g.add_argument("--model", help=f"registry name (python -m models.summary --list; default: the checkpoint's, "
                   f"else {DEFAULT_MODEL})")
    g.add_argument("--noshort", action="store_true", help="the model without skip connections")
    g.add_argument("--checkpoint", help="trained weights (default: runs/<model>_<dataset>/final.pt)")
    g.add_argument("--model2", help="second checkpoint: x = model2 - model, a 1-D interpolation")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=list(DATASETS), help=f"default: the checkpoint's, else {DEFAULT_DATASET}")
    g.add_argument("--data-root", help=f"default: ${DATA_ENV}, else the checkpoint's if it exists here, else ./data")
    g.add_argument("--normalization", choices=NORMALIZATIONS,
                   help="input constants (default: the checkpoint's; loss-landscape for the original format)")
    g.add_argument("--data-kw", action="append", default=None, metavar="KEY=VALUE",
                   help="synthetic data option (default: as the checkpoint was trained)")
    g.add_argument("--split", default=ScanTarget.split, choices=list(splits))
    g.add_argument("--samples", type=int, default=samples, help=samples_help)
    g = p.add_argument_group("grid and directions")
    g.add_argument("--x", type=axis_arg("x"), default=x, help=AXIS_HELP)
    g.add_argument("--y", type=axis_arg("y"), help="as --x; omit for a 1-D scan")
    g.add_argument("--dir-type", choices=DIR_TYPES, help="weights, or states (BN statistics too); "
                   "default: states with --model2, else weights")
    dflt = DirectionConfig()  # an existing --dir-file decides these; a value given must agree with it
    g.add_argument("--xnorm", choices=NORMS, help=f"default: {dflt.xnorm}")
    g.add_argument("--xignore", choices=IGNORES, help=f"default: {dflt.xignore}")
    g.add_argument("--ynorm", choices=NORMS, help=f"default: {dflt.ynorm}")
    g.add_argument("--yignore", choices=IGNORES, help=f"default: {dflt.yignore}")
    g.add_argument("--seed", type=int, help=f"seed of the random directions (default: {dflt.seed})")
    g.add_argument("--orthogonalize", action="store_true", default=None, help="make y orthogonal to x (per filter)")
    g.add_argument("--same-dir", action="store_true", help="y = x")
    g.add_argument("--dir-file", help="direction file to reuse, or to create (default: <out>_dirs.h5)")
    g = p.add_argument_group("output")
    g.add_argument("--device", default=DEFAULT_DEVICE, help="auto, cpu, cuda or cuda:N")
    g.add_argument("--out", help=out_help)
    g.add_argument("--flush-seconds", type=float, default=OutputOptions.flush_seconds,
                   help="write the file at most this often (0: after every point or chunk)")
    g.add_argument("--force", action="store_true", help="replace an output computed with other arguments")
    g.add_argument("--no-progress", dest="progress", action="store_false")


def scan_config_kwargs(args: argparse.Namespace | dict[str, Any]) -> dict[str, Any]:
    """The ScanConfig keywords of the options :func:`add_scan_options` added (``--data-kw`` parsed)."""
    ns = vars(args) if isinstance(args, argparse.Namespace) else args
    kw = {k: ns[k] for k in _SHARED}
    kw["data_kwargs"] = None if ns["data_kw"] is None else parse_key_values(ns["data_kw"])
    return kw
