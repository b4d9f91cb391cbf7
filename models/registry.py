"""Build any model of the toolkit by name.

One dict maps a name to a family builder plus the keyword defaults that make the name true
(``resnet56`` is ``cifar_resnet(depth=56)``), so variants are data, not copied classes.
"""
from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild a model: its registry name and the keywords it was built with."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    defaults: dict[str, Any]
    doc: str


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, builder: Builder, doc: str = "", **defaults: Any) -> None:
    """Add ``name`` -> ``builder(**defaults, **user_kwargs)``; names are unique."""
    if name in _REGISTRY:
        raise ValueError(f"model name {name!r} is registered twice")
    _REGISTRY[name] = _Entry(builder, defaults, doc)


def names() -> list[str]:
    """All registered model names, sorted."""
    return sorted(_REGISTRY)


def resolve_name(name: str, noshort: bool = False) -> str:
    """``resolve_name("resnet56", noshort=True) == "resnet56_noshort"`` (CLIs' ``--noshort``)."""
    if noshort and not name.endswith("_noshort"):
        name = f"{name}_noshort"
    _entry(name)
    return name


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}.{hint} `python -m models.summary --list` lists all "
            f"{len(_REGISTRY)} names."
        ) from None


def build(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build a registered model; keyword arguments override the name's defaults.

    The model carries ``model.spec`` (a :class:`ModelSpec`) so a checkpoint can rebuild it.
    """
    entry = _entry(name)
    if name.endswith("_noshort") and kwargs.get("shortcut") is not None:
        raise ValueError(f"{name!r} has no shortcuts; drop shortcut={kwargs['shortcut']!r} "
                         f"or build {name.removesuffix('_noshort')!r}")
    merged = {**entry.defaults, **kwargs, "num_classes": num_classes, "in_channels": in_channels}
    try:
        model = entry.builder(**merged)
    except TypeError as err:
        raise ValueError(f"bad options for model {name!r}: {err}") from None
    model.spec = ModelSpec(name, {"num_classes": num_classes, "in_channels": in_channels, **kwargs})
    return model


def describe(name: str) -> str:
    """One line saying what a name builds."""
    entry = _entry(name)
    opts = ", ".join(f"{k}={v!r}" for k, v in entry.defaults.items())
    return f"{name}: {entry.doc or entry.builder.__name__}({opts})"


def parse_key_values(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """CLI ``key=value`` options for builders and data sets; values are Python literals where
    possible (2, 0.5, None, 'B'), else strings."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {pair!r}")
        try:
            result[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            result[key] = value
    return result
