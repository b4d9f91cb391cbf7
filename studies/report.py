"""What a study writes beside its figures: results.json, the README that puts our numbers beside the
published ones, and the sentences that say what the numbers cost to compute."""
from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any


from studies.common import StudyArgs, repo_relative


def study_header(args: Any, seeds: list[int], train_samples: int | None, test_samples: int | None) -> dict[str, Any]:
    """The keys every results.json starts with, so that tools (and ``claim_out``, which refuses to
    overwrite another tier's folder) can read any study's: name, tier, seeds and the images the nets
    were trained and tested on (None where nothing was trained or tested)."""
    return {"study": args.name, "tier": args.mode, "mode": args.mode, "seeds": list(seeds),
            "train_samples": train_samples, "test_samples": test_samples}


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


# Said at the top of every quick-tier README: its nets are trained for minutes, so its numbers try
# the code, they do not test the paper's claim (that is the committed cpu tier's job).
QUICK_CAVEAT = ("**Quick tier**: nets trained for a few hundred steps on an MNIST subset, one seed, no error bars; "
                "its numbers try the code path and do not test the paper's claim (see studies/README.md for what "
                "each study's committed evidence shows).")


def write_readme(args: StudyArgs, title: str, claim: str, tables: dict[str, list[dict[str, Any]]],
                 figures: Iterable[str], observed: str, notes: str = "", seconds: float | None = None) -> Path:
    """results/<study>/README.md: the paper's claim, our numbers beside the published ones, the
    exact command, the figures, and what we saw (including where it differs, and why)."""
    parts = [f"# {title}", "", *([QUICK_CAVEAT, ""] if args.mode == "quick" else []), f"**Paper's claim.** {claim}", "",
             f"**Command.** `{args.command()}` (mode: {args.mode}, seed {args.seed}, device {args.device}"
             + (f", {seconds:.0f} s" if seconds is not None else "") + ")", ""]
    for caption, rows in tables.items():
        parts += [f"## {caption}", "", markdown_table(rows), ""]
    parts += ["## What we observe", "", observed, ""]
    for fig in figures:
        parts += [f"![{Path(fig).stem}]({Path(fig).name})", ""]
    if args.mode == "smoke":
        notes = ("**Smoke run**: seconds on tiny synthetic data, to test the code path; its numbers say "
                 "nothing about the paper's claim.\n\n" + notes)
    if notes:
        parts += ["## Notes", "", notes, ""]
    path = args.out / "README.md"
    path.write_text("\n".join(parts))
    print_summary(args, figures)
    return path


def print_summary(args: StudyArgs, figures: Iterable[str]) -> None:
    """The last lines a study prints: its tier and the files it wrote, so a user knows what to open."""
    written = [args.out / "README.md", args.out / "results.json", *(args.out / Path(f).name for f in figures)]
    print(f"{args.name} ({args.mode} tier) wrote:")
    for f in written:
        if f.is_file():
            print(f"  {repo_relative(f)}")


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


def training_note(records: Iterable[dict[str, Any]]) -> str:
    """README sentence on the nets' training time: a rerun reuses cached nets and takes seconds,
    so the command's own time does not say what reproducing the study from scratch costs."""
    total = sum(r["wall_seconds"] for r in records)
    return (f"Training the nets took {total:.0f} s of wall time in all (summed from their per-epoch logs; "
            "a rerun reuses them from the run cache).")


def compute_note(train_seconds: float, surfaces: Iterable[Any]) -> str:
    """One README sentence with what a study's numbers cost to compute, which a rerun on cached
    runs and surfaces (seconds) does not show: summed training time and evaluation time of the
    surfaces (their recorded seconds per point times their points)."""
    scan = 0.0
    for s in surfaces:
        per_point = float(s.attrs.get("seconds_per_point", math.nan))
        scan += per_point * int(s.done.sum()) if math.isfinite(per_point) else 0.0
    return (f"Compute behind these numbers on this machine: {train_seconds:.0f} s of training (cached under the run "
            f"folder, reused by reruns and by other studies) and {scan:.0f} s of landscape evaluation (kept in "
            f"the surface files; a rerun resumes them).")
