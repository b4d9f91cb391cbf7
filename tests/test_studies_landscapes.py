"""Studies 5-9 (ResNet vs noshort landscapes, batch size and flatness, PCA trajectories, Hessian
ratio maps, ODE-Net on MNIST): their --smoke runs end to end on tiny synthetic data, and the numbers
they write agree with the models they describe."""
import json
import math
import re

import numpy as np
import pytest
import torch

from landscapes.hessian import HessianConfig, hessian_eigs
from landscapes.surface import Surface, read_surface
from models.data import load_device_data
from models.train import evaluate
from studies import batch_size_flatness, hessian_ratio, odenet_mnist, resnet_vs_noshort_landscape, trajectory
from studies.cache import load_trained, run_path
from studies.scans import merge_surfaces

SMOKE_DATA = {"image_size": 8, "size": 96}  # studies.common.TRAINING_MODES["smoke"]



@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run cache for the module: the studies share trained nets and direction files as for real."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def rvn(tmp_path_factory, runs):
    """resnet_vs_noshort_landscape's smoke run, shared by the tests that read it."""
    return smoke(resnet_vs_noshort_landscape, tmp_path_factory.mktemp("rvn"), runs)


def smoke(study, tmp_path, runs):
    out = tmp_path / study.NAME
    result = study.main(["--smoke", "--out", str(out), "--runs", str(runs)])
    assert json.loads((out / "results.json").read_text())["study"] == study.NAME
    readme = (out / "README.md").read_text()
    assert "--smoke" in readme
    for line in readme.splitlines():
        if line.startswith("!["):
            assert (out / line[line.index("(") + 1:-1]).stat().st_size > 10_000  # a real PNG
    return out, result


def train_images(samples):
    return load_device_data("synthetic", "", "train", samples, **SMOKE_DATA)


def surface_surface(x, y, z, center):
    return Surface(np.asarray(x, float), np.asarray(y, float), {"train_loss": np.asarray(z, float)},
                   {"train_loss_center": center}, "")


# ---- resnet_vs_noshort_landscape -----------------------------------------------------------

def test_slice_stats_on_known_surfaces():
    x = y = np.linspace(-1, 1, 11)
    X, Y = np.meshgrid(x, y)
    bowl = resnet_vs_noshort_landscape.slice_stats(surface_surface(x, y, X ** 2 + Y ** 2, 0.05))
    assert bowl["convex_fraction"] == 1.0 and bowl["local_minima"] == 1 and bowl["min_loss"] == 0.0
    # x^2 + y^2 <= 1.05 on the 0.2-spaced grid: 6 + 14 + 18 + 18 + 22 + 11 points (by |x| = 1 .. 0)
    assert bowl["basin_fraction"] == pytest.approx(89 / 121)
    saddle = resnet_vs_noshort_landscape.slice_stats(surface_surface(x, y, X ** 2 - Y ** 2, 0.0))
    assert saddle["convex_fraction"] == 0.0 and saddle["local_minima"] == 0
    # four wells at (+-0.6, +-0.6): non-convex between them
    wells = (X ** 2 - 0.36) ** 2 + (Y ** 2 - 0.36) ** 2
    stats = resnet_vs_noshort_landscape.slice_stats(surface_surface(x, y, wells, wells[5, 5]))
    assert stats["local_minima"] == 4 and 0 < stats["convex_fraction"] < 1


def test_resnet_vs_noshort_smoke(rvn):
    out, result = rvn
    assert list(result["nets"]) == ["resnet8", "resnet8_noshort"]  # keyed by registry name
    assert [n["label"] for n in result["nets"].values()] == ["ResNet-8", "ResNet-8-noshort"]
    assert result["grid"] == [5, 5] and result["range"] == [-1, 1, -1, 1] and result["tier"] == "smoke"
    assert all(n["test_error_pct"] == n["final_test_error"] for n in result["nets"].values())
    assert (out / "resnet8_vs_noshort_3d.html").stat().st_size < 200_000  # plotly.js once, beside the page
    assert (out / "plotly.min.js").stat().st_size > 1_000_000
    assert (out / "contours.png").is_file() and (out / "surfaces_3d.png").is_file()
    data = train_images(32)
    planes = []
    for net in result["nets"].values():
        s = read_surface(out / net["surface"])
        assert s.complete and s.values["train_loss"].shape == (5, 5)
        assert np.isfinite(s.values["train_loss"]).all() and (s.values["train_loss"] > 0).all()
        assert ((0 <= s.values["train_acc"]) & (s.values["train_acc"] <= 100)).all()
        # Adaptive counts: below the cap every point saw all 32 images; a point that stopped early
        # lies more than 3 SE above the cap, and the record reports the counts the file holds.
        n, z, se = (s.values[k] for k in ("train_n", "train_loss", "train_loss_se"))
        assert (n[z < 10] == 32).all() and (z[n < 32] - 3 * se[n < 32] > 10).all()
        assert net["sampling"]["images_max"] == n.max() and net["sampling"]["image_evaluations"] == n.sum()
        # The grid's middle point is the trained model itself, on the first 32 training images.
        loss, error = evaluate(load_trained(run_path(net)), data)
        assert s.values["train_loss"][2, 2] == pytest.approx(loss, rel=1e-5)
        assert s.attrs["train_loss_center"] == pytest.approx(loss, rel=1e-5)
        assert s.values["train_acc"][2, 2] == pytest.approx(100 - error)
        assert net["center_loss"] == pytest.approx(loss, rel=1e-5)
        assert 0 <= net["convex_fraction"] <= 1 and 0 <= net["final_test_error"] <= 100
        planes.append(s.attrs["directions_sha256"])
    assert planes[0] != planes[1]  # each net's own filter-normalized directions


def test_merge_surfaces_refuses_other_grids():
    a = surface_surface([0, 1], [0, 1], np.ones((2, 2)), 1.0)
    b = surface_surface([0, 2], [0, 1], np.ones((2, 2)), 1.0)
    assert set(merge_surfaces({"a": a, "A": a}).values) == {"a train_loss", "A train_loss"}
    with pytest.raises(ValueError, match="another grid"):
        merge_surfaces({"a": a, "b": b})


# ---- batch_size_flatness -------------------------------------------------------------------

def test_sharpness_of_a_parabola():
    x = np.linspace(-1, 1, 21)
    s = Surface(x, None, {"train_loss": 0.5 + 3 * x ** 2}, {"train_loss_center": 0.5}, "")
    got = batch_size_flatness.sharpness(s)
    assert got["curvature"] == pytest.approx(6.0)
    assert got["rise_0.5"] == pytest.approx(0.75) and got["rise_1"] == pytest.approx(3.0)


def test_batch_size_flatness_smoke(tmp_path, runs):
    out, result = smoke(batch_size_flatness, tmp_path, runs)
    by = {(r["weight_decay"], r["batch_size"]): r for r in result["runs"]}
    assert set(by) == {(0.0, 16), (0.0, 96), (5e-4, 16), (5e-4, 96)}
    for r in by.values():  # one slice per direction seed, summarized as mean ± sd
        per_seed = r["rise_1_per_seed"]
        assert r["direction_seeds"] == 2 and len(per_seed) == 2 and per_seed[0] != per_seed[1]
        assert r["rise_1"] == pytest.approx(np.mean(per_seed)) and r["rise_1_sd"] == pytest.approx(np.std(per_seed, ddof=1))
    data = train_images(32)
    for wd in (0.0, 5e-4):
        s = read_surface(out / "surfaces" / f"interpolation_wd{wd:g}.h5")
        assert list(s.x) == [-0.5, 0.0, 0.5, 1.0, 1.5] and np.isfinite(s.values["train_loss"]).all()
        # alpha = 0 is the small-batch net and alpha = 1 the large-batch one, each with its BN statistics
        # re-estimated on the 32 training images (checked here with torch's own update_bn).
        for index, batch in ((1, 16), (3, 96)):
            model = load_trained(run_path(by[wd, batch]))
            torch.optim.swa_utils.update_bn([data.x], model)
            loss, error = evaluate(model, data)
            assert s.values["train_loss"][index] == pytest.approx(loss, rel=1e-4)
            assert s.values["train_acc"][index] == pytest.approx(100 - error)
    for r in result["runs"]:
        assert r["weight_norm"] > 0 and math.isfinite(r["curvature"]) and r["steps"] is None
        s = read_surface(out / "surfaces" / f"random_bs{r['batch_size']}_wd{r['weight_decay']:g}.h5")
        assert s.values["train_loss"][2] == pytest.approx(r["center_loss"], rel=1e-6)


# ---- trajectory ----------------------------------------------------------------------------

def test_trajectory_smoke(tmp_path, runs):
    from landscapes.trajectory import read_projection

    out, result = smoke(trajectory, tmp_path, runs)
    runs = list(result["runs"].values())
    assert [(r["batch_size"], r["weight_decay"]) for r in runs] == [(16, 0.0), (96, 0.0), (16, 5e-4), (96, 5e-4)]
    data = train_images(32)
    for tag, r in result["runs"].items():
        assert r["checkpoints"] == 4  # epoch_0 (the initialization) .. epoch_3
        walk = result["random_walk_2pc"][tag]  # the null: as many checkpoints in as many dimensions
        assert (walk["points"], walk["dim"]) == (4, r["random_walk_2pc"]["dim"]) and walk["dim"] > 1000
        assert 0.8 < walk["mean"] < 1 and r["explained_variance_2pc"] == sum(r["explained_variance_ratio"])
        ev = r["explained_variance_ratio"]
        assert all(0 <= v <= 1 for v in ev) and sum(ev) <= 1 + 1e-9 and ev[0] >= ev[1]
        assert 0 <= r["path_in_plane"] <= 1 + 1e-9
        proj = read_projection(out / r["path"])
        # the last checkpoint is the final model: the path ends at the plane's origin
        assert abs(proj.x[-1]) < 1e-6 and abs(proj.y[-1]) < 1e-6
        s = read_surface(out / r["surface"])
        lo, hi = (float(v) for v in r["grid"][0].split(":")[:2])
        assert lo <= proj.x.min() and proj.x.max() <= hi  # the scanned plane covers the path
        loss, _ = evaluate(load_trained(run_path(r)), data)
        assert s.attrs["train_loss_center"] == pytest.approx(loss, rel=1e-5)
        assert np.isfinite(s.values["train_loss"]).all()


# ---- hessian_ratio -------------------------------------------------------------------------

def test_hessian_ratio_smoke(tmp_path, runs, rvn):
    out, result = smoke(hessian_ratio, tmp_path, runs)
    assert result["tier"] == "smoke" and result["seeds"] == [0] and result["train_samples"] == 96
    data = train_images(8)
    for net, scanned in zip(result["nets"], rvn[1]["nets"].values()):
        s = read_surface(out / net["surface"])
        mx, mn = s.values["max_eig"], s.values["min_eig"]
        assert s.complete and np.isfinite(mx).all() and (mx > 0).all() and (mx >= mn).all()
        ratio = np.abs(mn / mx)
        assert (ratio >= 0).all() and net["ratio_center"] == pytest.approx(ratio[1, 1])
        assert 0 <= net["convex_share"] <= 1
        hvps = s.values["hessian_hvps"]
        assert (hvps == np.round(hvps)).all() and (hvps >= 1).all()
        # The map's middle point is the trained model: same extreme eigenvalues as computed directly.
        cfg = hessian_ratio.MODES["smoke"]
        direct = hessian_eigs(load_trained(run_path(net)), data,
                              HessianConfig(max_iter=cfg.max_iter, tol=cfg.tol, batch_size=8, progress=False))
        assert net["max_eig_center"] == pytest.approx(direct.max_eig, rel=1e-4)
        assert net["min_eig_center"] == pytest.approx(direct.min_eig, rel=1e-3, abs=1e-4)
        # ... and the map lies in the plane of resnet_vs_noshort_landscape's contours (same directions).
        assert scanned["label"] == net["label"]
        plane = read_surface(rvn[0] / scanned["surface"])
        assert s.attrs["directions_sha256"] == plane.attrs["directions_sha256"]


# ---- odenet_mnist --------------------------------------------------------------------------

def test_odenet_mnist_smoke_and_reuse(tmp_path, runs, capsys):
    out, result = smoke(odenet_mnist, tmp_path, runs)
    assert not result["reused_compare_json"]
    assert (out / "compare.json").is_file() and (out / "compare.md").is_file()
    rows = {r["model"].split("[")[0]: r for r in result["rows"]}
    assert set(rows) == {"resnet_mnist", "rknet_mnist", "odenet_mnist"}
    assert rows["resnet_mnist"]["nfe_forward_train"] is None
    for name in ("rknet_mnist", "odenet_mnist"):
        for p in result["nfe_vs_epoch"][result["rows"][list(rows).index(name)]["model"]]:
            assert isinstance(p["nfe_forward"], int) and p["nfe_forward"] > 0
    assert rows["rknet_mnist"]["nfe_backward_train"] == 0  # backprop through the solver, no adjoint solve
    assert rows["odenet_mnist"]["nfe_backward_train"] > 0
    assert rows["rknet_mnist"]["params"] == rows["odenet_mnist"]["params"] < rows["resnet_mnist"]["params"]
    euler = result["sweep"]["euler"]
    assert [p["nfe_per_batch"] for p in euler] == [1, 2, 4]  # K Euler steps: K evaluations
    assert all(0 <= p["error"] <= 100 for p in euler + result["sweep"]["dopri5"])
    # the smoke mode runs the cpu tier's paths: crop augmentation, eval-mode training error, two seeds
    assert result["config"]["augment"] == "crop"
    assert result["seeds"] == [0, 1] and (out / "seeds" / "seed_1" / "compare.json").is_file()
    for m in result["models"].values():
        assert len(m["test_error_pct_seeds"]) == 2 and m["test_error_pct"] == pytest.approx(
            sum(m["test_error_pct_seeds"]) / 2) and m["test_error_sd_pct"] >= 0
    readme = (out / "README.md").read_text()
    assert "augmentation crop" in readme and "Training error at the end (eval mode, first 16 training images" in readme
    assert "| solver | NFE per batch | test error % (± binomial SE) |" in readme  # the sweep's errors carry their SE
    # A second run finds its compare.json made with the same settings and reuses it untouched.
    before = (out / "compare.json").read_text()
    again = odenet_mnist.main(["--smoke", "--out", str(out), "--runs", str(runs)])
    assert again["reused_compare_json"] and again["rows"] == result["rows"] and again["models"] == result["models"]
    assert (out / "compare.json").read_text() == before
    # One made with other settings (e.g. a longer odenets.compare run) is never silently replaced.
    doc = json.loads(before)
    doc["config"]["epochs"] = 7
    (out / "compare.json").write_text(json.dumps(doc))
    with pytest.raises(SystemExit) as exit_:
        odenet_mnist.main(["--smoke", "--out", str(out), "--runs", str(runs)])
    assert exit_.value.code == 2 and re.search("other settings.*epochs: 7 there vs 2 here", capsys.readouterr().err)
    assert json.loads((out / "compare.json").read_text())["config"]["epochs"] == 7


def _odenet_doc(errors: dict[str, float], seed: int = 0) -> dict:
    """The parts of a compare.json that describe() reads: one row and a one-epoch history per model."""
    return {"rows": [{"model": m, "params": 1, "test_error": e} for m, e in errors.items()],
            "histories": {m: [{"epoch": 1, "train_loss": 0.1}] for m in errors},
            "config": {"train_eval_samples": None, "augment": None, "epochs": 1, "seed": seed},
            "nfe_vs_epoch": {}, "sweep": {}, "memory_vs_depth": {"rows": []}}


def test_odenet_describe_orders_models_only_beyond_the_se():
    """Test errors of three models on 10,000 images differ by ~0.1 SE-of-difference: no order is
    claimed; a gap beyond twice its SE is; a target met within one SE says so."""
    close = odenet_mnist.describe([_odenet_doc({"resnet_mnist": 0.54, "rknet_mnist": 0.49, "odenet_mnist": 0.46})],
                                  10_000)
    assert "odenet_mnist - resnet_mnist -0.08 ± 0.10" in close
    assert "no order among the models is claimed" in close
    assert "met by every model" in close and "resnet_mnist within one SE of it" in close
    apart = odenet_mnist.describe([_odenet_doc({"resnet_mnist": 0.70, "odenet_mnist": 0.30})], 10_000)
    assert "odenet_mnist - resnet_mnist -0.40 ± 0.10" in apart and "beyond twice its SE" in apart
    assert "**missed** by resnet_mnist" in apart and "within one SE" not in apart  # 0.30 + 0.05 < 0.6


def test_odenet_describe_over_seeds_uses_means_and_the_larger_se():
    """Over seeds a difference of means is compared with the larger of its binomial SE and its
    seed-spread SE, and an order also needs every seed to agree."""
    docs = [_odenet_doc({"resnet_mnist": r, "odenet_mnist": o}, k) for k, (r, o) in enumerate(((0.70, 0.40), (0.74, 0.44)))]
    text = odenet_mnist.describe(docs, 10_000)
    assert "2 seeds" in text and "odenet_mnist - resnet_mnist -0.30 ± 0.08" in text  # binomial SE of the means
    assert "odenet_mnist below resnet_mnist" in text
    assert "**missed** by resnet_mnist at 0.72 ± 0.03% (mean ± sd over 2 seeds)" in text
    flipped = [_odenet_doc({"resnet_mnist": r, "odenet_mnist": o}, k) for k, (r, o) in enumerate(((0.70, 0.30), (0.50, 0.56)))]
    assert "no order among the models is claimed" in odenet_mnist.describe(flipped, 10_000)  # seeds disagree
    under = [_odenet_doc({"resnet_mnist": r, "odenet_mnist": o}, k) for k, (r, o) in enumerate(((0.50, 0.40), (0.58, 0.44)))]
    assert "single seeds above it: none (the highest, resnet_mnist seed 1, at 0.58%)" in odenet_mnist.describe(under, 10_000)


def test_odenet_settings_identity():
    from dataclasses import asdict

    from odenets.compare import CompareConfig

    config = CompareConfig(data_root="a", runs="r1", out="o1", device="auto", **odenet_mnist.MODES["quick"])
    doc = {"config": json.loads(json.dumps(asdict(config))), "device": "cuda" if torch.cuda.is_available() else "cpu"}
    moved = CompareConfig(data_root="b", runs="r2", out="o2", progress=False, device=doc["device"],
                          **odenet_mnist.MODES["quick"])
    assert odenet_mnist.same_settings(doc, moved)  # paths, verbosity and "auto" vs its resolution aside
    other = CompareConfig(data_root="a", runs="r1", out="o1",
                          **{**odenet_mnist.MODES["quick"], "epochs": config.epochs + 1})
    assert not odenet_mnist.same_settings(doc, other)
    assert not odenet_mnist.same_settings({**doc, "device": "cuda:7"}, moved)


def test_depths_runs_a_subset_and_the_readme_says_so(tmp_path, runs):
    """--depths scans only the named pairs; the README's command carries the option, and a depth
    outside the tier is a one-line error (exit 2) before anything runs."""
    out = tmp_path / "rvn"
    result = resnet_vs_noshort_landscape.main(["--smoke", "--depths", "8", "--out", str(out), "--runs", str(runs)])
    assert result["depths"] == [8] and list(result["nets"]) == ["resnet8", "resnet8_noshort"]
    assert "python studies/resnet_vs_noshort_landscape.py --smoke --depths 8" in (out / "README.md").read_text()
    with pytest.raises(SystemExit) as err:
        resnet_vs_noshort_landscape.main(["--smoke", "--depths", "56", "--out", str(tmp_path / "x"), "--runs", str(runs)])
    assert err.value.code == 2


def test_odenet_tiers_keep_their_own_trained_runs(tmp_path, monkeypatch):
    """Run folders are named by model and data set only: a quick run's checkpoints must neither block
    a cpu run with another recipe (a 'different configuration' error) nor be reused by it."""
    monkeypatch.setitem(odenet_mnist.MODES, "quick", {**odenet_mnist.MODES["smoke"], "lr": 0.05})
    runs = tmp_path / "runs"
    first = odenet_mnist.main(["--smoke", "--out", str(tmp_path / "a"), "--runs", str(runs)])
    second = odenet_mnist.main(["--quick", "--out", str(tmp_path / "b"), "--runs", str(runs)])
    assert {r["run"] for r in first["rows"]}.isdisjoint(r["run"] for r in second["rows"])
    assert second["config"]["lr"] == 0.05


def test_batch_size_note_names_the_runs_that_did_not_reach_a_minimum():
    """Li et al. compare minimizers: the README says which runs stopped above the loss target, from the
    eval-mode loss when it was measured."""
    def row(label, running, evaluated):
        return {"label": label, "history": [{"train_loss": running, "train_loss_eval": evaluated}]}

    note = batch_size_flatness.converged_note([row("batch 128", 0.03, 0.004), row("batch 2048", 0.01, 0.05)])
    assert "batch 128 0.004; batch 2048 0.05" in note and "eval mode" in note
    assert "**Not below 0.02**: batch 2048;" in note
    assert "All runs are below 0.02." in batch_size_flatness.converged_note([row("a", 0.5, 0.01)])


def test_trajectory_early_share_of_the_path():
    """A path that walks 3 of its 4 units in the first quarter of 8 epochs: share 0.75."""
    r = {"path_xy": [[0, 3, 3, 3, 3, 3, 3, 3, 4], [0] * 9], "path_epochs": list(range(9))}
    assert trajectory.early_share(r) == pytest.approx(0.75)


def test_landscape_prose_calls_only_an_untrained_net_untrained():
    """The cpu run's noshort-56 (1.9% training error) has a grid minimum 0.5% below its center: near a
    minimum, not 'a net that did not train'. Test-error gaps carry their binomial SE."""
    def rec(depth, residual, train_err, test_err, center, low, convex):
        return {"label": f"{'ResNet' if residual else 'plain'}-{depth}", "depth": depth, "residual": residual,
                "history": [{"train_error": train_err}], "final_test_error": test_err, "test_samples_n": 10_000,
                "center_loss": center, "min_loss": low, "convex_fraction": convex, "local_minima": 1}

    records = [rec(20, True, 0.32, 0.97, 0.0164, 0.0164, 0.75), rec(20, False, 0.48, 0.92, 0.0218, 0.0218, 0.74),
               rec(56, True, 0.84, 1.55, 0.0373, 0.0373, 0.75), rec(56, False, 1.88, 2.65, 0.0859, 0.0855, 0.45)]
    text = resnet_vs_noshort_landscape.describe(records)
    assert "did not train" not in text and "0.5% below" in text
    assert "-0.05 ± 0.14 points at depth 20" in text and "+1.10 ± 0.20 at depth 56" in text
    records[3]["history"][0]["train_error"] = 82.0
    assert "did not train" in resnet_vs_noshort_landscape.describe(records)
