"""What the UI reads from an H2-Cache trace: which context to show, and which blocks ran at each step."""

from __future__ import annotations

import numpy as np

from h2cache.trace import StepRecord, Trace

PREFERRED_CONTEXT = "cond"


def shown_context(trace: Trace) -> tuple[str, str]:
    """(context to plot, a note for titles). With true CFG there are two contexts; the conditional one is shown."""
    contexts = trace.contexts
    if not contexts:
        return PREFERRED_CONTEXT, ""
    context = PREFERRED_CONTEXT if PREFERRED_CONTEXT in contexts else contexts[0]
    others = [c for c in contexts if c != context]
    note = f"context '{context}'" + (f" ({', '.join(repr(o) for o in others)} not shown)" if others else "")
    return context, note


def computed_mask(records: list[StepRecord], stage1_blocks: int, stage2_blocks: int) -> np.ndarray:
    """Boolean (blocks, steps): True where a block was computed, False where its output was reused,
    as each record says (:meth:`h2cache.trace.StepRecord.computed`)."""
    mask = np.ones((stage1_blocks + stage2_blocks, len(records)), dtype=bool)
    for column, record in enumerate(records):
        mask[:, column] = record.computed(stage1_blocks, stage2_blocks)
    return mask


def guard_forced(records: list[StepRecord]) -> np.ndarray:
    """Boolean (steps,): True where a guard (warm-up, final steps, hit cap) forced a full computation."""
    return np.array([r.forced_full for r in records], dtype=bool)


def decision_text(record: StepRecord) -> str:
    """One line on what the cached run did at this step."""
    if record.probe2_skipped:
        return "reused stage 1 and (forced) stage 2: only the stage-1 probe block ran"
    if record.hit1:
        return "reused stage 1 and (forced) stage 2: only the 2 probe blocks ran"
    if record.hit2:
        return "computed stage 1, reused stage 2"
    if record.forced_full:
        return "computed everything (forced by a guard)"
    if record.d1 is None:
        return "computed everything (no reference yet)"
    return "computed everything"
