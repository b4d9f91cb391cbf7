"""Surface files: the reference project's memory order, our (ny, nx) layout with a done mask,
atomic replacement, resume identity checks and the writer lock."""
from __future__ import annotations

import hashlib

import h5py
import numpy as np
import pytest

from landscapes.surface import SurfaceConflictError, SurfaceStore, read_surface, write_surface


def _f(x, y):
    return 10.0 * x + y + 3.0  # positive, and different at (x, y) and (y, x)


def test_reads_reference_layout_on_a_non_square_grid(tmp_path):
    """The reference declares (nx, ny) but fills the flat buffer in meshgrid(x, y) ravel order."""
    x, y = np.linspace(-1, 1, 4), np.linspace(0, 1, 3)
    xx, yy = np.meshgrid(x, y)
    flat = _f(xx, yy).ravel()
    flat[5] = -1.0  # a point the reference had not computed yet
    path = tmp_path / "theirs.h5"
    with h5py.File(path, "w") as f:
        f["dir_file"] = "model.t7_weights.h5"
        f["xcoordinates"] = x
        f["ycoordinates"] = y
        f["train_loss"] = flat.reshape(len(x), len(y))  # the declared (nx, ny) shape
        f["train_acc"] = np.full((len(x), len(y)), 50.0)
    s = read_surface(path)
    assert s.values["train_loss"].shape == (3, 4) and s.shape == (3, 4)
    iy, ix = np.divmod(5, len(x))
    for j in range(3):
        for i in range(4):
            if (j, i) == (iy, ix):
                assert np.isnan(s.values["train_loss"][j, i]) and not s.done[j, i]
            else:
                assert s.values["train_loss"][j, i] == _f(x[i], y[j])
    assert s.attrs["dir_file"] == "model.t7_weights.h5"
    assert s.attrs["format"] == "tomgoldstein/loss-landscape"


def test_reads_reference_1d_files(tmp_path):
    x = np.linspace(-0.5, 1.5, 5)
    with h5py.File(tmp_path / "theirs1d.h5", "w") as f:
        f["xcoordinates"] = x
        f["train_loss"] = np.array([1.0, 2.0, -1.0, 4.0, 5.0])
    s = read_surface(tmp_path / "theirs1d.h5")
    assert s.y is None and s.shape == (5,)
    np.testing.assert_array_equal(s.values["train_loss"], [1.0, 2.0, np.nan, 4.0, 5.0])


def test_our_layout_is_ny_nx_and_round_trips(tmp_path):
    x, y = np.linspace(-1, 1, 5), np.linspace(-2, 2, 3)
    xx, yy = np.meshgrid(x, y)
    loss = _f(xx, yy)
    loss[1, 2] = np.nan
    path = write_surface(tmp_path / "ours.h5", x, y, {"train_loss": loss},
                         attrs={"model": "resnet8", "identity": {"samples": 5}}, dir_file="d.h5")
    with h5py.File(path, "r") as f:  # raw file: value[iy, ix] at (x[ix], y[iy]); plots index it directly
        assert f["train_loss"].shape == (3, 5)
        assert f["train_loss"][2, 4] == _f(x[4], y[2])
        assert not f["done"][1, 2] and f["done"][0, 0]
    s = read_surface(path)
    np.testing.assert_array_equal(s.values["train_loss"], loss)
    assert s.attrs["identity"] == {"samples": 5} and s.attrs["model"] == "resnet8" and s.attrs["dir_file"] == "d.h5"
    with pytest.raises(ValueError, match=r"expected \(3, 5\)"):
        write_surface(tmp_path / "bad.h5", x, y, {"train_loss": loss.T})


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_store_resumes_matching_files_and_refuses_others(tmp_path):
    path = tmp_path / "s.h5"
    x, y = np.linspace(-1, 1, 3), np.linspace(-1, 1, 2)
    ident = {"model": "resnet8", "samples": 10}
    with SurfaceStore.open(path, x, y, ["train_loss"], ident, flush_seconds=0) as store:
        store.record(np.array([0, 4]), {"train_loss": np.array([1.5, 2.5])}, 0.1)
    with SurfaceStore.open(path, x, y, ["train_loss"], ident) as again:
        np.testing.assert_array_equal(again.todo(), [1, 2, 3, 5])
        assert again.values["train_loss"][4] == 2.5
    before = _sha(path)
    with pytest.raises(SurfaceConflictError, match=r"samples: 10 in the file vs 20 now.*--force"):
        SurfaceStore.open(path, x, y, ["train_loss"], {**ident, "samples": 20})
    assert _sha(path) == before  # a refused run leaves the file alone
    with SurfaceStore.open(path, x, y, ["train_loss"], {**ident, "samples": 20}, force=True) as fresh:
        assert fresh.todo().size == 6
    with pytest.raises(SurfaceConflictError, match="values"):
        SurfaceStore.open(path, x, y, ["train_loss", "test_loss"], ident)


def test_a_run_that_computes_nothing_leaves_the_file_as_it_was(tmp_path):
    """Rerunning a study over complete, committed surfaces must not dirty them: no empty history
    entry, no new 'updated' date. A run that does compute records its entry."""
    path = tmp_path / "s.h5"
    x = np.linspace(-1, 1, 3)
    with SurfaceStore.open(path, x, None, ["train_loss"], {}, flush_seconds=0) as store:
        store.begin_run(device="cpu")
        store.record(np.array([0, 1]), {"train_loss": np.array([1.0, 2.0])}, 0.1)
    before = path.read_bytes()
    with SurfaceStore.open(path, x, None, ["train_loss"], {}) as again:
        again.begin_run(device="cpu")
        again.note_run(engine="batched")
        again.flush()
    assert path.read_bytes() == before
    with SurfaceStore.open(path, x, None, ["train_loss"], {}) as last:
        last.begin_run(device="cpu")
        last.record(np.array([2]), {"train_loss": np.array([3.0])}, 0.1)
    history = read_surface(path).attrs["history"]
    assert [h["points"] for h in history] == [2, 1]


def test_store_refuses_reference_files_and_concurrent_writers(tmp_path):
    theirs = tmp_path / "theirs.h5"
    with h5py.File(theirs, "w") as f:
        f["xcoordinates"] = np.linspace(-1, 1, 3)
        f["train_loss"] = -np.ones(3)
    with pytest.raises(SurfaceConflictError, match="not a resnet-toolkit surface"):
        SurfaceStore.open(theirs, np.linspace(-1, 1, 3), None, ["train_loss"], {})
    path = tmp_path / "busy.h5"
    with SurfaceStore.open(path, np.linspace(-1, 1, 3), None, ["train_loss"], {}):
        with pytest.raises(SurfaceConflictError, match="another scan is running here"):
            SurfaceStore.open(path, np.linspace(-1, 1, 3), None, ["train_loss"], {})


def test_flush_is_atomic_and_done_matches_values(tmp_path):
    """Every version of the file on disk is complete: points marked done hold their values."""
    path = tmp_path / "s.h5"
    x = np.linspace(-1, 1, 8)
    with SurfaceStore.open(path, x, None, ["train_loss"], {}, flush_seconds=0) as store:
        for k in range(8):
            store.record(np.array([k]), {"train_loss": np.array([float(k + 1)])}, 0.01)
            s = read_surface(path)
            assert s.done.sum() == k + 1
            np.testing.assert_array_equal(s.values["train_loss"][s.done], np.arange(1, k + 2))
            assert np.isnan(s.values["train_loss"][~s.done]).all()
    assert not list(tmp_path.glob(".s.h5.tmp-*"))  # the lock file stays (models.locking: deleting it races)
