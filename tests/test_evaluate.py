"""The landscape engine against the naive per-point loop (every BN mode, batched and loop paths,
1-D and 2-D coordinates), a closed-form landscape, BN folding, the fallbacks for modules vmap or
fx cannot handle, the memory-aware pass-size chooser, the precision report and the bench."""
from __future__ import annotations

import copy
import importlib.util
import math
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import vmap

import models
from landscapes.evaluate import BatchingFallbackWarning, EvalConfig, Evaluator, evaluate_naive, evaluate_points
from landscapes.sizing import choose_pass_size
from landscapes.directions import DirectionConfig, create_directions
from landscapes.fold import fold_batchnorm, fold_state, simplify_global_pool, trace
from models.data import DeviceData, make_synthetic

ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-5



def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, as after training (init has mean 0, var 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))
    return model.eval()


def directions(model: nn.Module, n: int, seed: int = 1, scale: float = 0.5) -> list[dict[str, torch.Tensor]]:
    """Gaussian directions on every parameter with norm ``scale`` x the parameter's (BN included)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        d = {}
        for k, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            d[k] = scale * r * (p.detach().norm() / r.norm().clamp_min(1e-12))
        out.append(d)
    return out


def tiny_data(n: int = 24, size: int = 8, channels: int = 3, seed: int = 0) -> DeviceData:
    x, y = make_synthetic(True, seed=seed, image_size=size, channels=channels, size=n)
    return DeviceData(x, y)


COORDS_2D = torch.tensor([[0.0, 0.0], [0.5, -0.25], [-1.0, 1.0], [1.0, 0.75]], dtype=torch.float64)
COORDS_1D = torch.tensor([[-1.0], [-0.3], [0.0], [0.6]], dtype=torch.float64)

MODELS = {
    "resnet8_A": lambda: models.build("resnet8"),
    "resnet8_B": lambda: models.build("resnet8", shortcut="B"),
    "resnet8_noshort": lambda: models.build("resnet8_noshort"),
    "vgg9": lambda: models.build("vgg9"),
    "densenet_bc40": lambda: models.build("densenet_bc40"),
}


def foldable_bn(model: nn.Module) -> int:
    """BN layers directly after a conv/linear: all of them in ResNets/VGG, only the bottleneck's
    second BN in the pre-activation DenseNet layers."""
    if isinstance(model, models.densenet.DenseNet):
        return sum(isinstance(m, models.densenet.DenseLayer) for m in model.modules())
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def assert_close(loss, acc, ref_loss, ref_acc):
    assert loss.dtype == torch.float64 and acc.dtype == torch.float64
    rel = ((loss - ref_loss).abs() / ref_loss.abs()).max().item()
    assert rel < RTOL, f"loss differs from the naive loop by {rel:.2e} relative"
    assert torch.allclose(acc, ref_acc, rtol=RTOL, atol=0), (acc, ref_acc)


@pytest.mark.parametrize("bn_mode", ["stored", "batch", "recalibrate"])
@pytest.mark.parametrize("name", list(MODELS))
def test_engine_matches_naive_2d(name, bn_mode, device):
    model = trained_like(MODELS[name]())
    center, dirs, data = model.state_dict(), directions(model, 2), tiny_data(20).to(device)
    before = {k: v.clone() for k, v in center.items()}
    config = EvalConfig(bn_mode=bn_mode, stats_batch_size=8, batch_size=8)
    ref_loss, ref_acc = evaluate_naive(model, center, dirs, COORDS_2D, data, config)
    assert ref_loss.std() > 1e-3 * ref_loss.mean(), "the points should see different losses"
    for engine in ("batched", "loop"):
        loss, acc, info = evaluate_points(model, center, dirs, COORDS_2D, data, EvalConfig(
            engine=engine, bn_mode=bn_mode, stats_batch_size=8), return_info=True)
        assert info.engine == engine and not info.notices
        assert info.folded_bn == (foldable_bn(model) if bn_mode != "batch" else 0)
        assert_close(loss, acc, ref_loss, ref_acc)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model is untouched


@pytest.mark.parametrize("bn_mode", ["stored", "batch", "recalibrate"])
@pytest.mark.parametrize("name", list(MODELS))
def test_engine_matches_naive_1d(name, bn_mode, device):
    """One direction; uneven chunks (3 of 4 points, 7 of 18 images) exercise the partial passes."""
    model = trained_like(MODELS[name](), seed=3)
    center, dirs, data = model.state_dict(), directions(model, 1), tiny_data(18).to(device)
    config = EvalConfig(bn_mode=bn_mode, stats_batch_size=6)
    ref = evaluate_naive(model, center, dirs, COORDS_1D, data, config)
    flat = COORDS_1D[:, 0]  # (K,) is accepted for one direction
    assert_close(*evaluate_points(model, center, dirs, flat, data, EvalConfig(
        engine="batched", bn_mode=bn_mode, stats_batch_size=6, points_per_pass=3, batch_size=7)), *ref)


@pytest.mark.parametrize("bn_mode", ["stored", "batch", "recalibrate"])
def test_parallel_cpu_workers_match_naive(bn_mode):
    """Points spread over threads (each with its own module replica) give the per-point results."""
    model = trained_like(models.build("resnet8", shortcut="B"))
    center, dirs, data = model.state_dict(), directions(model, 2), tiny_data(12)
    config = EvalConfig(engine="loop", workers=3, bn_mode=bn_mode, stats_batch_size=4, batch_size=5)
    threads = torch.get_num_threads()
    loss, acc, info = evaluate_points(model, center, dirs, COORDS_2D, data, config, return_info=True)
    assert info.workers == 3 and torch.get_num_threads() == threads
    assert info.fused == (0 if bn_mode == "batch" else 7)  # BN between conv and ReLU blocks the fusion
    assert_close(loss, acc, *evaluate_naive(model, center, dirs, COORDS_2D, data, config))


def test_a_single_point_is_split_over_the_cpu_workers():
    """One point (the centre, or the last open point of an adaptive round) runs its image batches
    on every worker thread, not on one thread with intra-op threads (which stall on a loaded
    machine); the result is the per-point one."""
    model = trained_like(models.build("resnet8"))
    center, dirs, data = model.state_dict(), directions(model, 2), tiny_data(12)
    config = EvalConfig(engine="loop", workers=2, batch_size=3)
    loss, acc, info = evaluate_points(model, center, dirs, COORDS_2D[1:2], data, config, return_info=True)
    assert info.workers == 2
    assert_close(loss, acc, *evaluate_naive(model, center, dirs, COORDS_2D[1:2], data, config))


@pytest.mark.parametrize("points, workers, batches", [(5, 2, 16), (4, 3, 3), (6, 2, 5), (1, 4, 2), (7, 3, 1)])
def test_work_units_cover_each_batch_once_and_balance_the_tail(points, workers, batches):
    from landscapes.workunits import work_units
    units = work_units(points, workers, batches)
    covered = sorted((i, k) for i, first, stop in units for k in range(first, stop))
    assert covered == [(i, k) for i in range(points) for k in range(batches)]
    tail = [stop - first for i, first, stop in units if i >= points - points % workers]
    assert not tail or max(tail) - min(tail) <= 1  # the last round is shared evenly
    assert all(stop - first == batches for _, first, stop in work_units(points, workers, batches, split_tail=False))


def test_recalibrate_with_separate_calibration_subset():
    model = trained_like(models.build("resnet8"))
    center, dirs = model.state_dict(), directions(model, 2)
    data, calib = tiny_data(16), tiny_data(30, seed=5)
    config = EvalConfig(bn_mode="recalibrate", stats_batch_size=8, calibration_samples=20, engine="batched")
    ref = evaluate_naive(model, center, dirs, COORDS_2D, data, config, calibration_data=calib)
    got = evaluate_points(model, center, dirs, COORDS_2D, data, config, calibration_data=calib)
    assert_close(*got, *ref)
    other = evaluate_points(model, center, dirs, COORDS_2D, data, config)  # calibrated on data itself
    assert (other[0] - got[0]).abs().max() > 1e-4


def test_known_landscape_of_a_linear_model(device):
    """Zero weights moved along the bias of class 0: CE at a is log(e^a + C - 1) - a [y = 0] exactly."""
    classes = 4
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, classes))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
    data = DeviceData(torch.randn(10, 3, 2, 2), torch.tensor([0, 1, 2, 3, 0, 0, 1, 2, 3, 0])).to(device)
    bias_dir = torch.zeros(classes)
    bias_dir[0] = 1.0
    coords = torch.tensor([[-2.0], [0.0], [0.5], [3.0]], dtype=torch.float64)
    loss, acc = evaluate_points(model, model.state_dict(), [{"1.bias": bias_dir}], coords, data,
                                EvalConfig(engine="batched"))
    a = coords[:, 0]
    frac0 = (data.y == 0).double().mean().cpu()
    expected = torch.log(torch.exp(a) + classes - 1) - frac0 * a
    assert torch.allclose(loss, expected, rtol=1e-6)
    # a > 0 predicts class 0 everywhere; a < 0 leaves classes 1..3 tied and argmax picks class 1.
    assert acc.tolist() == [20.0, 40.0, 40.0, 40.0]


def test_fold_is_exact_and_vmappable():
    model = trained_like(models.build("vgg9"))
    gm = trace(model)
    pairs = fold_batchnorm(gm)
    assert simplify_global_pool(gm) == 0 and len(pairs) == 8
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in gm.modules())
    x = torch.randn(5, 3, 8, 8)
    folded = fold_state(model.state_dict(), pairs)
    names = set(gm.state_dict())
    gm.load_state_dict({k: v for k, v in folded.items() if k in names})
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), rtol=1e-5, atol=1e-5)
    # fold_state under vmap equals folding each point separately.
    state = model.state_dict()
    key = pairs[0].layer + ".weight"
    stacked = torch.stack([state[key], 2 * state[key]])
    dims = {k: (0 if k == key else None) for k in state}
    batched = vmap(lambda s: fold_state(s, pairs), in_dims=(dims,))({**state, key: stacked})
    second = fold_state({**state, key: 2 * state[key]}, pairs)
    assert torch.allclose(batched[key][1], second[key]) and torch.allclose(batched[key][0], folded[key])


def test_global_pool_rewritten_as_mean():
    model = trained_like(models.build("resnet8"))
    gm = trace(model)
    assert simplify_global_pool(gm) == 1
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-6)


class DataDependent(nn.Module):
    """Python branches on a tensor value: neither fx nor vmap can follow it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) if x.mean() > 0 else F.relu(-x)


class ItemScale(nn.Module):
    """Traceable by fx (``.item()`` becomes a node) but not batchable by vmap."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / (1.0 + x.abs().max().item())


def small_net(special: nn.Module) -> nn.Module:
    return trained_like(nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), special,
                                      nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10)))


@pytest.mark.parametrize("special, folded", [(DataDependent(), 0), (ItemScale(), 2)])
@pytest.mark.parametrize("bn_mode", ["stored", "recalibrate"])
def test_fallback_for_unbatchable_module(special, folded, bn_mode):
    model = small_net(special)
    center, dirs, data = model.state_dict(), directions(model, 2), tiny_data(12)
    config = EvalConfig(engine="batched", bn_mode=bn_mode, stats_batch_size=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss, acc, info = evaluate_points(model, center, dirs, COORDS_2D, data, config, return_info=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, BatchingFallbackWarning)]
    assert any("vmap cannot batch" in m for m in messages)
    assert any("cannot trace" in m for m in messages) == (not folded)  # BN left unfolded is announced
    assert info.engine == "loop" and info.folded_bn == folded and info.traced == bool(folded)
    assert info.notices == messages
    assert_close(loss, acc, *evaluate_naive(model, center, dirs, COORDS_2D, data, config))


def test_fallback_for_adaptive_ode_model():
    """torchdiffeq's dopri5 accepts or rejects steps on tensor values: the engine must loop."""
    model = models.build("odenet_mnist", in_channels=1, width=4).eval()
    center, dirs, data = model.state_dict(), directions(model, 2, scale=0.2), tiny_data(6, channels=1)
    coords = COORDS_2D[:3]
    with pytest.warns(BatchingFallbackWarning, match="vmap cannot batch"):
        loss, acc, info = evaluate_points(model, center, dirs, coords, data, EvalConfig(engine="batched"),
                                          return_info=True)
    assert info.engine == "loop"
    assert_close(loss, acc, *evaluate_naive(model, center, dirs, coords, data))


def test_no_warning_when_batchable():
    model = trained_like(models.build("resnet8"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_points(model, model.state_dict(), directions(model, 2), COORDS_2D[:2], tiny_data(4),
                        EvalConfig(engine="batched"))


@pytest.mark.parametrize("seed", range(30))
def test_pass_size_respects_budget(seed):
    g = torch.Generator().manual_seed(seed)
    n_points, n_images = (int(v) for v in torch.randint(1, 3000, (2,), generator=g))
    point_bytes, image_bytes = (int(v) for v in torch.randint(1, 1 << 20, (2,), generator=g))
    budget = point_bytes + image_bytes + int(torch.randint(0, 1 << 34, (1,), generator=g))
    max_batch = int(torch.randint(1, 2048, (1,), generator=g))
    k, b = choose_pass_size(n_points, n_images, point_bytes, image_bytes, budget, max_batch=max_batch)
    assert 1 <= k <= n_points and 1 <= b <= min(n_images, max_batch)
    assert k * point_bytes + k * b * image_bytes <= budget
    cap = min(n_images, max_batch)
    if point_bytes + cap * image_bytes <= budget:  # full batches fit: as few point passes as memory allows
        most = min(n_points, budget // (point_bytes + cap * image_bytes))
        assert math.ceil(n_points / k) == math.ceil(n_points / most)
        assert math.ceil(n_images / b) == math.ceil(n_images / cap)
    else:  # not even one full batch: one point, as few image batches as memory allows
        assert k == 1
        assert math.ceil(n_images / b) == math.ceil(n_images / ((budget - point_bytes) // image_bytes))


def test_pass_size_shrinks_batch_and_honours_overrides():
    # One point with 1000 images would need 1e6 + 1000 * 1e4 bytes; the budget allows 200 images.
    k, b = choose_pass_size(50, 1000, 10**6, 10**4, 10**6 + 200 * 10**4, max_batch=1000)
    assert (k, b) == (1, 200)
    assert choose_pass_size(50, 1000, 1, 1, 10**12, batch_size=64, points_per_pass=7) == (7, 64)
    k, b = choose_pass_size(10, 1000, 0, 100, 100 * 300, points_per_pass=2, max_batch=1000)
    assert k == 2 and 2 * b * 100 <= 30000
    assert choose_pass_size(10, 1000, 0, 1, 10**9, max_batch=400) == (10, 334)  # 3 even batches
    with pytest.raises(ValueError, match="memory budget"):
        choose_pass_size(10, 10, 1000, 1000, 1500)


def test_memory_budget_limits_the_engine():
    model = trained_like(models.build("resnet8"))
    center, dirs, data = model.state_dict(), directions(model, 2), tiny_data(16)
    coords = torch.cartesian_prod(torch.linspace(-1, 1, 3), torch.linspace(-1, 1, 3)).double()
    roomy = Evaluator(model, center, dirs, data, EvalConfig(engine="batched", memory_budget=1 << 32))
    tight = Evaluator(model, center, dirs, data, EvalConfig(engine="batched", memory_budget=1 << 20))
    (k1, b1), (k2, b2) = roomy.pass_size(len(coords)), tight.pass_size(len(coords))
    assert (k1, b1) == (9, 16) and k2 * b2 < k1 * b1
    assert_close(*tight.evaluate(coords)[:2], *roomy.evaluate(coords)[:2])


class TinyDevice(Evaluator):
    """An Evaluator whose device 'runs out of memory' above 6 image-evaluations per forward."""

    def _chunk(self, nets, c, k_pass, b, batched, images=slice(None)):
        if k_pass * b > 6:
            raise torch.OutOfMemoryError("simulated")
        return super()._chunk(nets, c, k_pass, b, batched, images)


def test_out_of_memory_halves_the_pass_and_continues():
    model = trained_like(models.build("resnet8"))
    center, dirs, data = model.state_dict(), directions(model, 2), tiny_data(12)
    evaluator = TinyDevice(model, center, dirs, data, EvalConfig(engine="batched", points_per_pass=4, batch_size=12))
    with pytest.warns(BatchingFallbackWarning, match="out of memory"):
        loss, acc, info = evaluator.evaluate(COORDS_2D)
    assert info.points_per_pass * info.batch_size <= 6 and info.points_per_pass == 1
    assert_close(loss, acc, *evaluate_naive(model, center, dirs, COORDS_2D, data))
    assert evaluator.pass_size(len(COORDS_2D)) == (1, 6)  # later calls start small


def test_bfloat16_reports_its_deviation(device):
    model = trained_like(models.build("resnet8"))
    center, dirs, data = model.state_dict(), directions(model, 2), tiny_data(16).to(device)
    loss, acc, info = evaluate_points(model, center, dirs, COORDS_2D, data,
                                      EvalConfig(dtype="bfloat16", deviation_points=4), return_info=True)
    ref, _ = evaluate_naive(model, center, dirs, COORDS_2D, data)
    dev = info.deviation
    assert dev is not None and dev["points"] == 4
    assert dev["max_abs_loss"] == pytest.approx((loss - ref).abs().max().item(), rel=1e-3)
    assert 0 < dev["max_rel_loss"] < 0.1  # bf16 was really used, and is close
    assert info.attrs()["eval_deviation_max_abs_loss"] == dev["max_abs_loss"]
    evaluator = Evaluator(model, center, dirs, data, EvalConfig(dtype="bfloat16"))
    standalone = evaluator.deviation(COORDS_2D, *evaluator.evaluate(COORDS_2D)[:2], n_points=4)
    assert standalone["max_abs_loss"] == pytest.approx(dev["max_abs_loss"], rel=1e-6)


def test_bad_input_is_explained():
    model = models.build("resnet8")
    center, dirs, data = model.state_dict(), directions(model, 2), tiny_data(4)
    with pytest.raises(ValueError, match=r"shape \(K, 2\)"):
        evaluate_points(model, center, dirs, torch.zeros(3, 1), data)
    with pytest.raises(ValueError, match="engine must be one of"):
        EvalConfig(engine="fast")
    with pytest.raises(ValueError, match="tf32"):
        evaluate_points(model, center, dirs, torch.zeros(1, 2), data, EvalConfig(dtype="tf32"))
    with pytest.raises(ValueError, match="center lacks"):
        evaluate_points(model, {"conv1.weight": center["conv1.weight"]}, dirs, torch.zeros(1, 2), data)
    with pytest.raises(ValueError, match="stats_batch_size"):
        EvalConfig(stats_batch_size=1)


def _data_root() -> Path | None:
    root = Path(os.environ.get("RESNET_TOOLKIT_DATA", ROOT.parent / "shared" / "datasets"))
    return root if (root / "MNIST" / "raw").is_dir() else None


def test_real_mnist_subset():
    root = _data_root()
    if root is None:
        pytest.skip("MNIST not found (set RESNET_TOOLKIT_DATA)")
    from models.data import load_device_data
    data = load_device_data("mnist", root, "test", samples=48)
    model = trained_like(models.build("resnet8", in_channels=1))
    center, dirs = model.state_dict(), directions(model, 2)
    assert_close(*evaluate_points(model, center, dirs, COORDS_2D, data, EvalConfig(engine="batched")),
                 *evaluate_naive(model, center, dirs, COORDS_2D, data))


def test_bench_runs_both_loops_and_prints_ratio_last(capsys, tmp_path):
    spec = importlib.util.spec_from_file_location("scan_bench", ROOT / "bench" / "scan_bench.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["scan_bench"] = bench
    spec.loader.exec_module(bench)
    coords = bench.grid_coords(3)
    assert coords[:3, 1].eq(-1).all() and coords[:3, 0].tolist() == [-1.0, 0.0, 1.0]  # x fastest
    results = tmp_path / "RESULTS.md"
    args = ["--model", "resnet8", "--grid", "2", "--samples", "12", "--results", str(results)]
    assert bench.main(args) == 0 and not results.exists()  # a plain run records nothing
    capsys.readouterr()
    assert bench.main(args + ["--record"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("ratio: ") and float(lines[-1].split()[1]) > 0
    header, _, row = results.read_text().strip().splitlines()  # a new file gets the header first
    assert header.count("|") == row.count("|") and f"| {lines[-1].split()[1]} |" in row
    diff = next(line for line in lines if line.startswith("max relative loss difference"))
    assert float(diff.split()[-1]) < RTOL


def test_precision_scope_restores_global_flags():
    """float32 means true fp32 on CUDA (cuDNN convs default to TF32); the flags come back after."""
    from landscapes.precision import precision
    before = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    with precision("float32", torch.device("cuda")):
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    with precision("tf32", torch.device("cuda")):
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before


def test_naive_engine_option_is_the_reference():
    model = trained_like(models.build("resnet8"))
    center, dirs, data = model.state_dict(), directions(model, 2), tiny_data(8)
    loss, acc, info = evaluate_points(model, center, dirs, COORDS_2D[:2], data, EvalConfig(engine="naive"),
                                      return_info=True)
    assert info.engine == "naive" and info.folded_bn == 0
    ref = evaluate_naive(model, center, dirs, COORDS_2D[:2], data)
    assert torch.equal(loss, ref[0]) and torch.equal(acc, ref[1])


def test_single_channel_images_stay_channels_last():
    """MNIST-like input: the first convolution's output must come out NHWC (the fast path)."""
    from landscapes.evaluate import channels_last
    x = channels_last(torch.randn(4, 1, 6, 6))
    assert x.stride(1) == 1 and torch.equal(x, x.contiguous())
    w = torch.randn(5, 1, 3, 3).contiguous(memory_format=torch.channels_last)
    assert F.conv2d(x, w, padding=1).is_contiguous(memory_format=torch.channels_last)


class ResidualReadTwice(nn.Module):
    """The block input is read again after the residual add, so the add must not overwrite it."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = F.relu(self.stem(x))
        return F.relu(self.conv(y) + y) * y.sum()


class SharedConv(nn.Module):
    """One conv applied twice, once before a ReLU: fusing it would put the ReLU on both calls."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(F.relu(self.conv(self.stem(x)))) - 1


@pytest.mark.parametrize("name, count", [("resnet8", 7), ("resnet8_B", 7), ("resnet8_noshort", 7),
                                         ("vgg9", 7), ("resnet50", 49), ("densenet_bc40", 18), ("reads_twice", 1),
                                         ("shared_conv", 0)])
def test_fused_convolutions_match_unfused(name, count):
    """conv+add+ReLU fused by oneDNN gives the unfused output, also under autograd, which it leaves
    unfused; a residual read after the add is left alone."""
    from landscapes.fold import FusedConv2d, fuse_conv_pointwise, onednn_fusion_available
    if not onednn_fusion_available():
        pytest.skip("this torch build has no oneDNN")
    model = {"resnet8_B": lambda: models.build("resnet8", shortcut="B"),
             "reads_twice": ResidualReadTwice, "shared_conv": SharedConv}.get(name, lambda: models.build(name))()
    gm = trace(trained_like(model))
    fold_batchnorm(gm)
    fused = copy.deepcopy(gm)
    assert fuse_conv_pointwise(fused) == count
    assert sum(isinstance(m, FusedConv2d) for m in fused.modules()) == count
    assert set(fused.state_dict()) == set(gm.state_dict())  # functional_call keys are unchanged
    x = torch.randn(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = gm(x)
        assert torch.allclose(fused(x), ref, rtol=1e-5, atol=1e-6 * ref.abs().max())
    x.requires_grad_(True)
    fused(x).sum().backward()
    grad = x.grad.clone()
    x.grad = None
    gm(x).sum().backward()
    assert torch.allclose(grad, x.grad, rtol=1e-5, atol=1e-6 * x.grad.abs().max())


def calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """BN running statistics of ``x`` (as after training), so that deep nets at init do not overflow
    in eval mode (resnet1202 with mean 0 / var 1 statistics reaches inf)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model.train()(x)
    return model.eval()


@pytest.mark.parametrize("name", models.names())
def test_every_registry_model_matches_the_naive_loop(name, device):
    """The default engine, with its fallbacks (fx cannot trace the ODE solvers), computes what the
    per-point reference computes on every model the registry builds. In float64, because deep
    plain nets at init are too ill-conditioned for float32 at 1e-5 (against a float64 truth, the
    naive loop's own float32 error reaches 1e-2 on resnet110_noshort); in float64 the engine
    agrees to <= 6e-6 everywhere (1e-10..1e-7 on most). This checks the engine's logic on every
    architecture; float32 agreement to 1e-5 is checked above on well-conditioned models."""
    channels, size = (1, 28) if name.endswith("_mnist") else (3, 8)
    torch.manual_seed(0)
    x, y = torch.randn(6, channels, size, size, dtype=torch.float64), torch.arange(6) % 10
    model = calibrated(models.build(name, in_channels=channels).double(), x)
    dirs = create_directions(model, DirectionConfig(seed=0))
    coords = torch.tensor([[0.0, 0.0], [0.05, -0.02], [-0.1, 0.08]], dtype=torch.float64)
    data = DeviceData(x, y).to(device)
    ref_loss, ref_acc = evaluate_naive(model, model.state_dict(), dirs, coords, data)
    if not ref_loss.max() < 1e30:  # plain1202 = resnet1202_noshort: even float64 keeps no digits
        pytest.skip(f"{name} explodes at init (loss {ref_loss.max():.3g}): no digits left to compare")
    assert ref_loss.std() > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BatchingFallbackWarning)
        loss, acc, info = evaluate_points(model, model.state_dict(), dirs, coords, data, return_info=True)
    assert torch.allclose(loss, ref_loss, rtol=1e-5, atol=0) and torch.equal(acc, ref_acc)
    assert info.traced or any("cannot trace" in n for n in info.notices)


@pytest.mark.parametrize("broken", ["raises", "wrong"])
def test_fusion_that_fails_its_probe_is_switched_off(monkeypatch, broken):
    """A oneDNN build whose fused op errs or disagrees leaves the engine unfused, with a notice."""
    from landscapes.fold import FusedConv2d

    def forward(self, x, residual=None):
        if broken == "raises":
            raise RuntimeError("no such kernel")
        return nn.Conv2d.forward(self, x)  # drops the ReLU and the residual

    monkeypatch.setattr(FusedConv2d, "forward", forward)
    model = trained_like(models.build("resnet8"))
    center, dirs, data = model.state_dict(), directions(model, 2), tiny_data(8)
    with pytest.warns(BatchingFallbackWarning, match="fusion is off"):
        loss, acc, info = evaluate_points(model, center, dirs, COORDS_2D, data, EvalConfig(engine="loop"),
                                          return_info=True)
    assert info.fused == 0
    assert_close(loss, acc, *evaluate_naive(model, center, dirs, COORDS_2D, data))
