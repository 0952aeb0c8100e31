"""Guards that make a cache compute a whole transformer call: warm-up steps, a cap on consecutive reuse, and
final full steps. One rule, one set of settings, for H2-Cache and for its peers.

The same three rules are H2CacheConfig options (``warmup_steps``, ``max_consecutive_hits``,
``final_full_steps``, enforced by H2-Cache's own hooks). Offering them to FirstBlockCache and TeaCache too
(``fbcache-guarded``, ``teacache-guarded``) is what lets a benchmark tell what the guards buy from what
H2-Cache's two stages buy. The rule itself is :class:`h2cache.guards.Guards`, which H2-Cache's hooks read too.

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
from typing import Any

from ..guards import Guards
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


def guards_from_settings(settings: dict[str, Any], num_inference_steps: int) -> Guards:
    """The guards a method's settings ask for (``GUARD_SETTINGS``; a missing one takes its default)."""
    value = {s.name: settings.get(s.name, s.default) for s in GUARD_SETTINGS}
    return Guards(warmup_steps=math.ceil(value["retention_ratio"] * num_inference_steps),
                  max_consecutive_hits=value["max_consecutive_hits"],
                  final_full_steps=value["final_full_steps"], num_inference_steps=num_inference_steps)
