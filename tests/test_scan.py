"""The scan: values against independent forward passes, interpolation end points, resume after
SIGKILL, a 2-rank gloo run, and the CLI's errors."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import models
from landscapes.directions import load_directions
from landscapes.reference import point_state
from landscapes.interpolate import interpolate
from landscapes.scan import ScanConfig, main, scan
from landscapes.surface import SurfaceConflictError, read_surface
from models.data import load_device_data

REPO = Path(__file__).resolve().parents[1]
DATA_KW = {"image_size": 8, "size": 1024}
# Enough work per point (1024 images) that a kill lands mid-scan; one thread everywhere so that
# subprocesses, torchrun workers and this process run the very same kernels.
GRID = ["--x", "-1:1:5", "--y", "-1:1:4"]


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = models.build("resnet8")
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("ckpts")
    meta = {"config": {"dataset": "synthetic", "data_kwargs": DATA_KW}}  # as models.train records it
    models.save_checkpoint(d / "a.pt", _model(0), meta=meta)
    models.save_checkpoint(d / "b.pt", _model(1), meta=meta)
    return d / "a.pt", d / "b.pt"


def _config(ckpt: Path, out: Path, **kw) -> ScanConfig:
    base = dict(model="resnet8", checkpoint=str(ckpt), dataset="synthetic", samples=64, x="-1:1:3", y="0:1:2",
                device="cpu", out=str(out), progress=False, flush_seconds=0.0)
    return ScanConfig(**{**base, **kw})


@torch.no_grad()
def _forward(state: dict, data, in_channels: int = 3) -> tuple[float, float]:
    """Loss and accuracy by a plain forward of the whole data set, outside the scan's code."""
    m = models.build("resnet8", in_channels=in_channels).eval()
    m.load_state_dict(state)
    out = m(data.x).double()
    return F.cross_entropy(out, data.y).item(), 100.0 * (out.argmax(1) == data.y).double().mean().item()


def test_grid_values_match_plain_forward_passes(ckpts, tmp_path):
    """(0, 0) is the trained model; other points are theta + a x + b y with x, y from the direction file."""
    result = scan(_config(ckpts[0], tmp_path / "s.h5"))
    s = result.surface
    assert s.shape == (2, 3) and s.complete
    np.testing.assert_array_equal(s.x, [-1, 0, 1])
    np.testing.assert_array_equal(s.y, [0, 1])
    data = load_device_data("synthetic", "data", "train", 64, **DATA_KW)
    model, _ = models.load_checkpoint(ckpts[0])
    center = {k: v.clone() for k, v in model.state_dict().items()}
    loss0, acc0 = _forward(center, data)
    assert s.values["train_loss"][0, 1] == pytest.approx(loss0, rel=1e-5)
    assert s.values["train_acc"][0, 1] == pytest.approx(acc0, abs=1e-9)
    assert s.attrs["train_loss_center"] == pytest.approx(loss0, rel=1e-5)
    dx, dy = load_directions(result.dir_file, model)
    for iy, ix in [(1, 2), (0, 0), (1, 0)]:
        loss, acc = _forward(point_state(center, [dx, dy], [s.x[ix], s.y[iy]]), data)
        assert s.values["train_loss"][iy, ix] == pytest.approx(loss, rel=1e-5), (iy, ix)
        assert s.values["train_acc"][iy, ix] == pytest.approx(acc, abs=1e-9)
    assert s.values["train_loss"][1, 2] != pytest.approx(s.values["train_loss"][1, 0], rel=1e-3)  # not symmetric
    assert s.attrs["checkpoint_sha256"] == hashlib.sha256(ckpts[0].read_bytes()).hexdigest()
    assert s.attrs["xnorm"] == "filter" and s.attrs["xignore"] == "biasbn" and s.attrs["num_samples"] == {"train": 64}


def test_interpolation_hits_both_models(ckpts, tmp_path):
    data = load_device_data("synthetic", "data", "train", 64, **DATA_KW)
    (a, _), (b, _) = models.load_checkpoint(ckpts[0]), models.load_checkpoint(ckpts[1])
    ends = [_forward(a.state_dict(), data)[0], _forward(b.state_dict(), data)[0]]
    assert abs(ends[0] - ends[1]) > 1e-3
    result = scan(_config(ckpts[0], tmp_path / "i.h5", model2=str(ckpts[1]), x="0:1:2", y=None, plot=True))
    s = result.surface
    assert s.y is None and s.attrs["dir_type"] == "states"  # BN statistics move too: 1 is model 2
    assert result.plots and all(p.is_file() and p.stat().st_size > 0 for p in result.plots)
    np.testing.assert_allclose(s.values["train_loss"], ends, rtol=1e-5)
    lib = interpolate(models.build("resnet8"), a.state_dict(), b.state_dict(), np.array([0.0, 0.5, 1.0]), data)
    np.testing.assert_allclose(lib.values["train_loss"][[0, 2]], ends, rtol=1e-5)
    assert np.isfinite(lib.values["train_loss"][1])


def _cli_args(ckpt: Path, out: Path) -> list[str]:
    return ["--model", "resnet8", "--checkpoint", str(ckpt), "--dataset", "synthetic", "--samples", "1024",
            *GRID, "--device", "cpu", "--chunk-size", "2", "--flush-seconds", "0", "--no-progress", "--out", str(out)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def reference(ckpts, tmp_path_factory):
    """An uninterrupted single-process scan with the arguments the subprocess tests use."""
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return scan(_config(ckpts[0], out, samples=1024, x=GRID[1], y=GRID[3], chunk_size=2)).surface
    finally:
        torch.set_num_threads(threads)


def _assert_same_surface(a, b) -> None:
    assert a.done.all() and b.done.all()
    for name in ("train_loss", "train_acc"):
        np.testing.assert_array_equal(a.values[name], b.values[name])


def test_resume_after_sigkill_equals_uninterrupted_run(ckpts, reference, tmp_path):
    out = tmp_path / "killed.h5"
    proc = subprocess.Popen([sys.executable, "-m", "landscapes.scan", *_cli_args(ckpts[0], out)], env=_env(),
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and read_surface(out).done.sum() >= 4:  # two chunks on disk
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"scan ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    partial = read_surface(out)  # readable right after the kill
    k = int(partial.done.sum())
    assert 0 < k < partial.done.size
    assert np.isnan(partial.values["train_loss"][~partial.done]).all()
    done = subprocess.run([sys.executable, "-m", "landscapes.scan", *_cli_args(ckpts[0], out)], env=_env(),
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    final = read_surface(out)
    assert final.attrs["history"][-1]["points"] == final.done.size - k  # only the missing points
    _assert_same_surface(final, reference)
    assert not list(tmp_path.glob(".killed.h5.tmp-*"))  # stale temp file cleaned up (the lock file is kept)


def test_two_rank_gloo_scan_equals_single_process(ckpts, reference, tmp_path):
    out = tmp_path / "dist.h5"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "landscapes.scan", *_cli_args(ckpts[0], out)]
    run = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    s = read_surface(out)
    assert s.attrs["world_size"] == 2
    _assert_same_surface(s, reference)


@pytest.mark.parametrize("spec, message", [
    ("-1:1", "expected START:STOP:NUM"), ("1:-1:5", "start must be below stop"),
    ("a:b:c", "must be numbers"), ("-1:1:0", "NUM must be a positive integer (points of the grid"),
    ("-1:1:2.5", "whole number"),
])
def test_bad_grid_specs_are_explained(spec, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--model", "resnet8", "--x", spec])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--x" in err and message in err


def test_unknown_model_suggests_names(capsys):
    with pytest.raises(SystemExit):
        main(["--model", "resnet57", "--x", "-1:1:3"])
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'resnet57'") and "resnet56" in err


def test_missing_checkpoint_prints_the_train_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["--model", "resnet56", "--noshort"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "python -m models.train --model resnet56 --noshort --dataset cifar10\n" in err  # its default data root
    assert "runs/resnet56_noshort_cifar10/final.pt" in err
    assert not (tmp_path / "results").exists()  # nothing scanned, nothing written


def test_conflicting_rerun_refuses_without_force(ckpts, tmp_path):
    out = tmp_path / "s.h5"
    scan(_config(ckpts[0], out, samples=32))
    before = out.read_bytes()
    again = scan(_config(ckpts[0], out, samples=32))  # same arguments: nothing to do, file untouched
    assert again.points_computed == 0 and out.read_bytes() == before
    with pytest.raises(SurfaceConflictError, match=r"samples: 32 in the file vs 16 now.*--force"):
        scan(_config(ckpts[0], out, samples=16))
    with pytest.raises(SurfaceConflictError, match="weights_sha256"):
        scan(_config(ckpts[1], out, samples=32))
    assert out.read_bytes() == before
    forced = scan(_config(ckpts[0], out, samples=16, force=True))
    assert forced.surface.attrs["samples"] == 16 and forced.surface.complete


def test_stale_1d_direction_file_is_not_reused_for_2d(ckpts, tmp_path):
    dir_file = tmp_path / "dirs.h5"
    scan(_config(ckpts[0], tmp_path / "one.h5", y=None, dir_file=str(dir_file)))
    with pytest.raises(ValueError, match="only an x direction.*ydirection"):
        scan(_config(ckpts[0], tmp_path / "two.h5", dir_file=str(dir_file)))
    # reused as it is for another 1-D scan: same directions, same digest
    a = read_surface(tmp_path / "one.h5")
    b = scan(_config(ckpts[0], tmp_path / "one_b.h5", y=None, x="-1:1:5", dir_file=str(dir_file))).surface
    assert a.attrs["directions_sha256"] == b.attrs["directions_sha256"]
    assert b.values["train_loss"][[0, 2, 4]] == pytest.approx(a.values["train_loss"], rel=1e-6)


def _mnist_root() -> Path | None:
    root = Path(os.environ.get("RESNET_TOOLKIT_DATA", REPO.parent / "shared" / "datasets"))
    return root if (root / "MNIST" / "raw").is_dir() else None


@pytest.mark.skipif(_mnist_root() is None, reason="MNIST not found (set RESNET_TOOLKIT_DATA)")
def test_scan_of_real_mnist_train_and_test_splits(tmp_path):
    root = _mnist_root()
    torch.manual_seed(0)
    models.save_checkpoint(tmp_path / "m.pt", models.build("resnet8", in_channels=1))
    s = scan(ScanConfig(model="resnet8", checkpoint=str(tmp_path / "m.pt"), dataset="mnist", data_root=str(root),
                        split="both", samples=64, x="-1:1:3", device="cpu", out=str(tmp_path / "m.h5"),
                        progress=False)).surface
    assert set(s.values) == {"train_loss", "train_acc", "test_loss", "test_acc"} and s.complete
    state = models.load_checkpoint(tmp_path / "m.pt")[0].state_dict()
    for split in ("train", "test"):
        loss, acc = _forward(state, load_device_data("mnist", root, split, 64), in_channels=1)
        assert s.values[f"{split}_loss"][1] == pytest.approx(loss, rel=1e-5)
        assert s.values[f"{split}_acc"][1] == pytest.approx(acc, abs=1e-9)
