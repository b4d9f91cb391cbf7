"""Small file utilities every package shares: atomic writes, content hashes, the package version."""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterator

import torch

__all__ = ["atomic_path", "atomic_torch_save", "sha256", "package_version"]


def package_version() -> str:
    """The installed resnet-toolkit version, or "0+unknown" when run from a tree that is not installed."""
    try:
        return version("resnet-toolkit")
    except PackageNotFoundError:
        return "0+unknown"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of ``path`` (``.<name>.tmp-<pid>``) to write; renamed over ``path`` when
    the block succeeds and removed when it fails, so a kill never leaves half a file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """None; ``torch.save(obj, path)`` through :func:`atomic_path`, so ``path`` is whole or absent."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file's bytes, read in 1 MiB blocks (checkpoints can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
