"""Data sets as device tensors: real torchvision file formats, normalization, subsets, errors,
batch augmentation and the synthetic data set."""

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from models.data import (DATASETS, DataNotFoundError, DeviceData, augment_batch, default_data_root, resolve_augment,
                         load_device_data, load_split, make_synthetic, normalization_constants)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write_cifar(root: Path, monkeypatch: pytest.MonkeyPatch, hundred: bool) -> dict[str, np.ndarray]:
    """Tiny CIFAR files in the real pickle layout; torchvision's md5 lists are pointed at them."""
    rng = np.random.default_rng(0)
    cls = tvd.CIFAR100 if hundred else tvd.CIFAR10
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    label_key, classes = ("fine_labels", 100) if hundred else ("labels", 10)
    names = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    train_x, train_y = [], []
    for name in names:
        x, y = rng.integers(0, 256, (4, 3072), dtype=np.uint8), rng.integers(0, classes, 4).tolist()
        train_x.append(x)
        train_y += y
        (folder / name).write_bytes(pickle.dumps({"data": x, label_key: y}))
    test_x, test_y = rng.integers(0, 256, (3, 3072), dtype=np.uint8), rng.integers(0, classes, 3).tolist()
    (folder / cls.test_list[0][0]).write_bytes(pickle.dumps({"data": test_x, label_key: test_y}))
    meta_key = cls.meta["key"]
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps({meta_key: [str(i) for i in range(classes)]}))
    monkeypatch.setattr(cls, "train_list", [[n, _md5(folder / n)] for n in names])
    monkeypatch.setattr(cls, "test_list", [[cls.test_list[0][0], _md5(folder / cls.test_list[0][0])]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / cls.meta["filename"])})
    return {"train_x": np.concatenate(train_x), "train_y": np.array(train_y),
            "test_x": test_x, "test_y": np.array(test_y)}


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickles_load_normalized_in_nchw(name, tmp_path, monkeypatch):
    raw = _write_cifar(tmp_path, monkeypatch, hundred=name == "cifar100")
    info = DATASETS[name]
    for train, key in ((True, "train"), (False, "test")):
        x, y = load_split(name, tmp_path, train)
        n = len(raw[f"{key}_y"])
        assert x.shape == (n, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert y.tolist() == raw[f"{key}_y"].tolist()
        # CIFAR rows are R plane, G plane, B plane, each row-major 32x32.
        planes = torch.from_numpy(raw[f"{key}_x"]).view(n, 3, 32, 32).float() / 255
        expected = (planes - torch.tensor(info.mean).view(1, 3, 1, 1)) / torch.tensor(info.std).view(1, 3, 1, 1)
        torch.testing.assert_close(x, expected)
    first, _ = load_split(name, tmp_path, True, samples=3)
    assert torch.equal(first, load_split(name, tmp_path, True)[0][:3])


def test_missing_cifar_says_where_and_how(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_split("cifar10", tmp_path, True)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert os.path.join(str(tmp_path), "cifar-10-batches-py") in msg
    assert "data_batch_1" in msg and "test_batch" in msg and "--download" in msg


def test_missing_data_names_data_root_and_the_variable_and_download_only_when_offered(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_split("mnist", tmp_path, True)
    assert "--data-root" in str(err.value) and "$RESNET_TOOLKIT_DATA" in str(err.value)
    with pytest.raises(DataNotFoundError) as err:
        load_device_data("mnist", tmp_path, "test", offer_download=False)
    assert "--data-root" in str(err.value) and "--download" not in str(err.value)


def test_default_data_root_is_the_environment_variable_else_data(monkeypatch):
    monkeypatch.setenv("RESNET_TOOLKIT_DATA", "/somewhere/datasets")
    assert default_data_root() == "/somewhere/datasets"
    monkeypatch.delenv("RESNET_TOOLKIT_DATA")
    assert default_data_root() == "data"


def test_loss_landscape_normalization_uses_the_original_constants(tmp_path, monkeypatch):
    """tomgoldstein/loss-landscape standardizes CIFAR-10 with its own rounded constants."""
    raw = _write_cifar(tmp_path, monkeypatch, hundred=False)
    ours, theirs = normalization_constants("cifar10"), normalization_constants("cifar10", "loss-landscape")
    assert ours == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert theirs[0] == pytest.approx([125.3 / 255, 123.0 / 255, 113.9 / 255])
    assert theirs[1] == pytest.approx([63.0 / 255, 62.1 / 255, 66.7 / 255])
    planes = torch.from_numpy(raw["test_x"]).view(-1, 3, 32, 32).float() / 255
    xs = {}
    for norm, (mean, std) in (("torchvision", ours), ("loss-landscape", theirs)):
        xs[norm], _ = load_split("cifar10", tmp_path, False, normalization=norm)
        expected = (planes - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        torch.testing.assert_close(xs[norm], expected)
    # The two differ by ~1e-3 per input: small, but it shifts the loss of a trained net.
    gap = (xs["torchvision"] - xs["loss-landscape"]).abs().max().item()
    assert 1e-4 < gap < 1e-2
    with pytest.raises(ValueError, match="only for cifar10"):
        load_split("mnist", tmp_path, False, normalization="loss-landscape")
    with pytest.raises(ValueError, match="valid: torchvision, loss-landscape"):
        normalization_constants("cifar10", "imagenet")


def test_corrupt_cifar_is_reported_as_corrupt(tmp_path, monkeypatch):
    _write_cifar(tmp_path, monkeypatch, hundred=False)
    monkeypatch.undo()  # real md5 lists: our tiny files no longer match
    with pytest.raises(DataNotFoundError, match="corrupt"):
        load_split("cifar10", tmp_path, True)


def test_unknown_dataset_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match="cifar10, cifar100, mnist, synthetic"):
        load_split("imagenet", tmp_path, True)


def _candidates(img: torch.Tensor, pad: int = 4) -> list[tuple[int, int, bool, torch.Tensor]]:
    padded = torch.nn.functional.pad(img, (pad,) * 4)
    _, h, w = img.shape
    return [(dy, dx, flip, crop.flip(-1) if flip else crop)
            for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for flip in (False, True)
            for crop in [padded[:, dy:dy + h, dx:dx + w]]]


def test_augment_is_a_zero_padded_shifted_maybe_flipped_copy():
    x = torch.randn(48, 3, 32, 32)
    out = augment_batch(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    seen = []
    for img, aug in zip(x, out):
        match = [(dy, dx, flip) for dy, dx, flip, crop in _candidates(img) if torch.equal(crop, aug)]
        assert len(match) == 1, "each output must be exactly one crop/flip of the zero-padded input"
        seen.append(match[0])
    assert {f for _, _, f in seen} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in seen}) > 10 and any((dy, dx) != (4, 4) for dy, dx, _ in seen)
    assert abs(out.mean() - x.mean()) < 0.05 and 0.8 < out.std() / x.std() <= 1.0


def test_augment_is_deterministic_per_generator_and_keeps_memory_format():
    x = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    a = augment_batch(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, augment_batch(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, augment_batch(x, torch.Generator().manual_seed(4)))
    assert a.is_contiguous(memory_format=torch.channels_last)


def test_crop_shifts_without_flipping_and_pads_with_the_given_fill():
    # Chen et al.'s MNIST recipe: RandomCrop(28, padding=4) on raw pixels, so the border is black.
    x = torch.randn(64, 2, 12, 12)
    fill = (-0.4, 1.5)
    out = augment_batch(x, torch.Generator().manual_seed(2), flip=False, fill=fill)
    offset = torch.tensor(fill).view(2, 1, 1)
    shifts = set()
    for img, aug in zip(x, out):
        match = [(dy, dx) for dy, dx, flip, crop in _candidates(img - offset) if not flip and torch.equal(crop + offset, aug)]
        assert len(match) == 1, "each output must be one unflipped crop of the input padded with `fill`"
        shifts.add(match[0])
    assert len(shifts) > 10
    for c, value in enumerate(fill):  # pixels shifted in from the pad hold exactly the channel's fill
        assert (out[:, c] == torch.tensor(value)).sum() > 100 and not (out[:, 1 - c] == torch.tensor(value)).any()


def test_crop_and_flip_draws_are_unchanged_by_the_crop_option():
    # Cached CIFAR runs were trained with crop+flip: the same generator must give the same images.
    x = torch.randn(16, 3, 8, 8)
    a = augment_batch(x, torch.Generator().manual_seed(5))
    b = augment_batch(x, torch.Generator().manual_seed(5), flip=True, fill=None)
    assert torch.equal(a, b)


def test_augmentation_resolves_per_data_set_and_rejects_unknown_names():
    assert resolve_augment("cifar10", None) == "crop+flip" and resolve_augment("mnist", None) == "none"
    assert resolve_augment("mnist", "crop") == "crop"
    with pytest.raises(ValueError, match="valid: none, crop, crop\\+flip"):
        resolve_augment("mnist", "rotate")
    data = DeviceData(torch.zeros(4, 1, 2, 2), torch.arange(4))
    with pytest.raises(ValueError, match="unknown augment"):
        next(data.batches(2, augment="rotate", generator=torch.Generator()))


def test_batches_cover_the_data_once_in_seeded_order():
    data = DeviceData(torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10))
    plain = list(data.batches(4))
    assert [len(y) for _, y in plain] == [4, 4, 2] and torch.equal(torch.cat([y for _, y in plain]), data.y)
    assert [len(y) for _, y in data.batches(4, drop_last=True)] == [4, 4]
    order = [torch.cat([y for _, y in data.batches(3, shuffle=True, generator=torch.Generator().manual_seed(s))])
             for s in (0, 0, 1)]
    assert torch.equal(order[0], order[1]) and not torch.equal(order[0], order[2])
    assert sorted(order[0].tolist()) == list(range(10))
    for xb, yb in data.batches(3, shuffle=True, generator=torch.Generator()):
        assert torch.equal(xb.view(-1).long(), yb)  # images stay with their labels
    with pytest.raises(ValueError, match="Generator"):
        next(data.batches(3, shuffle=True))


def test_synthetic_is_seeded_and_class_dependent():
    x, y = make_synthetic(True, seed=0, image_size=16, size=600)
    x2, y2 = make_synthetic(True, seed=0, image_size=16, size=600)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, make_synthetic(True, seed=1, image_size=16, size=600)[0])
    xt, yt = make_synthetic(False, seed=0, image_size=16, size=300)
    assert not torch.equal(xt, x[:300])
    assert abs(x.mean()) < 0.05 and abs(x.std() - 1) < 0.05
    # Train and test share class templates: nearest train class mean classifies test images.
    means = torch.stack([x[y == c].mean(0) for c in range(10)]).flatten(1)
    pred = torch.cdist(xt.flatten(1), means).argmin(1)
    assert (pred == yt).float().mean() > 0.9
    data = load_device_data("synthetic", "unused", "test", samples=5, image_size=8, channels=1)
    assert data.x.shape == (5, 1, 8, 8) and len(data) == 5


def _data_root() -> Path | None:
    env = os.environ.get("RESNET_TOOLKIT_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"
    return root if (root / "MNIST" / "raw").is_dir() else None


@pytest.mark.skipif(_data_root() is None, reason="MNIST not found (set RESNET_TOOLKIT_DATA)")
def test_real_mnist_sizes_and_normalization():
    x, y = load_split("mnist", _data_root(), True)
    assert x.shape == (60000, 1, 28, 28) and y.shape == (60000,)
    assert abs(x.mean()) < 0.01 and abs(x.std() - 1) < 0.01
    assert set(y.unique().tolist()) == set(range(10))
    assert len(load_device_data("mnist", _data_root(), "test")) == 10000
