"""Adaptive sample counts: the finite-population standard error against exact enumeration, the
engine's per-image sums against plain per-image losses, adaptive = full at tolerance 0,
determinism and exact resume of adaptive scans, the stopping rule, the refusals, the plot note."""
from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import models
from landscapes.evalconfig import EvalConfig
from landscapes.evaluate import Evaluator
from landscapes.plot import main as plot_main
from landscapes.plot import plot_2d
from landscapes.reference import point_state
from landscapes.sampling import (SamplingConfig, image_order, next_stop, ordered, precision_note, sampled_names,
                                 se_hover, standard_error, stopped)
from landscapes.scan import compute_surface, main, value_names
from landscapes.surface import SurfaceStore, read_surface
from models.data import DeviceData, make_synthetic

from test_evaluate import directions, trained_like

REPO = Path(__file__).resolve().parents[1]
DATA_KW = {"image_size": 8, "size": 300}


def _data(n: int = 300) -> DeviceData:
    x, y = make_synthetic(True, seed=0, image_size=8, size=n)
    return DeviceData(x, y)


@pytest.fixture(scope="module")
def setup():
    model = trained_like(models.build("resnet8"))
    return model, model.state_dict(), directions(model, 2, scale=0.3), _data()


def test_standard_error_is_exact_over_every_sample_without_replacement():
    """Over all C(7, 3) samples of a population, the mean squared SE equals the variance of the
    sample mean exactly (s^2 is unbiased for S^2 without replacement, with the factor 1 - n/N)."""
    pop = np.array([0.1, 2.0, 0.5, 7.0, 0.05, 1.5, 3.0])
    n, N = 3, len(pop)
    samples = np.array(list(itertools.combinations(pop, n)))
    se = standard_error(np.full(len(samples), n), samples.sum(1), (samples ** 2).sum(1), N)
    assert np.mean(se ** 2) == pytest.approx(np.var(samples.mean(1)), rel=1e-12)
    # the direct formula on one sample
    one = samples[4]
    assert se[4] == pytest.approx(np.std(one, ddof=1) / np.sqrt(n) * np.sqrt(1 - n / N), rel=1e-12)


def test_standard_error_is_zero_over_the_whole_population_and_undefined_below_two():
    assert standard_error(np.array([7.0]), np.array([3.0]), np.array([5.0]), 7)[0] == 0.0
    se = standard_error(np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.0, 1.0]), np.array([0.0, 1.0, 1.0]), 7)
    assert np.isnan(se[0]) and se[1] == np.inf and se[2] == pytest.approx(np.sqrt(0.5 / 2 * (1 - 2 / 7)))


def test_stopping_rule_relative_absolute_and_cap():
    n = np.array([100.0, 100.0, 100.0, 7.0])
    mean = np.array([1.0, 20.0, 1.0, 1.0])
    var = np.array([0.01, 400.0, 4.0, 4.0])  # sample variances
    total = mean * n
    sumsq = var * (n - 1) + total * mean
    se = standard_error(n, total, sumsq, 1000)
    assert se[0] < 0.02 < se[2]
    assert stopped(n, total, sumsq, 1000, SamplingConfig(precision=0.02)).tolist() == [True, False, False, False]
    assert stopped(n, total, sumsq, 1000, SamplingConfig(precision=0.02, cap=10.0)).tolist() == \
        [True, True, False, False]
    assert stopped(n, total, sumsq, 1000, SamplingConfig(precision=0.0, abs_precision=1.0)).tolist() == \
        [True, False, True, True]  # SEs 0.01, 1.9, 0.2, 0.75
    assert stopped(n, total, sumsq, 7, SamplingConfig(precision=0.0))[3]  # n = N


def test_image_order_is_a_seeded_permutation():
    a, b = image_order(50, 3), image_order(50, 3)
    assert torch.equal(a, b) and not torch.equal(a, image_order(50, 4))
    assert sorted(a.tolist()) == list(range(50))


@pytest.mark.parametrize("engine", ["loop", "batched"])
def test_engine_sums_equal_plain_per_image_losses(setup, engine, device):
    model, center, dirs, data = setup
    data = data.to(device)
    coords = torch.tensor([[0.0, 0.0], [0.5, -0.3], [-1.0, 1.0]], dtype=torch.float64)
    ev = Evaluator(model, center, dirs, data, EvalConfig(engine=engine, workers=2, batch_size=32))
    loss, sq, correct = ev.sums(coords, slice(40, 140))
    net = models.build("resnet8").eval()
    for i, c in enumerate(coords.tolist()):
        net.load_state_dict(point_state(center, dirs, c))
        with torch.no_grad():
            out = net(data.x[40:140].cpu()).double()
        ce = F.cross_entropy(out, data.y[40:140], reduction="none").cpu()
        assert loss[i].item() == pytest.approx(ce.sum().item(), rel=1e-5)
        assert sq[i].item() == pytest.approx(ce.square().sum().item(), rel=1e-5)
        assert correct[i].item() == (out.argmax(1) == data.y[40:140].cpu()).sum().item()


def _grid() -> tuple[np.ndarray, np.ndarray]:
    return np.linspace(-1, 1, 3), np.linspace(-0.5, 0.5, 2)


def _adaptive(setup, config: SamplingConfig, store=None, engine="loop", workers=2, device="cpu"):
    model, center, dirs, data = setup
    data = data.to(device)
    x, y = _grid()
    return compute_surface(model, dirs, x, y, {"train": data}, EvalConfig(engine=engine, workers=workers),
                           center=center, store=store, chunk_size=4, progress=False, sampling=config)


@pytest.mark.parametrize("engine", ["loop", "batched"])
@pytest.mark.parametrize("ndim", [1, 2])
def test_adaptive_at_zero_tolerance_equals_the_full_evaluation(setup, engine, device, ndim):
    model, center, dirs, data = setup
    data = data.to(device)
    x, y = _grid()
    if ndim == 1:
        y, dirs = None, dirs[:1]
    full = compute_surface(model, dirs, x, y, {"train": data}, EvalConfig(engine=engine), center=center,
                           progress=False)
    ad = compute_surface(model, dirs, x, y, {"train": data}, EvalConfig(engine=engine, workers=2), center=center,
                         chunk_size=4, progress=False, sampling=SamplingConfig(precision=0.0, chunk=64))
    assert ad.shape == full.shape == ((3,) if ndim == 1 else (2, 3))
    assert ad.complete and (ad.values["train_n"] == len(data)).all()
    np.testing.assert_allclose(ad.values["train_loss"], full.values["train_loss"], rtol=1e-6)
    np.testing.assert_array_equal(ad.values["train_acc"], full.values["train_acc"])
    assert (ad.values["train_loss_se"] == 0).all() and (ad.values["train_acc_se"] == 0).all()


def test_adaptive_se_is_the_finite_population_se_of_the_first_n_images(setup):
    model, center, dirs, data = setup
    ad = _adaptive(setup, SamplingConfig(precision=0.5, chunk=50))
    n = ad.values["train_n"]
    assert ad.complete and (n < len(data)).any() and (n % 50 == 0).all()
    x, y = _grid()
    iy, ix = np.unravel_index(int(np.argmin(n)), n.shape)
    k = int(n[iy, ix])
    first = ordered(data, 0)
    net = models.build("resnet8").eval()
    net.load_state_dict(point_state(center, dirs, [x[ix], y[iy]]))
    with torch.no_grad():
        ce = F.cross_entropy(net(first.x[:k]).double(), first.y[:k], reduction="none").numpy()
    assert ad.values["train_loss"][iy, ix] == pytest.approx(ce.mean(), rel=1e-5)
    exact = ce.std(ddof=1) / np.sqrt(k) * np.sqrt(1 - k / len(data))
    assert ad.values["train_loss_se"][iy, ix] == pytest.approx(exact, rel=1e-4)
    assert ad.values["train_loss_se"][iy, ix] <= 0.5 * ad.values["train_loss"][iy, ix]


def test_adaptive_is_deterministic_and_independent_of_threads(setup):
    cfg = SamplingConfig(precision=0.01, chunk=40, seed=5)
    a, b = _adaptive(setup, cfg), _adaptive(setup, cfg, workers=1)
    np.testing.assert_array_equal(a.values["train_n"], b.values["train_n"])
    for name in ("train_loss", "train_loss_se", "train_acc"):
        np.testing.assert_allclose(a.values[name], b.values[name], rtol=1e-12)
    c = _adaptive(setup, SamplingConfig(precision=0.01, chunk=40, seed=6))
    assert not np.array_equal(c.values["train_loss"], a.values["train_loss"])


class _Killed(Exception):
    pass


def test_killed_adaptive_scan_resumes_bit_for_bit(setup, tmp_path, monkeypatch):
    """A run killed right after its k-th flush (the state a SIGKILL leaves on disk), resumed from
    the file, equals the uninterrupted run in every stored value."""
    cfg = SamplingConfig(precision=0.01, chunk=40)
    x, y = _grid()
    names = value_names(["train"]) + sampled_names(["train"])

    def store(path):
        return SurfaceStore.open(path, x, y, names, {"id": 1}, flush_seconds=0.0)

    flushes = {"n": 0, "die": None}
    real = SurfaceStore.flush

    def flush_then_die(self):
        real(self)
        flushes["n"] += 1
        if flushes["n"] == flushes["die"]:
            raise _Killed

    monkeypatch.setattr(SurfaceStore, "flush", flush_then_die)
    with store(tmp_path / "whole.h5") as s:
        _adaptive(setup, cfg, store=s)
    whole = read_surface(tmp_path / "whole.h5")
    assert flushes["n"] >= 8  # the centre, then every group and every round
    flushes.update(n=0, die=flushes["n"] // 2 + 1)

    monkeypatch.setattr(SurfaceStore, "flush", flush_then_die)
    with pytest.raises(_Killed), store(tmp_path / "cut.h5") as s:
        _adaptive(setup, cfg, store=s)
    monkeypatch.setattr(SurfaceStore, "flush", real)
    cut = read_surface(tmp_path / "cut.h5")
    assert 0 < cut.values["train_n"].sum() < whole.values["train_n"].sum()
    assert np.isfinite(cut.values["train_loss"]).all()  # killed after the first round: a whole picture
    title = plot_2d(cut, "contour")._suptitle.get_text()
    assert f"partial: {int(cut.done.sum())}/6 points at SE ≤ 1% (median " in title
    with store(tmp_path / "cut.h5") as s:
        _adaptive(setup, cfg, store=s)
    resumed = read_surface(tmp_path / "cut.h5")
    assert resumed.complete
    for name, v in whole.values.items():
        np.testing.assert_array_equal(resumed.values[name], v, err_msg=name)


def test_first_round_gives_every_point_a_value_before_any_gets_a_second_chunk(setup, tmp_path, monkeypatch):
    cfg = SamplingConfig(precision=0.0, chunk=100)  # every point takes all 3 chunks
    x, y = _grid()
    seen = []
    real = SurfaceStore.flush

    def spy(self):
        seen.append(self.values["train_n"].copy())
        real(self)

    monkeypatch.setattr(SurfaceStore, "flush", spy)
    names = value_names(["train"]) + sampled_names(["train"])
    with SurfaceStore.open(tmp_path / "p.h5", x, y, names, {"id": 1}, flush_seconds=1e9) as s:
        _adaptive(setup, cfg, store=s)
    # flushed once per round: the centre's file, then n = 100, 200, 300 at every point
    rounds = [n for n in seen if np.nansum(n) > 0]
    assert [sorted(set(n.tolist())) for n in rounds[:3]] == [[100.0], [200.0], [300.0]]


def test_precision_note_says_how_precise_a_partial_surface_is(setup, tmp_path):
    ad = _adaptive(setup, SamplingConfig(precision=0.1, chunk=50))
    ad.done[0, 0] = False
    note = precision_note(ad)
    assert note.startswith("partial: 5/6 points at SE ≤ 10% (median ")
    assert note.endswith("% of the full cost")
    full = _adaptive(setup, SamplingConfig(precision=0.1, chunk=50))
    assert precision_note(full).startswith("adaptive, SE ≤ 10% (median ")
    hover = se_hover(full, "train_loss")["text"]
    v, e, n = (full.values[k][1, 2] for k in ("train_loss", "train_loss_se", "train_n"))
    assert hover[1][2] == f"{v:.4g} ± {e:.2g} (1 SE, {n:.0f} images)"
    assert se_hover(full, "train_acc_se") == {}


def test_unsupported_modes_fail_with_one_line(setup):
    with pytest.raises(ValueError, match="--bn recalibrate makes them depend"):
        _adaptive_bad(setup, EvalConfig(bn_mode="recalibrate"))
    with pytest.raises(ValueError, match="--engine naive has no per-image losses"):
        _adaptive_bad(setup, EvalConfig(engine="naive"))
    with pytest.raises(ValueError, match="chunk must be an integer >= 2"):
        SamplingConfig(chunk=1)


def _adaptive_bad(setup, ev: EvalConfig):
    model, center, dirs, data = setup
    x, y = _grid()
    compute_surface(model, dirs, x, y, {"train": data}, ev, center=center, progress=False,
                    sampling=SamplingConfig())


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ck")
    torch.manual_seed(0)  # the same net at every run
    models.save_checkpoint(d / "a.pt", trained_like(models.build("resnet8")),
                           meta={"config": {"dataset": "synthetic", "data_kwargs": DATA_KW}})
    return d / "a.pt"


def test_cli_scan_with_precision_stores_errors_and_resumes_at_a_tighter_precision(ckpt, tmp_path, capsys):
    out = tmp_path / "a.h5"
    args = ["--model", "resnet8", "--checkpoint", str(ckpt), "--dataset", "synthetic", "--x", "-1:1:3", "--y",
            "-1:1:3", "--device", "cpu", "--out", str(out), "--no-progress", "--sample-chunk", "50"]
    main(args + ["--precision", "0.3"])
    loose = read_surface(out)
    assert loose.complete and {"train_loss_se", "train_acc_se", "train_n"} <= set(loose.values)
    main(args + ["--precision", "0.3", "--split", "both", "--out", str(tmp_path / "both.h5")])
    both = read_surface(tmp_path / "both.h5")
    assert both.complete and {"test_loss_se", "test_n"} <= set(both.values)
    np.testing.assert_array_equal(both.values["train_n"], loose.values["train_n"])  # splits sample independently
    assert "adaptive:" in capsys.readouterr().out
    main(args + ["--precision", "0.05"])  # continues from the stored sums
    tight = read_surface(out)
    assert (tight.values["train_n"] >= loose.values["train_n"]).all()
    assert tight.values["train_n"].sum() > loose.values["train_n"].sum()
    plot_main([str(out), "--se", "--out", str(tmp_path / "png")])
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["a_train_loss_contour.png",
                                                                   "a_train_loss_se_contour.png"]
    with pytest.raises(SystemExit) as err:  # another image order is another surface
        main(args + ["--precision", "0.05", "--sample-seed", "1"])
    assert err.value.code == 2
    with pytest.raises(SystemExit) as err:
        main(args + ["--precision", "0.05", "--bn", "batch", "--force"])
    assert err.value.code == 2 and "--bn batch" in capsys.readouterr().err


def test_two_rank_gloo_adaptive_scan_equals_single_process(ckpt, tmp_path):
    args = ["-m", "landscapes.scan", "--model", "resnet8", "--checkpoint", str(ckpt), "--dataset", "synthetic",
            "--x", "-1:1:3", "--y", "-1:1:2", "--device", "cpu", "--no-progress", "--sample-chunk", "50",
            "--precision", "0.2", "--chunk-size", "2", "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one.h5")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          *args, "--out", str(tmp_path / "two.h5")], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = read_surface(tmp_path / "one.h5"), read_surface(tmp_path / "two.h5")
    assert b.attrs["world_size"] == 2
    for name, v in a.values.items():
        np.testing.assert_array_equal(b.values[name], v, err_msg=name)


def test_surface_bench_prints_errors_and_ratio_last_and_records_only_when_asked(ckpt, tmp_path, capsys,
                                                                                monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("surface_bench", REPO / "bench" / "surface_bench.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "surface_bench", bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    results = tmp_path / "RESULTS.md"
    args = ["--model", "resnet8", "--checkpoint", str(ckpt), "--dataset", "synthetic", "--grid", "5", "--subgrid",
            "3", "--samples", "300", "--sample-chunk", "50", "--precision", "0.01", "--results", str(results)]
    assert bench.main(args) == 0 and not results.exists()
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("ratio: ") and float(lines[-1].split()[1]) > 0
    values = {line.split(":")[0]: line.split(":", 1)[1].strip() for line in lines if ":" in line}
    assert 0 <= float(values["p99 relative error"]) < 0.05 and 0 <= float(values["within 2 SE"]) <= 1
    full = next(line for line in lines if line.startswith("full:"))
    assert full.endswith(f"{9 * 300} image-evaluations")  # the 3 x 3 subgrid, measured
    assert any(line.startswith("extrapolated to 5x5") for line in lines)
    assert bench.main(args + ["--record"]) == 0
    header, _, row = results.read_text().strip().splitlines()
    assert header.count("|") == row.count("|") and "| 5x5 (3x3) |" in row


def test_next_stop_first_chunk_then_predicted_size_in_whole_chunks_at_most_doubling():
    cfg = SamplingConfig(precision=0.02, chunk=100)
    assert next_stop(0, np.zeros(3), np.zeros(3), 1000, cfg).tolist() == [100, 100, 100]
    n, mean = 200, 1.0
    var = np.array([0.01, 0.2, 5.0])  # need n* = var / (0.02^2 + var / N): 24, 333, 926
    total = np.full(3, mean * n)
    sumsq = var * (n - 1) + total * mean
    assert next_stop(n, total, sumsq, 1000, cfg).tolist() == [300, 400, 400]
    assert next_stop(600, total * 3, var * 599 + total * 3 * mean, 1000, cfg).tolist() == [700, 700, 1000]
    assert next_stop(n, total, sumsq, 1000, SamplingConfig(precision=0.0, chunk=100)).tolist() == [400] * 3
