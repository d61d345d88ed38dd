"""The one exception for bad user input.

Library code raises `InputError` with a message a user can act on (what was wrong, with which
value, what is accepted). The CLI turns it into one stderr line and exit code 2; the app into a
visible error. Programming errors stay ordinary exceptions.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import get_args


class InputError(ValueError):
    """Bad user input: a missing file, a mask of the wrong size, an unknown option, ..."""


def check_choice(field: str, value: str, literal: object) -> None:
    """Raise InputError when `value` is not one of the `Literal` type's options."""
    allowed = get_args(literal)
    if value not in allowed:
        raise InputError(f"{field} must be one of {', '.join(allowed)}, got {value!r}")


def check_number(field: str, value: object, allowed: str, ok: Callable[[float], bool]) -> None:
    """Raise InputError unless `value` is a finite number for which `ok(value)` holds.

    `allowed` says what is accepted, e.g. "a number > 0": NaN and infinities are always refused
    (they compare False with everything, so a bare `value <= 0` lets NaN through).
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
        or not ok(float(value))
    ):
        raise InputError(f"{field} must be {allowed}, got {value!r}")


def check_whole(field: str, value: object, low: int = 1, high: int | None = None, optional: bool = False) -> None:
    """Raise InputError unless `value` is a whole number in [low, high] (None: no upper bound); `optional`: None
    is accepted too (a setting that may be left unset). `True` is refused, though Python counts it as 1."""
    if optional and value is None:
        return
    allowed = f"a whole number of at least {low}" if high is None else f"a whole number in [{low}, {high}]"
    check_number(field, value, allowed, lambda v: v == int(v) and v >= low and (high is None or v <= high))


def first_line(error: BaseException, limit: int | None = None) -> str:
    """An exception's message without the advice paragraphs some libraries append (at most `limit` characters)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(error).__name__
