"""Stochastic depth measured: survival probabilities of a model's blocks, and the training-time
saving of batch-mode dropping (dropped branches are not computed) against constant depth.

    python -m odenets.stochastic_depth --model resnet110 --drop-path 0.5 --steps 8
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import build
from models.blocks import DropPath
from models.checks import positive_int
from models.cli import add_threads_argument, fail, set_threads
from models.data import load_split


def survival_probabilities(model: nn.Module) -> list[float]:
    """p_l of every residual branch that stochastic depth can drop, in forward order."""
    return [m.survival for m in model.modules() if isinstance(m, DropPath)]


@dataclass(frozen=True)
class TimingConfig:
    """Training steps of ``model`` at constant depth and with ``drop_path`` (the last block's
    drop probability, linear decay before it) in each of ``modes``, on synthetic data. The
    variants are interleaved step by step so that load from other processes hits all alike."""

    model: str = "resnet110"
    drop_path: float = 0.5
    modes: tuple[str, ...] = ("batch", "row")
    steps: int = 8
    warmup: int = 2
    batch_size: int = 64
    image_size: int = 32
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "modes", tuple(self.modes))
        if not 0 < self.drop_path < 1:
            raise ValueError(f"drop_path must lie in (0, 1) to compare with constant depth, got {self.drop_path}")
        if not set(self.modes) <= {"batch", "row"} or not self.modes:
            raise ValueError(f"modes must be a non-empty subset of ('batch', 'row'), got {self.modes}")
        for name in ("steps", "batch_size", "image_size"):
            positive_int(name, getattr(self, name))
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")


def time_training_steps(config: TimingConfig) -> dict[str, Any]:
    """Median seconds per SGD step for each variant, the ratio to constant depth, and the
    fraction of residual branches actually computed (expected: mean survival, batch mode)."""
    device = torch.device(config.device)
    x, y = load_split("synthetic", "", train=True, samples=config.batch_size, image_size=config.image_size,
                      size=config.batch_size, seed=config.seed)
    x, y = x.to(device), y.to(device)
    variants: dict[str, dict[str, Any]] = {"constant depth": {}}
    variants.update({f"stochastic depth, {m} mode": {"drop_path": config.drop_path, "drop_mode": m}
                     for m in config.modes})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        built = {label: build(config.model, **kw).to(device) for label, kw in variants.items()}
        opts = {label: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for label, m in built.items()}
        computed = {label: 0 for label in built}
        hooks = [branch_counter(m, lambda label=label: computed.__setitem__(label, computed[label] + 1))
                 for label, m in built.items()]
        times: dict[str, list[float]] = {label: [] for label in built}
        for step in range(config.warmup + config.steps):
            for label, model in built.items():
                model.train()
                before = computed[label]
                start = time.perf_counter()
                opts[label].zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opts[label].step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if step >= config.warmup:
                    times[label].append(time.perf_counter() - start)
                else:
                    computed[label] = before
        for h in hooks:
            h()
    blocks = len(survival_probabilities(built["constant depth"]))
    base = statistics.median(times["constant depth"])
    rows = []
    for label, model in built.items():
        med = statistics.median(times[label])
        p = survival_probabilities(model)
        rows.append({"variant": label, "seconds_per_step": med, "ratio_to_constant": med / base,
                     "branches_computed": computed[label] / (config.steps * blocks),
                     "mean_survival": sum(p) / len(p), "step_seconds": times[label]})
    return {"config": asdict(config), "blocks": blocks, "device": str(device), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "rows": rows}


def branch_counter(model: nn.Module, on_branch: Any) -> Any:
    """Call ``on_branch()`` each time a residual branch is computed: a forward hook on ``conv1``,
    the branch's first layer in every residual block of the toolkit (in the pre-activation block
    the norm before it also feeds the shortcut). Returns a function that removes the hooks."""
    handles = []
    for module in model.modules():
        if any(isinstance(c, DropPath) for c in module.children()):
            if not isinstance(getattr(module, "conv1", None), nn.Module):
                raise ValueError(f"{type(module).__name__} has a DropPath but no conv1 to count branches by")
            handles.append(module.conv1.register_forward_hook(lambda *_: on_branch()))
    return lambda: [h.remove() for h in handles]


def markdown(doc: dict[str, Any]) -> str:
    c = doc["config"]
    lines = [f"# Stochastic depth: training time of {c['model']} ({doc['blocks']} residual blocks)", "",
             f"drop_path={c['drop_path']} (linear decay, p_L = {1 - c['drop_path']:g}), batch {c['batch_size']} of "
             f"{c['image_size']}x{c['image_size']} synthetic images, median of {c['steps']} SGD steps after "
             f"{c['warmup']} warm-up, variants interleaved; {doc['device']}, {doc['threads']} threads, "
             f"torch {doc['torch']}.", "",
             "| variant | s/step | time vs constant | branches computed | mean survival |", "|---|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['variant']} | {r['seconds_per_step']:.3f} | {r['ratio_to_constant']:.3f} | "
                     f"{r['branches_computed']:.3f} | {r['mean_survival']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    d = TimingConfig()
    p = argparse.ArgumentParser(prog="python -m odenets.stochastic_depth", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=d.model)
    p.add_argument("--drop-path", type=float, default=d.drop_path)
    p.add_argument("--modes", default=",".join(d.modes), help="comma-separated: batch,row")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device)
    p.add_argument("--out", default=None, help="folder for stochastic_depth.json / .md (default: print only)")
    add_threads_argument(p)
    args = vars(p.parse_args(argv))
    set_threads(args.pop("threads"))
    out = args.pop("out")
    args["modes"] = tuple(m for m in args["modes"].split(",") if m)
    try:
        doc = time_training_steps(TimingConfig(**args))
    except ValueError as err:
        fail(str(err))
    text = markdown(doc)
    print(text)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "stochastic_depth.json").write_text(json.dumps(doc, indent=1) + "\n")
        (Path(out) / "stochastic_depth.md").write_text(text)


if __name__ == "__main__":
    main()
