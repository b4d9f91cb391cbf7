"""Issue 11, scan side: no silent wrong result, no lost file, clear errors instead of tracebacks.
Each test reproduces one case of the issue (numbered as there)."""
from __future__ import annotations

import errno
import fcntl

import h5py
import numpy as np
import pytest

from landscapes import surface as surface_mod
from landscapes.surface import SurfaceConflictError, SurfaceStore, read_surface, write_surface


def _small_store(path, flush_seconds=0.0):
    x, y = np.linspace(-1, 1, 3), np.linspace(0, 1, 2)
    return SurfaceStore.open(path, x, y, ["train_loss", "train_acc"], {"k": 1}, flush_seconds=flush_seconds)


# -- case 14: the lock file is kept, so a waiter on the old inode cannot share the lock ----------

def test_lock_file_is_kept_so_an_early_opener_and_a_newcomer_cannot_both_hold_it(tmp_path):
    out = tmp_path / "s.h5"
    first = _small_store(out)
    lock_path = tmp_path / f".{out.name}.lock"
    waiter = open(lock_path, "a+")  # a second process that opened the lock file while the first held it
    first.close()
    fcntl.flock(waiter.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # ... and got the lock after the release
    try:
        assert lock_path.exists()
        with pytest.raises(SurfaceConflictError, match="another scan is running here"):
            _small_store(out)  # a newcomer must see the waiter's lock, not a fresh inode
    finally:
        waiter.close()
    _small_store(out).close()  # free again once the waiter is gone


# -- case 13: Fletcher32 checksums catch values corrupted inside the file ------------------------

def _flip_inside(path, name):
    with h5py.File(path, "r") as f:
        ds = f[name]
        offset = ds.id.get_chunk_info(0).byte_offset if ds.chunks else ds.id.get_offset()
    with open(path, "r+b") as fh:
        fh.seek(offset + 3)
        byte = fh.read(1)
        fh.seek(offset + 3)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_bytes_flipped_inside_a_value_dataset_are_detected_on_read(tmp_path):
    path = write_surface(tmp_path / "s.h5", np.arange(4.0), None, {"train_loss": np.array([1.0, 2.0, 3.0, 4.0])})
    with h5py.File(path, "r") as f:
        assert f["train_loss"].fletcher32 and f["done"].fletcher32
    _flip_inside(path, "train_loss")
    with pytest.raises(ValueError, match="damaged") as err:
        read_surface(path)
    assert "--force" in str(err.value)


def test_a_resume_refuses_a_damaged_file_instead_of_adopting_its_values(tmp_path):
    out = tmp_path / "s.h5"
    store = _small_store(out)
    store.record(np.arange(6), {"train_loss": np.arange(6.0), "train_acc": np.full(6, 50.0)}, 0.1)
    store.close()
    _flip_inside(out, "train_loss")
    with pytest.raises(ValueError, match="damaged"):
        _small_store(out)


# -- case 12: a file corrupted mid-file is reported in one line ----------------------------------

def test_a_file_truncated_mid_file_is_reported_as_damaged(tmp_path):
    path = write_surface(tmp_path / "s.h5", np.arange(4.0), None, {"train_loss": np.arange(4.0)})
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] + b"\0" * (len(raw) - len(raw) // 2))
    with pytest.raises(ValueError, match="damaged|not a readable HDF5"):
        read_surface(path)
