"""ODE blocks against analytic solutions, solver orders, adjoint vs direct gradients, exact NFE
counters, the Euler stack as the exact discretization, memory tracing, and the comparison CLI."""
import json
import math
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F

import models
from models.data import DataNotFoundError, load_device_data
from models.ode import NFE, ConcatConv2d, EulerStack, ODEBlock, ODEFunc, nfe, ode_blocks
from models.train import evaluate
from odenets.compare import CompareConfig, compare, main, parse_entry, train_config
from odenets.memory import StorageTracker, memory_vs_depth, peak_memory
from odenets.plots import plot_compare
from odenets.solvers import SolverConfig, euler_configs, evaluate_solver, set_solver, sweep, using_solver

REPO = Path(__file__).resolve().parent.parent


class LinearField(nn.Module):
    """dy/dt = A y (rows of y are states), counting its own calls independently of the block."""

    def __init__(self, A: torch.Tensor):
        super().__init__()
        self.A = nn.Parameter(A)
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return y @ self.A.T


def linear_problem(n=4, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = 0.6 * torch.randn(n, n, generator=g, dtype=torch.float64)
    y0 = torch.randn(batch, n, generator=g, dtype=torch.float64)
    return A, y0


def exact(A, y0, T):
    return torch.from_numpy(y0.numpy() @ scipy.linalg.expm(T * A.numpy()).T)


@pytest.mark.parametrize("adjoint", [False, True])
def test_dopri5_matches_matrix_exponential(adjoint):
    A, y0 = linear_problem()
    block = ODEBlock(LinearField(A), T=1.5, method="dopri5", rtol=1e-10, atol=1e-10, adjoint=adjoint)
    out = block(y0)
    assert torch.allclose(out.detach(), exact(A, y0, 1.5), rtol=0, atol=1e-8)


@pytest.mark.parametrize("method,order,steps", [("euler", 1, (16, 32, 64, 128)), ("midpoint", 2, (8, 16, 32, 64)),
                                                ("rk4", 4, (4, 8, 16, 32))])
def test_fixed_grid_solvers_converge_at_their_order(method, order, steps):
    A, y0 = linear_problem()
    truth = exact(A, y0, 1.0)
    errors = []
    for k in steps:
        with torch.no_grad():
            out = ODEBlock(LinearField(A), method=method, steps=k)(y0)
        errors.append((out - truth).abs().max().item())
    slopes = np.diff(np.log(errors)) / np.diff(np.log(steps))
    assert np.allclose(slopes, -order, atol=0.15 * order), slopes


class _Functional(nn.Module):
    """A linear field whose matrix is an input of the graph (for gradcheck)."""

    def __init__(self, A):
        super().__init__()
        self.A = A

    def forward(self, t, y):
        return y @ self.A.T


def test_rk4_gradient_matches_finite_differences():
    A, y0 = linear_problem(n=3, batch=2)

    def solve(A_, y0_):
        return ODEBlock(_Functional(A_), method="rk4", steps=3, T=0.7)(y0_)

    assert torch.autograd.gradcheck(solve, (A.clone().requires_grad_(), y0.clone().requires_grad_()))


class SmoothConvField(nn.Module):
    """tanh(conv_t(y)): a smooth time-dependent conv field (the MNIST field's ReLUs are kinks at
    which adaptive solvers and the adjoint converge only slowly)."""

    def __init__(self, dim):
        super().__init__()
        self.conv = ConcatConv2d(dim, dim)

    def forward(self, t, y):
        return torch.tanh(self.conv(t, y))


@pytest.mark.parametrize("field", ["linear", "conv"])
def test_adjoint_and_direct_gradients_agree(field):
    g = torch.Generator().manual_seed(1)
    if field == "linear":
        A, x = linear_problem()
        func = LinearField(A)
    else:
        func = SmoothConvField(3).double()
        with torch.no_grad():
            for p in func.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
        x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    grads = {}
    for adjoint in (False, True):
        block = ODEBlock(func, method="dopri5", rtol=1e-9, atol=1e-9, adjoint=adjoint)
        xi = x.clone().requires_grad_()
        func.zero_grad()
        (block(xi) ** 2).sum().backward()
        grads[adjoint] = [xi.grad] + [p.grad.clone() for p in func.parameters()]
    for direct, adj in zip(grads[False], grads[True]):
        assert torch.allclose(direct, adj, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("method,per_step", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
@pytest.mark.parametrize("adjoint", [False, True])
def test_nfe_counters_are_exact_for_fixed_grid_solvers(method, per_step, adjoint):
    A, y0 = linear_problem()
    k = 3
    block = ODEBlock(LinearField(A), method=method, steps=k, adjoint=adjoint)
    block(y0.requires_grad_()).sum().backward()
    expected_backward = per_step * k if adjoint else 0  # the adjoint solves backward with the same grid
    assert block.nfe == NFE(forward=per_step * k, backward=expected_backward, vjp=per_step * k)


def test_nfe_counters_split_forward_and_backward_for_adaptive_adjoint():
    A, y0 = linear_problem()
    field = LinearField(A)
    block = ODEBlock(field, method="dopri5", rtol=1e-6, atol=1e-6, adjoint=True)
    out = block(y0)
    forward_calls = field.calls
    out.sum().backward()
    assert block.nfe.forward == forward_calls > 6
    assert block.nfe.backward == field.calls - forward_calls > 0
    assert block.nfe.vjp == block.nfe.backward
    with torch.no_grad():
        block(y0)
    assert block.nfe.backward == block.nfe.vjp == 0  # a no-grad forward resets the batch counters


def test_euler_stack_is_k_explicit_euler_steps_of_the_field():
    torch.manual_seed(0)
    func = ODEFunc(8)
    x = torch.randn(2, 8, 5, 5)
    k, T = 5, 1.3
    stack = EulerStack(func, steps=k, T=T)
    y, h = x, T / k
    for i in range(k):
        y = y + h * func(i * h, y)
    assert torch.equal(stack(x), y)
    assert stack.nfe.forward == k
    solved = ODEBlock(func, T=T, method="euler", steps=k)(x)
    assert torch.allclose(solved, y, atol=1e-5)


def test_one_trained_field_runs_with_any_k_or_solver():
    torch.manual_seed(0)
    ode = models.build("odenet_mnist", in_channels=1, width=8)
    x = torch.randn(3, 1, 14, 14)
    for k in (1, 3):
        tied = models.build("eulernet_mnist", in_channels=1, width=8, steps=k)
        tied.load_state_dict(ode.state_dict())  # same keys: feature.func.*
        with torch.no_grad(), using_solver(ode, SolverConfig("euler", steps=k)):
            assert torch.allclose(ode(x), tied(x), atol=1e-5)
    assert ode_blocks(ode)[0].method == "dopri5"  # restored after the context


def test_parameter_counts_match_chen_et_al():
    def n(name, **kw):
        return sum(p.numel() for p in models.build(name, in_channels=1, **kw).parameters())

    gn = 2 * 64
    stem_conv = (9 * 64 + 64) + gn + 2 * (64 * 64 * 16 + 64) + gn
    stem_res = (9 * 64 + 64) + 2 * (2 * gn + 2 * 64 * 64 * 9 + 64 * 64)
    field = 3 * gn + 2 * (65 * 64 * 9 + 64)
    resblocks = 6 * (2 * gn + 2 * 64 * 64 * 9)
    head = gn + 64 * 10 + 10
    assert n("odenet_mnist") == n("rknet_mnist") == n("eulernet_mnist") == stem_conv + field + head
    assert n("resnet_mnist") == stem_conv + resblocks + head
    assert n("resnet_mnist", downsampling="res") == stem_res + resblocks + head
    assert abs(n("resnet_mnist", downsampling="res") / 1e6 - 0.60) < 0.005  # paper: 0.60M
    assert abs(n("odenet_mnist") / 1e6 - 0.22) < 0.015  # paper: 0.22M (ours 0.208M / 0.233M "res")


def test_registry_models_carry_their_solvers_and_reject_bad_ones():
    rk = ode_blocks(models.build("rknet_mnist", in_channels=1))[0]
    assert (rk.method, rk.steps, rk.adjoint) == ("rk4", 2, False)
    ode = ode_blocks(models.build("odenet_mnist", in_channels=1))[0]
    assert (ode.method, ode.rtol, ode.adjoint) == ("dopri5", 1e-3, True)
    with pytest.raises(ValueError, match="unknown ODE method 'rk45'.*dopri5"):
        models.build("odenet_mnist", method="rk45")
    with pytest.raises(ValueError, match="steps must be a positive integer \\(fixed-grid method 'euler' takes K uniform steps"):
        models.build("odenet_mnist", method="euler")
    with pytest.raises(ValueError, match="downsampling"):
        models.build("odenet_cifar", downsampling="pool")
    cifar = models.build("odenet_cifar", width=8, rtol=0.1, atol=0.1)
    with torch.no_grad():
        assert cifar(torch.randn(2, 3, 32, 32)).shape == (2, 10) and nfe(cifar).forward >= 6


def test_solver_config_validation():
    assert SolverConfig("rk4", step_size=0.25).steps == 4
    assert SolverConfig("euler", step_size=0.1, T=0.5).steps == 5
    with pytest.raises(ValueError, match="does not divide"):
        SolverConfig("euler", step_size=0.3)
    with pytest.raises(ValueError, match="adaptive"):
        SolverConfig("dopri5", steps=4)
    with pytest.raises(ValueError, match="not both"):
        SolverConfig("euler", steps=4, step_size=0.25)
    with pytest.raises(ValueError, match="positive"):
        SolverConfig("dopri5", rtol=0)
    with pytest.raises(ValueError, match="no ODE block"):
        set_solver(models.build("resnet_mnist", in_channels=1, width=8), SolverConfig())


def test_solver_sweep_counts_k_evaluations_and_matches_plain_evaluation():
    torch.manual_seed(0)
    model = models.build("odenet_mnist", in_channels=1, width=8)
    data = load_device_data("synthetic", "unused", "test", channels=1, image_size=12, size=40)
    results, reference = sweep(model, data, euler_configs((1, 2, 4)), batch_size=16, reference_tol=None)
    assert reference is None and results[0].logit_deviation is None
    assert [r.nfe_per_batch for r in results] == [1, 2, 4]
    with using_solver(model, SolverConfig("euler", steps=2)):
        loss, error = evaluate(model, data, batch_size=16)
    assert results[1].loss == pytest.approx(loss) and results[1].error == error
    tol = evaluate_solver(model, data, SolverConfig("dopri5", rtol=1e-2, atol=1e-2), batch_size=40)
    assert tol.nfe_per_batch >= 8 and tol.images == 40


def test_sweep_measures_first_order_convergence_of_euler_on_a_network_field():
    torch.manual_seed(0)
    model = models.build("odenet_mnist", in_channels=1, width=8).double()
    data = load_device_data("synthetic", "unused", "test", channels=1, image_size=12, size=8).to("cpu", torch.float64)
    steps = (16, 32, 64, 128)
    results, reference = sweep(model, data, euler_configs(steps), batch_size=8, reference_tol=1e-10)
    assert reference.logit_deviation == 0 and reference.agreement == 100
    deviation = [r.logit_deviation for r in results]
    slopes = np.diff(np.log(deviation)) / np.diff(np.log(steps))
    assert np.allclose(slopes, -1, atol=0.2), slopes  # the field's ReLUs make it only piecewise smooth


def test_storage_tracker_peak_is_exact_on_known_allocations():
    mib = 2**20

    def work():
        a = torch.empty(mib, dtype=torch.uint8)
        b = torch.empty(2 * mib, dtype=torch.uint8)
        del a
        c = torch.empty(mib, dtype=torch.uint8)
        view = c[16:]  # a view allocates nothing
        d = view + 0  # a new storage of mib - 16 bytes
        return b, d

    report = peak_memory(work)
    assert report.peak_bytes == 2 * mib + mib + (mib - 16)
    with StorageTracker() as tracker:
        kept = work()
    assert tracker.live == 2 * mib + (mib - 16) and kept[0].numel() == 2 * mib


def test_adjoint_memory_is_flat_in_depth_and_backprop_grows_linearly():
    torch.manual_seed(0)
    func = ODEFunc(8)
    x = torch.randn(4, 8, 8, 8)
    state = x.numel() * 4

    def peak(k, adjoint):
        block = ODEBlock(func, method="euler", steps=k, adjoint=adjoint)
        return peak_memory(lambda: block(x.clone().requires_grad_()).sum().backward()).peak_bytes

    direct = {k: peak(k, False) for k in (2, 4, 8)}
    adjoint = {k: peak(k, True) for k in (2, 4, 8)}
    assert abs(adjoint[8] - adjoint[2]) < state / 10  # only the K+1 time-grid floats grow
    per_step = (direct[8] - direct[4]) / 4
    assert per_step == pytest.approx((direct[4] - direct[2]) / 2, rel=0.05)
    assert per_step > 3 * state  # each step keeps several activations of the state's size
    # and through a whole model, via the library function:
    model = models.build("odenet_mnist", in_channels=1, width=8)
    rows = memory_vs_depth(model, torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3]), steps=(2, 8))
    by = {(r.steps, r.adjoint): r for r in rows}
    model_state = 4 * 8 * 3 * 3 * 4  # 16x16 input -> 3x3 feature maps of 8 channels, float32
    assert (by[8, False].peak_bytes - by[2, False].peak_bytes) / 6 > 3 * model_state
    assert abs(by[8, True].peak_bytes - by[2, True].peak_bytes) < model_state / 10
    assert by[8, True].nfe_backward == 8 and by[8, False].nfe_backward == 0


def test_each_seed_trains_into_its_own_run_folder():
    """A run folder is named by model and data set; another seed must not land in (and clash with)
    seed 0's cached run, whose name stays as it was."""
    config = CompareConfig(runs="r", out="o")
    assert Path(train_config(config, "resnet_mnist").out) == Path("r") / "resnet_mnist_mnist"
    seeded = train_config(replace(config, seed=3), "odenet_mnist[rtol=0.1]")
    assert Path(seeded.out) == Path("r") / "odenet_mnist_rtol=0.1_mnist_seed3" and seeded.seed == 3


def test_compare_end_to_end_on_synthetic_data(tmp_path):
    config = CompareConfig(
        models=("resnet_mnist[width=4]", "odenet_mnist[width=4,rtol=0.1,atol=0.1]"), dataset="synthetic",
        data_root=str(tmp_path), data_kwargs={"channels": 1, "image_size": 12, "size": 48}, epochs=2, samples=32,
        test_samples=24, batch_size=16, runs=str(tmp_path / "runs"), out=str(tmp_path / "out"), sweep_samples=16,
        euler_steps=(1, 2), tolerances=(0.1,), memory_steps=(1, 2), memory_batch=4, probe_batch=8, eval_batch=8,
        progress=False, augment="crop", train_eval_samples=16)
    doc = compare(config)
    # each run is train_config's: a run trained on its own beforehand is the one compare() reuses
    for entry in config.models:
        run = models.read_checkpoint(Path(train_config(config, entry).out) / "final.pt")
        assert run["meta"]["config"] == json.loads(json.dumps(asdict(train_config(config, entry))))
        assert run["meta"]["config"]["augment"] == "crop"
        assert all("train_error_eval" in h for h in doc["histories"][entry])
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(doc["rows"]))
    resnet, ode = doc["rows"]
    assert resnet["nfe_forward_train"] is None and ode["nfe_forward_train"] >= 8
    # the table's test error is that of the final checkpoint, evaluated independently
    test = load_device_data("synthetic", "", "test", 24, channels=1, image_size=12, size=48)
    for row in doc["rows"]:
        model, _ = models.load_checkpoint(Path(row["run"]) / "final.pt")
        assert evaluate(model, test)[1] == pytest.approx(row["test_error"])
    assert [r["nfe_per_batch"] for r in doc["sweep"]["euler"]] == [1, 2]
    assert doc["sweep"]["reference"]["logit_deviation"] == 0
    assert doc["sweep"]["euler"][1]["logit_deviation"] < doc["sweep"]["euler"][0]["logit_deviation"]
    assert [p["epoch"] for p in doc["nfe_vs_epoch"][ode["model"]]] == [0, 1, 2]
    assert {(r["steps"], r["adjoint"]) for r in doc["memory_vs_depth"]["rows"]} == {(1, False), (2, False), (1, True), (2, True)}
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "| resnet_mnist[width=4] |" in md and "euler K=2" in md
    figures = plot_compare(tmp_path / "out" / "compare.json")
    assert sorted(f.name for f in figures) == ["accuracy_vs_nfe.png", "memory_vs_depth.png", "nfe_vs_epoch.png"]
    assert all(f.stat().st_size > 5000 for f in figures)


def test_cli_reports_bad_input_as_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--models", "odenet_mnst", "--dataset", "synthetic"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: unknown model 'odenet_mnst'") and "odenet_mnist" in err
    with pytest.raises(ValueError, match="NAME\\[key=value"):
        parse_entry("odenet_mnist[rtol=0.1")


def data_root():
    env = os.environ.get("RESNET_TOOLKIT_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "datasets"
    if not (root / "MNIST" / "raw").is_dir():
        pytest.skip(f"MNIST not found under {root} (set RESNET_TOOLKIT_DATA)")
    return root


def test_real_mnist_through_the_three_paper_models():
    data = load_device_data("mnist", data_root(), "test", samples=16)
    torch.manual_seed(0)
    for name, nfe_forward in (("resnet_mnist", 0), ("rknet_mnist", 8), ("eulernet_mnist", 6)):
        model = models.build(name, in_channels=data.x.shape[1])
        out = model(data.x)
        assert out.shape == (16, 10) and torch.isfinite(out).all()
        F.cross_entropy(out, data.y).backward()
        assert nfe(model).forward == nfe_forward
    assert math.isclose(data.x.mean().item(), 0.0, abs_tol=0.3)  # normalized with MNIST's mean/std


def test_compare_data_root_defaults_to_the_variable_and_never_offers_download(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_TOOLKIT_DATA", str(tmp_path / "shared"))
    config = CompareConfig(out=str(tmp_path / "out"), runs=str(tmp_path / "runs"))
    assert config.data_root == str(tmp_path / "shared")
    with pytest.raises(DataNotFoundError) as err:  # odenets.compare has no --download flag
        compare(config)
    assert str(tmp_path / "shared") in str(err.value) and "--data-root" in str(err.value)
    assert "--download" not in str(err.value)
