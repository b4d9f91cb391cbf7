"""What every command line of the toolkit shares: how a usage error ends, and the --threads option.

A usage error (bad flag value, unknown model, missing data, a run that conflicts) ends with one
line ``error: ...`` on stderr and exit status 2, as argparse's own errors do, so scripts can tell
it from a crash (1) and from Ctrl-C (130).
"""
from __future__ import annotations

import argparse
import sys
from typing import NoReturn

import torch

from .checks import positive_int

__all__ = ["fail", "add_threads_argument", "set_threads"]


def fail(message: str) -> NoReturn:
    """Never returns: prints ``error: <message>`` on stderr and exits with status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _threads(text: str) -> int:
    try:
        value = int(text)
        positive_int("--threads", value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of threads, got {text!r}") from None
    return value


def add_threads_argument(parser: argparse.ArgumentParser,
                         help: str = "torch CPU threads (default: torch's; 1 is fastest on a busy machine)") -> None:
    """None; adds ``--threads N`` (default None), checked as a positive integer when parsed."""
    parser.add_argument("--threads", type=_threads, default=None, help=help)


def set_threads(threads: int | None) -> None:
    """None; sets torch's intra-op CPU threads, or leaves torch's default where ``threads`` is None."""
    if threads is not None:
        positive_int("threads", threads, note="None: torch's default")
        torch.set_num_threads(threads)
