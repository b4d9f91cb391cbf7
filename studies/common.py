"""Plumbing shared by the study scripts: the --quick/--smoke switch, where data and results live,
and the markdown/JSON that each study writes beside its figures."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

REPO = Path(__file__).resolve().parent.parent


def default_data_root() -> str:
    """$RESNET_TOOLKIT_DATA, else the shared MNIST beside the repo, else ./data."""
    env = os.environ.get("RESNET_TOOLKIT_DATA")
    if env:
        return env
    shared = REPO.parent / "shared" / "datasets"
    return str(shared if shared.is_dir() else REPO / "data")


@dataclass(frozen=True)
class StudyArgs:
    """What every study takes. ``mode`` is "full" (paper settings, GPU), "quick" (2 CPU cores,
    under 15 minutes, MNIST or small data) or "smoke" (seconds, synthetic data; for the tests)."""

    name: str
    mode: str
    out: Path
    data_root: str
    device: str
    seed: int
    extra: dict[str, Any]

    @property
    def quick(self) -> bool:
        return self.mode != "full"

    def command(self) -> str:
        flag = {"full": "", "quick": " --quick", "smoke": " --smoke"}[self.mode]
        return f"python studies/{self.name}.py{flag}"


def parse_args(name: str, description: str, argv: list[str] | None = None,
               add_arguments=None) -> StudyArgs:
    """Common flags; ``add_arguments(parser)`` adds a study's own, returned in ``extra``."""
    p = argparse.ArgumentParser(prog=f"python studies/{name}.py", description=description)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small qualitative run for 2 CPU cores (<15 min)")
    mode.add_argument("--smoke", action="store_true", help="seconds-long run on synthetic data (tests)")
    p.add_argument("--out", type=Path, default=None, help=f"results folder (default results/{name})")
    p.add_argument("--data-root", default=None, help="data sets folder (default $RESNET_TOOLKIT_DATA, "
                                                      "../shared/datasets or ./data)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--seed", type=int, default=0)
    if add_arguments:
        add_arguments(p)
    ns = p.parse_args(argv)
    common = {"quick", "smoke", "out", "data_root", "device", "seed"}
    mode_name = "smoke" if ns.smoke else "quick" if ns.quick else "full"
    out = ns.out or REPO / "results" / name
    out.mkdir(parents=True, exist_ok=True)
    return StudyArgs(name, mode_name, out, ns.data_root or default_data_root(), resolve_device(ns.device),
                     ns.seed, {k: v for k, v in vars(ns).items() if k not in common})


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    tmp.replace(path)


def markdown_table(rows: Iterable[dict[str, Any]]) -> str:
    rows = list(rows)
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_readme(args: StudyArgs, title: str, claim: str, tables: dict[str, list[dict[str, Any]]],
                 figures: Iterable[str], observed: str, notes: str = "", seconds: float | None = None) -> Path:
    """results/<study>/README.md: the paper's claim, our numbers beside the published ones, the
    exact command, the figures, and what we saw (including where it differs, and why)."""
    parts = [f"# {title}", "", f"**Paper's claim.** {claim}", "",
             f"**Command.** `{args.command()}` (mode: {args.mode}, seed {args.seed}, device {args.device}"
             + (f", {seconds:.0f} s" if seconds is not None else "") + ")", ""]
    for caption, rows in tables.items():
        parts += [f"## {caption}", "", markdown_table(rows), ""]
    parts += [f"## What we observe", "", observed, ""]
    for fig in figures:
        parts += [f"![{Path(fig).stem}]({Path(fig).name})", ""]
    if notes:
        parts += ["## Notes", "", notes, ""]
    path = args.out / "README.md"
    path.write_text("\n".join(parts))
    return path


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


def fail(message: str) -> None:
    sys.exit(f"error: {message}")
