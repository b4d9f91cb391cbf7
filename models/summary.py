"""Parameters and multiply-accumulates (MACs) per model, counted by forward hooks on a real pass.

``python -m models.summary resnet50 --input 3x224x224 --num-classes 1000``
``python -m models.summary --block basic --channels 256`` (one block, as in He et al. Fig. 5)
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
import torch.nn as nn

from .blocks import BLOCKS
from .cli import fail
from .registry import build, describe, names, parse_key_values


@dataclass(frozen=True)
class Summary:
    params: int
    macs: int  # conv and linear multiply-accumulates for one input
    layers: list[tuple[str, str, tuple[int, ...], int, int]]  # name, type, output shape, params, MACs

    def __str__(self) -> str:
        return f"{self.params / 1e6:.3f}M parameters, {self.macs / 1e9:.3f} GMACs"


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def summarize(model: nn.Module, input_size: tuple[int, ...] = (3, 32, 32)) -> Summary:
    """Count parameters and MACs of ``model`` on one input of shape ``input_size`` (C, H, W)."""
    rows: list[tuple[str, str, tuple[int, ...], int, int]] = []

    def hook(module: nn.Module, _inp, out: torch.Tensor, name: str) -> None:
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs = out[0].numel() * (module.in_channels // module.groups) * kh * kw
        else:
            macs = module.in_features * module.out_features
        rows.append((name, type(module).__name__, tuple(out.shape[1:]), count_params(module), macs))

    handles = [m.register_forward_hook(lambda mod, i, o, n=n: hook(mod, i, o, n))
               for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return Summary(count_params(model), sum(r[4] for r in rows), rows)


def parse_input(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(t) for t in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"input size must look like 3x32x32 (CxHxW), got {text!r}")
    return dims


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m models.summary", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="registry name (see --list)")
    p.add_argument("--input", type=parse_input, default=None, help="CxHxW, default 3x32x32")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--kw", nargs="*", default=[], metavar="KEY=VALUE", help="builder options, e.g. shortcut='B'")
    p.add_argument("--layers", action="store_true", help="print every conv/linear layer")
    p.add_argument("--list", action="store_true", help="list model names")
    p.add_argument("--block", choices=sorted(BLOCKS), help="summarize one residual block instead")
    p.add_argument("--channels", type=int, default=256, help="block input/output channels (with --block)")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(describe(n) for n in names()))
        return
    if args.block:
        block_cls = BLOCKS[args.block]
        planes = args.channels // block_cls.expansion
        block = block_cls(args.channels, planes, shortcut="A")
        size = args.input or (args.channels, 56, 56)
        print(f"{args.block} block, {args.channels} channels: {summarize(block, size)}")
        return
    if not args.model:
        p.error("name a model (or use --list / --block)")
    try:
        kwargs = parse_key_values(args.kw)
        size = args.input or (3, 32, 32)
        model = build(args.model, num_classes=args.num_classes, in_channels=size[0], **kwargs)
    except ValueError as err:
        fail(str(err))
    s = summarize(model, size)
    if args.layers:
        for name, kind, shape, params, macs in s.layers:
            print(f"{name:40s} {kind:8s} {str(shape):18s} {params:>12,d} {macs:>15,d}")
    print(f"{args.model} @ {'x'.join(map(str, size))}: {s.params:,d} parameters ({s} )")


if __name__ == "__main__":
    main()
