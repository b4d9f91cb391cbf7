"""Hessian eigenvalues by Lanczos / ARPACK / power iteration against the exact Hessian of a tiny
residual network, and Hessian-vector products against finite differences of gradients."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from landscapes.hessian import (HessianConfig, HessianOperator, extreme_eigs, hessian_eigs, hessian_map,
                                lanczos_extremes, power_extremes)
from models.data import DeviceData
from models.resnet import ResNet


def tiny_net(seed: int = 0) -> ResNet:
    """A two-stage residual net with BN: ~350 parameters, 318 of them in weights of dim > 1."""
    torch.manual_seed(seed)
    net = ResNet("basic", [1, 1], [2, 4], num_classes=3, in_channels=1).double().eval()
    g = torch.Generator().manual_seed(seed + 1)
    for name, buf in net.named_buffers():  # non-trivial running statistics, as after training
        if name.endswith("running_mean"):
            buf.copy_(0.3 * torch.randn(buf.shape, generator=g, dtype=buf.dtype))
        elif name.endswith("running_var"):
            buf.copy_(0.5 + torch.rand(buf.shape, generator=g, dtype=buf.dtype))
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def tiny_data(n: int = 24, seed: int = 0) -> DeviceData:
    g = torch.Generator().manual_seed(seed)
    return DeviceData(torch.randn(n, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(3, (n,), generator=g))


def exact_hessian(net, data, params: str = "weights") -> torch.Tensor:
    """torch.func.hessian of the mean loss as a function of the flat selected parameters."""
    state = dict(net.state_dict())
    names = [n for n, p in net.named_parameters() if params == "all" or p.dim() > 1]
    shapes = [state[n].shape for n in names]
    flat0 = torch.cat([state[n].reshape(-1) for n in names])

    def loss(flat):
        parts = dict(zip(names, [t.view(s) for t, s in zip(flat.split([math.prod(s) for s in shapes]), shapes)]))
        return F.cross_entropy(functional_call(net, {**state, **parts}, (data.x,)), data.y)

    return torch.func.jacrev(torch.func.jacrev(loss))(flat0)  # reverse-over-reverse: fast on CPU



@pytest.fixture(scope="module")
def problem():
    net, data = tiny_net(), tiny_data()
    H = exact_hessian(net, data)
    return net, data, H, torch.linalg.eigvalsh(H)


def test_hvp_matches_exact_hessian_and_finite_differences(problem):
    net, data, H, _ = problem
    cfg = HessianConfig(dtype="float64", batch_size=10)  # 3 uneven batches: the mean must be weighted right
    op = HessianOperator(net, data, cfg)
    assert op.dim == H.shape[0] == 318
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    hv = op.matvec(v)
    torch.testing.assert_close(hv, H @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.matvec(v), hv, rtol=1e-12, atol=0)  # the retained graph is reusable

    # central differences of the gradient along v: (g(w + hv) - g(w - hv)) / 2h = Hv + O(h^2)
    h = 1e-5
    base = dict(net.state_dict())

    def grad_at(t: float) -> torch.Tensor:
        moved = dict(base)
        for name, dv in zip(op.names, op.split(v)):
            moved[name] = base[name] + t * dv
        return HessianOperator(net, data, cfg, moved).loss_and_grad()[1]

    fd = (grad_at(h) - grad_at(-h)) / (2 * h)
    torch.testing.assert_close(hv, fd, rtol=1e-6, atol=1e-8)


def test_reuse_graph_off_gives_same_products(problem):
    net, data, _, _ = problem
    v = torch.randn(318, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    a = HessianOperator(net, data, HessianConfig(dtype="float64")).matvec(v)
    b = HessianOperator(net, data, HessianConfig(dtype="float64", reuse_graph=False)).matvec(v)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", ["lanczos", "arpack"])
def test_extreme_eigenvalues_match_exact_hessian(problem, method):
    net, data, _, evals = problem
    assert evals[0] < 0 < evals[-1]  # an indefinite Hessian: both ends are informative
    cfg = HessianConfig(method=method, dtype="float64", tol=1e-9, max_iter=318, progress=False)
    res = hessian_eigs(net, data, cfg)
    assert res.converged
    np.testing.assert_allclose(res.max_eig, float(evals[-1]), rtol=1e-4)
    np.testing.assert_allclose(res.min_eig, float(evals[0]), rtol=1e-4)
    assert res.hvps < 318  # fewer products than a dense Hessian would cost


def test_power_iteration_matches_exact_hessian(problem):
    """Power iteration converges too, with many more products than Lanczos (which is why
    Lanczos is the default)."""
    net, data, H, evals = problem
    cfg = HessianConfig(method="power", dtype="float64", tol=1e-6, max_iter=5000)
    res = extreme_eigs(lambda v: H @ v, H.shape[0], cfg)
    lanczos = extreme_eigs(lambda v: H @ v, H.shape[0], HessianConfig(dtype="float64", tol=1e-6))
    assert res.converged and lanczos.converged
    for r in (res, lanczos):
        np.testing.assert_allclose([r.max_eig, r.min_eig], [float(evals[-1]), float(evals[0])], rtol=1e-4)
    assert lanczos.hvps < res.hvps


def test_all_params_includes_bn_and_bias(problem):
    net, data, _, _ = problem
    H = exact_hessian(net, data, params="all")
    evals = torch.linalg.eigvalsh(H)
    res = hessian_eigs(net, data, HessianConfig(params="all", dtype="float64", tol=1e-9, max_iter=400))
    assert res.extra["dim"] == H.shape[0] == sum(p.numel() for p in net.parameters())
    np.testing.assert_allclose([res.max_eig, res.min_eig], [float(evals[-1]), float(evals[0])], rtol=1e-4)


def test_lanczos_on_known_spectrum_with_crowded_bottom():
    """A diagonal operator with a cluster near zero, like a trained net's bulk: the smallest
    eigenvalue (-0.01 next to -0.009) is still found, to within the residual bound."""
    rng = np.random.default_rng(0)
    d = np.concatenate([[50.0, 20.0, -0.01, -0.009], rng.uniform(-0.008, 1.0, 2000)])
    D = torch.from_numpy(d)
    v0 = torch.from_numpy(rng.standard_normal(d.size))
    res = lanczos_extremes(lambda v: D * v, d.size, v0, tol=1e-6, max_iter=400)
    assert res.converged
    assert abs(res.max_eig - 50.0) <= max(res.residuals[0], 1e-9)
    assert abs(res.min_eig + 0.01) <= res.residuals[1] + 1e-9
    assert res.residuals[1] <= 1e-6 * 50.0


def test_lanczos_does_not_stop_in_the_bulk():
    """A trained net's spectrum: one large outlier, a wide bulk of near-zero eigenvalues, and an
    isolated negative lambda_min. After 4 products the bottom Ritz value sits in the bulk (-0.013)
    with a residual below tol * lambda_max; a test relative to lambda_max alone stops there."""
    rng = np.random.default_rng(1)
    d = np.concatenate([[47.7, 30.0, -0.78], rng.uniform(-0.03, 0.05, 20000)])
    D = torch.from_numpy(d)
    for seed in range(3):
        v0 = torch.from_numpy(np.random.default_rng(seed).standard_normal(d.size))
        v0[2] *= 1e-3  # lambda_min's eigenvector barely present in the start: it emerges late
        res = lanczos_extremes(lambda v: D * v, d.size, v0, tol=1e-3, max_iter=100)
        assert res.converged
        assert res.max_eig == pytest.approx(47.7, rel=1e-6)
        assert res.min_eig == pytest.approx(-0.78, rel=1e-4)
        # power iteration is far slower here, but must not claim a bulk value as lambda_min
        power = power_extremes(lambda v: D * v, d.size, v0, tol=1e-3, max_iter=150)
        assert power.max_eig == pytest.approx(47.7, rel=1e-3)
        assert not power.converged or power.min_eig == pytest.approx(-0.78, rel=1e-3)


def test_operator_leaves_model_untouched_and_map_moves_along_directions(problem):
    net, data, _, _ = problem
    before = {k: v.clone() for k, v in net.state_dict().items()}
    center = dict(net.state_dict())
    d = {"linear.weight": torch.randn(3, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)}
    cfg = HessianConfig(dtype="float64", tol=1e-9, max_iter=318, progress=False)
    got = hessian_map(net, center, [d], torch.tensor([[0.0], [0.7]]), data, cfg)
    moved = dict(center)
    moved["linear.weight"] = center["linear.weight"] + 0.7 * d["linear.weight"]
    net2 = tiny_net()
    net2.load_state_dict(moved)
    evals = torch.linalg.eigvalsh(exact_hessian(net2, data))
    np.testing.assert_allclose([got[1].max_eig, got[1].min_eig], [float(evals[-1]), float(evals[0])], rtol=1e-4)
    assert got[0].max_eig != pytest.approx(got[1].max_eig)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="method must be one of"):
        HessianConfig(method="eig")
    with pytest.raises(ValueError, match="tol"):
        HessianConfig(tol=0)


def test_hessian_scan_writes_a_resumable_surface_the_plot_reads(tmp_path):
    """End to end on a synthetic checkpoint: the map's values equal hessian_eigs at the grid points,
    a rerun computes nothing, and the plot draws the |min/max| ratio from the file."""
    import models
    from landscapes.directions import load_directions
    from landscapes.reference import point_state
    from landscapes.hessian import HessianScanConfig, hessian_scan
    from landscapes.plot import plot_surface_file
    from landscapes.scan import ScanConfig
    from models.data import load_device_data

    torch.manual_seed(0)
    model = models.build("resnet8").eval()
    ck = tmp_path / "final.pt"
    models.save_checkpoint(ck, model, meta={"dataset": "synthetic"})
    kw = {"image_size": 8, "size": 16}
    scan_cfg = ScanConfig(model="resnet8", checkpoint=str(ck), dataset="synthetic", data_kwargs=kw, samples=6,
                          x="-0.5:0.5:2", y="0:0:1", out=str(tmp_path / "h.h5"), progress=False)
    hcfg = HessianConfig(tol=1e-4, max_iter=60, progress=False)
    s = hessian_scan(HessianScanConfig(scan_cfg, hcfg))
    assert s.values["max_eig"].shape == (1, 2) and s.done.all()
    assert s.attrs["hessian_method"] == "lanczos" and s.attrs["samples"] == 6

    data = load_device_data("synthetic", "data", "train", samples=6, **kw)
    dirs = load_directions(s.attrs["dir_file"], model)
    center = dict(model.state_dict())
    for ix, a in enumerate(s.x):
        want = hessian_eigs(model, data, hcfg, point_state(center, dirs, [a, 0.0]))
        assert s.values["max_eig"][0, ix] == pytest.approx(want.max_eig, rel=1e-5)
        assert s.values["min_eig"][0, ix] == pytest.approx(want.min_eig, rel=1e-5)
    before = (tmp_path / "h.h5").read_bytes()
    again = hessian_scan(HessianScanConfig(scan_cfg, hcfg))  # resumes: nothing left to compute
    np.testing.assert_array_equal(again.values["max_eig"], s.values["max_eig"])
    # ... and leaves a committed map byte for byte as it was (no empty history entry, no new date)
    assert len(again.attrs["history"]) == 1 and (tmp_path / "h.h5").read_bytes() == before
    with pytest.raises(ValueError, match="other arguments"):
        hessian_scan(HessianScanConfig(scan_cfg, HessianConfig(tol=1e-2, progress=False)))
    out = plot_surface_file(tmp_path / "h.h5", kinds=["heat"], html=False)
    assert out[0].name == "h_eig_ratio_heat.png" and out[0].stat().st_size > 10_000
