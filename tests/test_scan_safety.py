"""Issue 11, scan side: no silent wrong result, no lost file, clear errors instead of tracebacks.
Each test reproduces one case of the issue (numbered as there)."""
from __future__ import annotations

import errno
import fcntl
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import models
from landscapes import scan as scan_mod
from landscapes import surface as surface_mod
from landscapes.directions import DirectionConfig, create_directions, save_directions
from landscapes.hessian import HessianConfig, HessianScanConfig, hessian_scan
from landscapes.hessian import main as hessian_main
from landscapes.scan import ScanConfig, main, scan
from landscapes.surface import SurfaceConflictError, SurfaceStore, read_surface, write_surface
from models.data import load_device_data


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


# ================================================================================================
# scans
# ================================================================================================

DATA_KW = {"image_size": 8, "size": 256}


@pytest.fixture(scope="module")
def ck(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ck")
    torch.manual_seed(0)
    models.save_checkpoint(d / "a.pt", models.build("resnet8").eval(),
                           meta={"config": {"dataset": "synthetic", "data_kwargs": DATA_KW}})
    return d / "a.pt"


def _cfg(ck: Path, out: Path, **kw) -> ScanConfig:
    base = dict(checkpoint=str(ck), samples=16, x="-1:1:3", device="cpu", out=str(out), progress=False,
                flush_seconds=0.0)
    return ScanConfig(**{**base, **kw})


def _cli(ck: Path, out: Path, *extra: str) -> list[str]:
    return ["--checkpoint", str(ck), "--samples", "16", "--x", "-1:1:3", "--device", "cpu", "--out", str(out),
            "--no-progress", "--flush-seconds", "0", *extra]


def _exit_code(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    return exc.value.code, err


# -- case 10: what the checkpoint records is the default; a contradicting flag names both --------

def test_checkpoint_supplies_model_and_dataset_when_the_flags_are_left_out(ck, tmp_path, capsys):
    s = scan(_cfg(ck, tmp_path / "s.h5")).surface
    assert s.attrs["model"] == "resnet8" and s.attrs["dataset"] == "synthetic"
    assert s.complete and s.values["train_loss"].shape == (3,)
    main(_cli(ck, tmp_path / "cli.h5"))
    assert "resnet8" in capsys.readouterr().out or (tmp_path / "cli.h5").is_file()
    assert read_surface(tmp_path / "cli.h5").attrs["model"] == "resnet8"


@pytest.mark.parametrize("flag, value, recorded", [("model", "resnet20", "resnet8"), ("dataset", "mnist", "synthetic")])
def test_a_flag_that_contradicts_the_checkpoint_names_both_values(ck, tmp_path, flag, value, recorded, capsys):
    with pytest.raises(ValueError) as err:
        scan(_cfg(ck, tmp_path / "s.h5", **{flag: value}))
    assert value in str(err.value) and recorded in str(err.value)
    code, msg = _exit_code(_cli(ck, tmp_path / "c.h5", f"--{flag}", value), capsys)
    assert code == 2 and value in msg and recorded in msg and "resnet56" not in msg and "Traceback" not in msg


def test_hessian_map_takes_model_and_dataset_from_the_checkpoint(ck, tmp_path):
    cfg = _cfg(ck, tmp_path / "h.h5", samples=6, x="0:0:1")
    s = hessian_scan(HessianScanConfig(cfg, HessianConfig(max_iter=4, progress=False)))
    assert s.attrs["model"] == "resnet8" and s.attrs["dataset"] == "synthetic" and s.done.sum() == 1
    hessian_main(["--checkpoint", str(ck), "--samples", "6", "--x", "0:0:1", "--max-iter", "4", "--device", "cpu",
                  "--no-progress", "--out", str(tmp_path / "cli.h5")])
    assert read_surface(tmp_path / "cli.h5").attrs["model"] == "resnet8"


# -- case 11: one default data root; no --download offered where the command has none -----------

def test_scan_data_root_defaults_to_the_environment_and_does_not_offer_download(tmp_path, monkeypatch):
    empty = tmp_path / "nowhere"
    empty.mkdir()
    monkeypatch.setenv("RESNET_TOOLKIT_DATA", str(empty))
    models.save_checkpoint(tmp_path / "m.pt", models.build("resnet8", in_channels=1), meta={"config": {"dataset": "mnist"}})
    with pytest.raises(FileNotFoundError) as err:
        scan(_cfg(tmp_path / "m.pt", tmp_path / "s.h5"))
    assert str(empty) in str(err.value) and "--download" not in str(err.value)


# -- case 3: a direction file made for another model is refused ---------------------------------

def test_direction_file_of_another_model_with_the_same_shapes_is_refused(ck, tmp_path):
    model, _ = models.load_checkpoint(ck)
    dirs = create_directions(model, DirectionConfig(ndim=1))
    save_directions(tmp_path / "d.h5", dirs, model, meta={"model": "resnet8_noshort"})
    with pytest.raises(ValueError) as err:
        scan(_cfg(ck, tmp_path / "s.h5", dir_file=str(tmp_path / "d.h5")))
    assert "resnet8_noshort" in str(err.value) and "'resnet8'" in str(err.value)


# -- case 4: flags that an existing direction file overrides ------------------------------------

def test_existing_direction_file_wins_and_a_contradicting_flag_is_an_error(ck, tmp_path):
    dirs = tmp_path / "d.h5"
    scan(_cfg(ck, tmp_path / "a.h5", y="0:1:2", seed=3, orthogonalize=True, dir_file=str(dirs)))
    s = scan(_cfg(ck, tmp_path / "b.h5", y="0:1:2", dir_file=str(dirs))).surface
    assert s.attrs["seed"] == 3 and s.attrs["orthogonalize"] in (True, 1)
    assert abs(s.attrs["directions_cosine"]) < 1e-6
    for kw, shown in (({"seed": 5}, ("5", "3")), ({"orthogonalize": False}, ("False", "True")),
                      ({"xnorm": "layer"}, ("layer", "filter"))):
        with pytest.raises(ValueError) as err:
            scan(_cfg(ck, tmp_path / "c.h5", y="0:1:2", dir_file=str(dirs), **kw))
        assert all(v in str(err.value) for v in shown), (kw, str(err.value))
    # the same values as the file are fine
    scan(_cfg(ck, tmp_path / "e.h5", y="0:1:2", dir_file=str(dirs), seed=3, orthogonalize=True))


# -- case 5: NaN/inf inputs are refused; non-finite values are counted -------------------------

def test_non_finite_weights_or_directions_are_refused_up_front(ck, tmp_path):
    model, meta = models.load_checkpoint(ck)
    with torch.no_grad():
        model.conv1.weight[0, 0, 0, 0] = float("nan")
    models.save_checkpoint(tmp_path / "nan.pt", model, meta={"config": meta["config"]})
    with pytest.raises(ValueError, match="conv1.weight.*not finite|not finite.*conv1.weight"):
        scan(_cfg(tmp_path / "nan.pt", tmp_path / "s.h5"))
    good, _ = models.load_checkpoint(ck)
    dirs = create_directions(good, DirectionConfig(ndim=1))
    key = next(iter(dirs[0]))
    dirs[0][key][0] = float("inf")
    save_directions(tmp_path / "d.h5", dirs, good, meta={"model": "resnet8"})
    with pytest.raises(ValueError, match="not finite"):
        scan(_cfg(ck, tmp_path / "s2.h5", dir_file=str(tmp_path / "d.h5")))
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "s2.h5").exists()


def test_non_finite_losses_are_counted_and_all_non_finite_fails_the_cli(ck, tmp_path, capsys):
    r = scan(_cfg(ck, tmp_path / "s.h5", x="0:3e38:2"))
    assert r.nonfinite == 1 and r.surface.complete
    assert "1 of 2 points" in capsys.readouterr().err
    code, err = _exit_code(_cli(ck, tmp_path / "all.h5", "--x", "3e38:3.2e38:2"), capsys)
    assert code == 1 and "all 2 points" in err and "Traceback" not in err
    main(_cli(ck, tmp_path / "fine.h5"))  # finite values: exit 0, no warning
    assert "not finite" not in capsys.readouterr().err


# -- case 7: direction files are never replaced silently ----------------------------------------

def test_default_direction_file_is_not_replaced_silently(ck, tmp_path):
    out = tmp_path / "s.h5"
    scan(_cfg(ck, out, seed=0))
    dirs = tmp_path / "s_dirs.h5"
    before = dirs.read_bytes()
    out.unlink()
    with pytest.raises(ValueError) as err:
        scan(_cfg(ck, out, seed=1))
    assert str(dirs) in str(err.value) and "--dir-file" in str(err.value)
    assert dirs.read_bytes() == before
    scan(_cfg(ck, out, seed=0))  # the same directions: reused as they are
    assert dirs.read_bytes() == before


def test_out_equal_to_dir_file_is_refused(ck, tmp_path):
    with pytest.raises(ValueError, match="same file"):
        _cfg(ck, tmp_path / "x.h5", dir_file=str(tmp_path / "x.h5"))


# -- case 8: a resume with other execution settings is recorded run by run ----------------------

def test_resume_with_another_batch_size_records_each_runs_settings(ck, tmp_path, monkeypatch):
    out = tmp_path / "s.h5"
    calls = {"n": 0}
    real = scan_mod.SurfaceStore.record

    def stop_after_one(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(scan_mod.SurfaceStore, "record", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        scan(_cfg(ck, out, x="-1:1:5", chunk_size=2, batch_size=8))
    monkeypatch.setattr(scan_mod.SurfaceStore, "record", real)
    s = scan(_cfg(ck, out, x="-1:1:5", chunk_size=2, batch_size=4)).surface
    runs = [h for h in s.attrs["history"] if h["points"]]
    assert [h["points"] for h in runs] == [2, 3]
    assert [h["eval"]["eval_batch_size"] for h in runs] == [8, 4]
    assert s.attrs["eval_batch_size"] == "mixed: per run in history"
    assert s.attrs["eval_engine"] == runs[0]["eval"]["eval_engine"]  # the same engine in both runs


# -- case 12: clear errors ----------------------------------------------------------------------

def test_read_only_output_directory_is_one_clear_error(ck, tmp_path, monkeypatch, capsys):
    def denied(path, what="job"):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("landscapes.surface.file_lock", denied)
    code, err = _exit_code(_cli(ck, tmp_path / "s.h5"), capsys)
    assert code == 2 and "cannot write" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_full_disk_says_the_partial_file_is_intact_and_rerunning_resumes(ck, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s.h5"
    real = surface_mod._write_file
    writes = {"n": 0}

    def full_after_two(*a, **k):
        writes["n"] += 1
        if writes["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(surface_mod, "_write_file", full_after_two)
    code, err = _exit_code(_cli(ck, out, "--chunk-size", "1"), capsys)
    assert code == 1 and "intact" in err and "resume" in err and "Traceback" not in err
    assert read_surface(out).done.sum() == 1  # the center, then one point, then the disk filled up
    monkeypatch.setattr(surface_mod, "_write_file", real)
    main(_cli(ck, out, "--chunk-size", "1"))
    assert read_surface(out).complete


def test_grid_too_big_for_memory_is_refused_before_allocating(monkeypatch):
    monkeypatch.setattr(surface_mod, "available_memory", lambda: 10_000_000)
    x = np.linspace(-1, 1, 1000)
    with pytest.raises(ValueError, match="memory"):
        SurfaceStore(x, x, ["train_loss", "train_acc"])
    SurfaceStore(x[:100], x[:100], ["train_loss", "train_acc"])  # 10^4 points fit


@pytest.mark.parametrize("target", ["dir", "/dev/null"])
def test_directory_or_device_as_out_is_named_as_such(ck, tmp_path, target, capsys):
    out = tmp_path if target == "dir" else Path(target)
    code, err = _exit_code(_cli(ck, out), capsys)
    assert code == 2 and "does not exist" not in err
    assert ("is a directory" if target == "dir" else "not a regular file") in err


# -- case 15: the checkpoint's normalization is used and recorded --------------------------------

def test_normalization_follows_the_checkpoint_and_a_flag_chooses(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    torch.save(models.build("resnet8").state_dict(), tmp_path / "orig.t7")  # the original project's format
    seen = []

    def fake(name, root, split, samples, device, normalization="torchvision", offer_download=True, **kw):
        seen.append((name, normalization, offer_download))
        return load_device_data("synthetic", root, split, samples, device, **DATA_KW)

    monkeypatch.setattr(scan_mod, "load_device_data", fake)
    s = scan(ScanConfig(model="resnet8", checkpoint=str(tmp_path / "orig.t7"), dataset="cifar10", samples=8,
                        x="0:0:1", device="cpu", out=str(tmp_path / "a.h5"), progress=False)).surface
    assert seen[-1] == ("cifar10", "loss-landscape", False) and s.attrs["normalization"] == "loss-landscape"
    assert "loss-landscape" in capsys.readouterr().err
    s = scan(ScanConfig(model="resnet8", checkpoint=str(tmp_path / "orig.t7"), dataset="cifar10", samples=8,
                        x="0:0:1", device="cpu", out=str(tmp_path / "b.h5"), progress=False,
                        normalization="torchvision")).surface
    assert seen[-1][1] == "torchvision" and s.attrs["normalization"] == "torchvision"


def test_plot_with_a_tiny_vlevel_is_one_clear_error(tmp_path, capsys):
    from landscapes.plot import main as plot_main
    x = np.linspace(-1, 1, 5)
    path = write_surface(tmp_path / "s.h5", x, x, {"train_loss": np.add.outer(x, x) ** 2 + 1})
    with pytest.raises(SystemExit) as exc:
        plot_main([str(path), "--vlevel", "1e-9", "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "use a larger --vlevel" in err and "Traceback" not in err
