"""Argparse types that refuse a number outside its range with a message naming the range.

argparse prefixes the message with the flag, so a bad value reads
``argument --pair-weight: must be >= 0, got -1.0`` and exits with status 2, instead of a traceback
from deep inside training.

>>> at_least(0)("0.5")
0.5
>>> count(1)("0")
Traceback (most recent call last):
...
argparse.ArgumentTypeError: must be an integer >= 1, got 0
"""

from __future__ import annotations

import argparse
import math
from typing import Callable


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def at_least(low: float) -> Callable[[str], float]:
    """A float >= ``low``."""
    def parse(text: str) -> float:
        value = _number(text, float)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low:g}, got {value:g}")
        return value
    return parse


def above(low: float) -> Callable[[str], float]:
    """A float > ``low``."""
    def parse(text: str) -> float:
        value = _number(text, float)
        if not value > low:
            raise argparse.ArgumentTypeError(f"must be > {low:g}, got {value:g}")
        return value
    return parse


def in_unit_interval(text: str) -> float:
    """A float in [0, 1)."""
    value = _number(text, float)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value:g}")
    return value


def count(low: int) -> Callable[[str], int]:
    """An integer >= ``low``."""
    def parse(text: str) -> int:
        value = _number(text, int)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value
    return parse
