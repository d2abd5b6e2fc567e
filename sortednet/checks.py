"""Checking one configured value: one line naming the key, the value and what is allowed."""

from __future__ import annotations

import math
from typing import Any

SHOWN = 100  # characters of user input quoted in a message


def shown(text: object) -> str:
    """User input as an error message quotes it: its repr, at most SHOWN characters."""
    text = repr(text)
    return text if len(text) <= SHOWN else f"{text[: SHOWN - 5]}...{text[-2:]} ({len(text)} characters)"


def number(
    key: str,
    value: Any,
    kind: type = float,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> Any:
    """`value` as `kind` (int or float) within [low, high] (open ends where asked), else a one-line ValueError."""
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high:g}")
    what = "an int" if kind is int else "a number"
    allowed = f"{what}{' ' + ' and '.join(bounds) if bounds else ''}"
    typed = not isinstance(value, bool) and (
        isinstance(value, int) if kind is int else isinstance(value, (int, float))
    )
    if not typed:
        problem = f"is not {what}"
    elif not math.isfinite(kind(value)):
        problem = "is not finite"
    elif low is not None and (value < low or (low_open and value == low)):
        problem = f"is {'not above' if low_open else 'below'} {low:g}"
    elif high is not None and (value > high or (high_open and value == high)):
        problem = f"is {'not below' if high_open else 'above'} {high:g}"
    else:
        return kind(value)
    raise ValueError(f"{key}={value!r} {problem}; allowed: {allowed}")
