"""Checkpoints: one file holding a state_dict plus JSON-able metadata, loaded only with
``torch.load(weights_only=True)`` so that opening a checkpoint can never run code.

Files from tomgoldstein/loss-landscape (``{'state_dict': ...}`` or a bare state_dict, often
``.t7``) load too: the model name is then given by the caller and the shortcut option is read
off the keys.
"""
from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .fileio import atomic_torch_save, package_version
from .registry import ModelSpec, build

FORMAT = "resnet-toolkit/1"
# torch.save's pre-1.6 format (the reference project's .t7 files): pickle protocol 2, then the
# LONG1 magic number 0x1950a86a20f9469cfc6c.
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model it should build."""


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None) -> None:
    """Save ``model`` (built by :func:`models.build`) with metadata; ``extra`` holds resume state."""
    spec: ModelSpec | None = getattr(model, "spec", None)
    if spec is None:
        raise CheckpointError("model has no .spec; build it with models.build(name, ...) so the "
                              "checkpoint can name it")
    full_meta = {**(meta or {}), "model": spec.name, "model_kwargs": dict(spec.kwargs),
                 "version": package_version()}
    atomic_torch_save({"format": FORMAT, "state_dict": model.state_dict(), "meta": full_meta,
                       "extra": extra or {}}, path)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Return ``{"state_dict", "meta", "extra"}`` for ours or the reference project's files."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise CheckpointError(f"checkpoint {str(path)!r} is {kind}; give the path of a checkpoint file")
    if not _is_torch_file(path):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (neither torch.save's zip archive nor its "
                              f"legacy format); check the path")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} holds Python objects beyond tensors and plain containers; it is refused "
            f"because loading it could run code (torch.load weights_only=True). Re-save just its "
            f"state_dict from a trusted session. Detail: {str(err).splitlines()[0]}") from None
    except Exception as err:  # truncated or not a torch file at all
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): "
                              f"{type(err).__name__}: {err}") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return {"state_dict": obj["state_dict"], "meta": dict(obj.get("meta", {})), "extra": obj.get("extra", {})}
    if isinstance(obj, dict) and _is_state_dict(obj.get("state_dict")):
        meta = {k: v for k, v in obj.items() if k != "state_dict" and isinstance(v, (int, float, str))}
        return {"state_dict": _strip_prefix(obj["state_dict"]), "meta": meta, "extra": {}}
    if _is_state_dict(obj):
        return {"state_dict": _strip_prefix(obj), "meta": {}, "extra": {}}
    raise CheckpointError(f"{path} holds neither a toolkit checkpoint nor a state_dict "
                          f"(top-level keys: {sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__})")


def _is_torch_file(path: Path) -> bool:
    """Whether ``path`` starts like a torch.save file, so that an unpickling refusal means real
    Python objects and not random bytes."""
    with open(path, "rb") as fh:
        head = fh.read(len(_LEGACY_MAGIC))
    return head.startswith(_ZIP_MAGIC) or head == _LEGACY_MAGIC


def normalization_of(meta: dict[str, Any]) -> str:
    """The input normalization (a `models.data.NORMALIZATIONS` name) a checkpoint's weights expect.

    Recorded by models.train; a file without toolkit metadata (no ``model``: the original
    loss-landscape format) expects that code's constants; toolkit checkpoints written before the
    field existed were trained with the torchvision-style constants.
    """
    if "normalization" in meta:
        return str(meta["normalization"])
    return "torchvision" if "model" in meta else "loss-landscape"


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """nn.DataParallel saves keys as ``module.x``; drop that prefix."""
    if all(k.startswith("module.") for k in state):
        return {k.removeprefix("module."): v for k, v in state.items()}
    return state


def detect_shortcut(state: dict[str, torch.Tensor]) -> str | None:
    """Read the shortcut option off a ResNet state_dict: projections everywhere -> "C", only on
    dimension changes -> "B", none -> None (option A and no-skip nets keep no shortcut weights)."""
    blocks = {k.split(".conv1.")[0] for k in state if k.startswith("layer") and ".conv1." in k}
    projected = {k.split(".shortcut.")[0] for k in state if ".shortcut.0.weight" in k}
    if not projected:
        return None
    return "C" if projected >= blocks else "B"


def load_checkpoint(path: str | os.PathLike, name: str | None = None, map_location: str | torch.device = "cpu",
                    **build_kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights; returns ``(model, meta)``.

    ``name`` is needed only for files without metadata (the reference project's); their class
    count, input channels and shortcut option are inferred from the tensors.
    """
    ck = read_checkpoint(path, map_location)
    state, meta = ck["state_dict"], ck["meta"]
    kwargs = dict(meta.get("model_kwargs", {}))
    if name is None:
        name = meta.get("model")
        if name is None:
            raise CheckpointError(f"{path} carries no model name (a reference-project file?): pass "
                                  f"the name, e.g. load_checkpoint(path, name='resnet56') or --model resnet56")
    elif meta.get("model") not in (None, name):
        raise CheckpointError(f"{path} holds a {meta['model']!r}, not a {name!r}: drop the model name "
                              f"or pick the matching checkpoint")
    if "model" not in meta:
        kwargs.update(_infer_reference_kwargs(name, state))
        # The keys cannot tell e.g. an option-A ResNet from its _noshort twin: say whose word it is.
        print(f"notice: {path} has no toolkit metadata (original loss-landscape format): built as {name!r} "
              f"because the caller named it, unverified (the weights cannot tell a ResNet from its _noshort twin); "
              f"its inputs need the original normalization ({normalization_of(meta)!r})", file=sys.stderr)
    kwargs.update(build_kwargs)
    model = build(name, **kwargs)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{path} does not fit model {name!r} {kwargs}: "
            + "; ".join(p for p in (f"missing {missing[:5]}" if missing else "",
                                    f"unexpected {unexpected[:5]}" if unexpected else "",
                                    f"shape mismatch {shapes[:3]}" if shapes else "") if p)
            + ". Check --model / --noshort / the shortcut option against how it was trained.")
    model.load_state_dict(state)
    return model, meta


def _infer_reference_kwargs(name: str, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    heads = [k for k in state if k.endswith(("linear.weight", "classifier.weight", "fc.weight"))]
    if heads:
        kwargs["num_classes"] = state[heads[-1]].shape[0]
    first_conv = next((v for k, v in state.items() if v.dim() == 4), None)
    if first_conv is not None:
        kwargs["in_channels"] = first_conv.shape[1]
    if not name.endswith("_noshort") and any(k.startswith("layer") for k in state):
        shortcut = detect_shortcut(state)
        if shortcut is not None:
            kwargs["shortcut"] = shortcut
    return kwargs
