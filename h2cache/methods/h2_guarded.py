"""The proposed guards around H2-Cache, as a benchmark method: MagCache-style safeguards.

Three rules make a transformer call compute every block (``H2CacheConfig`` options, off in the default):

1. the first ``ceil(retention_ratio * steps)`` steps (``warmup_steps``: the structure is laid down there);
2. the last ``final_full_steps`` steps (1 by default: its error goes straight into the image);
3. the call after ``max_consecutive_hits`` calls in a row that reused anything (stale residuals compound).

This method only turns the benchmark's settings into those config fields (:mod:`h2cache.methods.guards`,
which the guarded peers share); the hooks do the rest.
(The first version wrapped the default by zeroing the thresholds for forced calls; the config options
reproduce its images and traces bit for bit, so its measurements in docs/BENCHMARKS_HISTORY.md still hold.)

Example:
    >>> import torch, h2cache
    >>> from h2cache.methods import apply_method
    >>> pipe = h2cache.load_pipeline()
    >>> pipe.set_progress_bar_config(disable=True)
    >>> handle = apply_method(pipe, "h2cache-guarded", tau1=0.15, tau2=0.22, max_consecutive_hits=3)
    >>> c = handle.inner.config  # the model's 28 steps: ceil(0.2 x 28) warm-up steps
    >>> c.warmup_steps, c.max_consecutive_hits, c.final_full_steps
    (6, 3, 1)
    >>> handle.remove()
    >>> # Thresholds this loose let stage 1 hit on every call (2 blocks: the two probes); the guards set the rest.
    >>> handle = apply_method(pipe, "h2cache-guarded", tau1=1.0, tau2=1.0, max_consecutive_hits=2,
    ...                       num_inference_steps=8)
    >>> image = pipe("a red circle at the center on a plain blue background",
    ...              **dict(h2cache.generation_defaults(pipe), num_inference_steps=8),
    ...              generator=torch.Generator().manual_seed(0)).images[0]
    >>> [r.blocks_run for r in handle.trace.for_context("cond")]
    [24, 24, 2, 2, 24, 2, 2, 24]
    >>> handle.remove()
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
