"""Argparse types that refuse a number outside its range with a message naming the range.

argparse prefixes the message with the flag, so a bad value reads
``argument --pair-weight: must be a number >= 0, got '-1'`` and exits with status 2, instead of a traceback
from deep inside training.

>>> at_least(0)("0.5")
0.5
>>> count(1)("0")
Traceback (most recent call last):
...
argparse.ArgumentTypeError: must be an integer >= 1, got '0'
"""

from __future__ import annotations

import argparse
import math
from typing import Callable


def _ranged(kind: type, allowed: str, inside: Callable[[float], bool]) -> Callable[[str], float]:
    """A parser of ``kind`` that refuses text outside ``allowed`` (e.g. ">= 0"), echoing the text as given."""
    noun = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not inside(value):
            raise argparse.ArgumentTypeError(f"must be {noun} {allowed}, got {text!r}")
        return value
    return parse


def at_least(low: float) -> Callable[[str], float]:
    """A float >= ``low``."""
    return _ranged(float, f">= {low:g}", lambda v: v >= low)


def above(low: float) -> Callable[[str], float]:
    """A float > ``low``."""
    return _ranged(float, f"> {low:g}", lambda v: v > low)


in_unit_interval = _ranged(float, "in [0, 1)", lambda v: 0 <= v < 1)
"""A float in [0, 1)."""


def count(low: int) -> Callable[[str], int]:
    """An integer >= ``low``."""
    return _ranged(int, f">= {low}", lambda v: v >= low)
