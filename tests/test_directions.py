"""Directions: filter normalization, masking, seeding, orthogonalization, target directions and the
reference project's direction-file layout."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import models
from landscapes.directions import (DirectionConfig, cosine, create_directions, direction_file_info, direction_keys,
                                   load_directions, normalize_direction, orthogonalize, random_direction,
                                   save_directions, target_direction)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = models.build("resnet8")
    with torch.no_grad():  # non-trivial BN statistics and affine parameters
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_()
                mod.num_batches_tracked.fill_(7)
    return m.eval()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_filter_normalization_matches_each_filter_and_zeroes_1d():
    m = _model()
    state = m.state_dict()
    d = random_direction(m, "weights", "filter", "biasbn", generator=_gen())
    params = dict(m.named_parameters())
    assert set(d) == {k for k, p in params.items() if p.dim() > 1}  # biases / BN affine left out (zero)
    for key, t in d.items():
        w = state[key]
        d_norms = t.flatten(1).norm(dim=1)
        w_norms = w.flatten(1).norm(dim=1)
        assert len(d_norms) == w.shape[0]  # one norm per output channel / linear row
        torch.testing.assert_close(d_norms, w_norms, rtol=1e-5, atol=1e-7)
        assert not torch.allclose(t, w)  # random, not a copy of the weights


def test_states_directions_skip_bn_statistics_and_counters():
    m = _model()
    d = random_direction(m, "states", "filter", "biasbn", generator=_gen())
    assert not any(k.endswith(("running_mean", "running_var", "num_batches_tracked", "bias")) for k in d)
    d_all = random_direction(m, "states", "filter", "none", generator=_gen())
    assert any(k.endswith("running_var") for k in d_all)
    assert not any(k.endswith("num_batches_tracked") for k in d_all)  # integer buffers never move
    for key, t in d_all.items():  # per-entry filters of 1-D tensors: |d_i| == |w_i|
        if t.dim() == 1:
            torch.testing.assert_close(t.abs(), m.state_dict()[key].abs(), rtol=1e-5, atol=1e-7)


def test_other_norms_and_ignore_modes():
    m = _model()
    state = m.state_dict()
    raw = random_direction(m, "weights", "none", "none", generator=_gen(3))
    layer = random_direction(m, "weights", "layer", "biasbn", generator=_gen(3))
    weight = random_direction(m, "weights", "weight", "biasbn", generator=_gen(3))
    copy = random_direction(m, "weights", "filter", "copy", generator=_gen(3))
    for key, t in layer.items():
        torch.testing.assert_close(t.norm(), state[key].norm(), rtol=1e-5, atol=0)
        torch.testing.assert_close(weight[key], raw[key] * state[key])  # same draws, scaled elementwise
        torch.testing.assert_close(t / t.norm(), raw[key] / raw[key].norm())
    for key, p in m.named_parameters():
        if p.dim() == 1:  # the reference's behaviour without --xignore: the entry is the weight itself
            assert torch.equal(copy[key], p.detach())
    with pytest.raises(ValueError, match="norm must be one of filter, layer, weight, none"):
        normalize_direction(torch.ones(2, 2), torch.ones(2, 2), "filterr")


def test_seeding_is_deterministic_and_axes_are_independent():
    m = _model()
    a = create_directions(m, DirectionConfig(seed=5))
    b = create_directions(m, DirectionConfig(seed=5))
    one_d = create_directions(m, DirectionConfig(seed=5, ndim=1))
    other = create_directions(m, DirectionConfig(seed=6))
    key = "layer1.0.conv1.weight"
    assert torch.equal(a[0][key], b[0][key]) and torch.equal(a[1][key], b[1][key])
    assert torch.equal(one_d[0][key], a[0][key])  # a 1-D scan's x is the 2-D scan's x
    assert not torch.allclose(a[0][key], other[0][key])
    assert not torch.allclose(a[0][key], other[1][key]) and not torch.allclose(a[1][key], other[0][key])
    assert abs(cosine(a[0], a[1])) < 0.05  # independent Gaussians in ~80k dimensions


def test_orthogonalize_keeps_filter_norms_and_zeroes_the_cosine():
    m = _model()
    x, y = create_directions(m, DirectionConfig(orthogonalize=True))
    _, y_raw = create_directions(m, DirectionConfig())
    assert abs(cosine(x, y)) < 1e-6
    assert abs(cosine(x, y_raw)) > 1e-4  # it did change something
    state = m.state_dict()
    for key, t in y.items():
        torch.testing.assert_close(t.flatten(1).norm(dim=1), state[key].flatten(1).norm(dim=1), rtol=1e-5, atol=1e-7)
    # the global projection used for norm "none" is exact too
    yn = orthogonalize(random_direction(m, "weights", "none", "biasbn", generator=_gen(1)), x, "none")
    assert abs(cosine(x, yn)) < 1e-6
    same = create_directions(m, DirectionConfig(same_dir=True))
    assert all(torch.equal(same[0][k], same[1][k]) for k in same[0])
    with pytest.raises(ValueError, match="contradict"):
        DirectionConfig(same_dir=True, orthogonalize=True)


def test_target_direction_reaches_the_second_model():
    m1, m2 = _model(0), _model(1)
    d = target_direction(m1, m2, "states")
    s1, s2 = m1.state_dict(), m2.state_dict()
    for key in s1:
        if s1[key].is_floating_point():
            torch.testing.assert_close(s1[key] + d[key], s2[key], rtol=0, atol=1e-6)
        else:
            assert key not in d
    w = target_direction(m1, m2, "weights")
    assert set(w) == {k for k, _ in m1.named_parameters()}
    with pytest.raises(ValueError, match="identical"):
        target_direction(m1, m1)
    with pytest.raises(ValueError, match="same architecture"):
        target_direction(m1, models.build("resnet20"))


@pytest.mark.parametrize("dir_type", ["weights", "states"])
def test_round_trip_in_the_reference_layout(tmp_path, dir_type):
    m = _model()
    dirs = create_directions(m, DirectionConfig(dir_type=dir_type, seed=2))
    path = save_directions(tmp_path / "d.h5", dirs, m, dir_type, meta={"seed": 2})
    keys = direction_keys(m, dir_type)
    with h5py.File(path, "r") as f:  # what the reference code reads: one dataset per tensor, in order
        assert set(f) == {"xdirection", "ydirection"}
        assert sorted(f["xdirection"], key=int) == [str(i) for i in range(len(keys))]
        for i, key in enumerate(keys):
            arr = f["xdirection"][str(i)][()]
            assert arr.shape == tuple(m.state_dict()[key].shape)
            expected = dirs[0][key].numpy() if key in dirs[0] else 0
            np.testing.assert_array_equal(arr, expected)
    loaded = load_directions(path, m)  # dir_type read from the file
    assert len(loaded) == 2
    for a, b in zip(dirs, loaded):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert direction_file_info(path)["attrs"]["seed"] == 2


def test_reads_reference_files_including_pre_041_state_dicts(tmp_path):
    """Files written by h5_util.write_list: datasets "0".."n-1", no attributes, no dir_type."""
    m = _model()
    rng = np.random.default_rng(0)
    state = m.state_dict()
    params = [p.detach().numpy() for p in m.parameters()]
    xs = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
    with h5py.File(tmp_path / "theirs_weights.h5", "w") as f:
        g = f.create_group("xdirection")
        for i, a in enumerate(xs):
            g.create_dataset(str(i), data=a)
    (x,) = load_directions(tmp_path / "theirs_weights.h5", m)  # inferred: parameters count
    for (key, _), a in zip(m.named_parameters(), xs):
        np.testing.assert_array_equal(x[key].numpy(), a)
    # a 'states' file from PyTorch 0.4.0: no num_batches_tracked entries
    float_keys = [k for k, v in state.items() if v.is_floating_point()]
    sx = {k: rng.standard_normal(tuple(state[k].shape)).astype(np.float32) for k in float_keys}
    with h5py.File(tmp_path / "theirs_states.h5", "w") as f:
        for axis in ("xdirection", "ydirection"):
            g = f.create_group(axis)
            for i, k in enumerate(float_keys):
                g.create_dataset(str(i), data=sx[k])
    dirs = load_directions(tmp_path / "theirs_states.h5", m)
    assert len(dirs) == 2 and set(dirs[0]) == set(float_keys)
    np.testing.assert_array_equal(dirs[1]["bn1.running_var"].numpy(), sx["bn1.running_var"])
    with pytest.raises(ValueError, match="another model"):
        load_directions(tmp_path / "theirs_weights.h5", models.build("resnet20"))
