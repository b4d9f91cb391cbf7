"""ResNet vs RK-Net vs ODE-Net (and stochastic-depth variants) trained on the same data, with
the numbers that separate them: test error, parameters, NFE forward/backward, time per epoch,
peak memory; plus one trained field re-solved by Euler K = 1..64 and dopri5 at 1e-1..1e-5.

    python -m odenets.compare --dataset mnist --data-root ../shared/datasets --samples 2000 --epochs 2
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from models import build, load_checkpoint, resolve_device
from models.checks import positive_int
from models.cli import add_threads_argument, fail, set_threads
from models.data import (AUGMENTATIONS, DATASETS, DataNotFoundError, DeviceData, default_data_root, load_device_data,
                         resolve_augment)
from models.ode import ADAPTIVE_METHODS, counted_blocks, nfe, ode_blocks
from models.summary import count_params
from models.registry import parse_key_values
from models.train import RunConflictError, TrainConfig, train

from .memory import CPU_METHOD, CUDA_METHOD, memory_vs_depth, training_step_memory
from .solvers import euler_configs, evaluate_counted, sweep, tolerance_configs

# Chen et al. 2018, Table 1 (MNIST): parameters (millions), test error (%), memory and time.
PAPER = {
    "resnet_mnist": {"params_m": 0.60, "test_error": 0.41, "memory": "O(L)", "time": "O(L)"},
    "rknet_mnist": {"params_m": 0.22, "test_error": 0.47, "memory": "O(L~)", "time": "O(L~)"},
    "odenet_mnist": {"params_m": 0.22, "test_error": 0.42, "memory": "O(1)", "time": "O(L~)"},
}


@dataclass(frozen=True)
class CompareConfig:
    """One comparison. ``models`` are registry names, optionally with options in brackets,
    e.g. ``resnet_mnist[drop_path=0.5,drop_mode=batch]`` (the whole string is the row label).
    Checkpoints go to ``runs`` (large; reused when the same runs are asked for again), tables
    and figures to ``out`` (small). The solver sweep and memory-vs-depth re-solve the trained
    field of ``sweep_model`` (default: the first adaptive ODE model, else the first ODE model)."""

    models: tuple[str, ...] = ("resnet_mnist", "rknet_mnist", "odenet_mnist")
    dataset: str = "mnist"
    data_root: str = field(default_factory=default_data_root)
    data_kwargs: Mapping[str, Any] = field(default_factory=dict)
    augment: str | None = None  # models.data.AUGMENTATIONS; None: the data set's recipe (none on MNIST)
    epochs: int = 2
    samples: int | None = 2000
    test_samples: int | None = 1000
    train_eval_samples: int | None = None  # eval-mode error on the first N training images per epoch (models.train)
    batch_size: int = 128
    lr: float = 0.1
    milestones: tuple[float, ...] = (0.5, 0.75)
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    runs: str = "runs/odenets_compare"
    out: str = "runs/odenets_compare/out"  # never the committed results/ (the study writes those)
    sweep_model: str | None = None
    sweep_samples: int | None = 1000
    euler_steps: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    tolerances: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
    reference_tol: float | None = 1e-7
    memory_steps: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    memory_batch: int = 32
    probe_batch: int = 128
    eval_batch: int = 500
    progress: bool = True
    force: bool = False

    def __post_init__(self) -> None:
        for name in ("models", "euler_steps", "tolerances", "memory_steps", "milestones"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "data_kwargs", dict(self.data_kwargs))
        if not self.models:
            raise ValueError("models is empty; give registry names such as resnet_mnist,rknet_mnist,odenet_mnist")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models lists a name twice: {self.models}")
        for entry in self.models:
            parse_entry(entry)
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid names: {', '.join(DATASETS)}")
        resolve_augment(self.dataset, self.augment)  # raises for an unknown name
        if self.sweep_model is not None and self.sweep_model not in self.models:
            raise ValueError(f"sweep_model {self.sweep_model!r} is not among models {self.models}")
        for name in ("epochs", "batch_size", "memory_batch", "probe_batch", "eval_batch"):
            positive_int(name, getattr(self, name))
        for name in ("samples", "test_samples", "train_eval_samples", "sweep_samples"):
            positive_int(name, getattr(self, name), allow_none=True, note="None: all")
        for name in ("euler_steps", "memory_steps"):
            for k in getattr(self, name):
                positive_int(f"each of {name}", k)
        if any(not t > 0 for t in self.tolerances) or (self.reference_tol is not None and not self.reference_tol > 0):
            raise ValueError(f"tolerances must be positive, got {self.tolerances}, reference {self.reference_tol}")


def parse_entry(entry: str) -> tuple[str, dict[str, Any]]:
    """``"resnet_mnist[drop_path=0.5]"`` -> ``("resnet_mnist", {"drop_path": 0.5})``."""
    match = re.fullmatch(r"([A-Za-z0-9_]+)(?:\[(.*)\])?", entry.strip())
    if match is None:
        raise ValueError(f"bad model entry {entry!r}; expected NAME or NAME[key=value,...]")
    name, opts = match.group(1), match.group(2)
    build(name, in_channels=1)  # unknown names fail here, with the registry's suggestions
    return name, parse_key_values([o for o in (opts or "").split(",") if o.strip()])


def _run_dir(config: CompareConfig, entry: str) -> Path:
    """``runs/<entry>_<dataset>``, with ``_seed<k>`` for a seed other than 0 (seed 0's name predates
    seeds), so that another seed trains beside a cached run instead of clashing with it."""
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", entry).strip("_")
    return Path(config.runs) / (f"{slug}_{config.dataset}" + (f"_seed{config.seed}" if config.seed else ""))


def train_config(config: CompareConfig, entry: str) -> TrainConfig:
    """The training run behind one model entry: its checkpoints live in ``runs``, so a run trained
    on its own (e.g. one process per model on a multi-core machine) is what compare() reuses."""
    name, kwargs = parse_entry(entry)
    return TrainConfig(model=name, model_kwargs=kwargs, dataset=config.dataset, data_root=config.data_root,
                       data_kwargs=config.data_kwargs, augment=config.augment, epochs=config.epochs,
                       samples=config.samples, test_samples=config.test_samples,
                       train_eval_samples=config.train_eval_samples, batch_size=config.batch_size,
                       lr=config.lr, milestones=config.milestones, weight_decay=config.weight_decay, seed=config.seed,
                       device=str(resolve_device(config.device)), amp=False, out=str(_run_dir(config, entry)),
                       progress=config.progress, force=config.force)


def _probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """NFE of one training step (forward + backward, no update) on a fixed batch."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    counts = nfe(model)
    return {"nfe_forward": counts.forward, "nfe_backward": counts.backward, "vjp_backward": counts.vjp}


def _initial_model(config: CompareConfig, name: str, kwargs: dict[str, Any], info_classes: int,
                   channels: int, device: torch.device) -> nn.Module:
    # Mirrors models.train: the seed is set right before building, so this is epoch 0 of the run.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return build(name, num_classes=info_classes, in_channels=channels, **kwargs).to(device)


def compare(config: CompareConfig) -> dict[str, Any]:
    """Train (or reuse) every model, measure it, sweep solvers on one trained field, and write
    ``out/compare.json`` and ``out/compare.md``. Returns the JSON document."""
    start = time.perf_counter()
    device = resolve_device(config.device)
    info = DATASETS[config.dataset]
    test = load_device_data(config.dataset, config.data_root, "test", config.test_samples, device,
                            offer_download=False, **config.data_kwargs)  # this command has no --download
    probe = load_device_data(config.dataset, config.data_root, "train", config.probe_batch, device,
                             offer_download=False, **config.data_kwargs)
    channels = test.x.shape[1]
    n_train = config.samples or len(load_device_data(config.dataset, config.data_root, "train", None, "cpu",
                                                     offer_download=False, **config.data_kwargs))
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    rows, histories, nfe_epochs, trained = [], {}, {}, {}
    for entry in config.models:
        name, kwargs = parse_entry(entry)
        run = _run_dir(config, entry)
        history = train(train_config(config, entry))
        histories[entry] = history
        model, _ = load_checkpoint(run / "final.pt", map_location=device)
        model = model.to(device)
        trained[entry] = model
        loss, error, eval_nfe, eval_s = evaluate_counted(model, test, config.eval_batch)
        step = _probe(model, probe.x, probe.y)
        mem = training_step_memory(model, probe.x[:config.memory_batch], probe.y[:config.memory_batch])
        has_ode = bool(counted_blocks(model))
        if has_ode:
            curve = [{"epoch": 0, **_probe(_initial_model(config, name, kwargs, info.num_classes, channels,
                                                          device), probe.x, probe.y)}]
            for k in range(1, config.epochs + 1):
                ck = run / f"epoch_{k}.pt"
                if ck.is_file():
                    curve.append({"epoch": k, **_probe(load_checkpoint(ck, map_location=device)[0].to(device),
                                                       probe.x, probe.y)})
            nfe_epochs[entry] = curve
        train_seconds = [n_train / h["images_per_s"] for h in history]
        paper = PAPER.get(name, {}) if not kwargs else {}  # options change what the paper measured
        rows.append({
            "model": entry,
            "run": str(run),
            "params": count_params(model),
            "params_paper_m": paper.get("params_m"),
            "test_error": error,
            "test_error_paper": paper.get("test_error"),
            "test_loss": loss,
            "nfe_forward_eval": eval_nfe,
            "nfe_forward_train": step["nfe_forward"] if has_ode else None,
            "nfe_backward_train": step["nfe_backward"] if has_ode else None,
            "vjp_backward_train": step["vjp_backward"] if has_ode else None,
            "solver": ", ".join(f"{k}={v}" for k, v in ode_blocks(model)[0].solver_kwargs().items())
                      if ode_blocks(model) else "",
            "train_s_per_epoch": sum(train_seconds) / len(train_seconds),
            "images_per_s": sum(h["images_per_s"] for h in history) / len(history),
            "eval_s": eval_s,
            "peak_memory_mib": mem.peak_mib,
            "memory_paper": paper.get("memory"),
        })

    sweep_entry = config.sweep_model or _default_sweep(trained)
    sweeps: dict[str, Any] = {}
    depth_rows: list[dict[str, Any]] = []
    if sweep_entry is not None:
        model = trained[sweep_entry]
        block = ode_blocks(model)[0]
        n = config.sweep_samples or len(test)
        subset = DeviceData(test.x[:n], test.y[:n])
        configs = euler_configs(config.euler_steps, block.T) + tolerance_configs(config.tolerances, "dopri5",
                                                                                 block.T)
        results, reference = sweep(model, subset, configs, config.eval_batch, config.progress, config.reference_tol)
        k = len(config.euler_steps)
        sweeps = {"model": sweep_entry, "trained_solver": block.solver_kwargs(), "images": len(subset),
                  "batch_size": config.eval_batch, "euler": [r.to_dict() for r in results[:k]],
                  "dopri5": [r.to_dict() for r in results[k:]],
                  "reference": reference.to_dict() if reference is not None else None}
        depth_rows = [r.to_dict() for r in memory_vs_depth(model, probe.x[:config.memory_batch],
                                                           probe.y[:config.memory_batch], config.memory_steps)]

    doc = {
        "config": json.loads(json.dumps(asdict(config))),
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "memory_method": CUDA_METHOD if device.type == "cuda" else CPU_METHOD,
        "rows": rows,
        "histories": histories,
        "nfe_vs_epoch": nfe_epochs,
        "sweep": sweeps,
        "memory_vs_depth": {"model": sweep_entry, "batch": config.memory_batch, "method": "euler",
                            "rows": depth_rows},
        "seconds": time.perf_counter() - start,
    }
    _write(out / "compare.json", json.dumps(doc, indent=1) + "\n")
    _write(out / "compare.md", markdown(doc))
    return doc


def _default_sweep(trained: Mapping[str, nn.Module]) -> str | None:
    """The first model whose ODE block is adaptive (an ODE-Net), else the first with any ODE block."""
    with_blocks = [(e, ode_blocks(m)[0]) for e, m in trained.items() if ode_blocks(m)]
    adaptive = [e for e, b in with_blocks if b.method in ADAPTIVE_METHODS]
    return (adaptive or [e for e, _ in with_blocks] or [None])[0]


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(doc: Mapping[str, Any]) -> str:
    """The comparison as markdown: main table, solver sweep, NFE per epoch, memory vs depth."""
    c = doc["config"]
    parts = [
        f"# Continuous vs discrete depth on {c['dataset']}",
        "",
        f"Trained {c['epochs']} epoch(s) on {c['samples'] or 'all'} training images, tested on "
        f"{c['test_samples'] or 'all'} test images; batch {c['batch_size']}, SGD lr {c['lr']} (momentum 0.9, "
        f"lr/10 at fractions {c['milestones']} of the steps, weight decay {c['weight_decay']}), seed {c['seed']}, device {doc['device']} ({doc['threads']} threads), "
        f"torch {doc['torch']}; "
        f"{doc['seconds']:.0f} s in all. Paper: Chen et al. 2018, Table 1 (full MNIST, long training).",
        "",
        _table(["model", "params", "params paper", "test error %", "paper %", "NFE-F eval", "NFE-F train",
                "NFE-B train", "VJP-B train", "train s/epoch", "img/s", "peak MiB (batch "
                f"{c['memory_batch']})", "memory paper"],
               [[r["model"], f"{r['params'] / 1e6:.3f}M", None if r["params_paper_m"] is None
                 else f"{r['params_paper_m']:.2f}M", r["test_error"], r["test_error_paper"], r["nfe_forward_eval"],
                 r["nfe_forward_train"], r["nfe_backward_train"], r["vjp_backward_train"], r["train_s_per_epoch"],
                 r["images_per_s"], r["peak_memory_mib"], r["memory_paper"]] for r in doc["rows"]]),
        "",
        "NFE-F: vector-field evaluations in the forward solve, per batch (eval: test batches of "
        f"{c['eval_batch']}; train: one training batch of {c['probe_batch']}). NFE-B: evaluations during "
        "backward (the adjoint solve; 0 when backpropagating through the solver). VJP-B: vector-Jacobian "
        "products through the field during backward. ResNet has no ODE block (six unshared blocks). "
        f"Peak memory: {doc['memory_method']}; one training step (forward + backward).",
        "",
    ]
    for r in doc["rows"]:
        if r["solver"]:
            parts.append(f"- {r['model']} solver: {r['solver']}")
    sw = doc["sweep"]
    if sw:
        parts += ["", f"## One trained field, any solver ({sw['model']}, {sw['images']} test images)", "",
                  f"Trained with {', '.join(f'{k}={v}' for k, v in sw['trained_solver'].items())}.", "",
                  "Deviation: mean over images of max |logit - reference logit|; agreement: predictions equal to "
                  "the reference's (dopri5 at a tight tolerance, last row).", "",
                  _table(["solver", "NFE per batch", "test error %", "test loss", "logit deviation", "agreement %",
                          "seconds"],
                         [[r["solver"], r["nfe_per_batch"], r["error"], r["loss"], r["logit_deviation"],
                           r["agreement"], r["seconds"]]
                          for r in sw["euler"] + sw["dopri5"] + ([sw["reference"]] if sw["reference"] else [])])]
    if doc["nfe_vs_epoch"]:
        parts += ["", f"## NFE per training epoch (one training batch of {c['probe_batch']}; epoch 0 = init)",
                  "", _table(["model", "epoch", "NFE-F", "NFE-B", "VJP-B"],
                             [[m, p["epoch"], p["nfe_forward"], p["nfe_backward"], p["vjp_backward"]]
                              for m, pts in doc["nfe_vs_epoch"].items() for p in pts])]
    md = doc["memory_vs_depth"]
    if md["rows"]:
        parts += ["", f"## Memory vs depth ({md['model']} re-solved by K Euler steps, batch {md['batch']})", "",
                  _table(["K", "adjoint", "peak MiB", "NFE-F", "NFE-B"],
                         [[r["steps"], r["adjoint"], r["peak_bytes"] / 2**20, r["nfe_forward"], r["nfe_backward"]]
                          for r in md["rows"]])]
    return "\n".join(parts) + "\n"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v)


def _entries(text: str) -> tuple[str, ...]:
    # Split on commas outside brackets: "resnet_mnist[drop_path=0.5,drop_mode=batch],odenet_mnist".
    return tuple(e for e in re.findall(r"[^,\[\]]+(?:\[[^\]]*\])?", text) if e.strip())


def main(argv: Sequence[str] | None = None) -> None:
    d = CompareConfig()
    p = argparse.ArgumentParser(prog="python -m odenets.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=_entries, default=d.models,
                   help="comma-separated registry names, each optionally NAME[key=value,...] "
                        f"(default {','.join(d.models)})")
    p.add_argument("--dataset", default=d.dataset, choices=list(DATASETS))
    p.add_argument("--data-root", default=d.data_root, help="data sets folder (default $RESNET_TOOLKIT_DATA, else ./data)")
    p.add_argument("--data-kw", action="append", default=[], metavar="KEY=VALUE",
                   help="synthetic data option (seed, image_size, channels, size, noise)")
    p.add_argument("--augment", choices=AUGMENTATIONS, default=None,
                   help="training augmentation (default: the data set's recipe, none on MNIST; Chen et al.'s code "
                        "uses crop: pad 4 and crop)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--samples", type=int, default=d.samples, help="training images (0: all)")
    p.add_argument("--test-samples", type=int, default=d.test_samples, help="test images (0: all)")
    p.add_argument("--train-eval-samples", type=int, default=d.train_eval_samples,
                   help="after each epoch, eval-mode error on the first N training images (0: none)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--milestones", type=_floats, default=d.milestones,
                   help="fractions of training where lr /= 10, e.g. 0.5,0.75 (1 = constant lr)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--runs", default=d.runs, help="checkpoint folder (reused on reruns)")
    p.add_argument("--out", default=d.out, help="folder for compare.json, compare.md and the PNGs")
    p.add_argument("--sweep-model", default=None, help="which trained field to re-solve (default: first ODE model)")
    p.add_argument("--sweep-samples", type=int, default=d.sweep_samples, help="test images for the sweep (0: all)")
    p.add_argument("--euler-steps", type=_ints, default=d.euler_steps)
    p.add_argument("--tolerances", type=_floats, default=d.tolerances)
    p.add_argument("--reference-tol", type=float, default=d.reference_tol,
                   help="dopri5 tolerance of the reference solve the sweep's solution error is measured against")
    p.add_argument("--memory-steps", type=_ints, default=d.memory_steps)
    p.add_argument("--memory-batch", type=int, default=d.memory_batch)
    p.add_argument("--probe-batch", type=int, default=d.probe_batch)
    p.add_argument("--no-plots", dest="plots", action="store_false")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--force", action="store_true", help="retrain runs whose folder holds another configuration")
    add_threads_argument(p)
    args = vars(p.parse_args(argv))
    set_threads(args.pop("threads"))
    plots = args.pop("plots")
    for key in ("samples", "test_samples", "train_eval_samples", "sweep_samples"):
        args[key] = args[key] or None
    try:
        args["data_kwargs"] = parse_key_values(args.pop("data_kw"))
        config = CompareConfig(**args)
        doc = compare(config)
        figures = []
        if plots:
            from .plots import plot_compare  # matplotlib only when plotting
            figures = plot_compare(Path(config.out) / "compare.json")
    except (ValueError, DataNotFoundError, FileNotFoundError, RunConflictError) as err:
        fail(str(err))
    for r in doc["rows"]:
        print(f"{r['model']}: test error {r['test_error']:.2f}%  params {r['params'] / 1e6:.3f}M  "
              f"NFE-F {_fmt(r['nfe_forward_train'])}  NFE-B {_fmt(r['nfe_backward_train'])}  "
              f"{r['train_s_per_epoch']:.1f} s/epoch  peak {r['peak_memory_mib']:.1f} MiB")
    print(f"wrote {Path(config.out) / 'compare.md'}, compare.json" + "".join(f", {f.name}" for f in figures)
          + f" in {doc['seconds']:.0f} s")


if __name__ == "__main__":
    main()
