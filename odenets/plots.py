"""Figures of a comparison, drawn from its ``compare.json`` only (plotting never computes):
accuracy vs NFE for one field under many solvers, NFE vs training epoch, memory vs depth.

    python -m odenets.plots results/odenet_mnist/compare.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from models.cli import fail  # noqa: E402



def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path

def _load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; write it with python -m odenets.compare")
    doc = json.loads(path.read_text())
    for key in ("rows", "sweep", "nfe_vs_epoch", "memory_vs_depth"):
        if key not in doc:
            raise ValueError(f"{path} is not a compare.json (no {key!r} entry)")
    return doc


def plot_accuracy_vs_nfe(doc: dict[str, Any], path: Path) -> Path:
    """Test accuracy and solution error (logit deviation from a tight reference solve) against
    NFE, for one trained field under Euler with K steps and dopri5 at several tolerances."""
    sw = doc["sweep"]
    has_ref = sw.get("reference") is not None
    fig, axes = plt.subplots(1, 2 if has_ref else 1, figsize=(11 if has_ref else 6, 4.2), squeeze=False)
    series = (("euler", "Euler, K steps", "o"), ("dopri5", "dopri5, rtol = atol", "s"))
    panels = [("accuracy", lambda p: 100 - p["error"], "test accuracy (%)")]
    if has_ref:
        panels.append(("deviation", lambda p: p["logit_deviation"], "mean max |logit - reference logit|"))
    for ax, (kind, value, ylabel) in zip(axes[0], panels):
        for key, label, marker in series:
            pts = [p for p in sw[key] if kind == "accuracy" or p["logit_deviation"] > 0]
            ax.plot([p["nfe_per_batch"] for p in pts], [value(p) for p in pts], marker=marker, label=label)
            for i, p in enumerate(pts if key == "euler" or kind == "deviation" else []):  # no crowding
                tag = f"K={p['steps']}" if key == "euler" else f"{p['rtol']:.0e}"
                offset = (4, -11) if key == "euler" else (4, 6 if i % 2 == 0 else -12)
                ax.annotate(tag, (p["nfe_per_batch"], value(p)), textcoords="offset points", xytext=offset,
                            fontsize=7)
        ax.set_xscale("log")
        if kind == "deviation":
            ax.set_yscale("log")
            ref = sw["reference"]
            ax.set_title(f"solution error vs reference ({ref['solver']}, NFE {ref['nfe_per_batch']:.0f})",
                         fontsize=9)
        else:
            trained = ", ".join(f"{k}={v}" for k, v in sw["trained_solver"].items()
                                if k in ("method", "rtol", "steps") and v is not None)
            ax.set_title(f"{sw['model']} (trained with {trained}); {sw['images']} test images", fontsize=9)
        ax.set_xlabel("function evaluations per forward pass (NFE)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_nfe_vs_epoch(doc: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for model, pts in doc["nfe_vs_epoch"].items():
        epochs = [p["epoch"] for p in pts]
        line, = ax.plot(epochs, [p["nfe_forward"] for p in pts], marker="o", label=f"{model} forward")
        if any(p["nfe_backward"] for p in pts):
            ax.plot(epochs, [p["nfe_backward"] for p in pts], marker="s", ls="--", color=line.get_color(),
                    label=f"{model} backward (adjoint)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("training epoch (0 = initialization)")
    ax.set_ylabel("NFE per training batch")
    ax.set_title("Function evaluations during training", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_memory_vs_depth(doc: dict[str, Any], path: Path) -> Path:
    md = doc["memory_vs_depth"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for adjoint, label in ((False, "backprop through the solver"), (True, "adjoint (odeint_adjoint)")):
        rows = sorted((r for r in md["rows"] if r["adjoint"] == adjoint), key=lambda r: r["steps"])
        ax.plot([r["steps"] for r in rows], [r["peak_bytes"] / 2**20 for r in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("depth: Euler steps K of the ODE block")
    ax.set_ylabel("peak memory of one training step (MiB)")
    ax.set_title(f"{md['model']}, batch {md['batch']} ({doc['device']})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_compare(json_path: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw every figure the document has data for, next to it (or in ``out_dir``)."""
    doc = _load(json_path)
    out = Path(out_dir) if out_dir is not None else Path(json_path).parent
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    if doc["sweep"]:
        figures.append(plot_accuracy_vs_nfe(doc, out / "accuracy_vs_nfe.png"))
    if doc["nfe_vs_epoch"]:
        figures.append(plot_nfe_vs_epoch(doc, out / "nfe_vs_epoch.png"))
    if doc["memory_vs_depth"]["rows"]:
        figures.append(plot_memory_vs_depth(doc, out / "memory_vs_depth.png"))
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m odenets.plots", description=__doc__.split("\n\n")[0])
    p.add_argument("compare_json", help="compare.json written by python -m odenets.compare")
    p.add_argument("--out", default=None, help="folder for the PNGs (default: beside the JSON)")
    args = p.parse_args(argv)
    try:
        figures = plot_compare(args.compare_json, args.out)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    print("wrote " + ", ".join(str(f) for f in figures))


if __name__ == "__main__":
    main()
