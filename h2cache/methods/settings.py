"""Declared settings of a caching method: type, range, default; validated with errors that name the field.

Example:
    >>> s = Setting("threshold", float, 0.05, low=0.0, high=10.0, help="relative L1 threshold")
    >>> validate_settings("fbcache", (s,), {"threshold": 0.1})
    {'threshold': 0.1}
    >>> validate_settings("fbcache", (s,), {"threshold": -1})
    Traceback (most recent call last):
    ...
    ValueError: fbcache.threshold must be a number in [0.0, 10.0], got -1
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..config import plain_number


@dataclass(frozen=True)
class Setting:
    """One tunable of a method. ``low``/``high`` are inclusive bounds (``None``: unbounded). A setting with
    ``none_means`` also takes ``None`` (``none`` on the command line), which that text describes."""

    name: str
    kind: type  # float, int or bool
    default: Any
    low: float | None = None
    high: float | None = None
    help: str = ""
    none_means: str | None = None

    def describe(self) -> str:
        if self.kind is bool:
            return f"{self.name}: true/false (default {self.default})"
        optional = "" if self.none_means is None else f" or none ({self.none_means})"
        return f"{self.name}: {self.kind.__name__} in {self.range_text()}{optional} (default {self.default})"

    def range_text(self) -> str:
        low = "-inf" if self.low is None else self.low
        high = "inf" if self.high is None else self.high
        return f"[{low}, {high}]"

    def check(self, method: str, value: Any) -> Any:
        """`value` checked and converted once to a plain Python value (numpy and 0-d torch numbers included)."""
        where = f"{method}.{self.name}"
        if value is None and self.none_means is not None:
            return None
        plain = plain_number(value, self.kind)
        if self.kind is bool:
            if plain is None:
                raise ValueError(f"{where} must be true or false, got {value!r}")
            return plain
        label = "an integer" if self.kind is int else "a number"
        ok = plain is not None and math.isfinite(plain)
        ok = ok and (self.low is None or plain >= self.low) and (self.high is None or plain <= self.high)
        if not ok:
            optional = "" if self.none_means is None else " or None"
            raise ValueError(f"{where} must be {label} in {self.range_text()}{optional}, got {value!r}")
        return plain

    def parse(self, method: str, text: str) -> Any:
        """A value from the command line (``'0.1'``, ``'3'``, ``'true'``), then checked."""
        text = text.strip()
        if self.none_means is not None and text.lower() == "none":
            return None
        try:
            if self.kind is bool:
                lowered = text.lower()
                if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError
                value: Any = lowered in ("1", "true", "yes", "on")
            elif self.kind is int:
                value = int(text)
            else:
                value = float(text)
        except ValueError:
            kind = "true/false" if self.kind is bool else self.kind.__name__
            raise ValueError(f"{method}.{self.name} expects {kind}, got {text!r}") from None
        return self.check(method, value)


def validate_settings(method: str, declared: tuple[Setting, ...], given: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in, every value checked; unknown names raise ``ValueError`` listing the known ones."""
    by_name = {s.name: s for s in declared}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        known = ", ".join(by_name) or "none"
        raise ValueError(f"{method} has no setting {unknown[0]!r}; its settings are: {known}")
    return {name: s.check(method, given.get(name, s.default)) for name, s in by_name.items()}
