"""The proposed guards around H2-Cache, as a benchmark method: MagCache-style safeguards.

Three rules make a transformer call compute every block (``H2CacheConfig`` options, off in the default):

1. the first ``ceil(retention_ratio * steps)`` steps (``warmup_steps``: the structure is laid down there);
2. the last ``final_full_steps`` steps (1 by default: its error goes straight into the image);
3. the call after ``max_consecutive_hits`` calls in a row that reused anything (stale residuals compound).

This method only turns the benchmark's settings into those config fields (:mod:`h2cache.methods.guards`,
which the guarded peers share); the hooks do the rest.
(The first version wrapped the default by zeroing the thresholds for forced calls; the config options
reproduce its images and traces bit for bit, so its measurements in docs/BENCHMARKS.md still hold.)

Example:
    >>> handle = apply_method(pipe, "h2cache-guarded", tau1=0.15, tau2=0.22, max_consecutive_hits=3)  # doctest: +SKIP
    >>> handle.inner.config.warmup_steps                                                           # doctest: +SKIP
    6
"""

from __future__ import annotations

from typing import Any

from .base import ApplyContext, Attachment
from .guards import GUARD_NAMES, guards_from_settings
from .h2 import attach_h2cache


def attach_h2cache_guarded(settings: dict[str, Any], context: ApplyContext) -> Attachment:
    guards = guards_from_settings(settings, context.num_inference_steps)
    h2_settings = {k: v for k, v in settings.items() if k not in GUARD_NAMES}
    return attach_h2cache({**h2_settings, **guards.h2_fields()}, context)
