"""The step scrubber: each run's predicted clean image after a chosen step, side by side."""

from __future__ import annotations

from typing import Any

import numpy as np

from h2cache.compare import Comparison

from .trace_view import decision_text, shown_context


def scrubber_state(comparison: Comparison) -> dict[str, Any]:
    """What the scrubber needs per session (kept in a gr.State, so it never leaves the server)."""
    trace = comparison.cached.trace
    context, _ = shown_context(trace)
    records = trace.for_context(context)
    return {
        "baseline": comparison.baseline.previews,
        "cached": comparison.cached.previews,
        "sigmas": comparison.baseline.sigmas,
        "decisions": [decision_text(r) for r in records],
    }


def step_view(state: dict[str, Any] | None, step: Any) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """(baseline preview, cached preview, caption) after 1-based `step`, clamped to the runs' length."""
    if not state or not state.get("baseline"):
        return None, None, "Run a comparison to scrub through its steps."
    count = len(state["baseline"])
    try:
        index = min(max(int(step), 1), count) - 1
    except (TypeError, ValueError):
        index = count - 1
    sigma = state["sigmas"][index] if index < len(state["sigmas"]) else float("nan")
    decision = state["decisions"][index] if index < len(state["decisions"]) else ""
    caption = f"**Step {index + 1}/{count}** (σ = {sigma:.3f}) — predicted clean image. H2-Cache {decision}."
    return state["baseline"][index], state["cached"][index], caption
