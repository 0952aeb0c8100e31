"""The step scrubber: each run's predicted clean image after a chosen step, side by side."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from h2cache.compare import Comparison

from .pfs_panel import EMPTY_TABLE, compact_views, pfs_table, stage_picture, views_nbytes
from .preview_store import PREVIEWS, PreviewStore
from .views import decision_text, shown_context

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
    steps = len(comparison.baseline.previews)
    # The PFS panel's data lives beside the previews in the bounded store, never in the session.
    views = compact_views(comparison.cached.pfs, context, steps)
    extras = [{"views": views[i], "record": records[i].as_dict() if i < len(records) else None} for i in range(steps)]
    height, width = comparison.cached.image.shape[:2]
    return {
        "previews": store.put(comparison.baseline.previews, comparison.cached.previews, extras, views_nbytes(views)),
        "steps": steps,
        "sigmas": comparison.baseline.sigmas,
        "decisions": [decision_text(r) for r in records],
        "taus": (comparison.config.tau1, comparison.config.tau2),
        "size": (int(height), int(width)),
        "context": context,
    }


def scrubber_slider(steps: int) -> Any:
    """The scrubber's slider for a run of `steps` steps, at the last step.

    A one-step run has nothing to scrub; Gradio refuses a slider whose minimum equals its maximum.
    """
    if steps <= 1:
        return gr.Slider(minimum=0, maximum=1, value=1, step=1, interactive=False)
    return gr.Slider(minimum=1, maximum=steps, value=steps, step=1, interactive=True)


def _locate(state: Any, step: Any, store: PreviewStore, empty: str) -> tuple[str, int, int] | str:
    """(store key, 0-based index, step count) of the client's 1-based `step`, or the caption that says why not."""
    if not isinstance(state, dict) or not state.get("steps"):
        return empty
    key = state.get("previews")
    count = store.steps(key)
    if not count:
        return EXPIRED_CAPTION
    try:
        index = min(max(int(float(step)), 1), count) - 1
    except (TypeError, ValueError, OverflowError):
        index = count - 1  # an unreadable step shows the last one
    return key, index, count


def step_view(state: Any, step: Any, store: PreviewStore = PREVIEWS) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """(baseline preview, cached preview, caption) after 1-based `step`, clamped to the runs' length.

    Never raises: the state comes from the session and the step from the client.
    """
    found = _locate(state, step, store, EMPTY_CAPTION)
    if isinstance(found, str):
        return None, None, found
    key, index, count = found
    shown = store.step(key, index)
    if shown is None:  # evicted between the two look-ups
        return None, None, EXPIRED_CAPTION
    baseline, cached = shown
    sigmas, decisions = state.get("sigmas") or [], state.get("decisions") or []
    sigma = sigmas[index] if index < len(sigmas) else float("nan")
    decision = decisions[index] if index < len(decisions) else ""
    caption = f"**Step {index + 1}/{count}** (σ = {sigma:.3f}) — predicted clean image. H2-Cache {decision}."
    return baseline, cached, caption


def pfs_view(state: Any, step: Any, store: PreviewStore = PREVIEWS) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """(stage-1 picture, stage-2 picture, table) of what PFS compared at 1-based `step`; never raises."""
    found = _locate(state, step, store, EMPTY_TABLE)
    if isinstance(found, str):
        return None, None, found
    key, index, _ = found
    extra = store.extra(key, index)
    if not isinstance(extra, dict):
        return None, None, EXPIRED_CAPTION
    views = extra.get("views") or {}
    height, width = state.get("size") or (0, 0)
    taus = tuple(state.get("taus") or (float("nan"), float("nan")))
    pictures = [stage_picture(views[s], height, width) if s in views else None for s in (1, 2)]
    table = pfs_table(views, taus, extra.get("record"), index + 1, str(state.get("context", "cond")))
    return pictures[0], pictures[1], table
