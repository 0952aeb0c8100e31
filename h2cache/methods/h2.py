"""H2-Cache as a benchmark method: the library's :func:`~h2cache.apply_h2_cache`, with its trace merged in."""

from __future__ import annotations

from typing import Any

from ..config import H2CacheConfig
from ..apply import apply_h2_cache
from .base import ApplyContext, Attachment
from .meter import MethodRecord


def attach_h2cache(settings: dict[str, Any], context: ApplyContext) -> Attachment:
    if settings.get("final_full_steps"):  # the guard needs the step count the benchmark already knows
        settings = {**settings, "num_inference_steps": context.num_inference_steps}
    config = H2CacheConfig(**settings)
    handle = apply_h2_cache(context.transformer, config)

    def annotate(records: list[MethodRecord]) -> None:
        own = handle.trace
        if len(own) != len(records):  # e.g. read in the middle of a call; don't mis-pair records
            return
        for record, step in zip(records, own):
            record.signal = step.d1
            record.detail = {"d1": step.d1, "hit1": step.hit1, "d2": step.d2, "hit2": step.hit2,
                             "forced2": step.forced2, "forced_full": step.forced_full,
                             "blocks_run_h2": step.blocks_run}

    return Attachment(remove=handle.remove, annotate=annotate, description=repr(config), inner=handle)
