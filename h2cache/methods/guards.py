"""Guards that make a cache compute a whole transformer call: warm-up steps, a cap on consecutive reuse, and
final full steps. One rule, one set of settings, for H2-Cache and for its peers.

The same three rules are H2CacheConfig options (``warmup_steps``, ``max_consecutive_hits``,
``final_full_steps``, enforced by H2-Cache's own hooks). Offering them to FirstBlockCache and TeaCache too
(``fbcache-guarded``, ``teacache-guarded``) is what lets a benchmark tell what the guards buy from what
H2-Cache's two stages buy. ``tests/test_methods.py`` checks that :meth:`Guards.forces_full` and H2-Cache's
hooks decide alike for every step and streak.

Example:
    >>> g = guards_from_settings({"retention_ratio": 0.2, "max_consecutive_hits": 3, "final_full_steps": 1}, 28)
    >>> g.warmup_steps, g.max_consecutive_hits, g.final_full_steps
    (6, 3, 1)
    >>> [g.forces_full(step, streak=0) for step in (5, 6, 26, 27)]
    [True, False, False, True]
    >>> g.forces_full(10, streak=3), g.forces_full(10, streak=2)
    (True, False)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .settings import Setting

# Declared once, so that every guarded method offers the same settings with the same defaults. The defaults
# are MagCache's (K = 3, 20% of the steps retained) plus the last step, as h2cache-guarded always had.
MAX_CONSECUTIVE_HITS = Setting("max_consecutive_hits", int, 3, 1, None,
                               "guard: most transformer calls in a row that reuse anything")
RETENTION_RATIO = Setting("retention_ratio", float, 0.2, 0.0, 1.0,
                          "guard: share of initial steps always computed (warm-up = ceil(ratio x steps))")
FINAL_FULL_STEPS = Setting("final_full_steps", int, 1, 0, None, "guard: last steps always computed")
GUARD_SETTINGS = (MAX_CONSECUTIVE_HITS, RETENTION_RATIO, FINAL_FULL_STEPS)
GUARD_NAMES = tuple(s.name for s in GUARD_SETTINGS)


@dataclass(frozen=True)
class Guards:
    """When a call must compute every block. Steps count per cache context ('cond'/'uncond') from 0.

    Args:
        warmup_steps: the first ``warmup_steps`` steps compute.
        max_consecutive_hits: after this many calls in a row that reused anything, the next computes (0: no cap).
        final_full_steps: the last ``final_full_steps`` steps compute (needs ``num_inference_steps``).
        num_inference_steps: steps of the pipeline calls to come.
    """

    warmup_steps: int = 0
    max_consecutive_hits: int = 0
    final_full_steps: int = 0
    num_inference_steps: int | None = None

    def __post_init__(self) -> None:
        for name in ("warmup_steps", "max_consecutive_hits", "final_full_steps"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                raise ValueError(f"Guards.{name} must be an integer >= 0, got {value!r}")
        if self.final_full_steps and not (isinstance(self.num_inference_steps, int) and self.num_inference_steps >= 1):
            raise ValueError(f"Guards.final_full_steps = {self.final_full_steps} needs num_inference_steps "
                             f"(an integer >= 1), got {self.num_inference_steps!r}")

    def forces_full(self, step: int, streak: int) -> bool:
        """True when the call at `step`, after `streak` reusing calls in a row, must compute every block."""
        if step < self.warmup_steps:
            return True
        if self.final_full_steps and step >= self.num_inference_steps - self.final_full_steps:
            return True
        return bool(self.max_consecutive_hits) and streak >= self.max_consecutive_hits

    def h2_fields(self) -> dict[str, int]:
        """The same guards as ``H2CacheConfig`` fields."""
        return {"warmup_steps": self.warmup_steps, "max_consecutive_hits": self.max_consecutive_hits,
                "final_full_steps": self.final_full_steps}

    def describe(self) -> str:
        return (f"guards: {self.warmup_steps} warm-up steps, at most {self.max_consecutive_hits or 'any'} reusing "
                f"calls in a row, {self.final_full_steps} final full steps")


def guards_from_settings(settings: dict[str, Any], num_inference_steps: int) -> Guards:
    """The guards a method's settings ask for (``GUARD_SETTINGS``; a missing one takes its default)."""
    value = {s.name: settings.get(s.name, s.default) for s in GUARD_SETTINGS}
    return Guards(warmup_steps=math.ceil(value["retention_ratio"] * num_inference_steps),
                  max_consecutive_hits=value["max_consecutive_hits"],
                  final_full_steps=value["final_full_steps"], num_inference_steps=num_inference_steps)
