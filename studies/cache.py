"""Trained nets shared between studies, cached by configuration. Several studies need the same nets
(degradation, layer_responses, resnet_vs_noshort_landscape and hessian_ratio share plain/ResNet-20..56),
so runs are cached under a folder named by a hash of everything that changes what is computed;
`models.train` itself resumes a run that was interrupted."""
from __future__ import annotations

import functools
import hashlib
import json
import statistics
from dataclasses import MISSING, asdict, fields, replace
from pathlib import Path
from typing import Any

from models import count_params, load_checkpoint, read_checkpoint, save_checkpoint
from models.data import load_device_data
from models.train import train
from studies.common import REPO, repo_relative
from studies.stats import binomial_se_pct, final_train_error


_NOT_IDENTITY = ("out", "progress", "data_root", "download", "save_every", "force")


def run_key(config: Any) -> str:
    """`<model>_<dataset>_<hash>`: equal for two TrainConfigs that compute the same run."""
    # Only fields that differ from their defaults: a field added to TrainConfig later (with a
    # default that keeps the old behaviour) must not orphan every cached net.
    defaults = {f.name: f.default for f in fields(config) if f.default is not MISSING}
    defaults.update({f.name: f.default_factory() for f in fields(config) if f.default_factory is not MISSING})
    ident = {k: v for k, v in asdict(config).items() if k not in _NOT_IDENTITY and
             not (k in defaults and v == defaults[k])}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{config.model_name}_{config.dataset}_{digest}"


def train_cached(config: Any, runs: Path) -> tuple[list[dict[str, Any]], Path]:
    """Train `config` (a models.train.TrainConfig) under ``runs/<run_key>``, or reuse that run if
    it is already complete. Returns (per-epoch history, run folder holding final.pt)."""
    run = Path(runs) / run_key(config)
    metrics = run / "metrics.json"
    if not (run / "final.pt").is_file():
        restore_published(run)
    if (run / "final.pt").is_file() and metrics.is_file():
        history = json.loads(metrics.read_text())
        if len(history) == config.epochs:
            return history, run
    return train(replace(config, out=str(run))), run


def load_trained(run: Path, device: str = "cpu") -> Any:
    """The final model of a run folder written by :func:`train_cached`, in eval mode."""
    model, _ = load_checkpoint(Path(run) / "final.pt", map_location=device)
    return model.to(device).eval()


def trained_record(config: Any, runs: Path, **labels: Any) -> dict[str, Any]:
    """Train or reuse `config` and summarize the run for a study's results.json: ``labels``, the
    model name and options, parameter count, per-epoch history, final errors (%), summed epoch
    wall time (training + test pass, s), median training throughput over epochs (images/s; the
    median, so that an epoch slowed by other jobs on a shared machine does not skew it) and the
    run folder (relative to the repository when inside it)."""
    history, run = train_cached(config, runs)
    model = load_trained(run)
    return {**labels, "seed": config.seed, "train_samples_n": split_size(config, "train"),
            "test_samples_n": split_size(config, "test"), "model": config.model_name, "model_kwargs": dict(config.model_kwargs),
            "params": count_params(model), "history": history,
            "final_train_error": history[-1]["train_error"], "final_test_error": history[-1]["test_error"],
            "best_test_error": min(h["test_error"] for h in history),
            "wall_seconds": sum(h["epoch_time_s"] for h in history),
            "train_images_per_s": statistics.median(h["images_per_s"] for h in history), "run": repo_relative(run)}


@functools.lru_cache(maxsize=None)
def _split_size(dataset: str, root: str, split: str, samples: int | None, data_kwargs: str) -> int:
    return len(load_device_data(dataset, root, split, samples, "cpu", **json.loads(data_kwargs)))


def split_size(config: Any, split: str) -> int:
    """How many images a TrainConfig trained ("train") or tested ("test") on: the reported
    standard errors need the real count, not the requested one."""
    samples = config.samples if split == "train" else config.test_samples
    return _split_size(config.dataset, config.data_root, split, samples, json.dumps(config.data_kwargs, sort_keys=True))


def run_path(record: dict[str, Any]) -> Path:
    """The run folder of a :func:`trained_record` (stored there relative to the repository)."""
    run = Path(record["run"])
    return run if run.is_absolute() else REPO / run


def published_path(run: Path) -> Path | None:
    """A committed final checkpoint of this run (``results/<study>/nets/<run_key>.pt``), if any."""
    found = sorted((REPO / "results").glob(f"*/nets/{Path(run).name}.pt"))
    return found[0] if found else None


def publish_net(run: Path, out: Path) -> Path:
    """Commit-sized copy of a run's final model: ``out/nets/<run_key>.pt`` with the weights and the
    metadata (configuration, per-epoch history) but no optimizer state, so that a fresh clone can
    rescan or re-measure the net without retraining (:func:`train_cached` restores it)."""
    ck = read_checkpoint(Path(run) / "final.pt")
    model, _ = load_checkpoint(Path(run) / "final.pt")
    dest = Path(out) / "nets" / f"{Path(run).name}.pt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dest, model, {k: v for k, v in ck["meta"].items() if k not in ("model", "model_kwargs", "version")})
    return dest


def publish_records(records: list[dict[str, Any]], out: Path, recipe: str) -> None:
    """:func:`publish_net` for each :func:`trained_record` (its path stored as ``record["published"]``),
    and ``out/nets/README.md`` listing them with their errors, so that a reader of the folder knows
    what each file is without loading it. ``recipe`` is one sentence on how they were trained."""
    rows = []
    for r in records:
        dest = publish_net(run_path(r), out)
        r["published"] = repo_relative(dest)
        rows.append(f"| `{dest.name}` | {r.get('label', r['model'])} | {r['seed']} | {final_train_error(r):.2f} | "
                    f"{r['final_test_error']:.2f} ± {binomial_se_pct(r['final_test_error'], r['test_samples_n']):.2f} |")
    text = ["# Trained nets of the cpu tier (published for rescans)", "",
            f"Final weights and metadata (configuration, per-epoch history; no optimizer state). {recipe} A study's "
            "run cache (`studies/cache.py: train_cached`) restores a file here instead of retraining the run whose "
            "key is its name, so a fresh clone can rescan or re-measure these nets without training.", "",
            "| file | net | seed | training error % (eval mode) | test error % (± binomial SE) |",
            "|---|---|---|---|---|", *rows]
    (Path(out) / "nets" / "README.md").write_text("\n".join(text) + "\n")


def restore_published(run: Path) -> bool:
    """Put a published final model (see :func:`publish_net`) into ``run`` as final.pt and
    metrics.json, so the run counts as trained; False if none was published."""
    src = published_path(run)
    if src is None:
        return False
    ck = read_checkpoint(src)
    model, _ = load_checkpoint(src)
    Path(run).mkdir(parents=True, exist_ok=True)
    save_checkpoint(Path(run) / "final.pt", model, {k: v for k, v in ck["meta"].items()
                                                     if k not in ("model", "model_kwargs", "version")})
    (Path(run) / "metrics.json").write_text(json.dumps(ck["meta"]["history"], indent=1) + "\n")
    return True
