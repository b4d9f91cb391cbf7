"""PCA directions of a training path: on synthetic checkpoints lying in a known plane, the
directions span that plane, explain all the variance, and projecting the checkpoints gives back
their known coordinates; files round-trip in the reference layout."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import models
from landscapes.directions import load_directions
from landscapes.trajectory import (PCAConfig, TrajectoryConfig, difference_matrix, main, pca_directions,
                                   pca_trajectory, project, read_projection)

# Path coordinates (a_i, b_i) of the checkpoints in the (e1, e2) plane; the last one is the final model.
A = np.array([3.0, 2.2, 1.0, 1.5, 0.4, -0.3, 0.1, 0.0])
B = np.array([-1.0, 0.5, 1.6, 0.2, 0.9, 0.3, -0.2, 0.0])



@pytest.fixture(scope="module")
def path():
    """resnet8 (1 channel) with checkpoints final + a_i e1 + b_i e2, e1/e2 random and not
    orthogonal over the weights of dim > 1; 1-D tensors (biases, BN) get extra random drift that
    ignore=biasbn must discard."""
    torch.manual_seed(0)
    model = models.build("resnet8", in_channels=1)
    final = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    names = [n for n, p in model.named_parameters()]
    e1 = {n: torch.randn(final[n].shape, generator=g) for n in names if final[n].dim() > 1}
    e2 = {n: 0.6 * e1[n] + torch.randn(final[n].shape, generator=g) for n in e1}  # cos(e1, e2) ~ 0.5
    drift = {n: 0.1 * torch.randn(final[n].shape, generator=g) for n in names if final[n].dim() == 1}
    states = []
    for i, (a, b) in enumerate(zip(A, B)):
        s = dict(final)
        for n in e1:
            s[n] = final[n] + a * e1[n] + b * e2[n]
        if i < len(A) - 1:
            for n, d in drift.items():
                s[n] = final[n] + (i + 1) * d
        states.append(s)
    return model, final, states, e1, e2, drift


def flat(d, keys):
    return torch.cat([d[k].double().reshape(-1) for k in keys])


def test_pca_directions_span_the_known_plane(path):
    model, final, states, e1, e2, _ = path
    pca = pca_directions(states, final, model)
    dx, dy = pca.directions
    assert set(dx) == set(dy) == set(e1)  # biases and BN ignored (absent = zero)
    keys = sorted(e1)
    X, Y = flat(dx, keys), flat(dy, keys)
    assert abs(float(X.norm()) - 1) < 1e-6 and abs(float(Y.norm()) - 1) < 1e-6 and abs(float(X @ Y)) < 1e-6
    D = torch.stack([X, Y], 1)
    for e in (e1, e2):  # e lies in span(dx, dy): its least-squares residual vanishes
        v = flat(e, keys)
        coef = torch.linalg.lstsq(D, v[:, None]).solution
        assert float((v - (D @ coef)[:, 0]).norm()) < 1e-5 * float(v.norm())
    assert pca.explained_variance_ratio.sum() == pytest.approx(1.0, abs=1e-6)
    assert pca.explained_variance_ratio[0] >= pca.explained_variance_ratio[1] > 0


def test_explained_variance_matches_numpy_svd(path):
    """Against an independent dense SVD of the centered offsets (what sklearn's PCA computes)."""
    model, final, states, *_ = path
    names = [n for n, _ in model.named_parameters()]
    for ignore in ("biasbn", "none"):
        M = difference_matrix(states, final, names, ignore).double().numpy()
        s = np.linalg.svd(M - M.mean(0), compute_uv=False)
        pca = pca_directions(states, final, model, PCAConfig(ignore=ignore))
        np.testing.assert_allclose(pca.singular_values, s[:2], rtol=1e-6)
        np.testing.assert_allclose(pca.explained_variance_ratio, s[:2] ** 2 / (s ** 2).sum(), rtol=1e-6)
        np.testing.assert_allclose(pca.explained_variance, s[:2] ** 2 / (len(states) - 1), rtol=1e-6)
    # ignore="none" also moves the drifting 1-D tensors: the path leaves the plane, a third component appears
    assert pca.explained_variance_ratio.sum() < 1 - 1e-4
    assert any(final[n].dim() == 1 for n in pca.directions[0])


def test_projection_reproduces_known_coordinates(path):
    model, final, states, e1, e2, _ = path
    proj = project(states, final, [e1, e2], "lstsq")
    np.testing.assert_allclose(proj.x, A, atol=1e-5)
    np.testing.assert_allclose(proj.y, B, atol=1e-5)
    # the points lie in the plane (the 1-D drift is outside the space the directions move)
    assert proj.residual.max() < 1e-5 * proj.distance.max()
    keys = sorted(e1)
    true = [float(flat({k: a * e1[k] + b * e2[k] for k in keys}, keys).norm()) for a, b in zip(A, B)]
    np.testing.assert_allclose(proj.distance, true, rtol=1e-5)
    # the reference's "cos" projection is wrong for non-orthogonal directions
    cos = project(states, final, [e1, e2], "cos")
    assert np.abs(cos.x - A).max() > 0.1


def test_pca_coordinates_are_an_isometric_image_of_the_path(path):
    """In the PCA plane the projected points keep every pairwise distance of the true points."""
    model, final, states, e1, e2, _ = path
    pca = pca_directions(states, final, model)
    p = project(states, final, pca.directions, "lstsq")
    c = project(states, final, pca.directions, "cos")
    np.testing.assert_allclose(p.x, c.x, rtol=1e-5, atol=1e-6)  # orthonormal: both methods agree
    keys = sorted(e1)
    true = np.stack([flat({k: a * e1[k] + b * e2[k] for k in keys}, keys).numpy() for a, b in zip(A, B)])
    got = np.stack([p.x, p.y], 1)
    d_true = np.linalg.norm(true[:, None] - true[None], axis=-1)
    d_got = np.linalg.norm(got[:, None] - got[None], axis=-1)
    np.testing.assert_allclose(d_got, d_true, rtol=1e-5, atol=1e-4)
    assert p.x[-1] == pytest.approx(0, abs=1e-9) and p.y[-1] == pytest.approx(0, abs=1e-9)
    for v in (p.x, p.y):  # sign convention: the largest coordinate is positive
        assert v[np.abs(v).argmax()] > 0


def test_uncentered_pca_spans_the_plane_too(path):
    model, final, states, e1, e2, _ = path
    pca = pca_directions(states, final, model, PCAConfig(center=False))
    proj = project(states, final, pca.directions)
    assert proj.residual.max() < 1e-5 * proj.distance.max()  # the path lies in the plane
    np.testing.assert_allclose(np.hypot(proj.x, proj.y), proj.distance, rtol=1e-5)


def test_run_directory_end_to_end_files(path, tmp_path, capsys):
    model, final, states, e1, _, _ = path
    run = tmp_path / "run"
    for i, s in enumerate(states):
        model.load_state_dict(s)
        models.save_checkpoint(run / f"epoch_{i + 1}.pt", model, meta={"epoch": i + 1, "dataset": "mnist"})
    models.save_checkpoint(run / "final.pt", model, meta={"epoch": len(states), "dataset": "mnist"})
    model.load_state_dict(final)

    result = pca_trajectory(TrajectoryConfig(run_dir=str(run), progress=False))
    assert result.dir_file == run / "pca_directions.h5"
    assert result.proj_file == run / "pca_directions_trajectory.h5"
    params = list(model.parameters())
    with h5py.File(result.dir_file, "r") as f:  # the reference layout, readable by its code
        assert sorted(f["xdirection"], key=int) == [str(i) for i in range(len(params))]
        for i, p in enumerate(params):
            arr = f["xdirection"][str(i)][()]
            assert arr.shape == tuple(p.shape)
            if p.dim() == 1:
                assert not arr.any()
        np.testing.assert_allclose(f["explained_variance_ratio_"][()], result.pca.explained_variance_ratio)
        assert f["singular_values_"].shape == f["explained_variance_"].shape == (2,)
    loaded = load_directions(result.dir_file, model)
    for got, want in zip(loaded, result.pca.directions):
        assert set(got) == set(want)
        for k in want:
            torch.testing.assert_close(got[k], want[k])
    proj = read_projection(result.proj_file)
    np.testing.assert_allclose(proj.x, result.projection.x)
    assert list(proj.epochs) == list(range(1, len(states) + 1))
    assert proj.attrs["dir_file"] == str(result.dir_file) and proj.attrs["model"] == "resnet8"

    main([str(run), "--no-progress", "--dir-file", str(tmp_path / "d.h5")])
    out = capsys.readouterr().out
    assert "explained variance" in out and "--dir-file" in out
    assert (tmp_path / "d_trajectory.h5").is_file()


def test_errors_say_what_is_wrong(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path), "--no-progress"])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(ValueError, match="ignore must be one of"):
        PCAConfig(ignore="bn")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_projection(tmp_path / "missing.h5")


def test_random_walk_null_matches_a_direct_simulation_and_the_known_limit():
    """The Wishart shortcut draws no dim-sized vector but must agree with walking in dim dimensions;
    for many steps in high dimension two components hold ~6/pi^2 (1 + 1/4) = 76% (Antognini &
    Sohl-Dickstein 2018), the figure the trajectory study's PC1+PC2 shares are compared with."""
    from landscapes.trajectory import random_walk_variance

    mean, sd = random_walk_variance(10, 300, repeats=400, seed=0)
    rng = np.random.default_rng(1)
    shares = []
    for _ in range(400):
        walk = np.vstack([np.zeros(300), np.cumsum(rng.standard_normal((9, 300)), axis=0)])
        walk -= walk.mean(axis=0)
        s2 = np.sort(np.linalg.svd(walk, compute_uv=False) ** 2)[::-1]
        shares.append(s2[:2].sum() / s2.sum())
    assert mean == pytest.approx(np.mean(shares), abs=3 * sd / np.sqrt(400) * 2)
    assert sd == pytest.approx(np.std(shares), rel=0.2)
    limit, _ = random_walk_variance(200, 10**6, repeats=5)
    assert limit == pytest.approx(6 / np.pi ** 2 * (1 + 1 / 4), abs=0.01)
    with pytest.raises(ValueError, match="points"):
        random_walk_variance(2, 100)
