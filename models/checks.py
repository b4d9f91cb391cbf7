"""Input checks shared by the configs of every package, so one idea has one wording."""
from __future__ import annotations

import numbers
from typing import Any

__all__ = ["positive_int"]


def positive_int(name: str, value: Any, *, allow_none: bool = False, note: str = "") -> None:
    """None; raises ValueError unless ``value`` is a whole number >= 1 (or None, where allowed).

    Booleans and floats are refused (``True`` is not a count, ``2.0`` hides a unit slip); numpy
    integers pass. ``note`` says what the number counts or what None means, e.g. "None: all".
    """
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        accepted = "a positive integer or None" if allow_none else "a positive integer"
        detail = f" ({note})" if note else ""
        raise ValueError(f"{name} must be {accepted}{detail}; got {value!r}")
