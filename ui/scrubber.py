"""The step scrubber: each run's predicted clean image after a chosen step, side by side."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from h2cache.compare import Comparison

from .preview_store import PREVIEWS, PreviewStore
from .trace_view import decision_text, shown_context

EMPTY_CAPTION = "Run a comparison to scrub through its steps."
EXPIRED_CAPTION = ("The step images of this comparison are no longer kept (the server keeps only the most recent "
                   "ones, to bound its memory). Press **Generate** to run it again.")


def scrubber_state(comparison: Comparison, store: PreviewStore = PREVIEWS) -> dict[str, Any]:
    """What the scrubber needs per session: a key into the server's preview store, and a few numbers per step.

    The images stay in `store` (bounded), never in the session, so sessions cost almost nothing.
    """
    trace = comparison.cached.trace
    context, _ = shown_context(trace)
    records = trace.for_context(context)
    return {
        "previews": store.put(comparison.baseline.previews, comparison.cached.previews),
        "steps": len(comparison.baseline.previews),
        "sigmas": comparison.baseline.sigmas,
        "decisions": [decision_text(r) for r in records],
    }


def scrubber_slider(steps: int) -> Any:
    """The scrubber's slider for a run of `steps` steps, at the last step.

    A one-step run has nothing to scrub; Gradio refuses a slider whose minimum equals its maximum.
    """
    if steps <= 1:
        return gr.Slider(minimum=0, maximum=1, value=1, step=1, interactive=False)
    return gr.Slider(minimum=1, maximum=steps, value=steps, step=1, interactive=True)


def step_view(state: Any, step: Any, store: PreviewStore = PREVIEWS) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """(baseline preview, cached preview, caption) after 1-based `step`, clamped to the runs' length.

    Never raises: the state comes from the session and the step from the client.
    """
    if not isinstance(state, dict) or not state.get("steps"):
        return None, None, EMPTY_CAPTION
    key = state.get("previews")
    count = store.steps(key)
    if not count:
        return None, None, EXPIRED_CAPTION
    try:
        index = min(max(int(float(step)), 1), count) - 1
    except (TypeError, ValueError, OverflowError):
        index = count - 1
    shown = store.step(key, index)
    if shown is None:  # evicted between the two look-ups
        return None, None, EXPIRED_CAPTION
    baseline, cached = shown
    sigmas, decisions = state.get("sigmas") or [], state.get("decisions") or []
    sigma = sigmas[index] if index < len(sigmas) else float("nan")
    decision = decisions[index] if index < len(decisions) else ""
    caption = f"**Step {index + 1}/{count}** (σ = {sigma:.3f}) — predicted clean image. H2-Cache {decision}."
    return baseline, cached, caption
