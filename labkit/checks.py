"""Argument checks shared by the package. Each raises one message that names the parameter, the bad value
and what is allowed, so a student can fix the call without reading the source."""
from __future__ import annotations

import math
from typing import Any, Iterable


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """An integer (bool is refused) within [low, high]."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name}={value!r} must be an integer, not a string")
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise TypeError(f"{name}={value!r} must be an integer{_range_text(low, high)}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name}={value} is out of range: expected an integer{_range_text(low, high)}")
    return value


def check_float(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number within the given (open or closed) interval."""
    if isinstance(value, bool):
        raise TypeError(f"{name}={value!r} must be a number, not a bool")
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name}={value!r} must be a number, not a string")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}={value!r} must be a number") from None
    interval = _interval_text(low, high, low_open, high_open)
    if not math.isfinite(number):
        raise ValueError(f"{name}={number} is not finite: expected a number{interval}")
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high:
        raise ValueError(f"{name}={number:g} is out of range: expected a number{interval}")
    return number


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed: expected one of {', '.join(map(repr, allowed))}")
    return value


def _range_text(low, high) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" >= {low}"
    if high is not None:
        return f" <= {high}"
    return ""


def _interval_text(low, high, low_open, high_open) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if low_open else '>='} {low:g}"
    if low is None:
        return f" {'<' if high_open else '<='} {high:g}"
    return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
