"""A proposed variant of H2-Cache, measured by the benchmark: MagCache-style safeguards around the default.

Not the library's behaviour (``apply_h2_cache`` is unchanged); a prototype to measure a change to the method.
Three rules decide, before each transformer call, whether that call must be computed in full:

1. the first ``ceil(retention_ratio * steps)`` steps (the structure is laid down there);
2. the last step (its error goes straight into the image);
3. the call after ``max_consecutive_hits`` calls in a row that reused anything (stale residuals compound).

A forced call is made by setting H2-Cache's thresholds to 0 for that call (a distance is never below 0, so
both stages miss and refresh their references); the thresholds are restored right after. Everything else
is H2-Cache as specified.

Example:
    >>> handle = apply_method(pipe, "h2cache-guarded", tau1=0.15, tau2=0.22, max_consecutive_hits=3)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

from .base import ApplyContext, Attachment
from .h2 import attach_h2cache


def attach_h2cache_guarded(settings: dict[str, Any], context: ApplyContext) -> Attachment:
    h2_settings = {k: v for k, v in settings.items() if k not in ("max_consecutive_hits", "retention_ratio")}
    inner = attach_h2cache(h2_settings, context)
    config = inner.inner.config
    meter = context.meter
    taus = (config.tau1, config.tau2)
    steps = context.num_inference_steps
    retained = math.ceil(settings["retention_ratio"] * steps)
    cap = settings["max_consecutive_hits"]
    counters: dict[str, list[int]] = {}  # context -> [calls so far, consecutive calls with reuse]

    def before(module, args, kwargs):
        if meter.run_pending:
            counters.clear()
        step, streak = counters.setdefault(meter.current_context(), [0, 0])
        force = step < retained or step >= steps - 1 or streak >= cap
        config.tau1, config.tau2 = (0.0, 0.0) if force else taus

    def after(module, args, kwargs, output):
        counter = counters[meter.trace[-1].context]
        counter[0] += 1
        counter[1] = counter[1] + 1 if meter.trace[-1].hit else 0
        config.tau1, config.tau2 = taus
        return output

    hooks = [context.transformer.register_forward_pre_hook(before, with_kwargs=True),
             context.transformer.register_forward_hook(after, with_kwargs=True)]

    def remove() -> None:
        for hook in hooks:
            hook.remove()
        config.tau1, config.tau2 = taus
        inner.remove()

    text = f"{inner.description} + guards(first {retained} steps, last step, at most {cap} reusing calls in a row)"
    return Attachment(remove=remove, annotate=inner.annotate, description=text, inner=inner.inner)
