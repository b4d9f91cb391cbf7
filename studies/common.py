"""Plumbing shared by the study scripts: the --quick/--smoke switch, where data and results live,
and the markdown/JSON that each study writes beside its figures."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from models import resolve_device
from models.cli import fail
from models.data import default_data_root

REPO = Path(__file__).resolve().parent.parent


# The tiers a study runs in. "cpu" is the one whose results are committed under results/<study>/:
# the strongest run two idle CPU cores can do in one to two hours per study, on all of MNIST (60k/10k),
# with nets trained until the training loss plateaus and several seeds where differences are small.
# "full" is the papers' settings (CIFAR-10, hundreds of epochs: a GPU), "quick" a few minutes of
# qualitative trying-out, "smoke" seconds on synthetic data (the tests). Only the committed tier
# writes into results/ by default; the others write under runs/<tier>/<study>/, so that trying
# something never replaces a committed result.
TIERS = ("full", "cpu", "quick", "smoke")
COMMITTED_TIER = "cpu"


class TierConflictError(ValueError):
    """The results folder holds another tier's results, and replacing them was not asked for."""


@dataclass(frozen=True)
class StudyArgs:
    """What every study takes. ``mode`` is the tier: "full" (paper settings, GPU), "cpu" (the
    committed results: full MNIST, converged nets, ~1 hour on 2 CPU cores), "quick" (a few minutes,
    qualitative) or "smoke" (seconds, synthetic data; for the tests)."""

    name: str
    mode: str
    out: Path
    data_root: str
    device: str
    seed: int
    extra: dict[str, Any]
    runs: Path = REPO / "runs" / "studies"  # cached training runs (checkpoints), shared by studies
    download: bool = False  # fetch a missing data set (full mode on a fresh machine)

    @property
    def quick(self) -> bool:
        return self.mode != "full"

    def command(self) -> str:
        """The command line that reproduces this run: the tier flag and the study's own options that
        were given (a README that leaves out ``--depths 20`` would claim a run that was not made)."""
        flag = "" if self.mode == "full" else f" --{self.mode}"
        for key, value in self.extra.items():
            if value is None or value is False:
                continue
            option = " --" + key.replace("_", "-")
            if value is not True:
                option += " " + (",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value))
            flag += option
        return f"python studies/{self.name}.py{flag}"


def default_out(name: str, mode: str) -> Path:
    """results/<study> for the committed tier, runs/<tier>/<study> for every other tier."""
    return REPO / "results" / name if mode == COMMITTED_TIER else REPO / "runs" / mode / name


def claim_out(out: Path, mode: str, overwrite: bool) -> None:
    """Refuse to write ``mode`` results into a folder that holds another tier's results.json
    (unless ``overwrite``): a quick try must never silently replace the committed evidence."""
    found = Path(out) / "results.json"
    if found.is_file() and not overwrite:
        try:
            saved = json.loads(found.read_text())
            tier = saved.get("tier") or saved.get("mode")
        except (OSError, ValueError):
            tier = None
        if tier is not None and tier != mode:
            raise TierConflictError(
                f"{out} holds {tier}-tier results; a --{mode} run would replace them. Pass --out DIR to write "
                f"elsewhere, or --overwrite to replace them")


def parse_args(name: str, description: str, argv: list[str] | None = None,
               add_arguments=None) -> StudyArgs:
    """Common flags; ``add_arguments(parser)`` adds a study's own, returned in ``extra``."""
    p = argparse.ArgumentParser(prog=f"python studies/{name}.py", description=description)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--cpu", action="store_true",
                      help="the committed tier: full MNIST, converged nets, ~1 hour on 2 CPU cores (results/)")
    mode.add_argument("--quick", action="store_true", help="small qualitative run for 2 CPU cores (minutes)")
    mode.add_argument("--smoke", action="store_true", help="seconds-long run on synthetic data (tests)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"results folder (default results/{name} for --cpu, runs/<tier>/{name} otherwise)")
    p.add_argument("--overwrite", action="store_true", help="replace another tier's results in --out")
    p.add_argument("--data-root", default=None, help="data sets folder (default $RESNET_TOOLKIT_DATA, else ./data)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "studies",
                   help="where trained models are cached and reused across studies (default runs/studies)")
    p.add_argument("--download", action="store_true", help="download a missing data set (needs internet)")
    if add_arguments:
        add_arguments(p)
    ns = p.parse_args(argv)
    common = {"cpu", "quick", "smoke", "out", "overwrite", "data_root", "device", "seed", "runs", "download"}
    mode_name = next((m for m in ("cpu", "quick", "smoke") if getattr(ns, m)), "full")
    out = ns.out or default_out(name, mode_name)
    try:
        claim_out(out, mode_name, ns.overwrite)
    except TierConflictError as err:
        fail(str(err))
    out.mkdir(parents=True, exist_ok=True)
    print(f"{name}: {mode_name} tier, writing {repo_relative(out)}/", file=sys.stderr)
    return StudyArgs(name, mode_name, out, ns.data_root or default_data_root(), str(resolve_device(ns.device)),
                     ns.seed, {k: v for k, v in vars(ns).items() if k not in common}, ns.runs,
                     ns.download)




def add_depths_option(parser: argparse.ArgumentParser, modes: dict[str, Any]) -> None:
    """``--depths 20,56``: run only some of a tier's depths (e.g. the shallow pair first)."""
    parser.add_argument("--depths", type=lambda s: tuple(int(d) for d in s.split(",")), default=None,
                        help="run only these of the tier's depths (comma-separated), e.g. to finish the shallow pair "
                             "first; default: " + ", ".join(f"{k} {','.join(map(str, v.depths))}" for k, v in modes.items()))


def selected_depths(args: StudyArgs, tier_depths: tuple[int, ...]) -> tuple[int, ...]:
    """The tier's depths that ``--depths`` asked for, in the tier's order (all when not given); a depth
    the tier does not have is an error, not a silent no-op."""
    asked = args.extra.get("depths")
    if not asked:
        return tier_depths
    unknown = sorted(set(asked) - set(tier_depths))
    if unknown:
        fail(f"--depths {','.join(map(str, unknown))} is not among the {args.mode} tier's depths "
             f"{','.join(map(str, tier_depths))}")
    return tuple(d for d in tier_depths if d in asked)


def depths_left_note(args: StudyArgs, tier_depths: tuple[int, ...], done: tuple[int, ...], what: str) -> str | None:
    """The README sentence naming the tier's depths a ``--depths`` run left out (None when none was)."""
    left = [d for d in tier_depths if d not in done]
    if not left:
        return None
    return (f"**Not {what} in this run**: depth {', '.join(map(str, left))} of the {args.mode} tier "
            f"(`--depths {','.join(map(str, done))}`); its nets are trained and published by the degradation study, "
            f"and `studies/README.md` says what the rest still costs.")


def repo_relative(path: Path) -> str:
    """A path relative to the repository when inside it, so results.json is the same everywhere."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
