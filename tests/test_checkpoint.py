"""Checkpoints: round trip, weights_only safety, reference-layout files, clear errors."""
import collections
import hashlib

import pytest
import torch

import models
from models.checkpoint import CheckpointError, detect_shortcut, normalization_of
from models.fileio import atomic_path, atomic_torch_save, sha256


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    model = models.build("resnet8", shortcut="B", num_classes=7, in_channels=1)
    for m in model.modules():  # non-trivial running stats
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    models.save_checkpoint(tmp_path / "ck.pt", model, meta={"dataset": "mnist", "epoch": 3},
                           extra={"optimizer": {"lr": torch.tensor(0.1)}})
    loaded, meta = models.load_checkpoint(tmp_path / "ck.pt")
    assert same_state(loaded.state_dict(), model.state_dict())
    assert meta["model"] == "resnet8" and meta["epoch"] == 3 and meta["model_kwargs"]["shortcut"] == "B"
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(loaded.eval()(x), model.eval()(x))
    assert models.read_checkpoint(tmp_path / "ck.pt")["extra"]["optimizer"]["lr"] == 0.1


class Payload:
    def __reduce__(self):
        return (print, ("this would run",))


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"state_dict": models.build("resnet8").state_dict(), "evil": Payload()}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        models.load_checkpoint(tmp_path / "bad.pt", name="resnet8")


def test_corrupt_and_missing_files_name_the_problem(tmp_path):
    models.save_checkpoint(tmp_path / "ok.pt", models.build("resnet8"))
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        models.load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.load_checkpoint(tmp_path / "nope.pt")


def test_random_bytes_directories_and_devices_get_their_own_message(tmp_path):
    """Before: random bytes were 'Python objects ... could run code', a directory 'does not exist'."""
    (tmp_path / "noise.pt").write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                                      dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint") as err:
        models.read_checkpoint(tmp_path / "noise.pt")
    assert "run code" not in str(err.value)
    with pytest.raises(CheckpointError, match="is a directory"):
        models.read_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="not a regular file"):
        models.read_checkpoint("/dev/null")
    torch.save(models.build("resnet8").state_dict(), tmp_path / "legacy.t7", _use_new_zipfile_serialization=False)
    assert models.read_checkpoint(tmp_path / "legacy.t7")["state_dict"].keys() == models.build("resnet8").state_dict().keys()


def test_mismatched_model_is_refused_with_keys(tmp_path):
    torch.save(models.build("resnet20").state_dict(), tmp_path / "r20.t7")
    with pytest.raises(CheckpointError, match="missing.*layer1.3"):
        models.load_checkpoint(tmp_path / "r20.t7", name="resnet32")
    models.save_checkpoint(tmp_path / "r20.pt", models.build("resnet20"))
    with pytest.raises(CheckpointError, match="holds a 'resnet20'"):
        models.load_checkpoint(tmp_path / "r20.pt", name="resnet56")


@pytest.mark.parametrize("wrap", ["dict", "bare", "dataparallel"])
def test_reference_layout_loads_and_detects_option_b(tmp_path, wrap):
    """tomgoldstein/loss-landscape saves option-B ResNets as {'state_dict': ...} or bare dicts."""
    ref = models.build("resnet20", shortcut="B").eval()
    state = collections.OrderedDict(ref.state_dict())
    if wrap == "dataparallel":
        state = collections.OrderedDict((f"module.{k}", v) for k, v in state.items())
    torch.save({"state_dict": state, "acc": 91.2, "epoch": 300} if wrap == "dict" else state, tmp_path / "m.t7")
    model, meta = models.load_checkpoint(tmp_path / "m.t7", name="resnet20")
    assert isinstance(model.layer2[0].shortcut, torch.nn.Sequential) and len(model.layer2[0].shortcut) == 2
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(model.eval()(x), ref(x))
    if wrap == "dict":
        assert meta["acc"] == 91.2


def test_metadata_less_file_says_the_architecture_is_unverified(tmp_path, capsys):
    """An option-A ResNet's keys equal its _noshort twin's: the name given decides, with a notice."""
    torch.save(models.build("resnet8").state_dict(), tmp_path / "r8.t7")
    model, meta = models.load_checkpoint(tmp_path / "r8.t7", name="resnet8_noshort")
    assert model.layer1[0].shortcut is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'resnet8_noshort'" in err and "unverified" in err
    assert "'loss-landscape'" in err and normalization_of(meta) == "loss-landscape"
    models.save_checkpoint(tmp_path / "ours.pt", models.build("resnet8"))
    _, meta = models.load_checkpoint(tmp_path / "ours.pt")
    assert capsys.readouterr().err == "" and normalization_of(meta) == "torchvision"
    assert normalization_of({"model": "resnet8", "normalization": "loss-landscape"}) == "loss-landscape"


def test_reference_noshort_and_missing_name(tmp_path):
    torch.save(models.build("resnet20_noshort").state_dict(), tmp_path / "p.t7")
    with pytest.raises(CheckpointError, match="name='resnet56'"):
        models.load_checkpoint(tmp_path / "p.t7")
    model, _ = models.load_checkpoint(tmp_path / "p.t7", name="resnet20_noshort")
    assert model.layer1[0].shortcut is None


def test_detect_shortcut():
    assert detect_shortcut(models.build("resnet20", shortcut="B").state_dict()) == "B"
    assert detect_shortcut(models.build("resnet20", shortcut="C").state_dict()) == "C"
    assert detect_shortcut(models.build("resnet20", shortcut="A").state_dict()) is None


def test_file_utilities_write_whole_files_or_none(tmp_path):
    target = tmp_path / "sub" / "x.pt"
    atomic_torch_save({"w": torch.arange(3)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.arange(3))
    assert sha256(target) == hashlib.sha256(target.read_bytes()).hexdigest()
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "y.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]  # neither y.txt nor its temporary
