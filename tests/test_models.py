"""Model registry: parameter counts against the papers, shortcut options, plain twins."""
import argparse

import numpy as np
import pytest
import torch
import torchvision

import models
from models.blocks import BasicBlock, ZeroPadShortcut
from models.checks import positive_int
from models.cli import add_threads_argument, fail, set_threads
from models.summary import summarize


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,millions,digits", [
    ("resnet20", 0.27, 2), ("resnet32", 0.46, 2), ("resnet44", 0.66, 2), ("resnet56", 0.85, 2),
    ("resnet110", 1.7, 1), ("resnet1202", 19.4, 1)])
def test_option_a_parameter_counts_match_he_et_al_table6(name, millions, digits):
    assert round(n_params(models.build(name)) / 1e6, digits) == millions


def test_resnet50_matches_torchvision_exactly():
    ours = n_params(models.build("resnet50", num_classes=1000))
    assert ours == n_params(torchvision.models.resnet50()) == 25_557_032


@pytest.mark.parametrize("depth", [18, 34, 101])
def test_imagenet_resnets_match_torchvision(depth):
    theirs = getattr(torchvision.models, f"resnet{depth}")()
    assert n_params(models.build(f"resnet{depth}", num_classes=1000)) == n_params(theirs)


def shortcut_convs(model):
    return [n for n, m in model.named_modules() if n.endswith("shortcut.0") and isinstance(m, torch.nn.Conv2d)]


def test_shortcut_options_a_b_c_and_none():
    a, b, c = (models.build("resnet56", shortcut=s) for s in "ABC")
    plain = models.build("resnet56_noshort")
    assert shortcut_convs(a) == [] and sum(isinstance(m, ZeroPadShortcut) for m in a.modules()) == 2
    assert shortcut_convs(b) == ["layer2.0.shortcut.0", "layer3.0.shortcut.0"]
    assert len(shortcut_convs(c)) == 27  # every block projects
    assert all(blk.shortcut is None for blk in plain.modules() if isinstance(blk, BasicBlock))
    assert n_params(plain) == n_params(a) < n_params(b) < n_params(c)
    x = torch.randn(2, 3, 32, 32)
    for m in (a, b, c, plain):
        assert m.eval()(x).shape == (2, 10)


def test_zero_pad_shortcut_keeps_identity_and_pads_zero_channels():
    x = torch.randn(2, 16, 8, 8)
    out = ZeroPadShortcut(16, 32, 2)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


def zero_residual_branches(model):
    for blk in model.modules():
        if isinstance(blk, BasicBlock):
            torch.nn.init.zeros_(blk.bn2.weight)
            torch.nn.init.zeros_(blk.bn2.bias)


def test_noshort_really_has_no_skip():
    """With every residual branch zeroed, a ResNet still passes its input through the skips, while
    its plain twin outputs the same logits whatever the input."""
    torch.manual_seed(0)
    res, plain = models.build("resnet20").eval(), models.build("resnet20_noshort").eval()
    plain.load_state_dict(res.state_dict())  # same layers, same names
    zero_residual_branches(res)
    zero_residual_branches(plain)
    x1, x2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    assert torch.allclose(plain(x1), plain(x2))
    assert not torch.allclose(res(x1), res(x2))
    # the first block of a ResNet with a zero branch is exactly relu(identity)
    blk = res.layer1[0]
    h = torch.relu(torch.randn(2, 16, 8, 8))
    assert torch.equal(blk(h), h)


@pytest.mark.parametrize("name", ["resnet20", "resnet20_noshort", "plain20", "wrn56_2", "vgg9", "vgg16",
                                  "densenet_bc40", "resnet18", "resnet50"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_every_family_runs_on_mnist_and_cifar_shapes(name, shape):
    model = models.build(name, in_channels=shape[0]).eval()
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, 10)
    assert model.spec.name == name


def test_cifar_stem_option_for_imagenet_resnets():
    m = models.build("resnet18", stem="cifar")
    assert m.conv1.kernel_size == (3, 3) and m.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_squeeze_excitation_adds_gates_only():
    plain, se = models.build("resnet20"), models.build("resnet20", se=True)
    gates = sum(n_params(m) for m in se.modules() if type(m).__name__ == "SqueezeExcite")
    assert gates > 0 and n_params(se) == n_params(plain) + gates


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="resnet56") as err:
        models.build("resnet65")
    assert "Did you mean" in str(err.value)


def test_bad_options_say_what_is_accepted():
    with pytest.raises(ValueError, match="6n\\+2"):
        models.build("resnet20", depth=21)
    with pytest.raises(ValueError, match="'A', 'B', 'C' or None"):
        models.build("resnet20", shortcut="D")
    with pytest.raises(ValueError, match="no shortcuts"):
        models.build("resnet20_noshort", shortcut="B")
    assert models.resolve_name("resnet56", noshort=True) == "resnet56_noshort"


def test_summary_reproduces_published_sizes():
    r50 = summarize(models.build("resnet50", num_classes=1000), (3, 224, 224))
    assert 3.8e9 <= r50.macs <= 4.1e9 and 25.0e6 <= r50.params <= 26.0e6
    vgg = summarize(models.build("vgg16", num_classes=1000, head="imagenet"), (3, 224, 224))
    assert 15.3e9 <= vgg.macs <= 15.5e9 and round(vgg.params / 1e6) == 138
    basic = n_params(models.blocks.BasicBlock(256, 256))
    bottleneck = n_params(models.blocks.Bottleneck(256, 64))
    assert abs(basic - 2 * (3 * 3 * 256 + 1) * 256) / basic < 0.01  # ~1.2M
    assert 69_000 <= bottleneck <= 71_000  # ~70K: 17x fewer


def test_summary_macs_of_a_single_conv_are_exact():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, stride=2), torch.nn.Flatten(),
                               torch.nn.Linear(8 * 5 * 5, 4))
    s = summarize(conv, (3, 10, 10))
    assert s.macs == 8 * 5 * 5 * 3 * 3 * 3 + 8 * 5 * 5 * 4


def test_positive_int_accepts_counts_and_names_what_it_refuses():
    positive_int("epochs", 3)
    positive_int("epochs", np.int64(3))
    positive_int("samples", None, allow_none=True)
    for bad in (0, -2, True, 2.0, None, "3"):
        with pytest.raises(ValueError, match=r"^epochs must be a positive integer; got "):
            positive_int("epochs", bad)
    with pytest.raises(ValueError, match=r"^samples must be a positive integer or None \(None: all\); got 0$"):
        positive_int("samples", 0, allow_none=True, note="None: all")


def test_cli_usage_errors_exit_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        fail("unknown model 'x'; try --list")
    assert exit_.value.code == 2 and capsys.readouterr().err == "error: unknown model 'x'; try --list\n"
    p = argparse.ArgumentParser(prog="tool")
    add_threads_argument(p)
    assert p.parse_args([]).threads is None and p.parse_args(["--threads", "3"]).threads == 3
    with pytest.raises(SystemExit) as exit_:
        p.parse_args(["--threads", "0"])
    assert exit_.value.code == 2 and "--threads: expected a positive number of threads, got '0'" in capsys.readouterr().err
    before = torch.get_num_threads()
    try:
        set_threads(None)
        assert torch.get_num_threads() == before
        set_threads(before + 1)
        assert torch.get_num_threads() == before + 1
    finally:
        torch.set_num_threads(before)
