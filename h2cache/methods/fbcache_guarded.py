"""FirstBlockCache with the guards of H2-Cache's proposal: warm-up steps, a cap on reusing calls in a row,
final full steps (:mod:`h2cache.methods.guards`).

diffusers' FirstBlockCache keeps no step count, so the guard reads the step and the reuse streak of the
current cache context from the block meter every registered method runs under
(:meth:`~h2cache.methods.meter.BlockMeter.current_call`). It wraps the leader block's decision
(``FBCHeadBlockHook._should_compute_remaining_blocks``, diffusers 0.42): the distance is still measured and,
on a forced call, the reference is refreshed, as H2-Cache's own guards do.

Example:
    >>> import torch, h2cache
    >>> from h2cache.methods import apply_method
    >>> pipe = h2cache.load_pipeline()
    >>> pipe.set_progress_bar_config(disable=True)
    >>> call = dict(h2cache.generation_defaults(pipe), num_inference_steps=8)
    >>> # The first block's change stays far below 1.0 here, so only the guards make a call compute.
    >>> handle = apply_method(pipe, "fbcache-guarded", threshold=1.0, max_consecutive_hits=2,
    ...                       retention_ratio=0.2, final_full_steps=1, num_inference_steps=8)
    >>> image = pipe("a red circle at the center on a plain blue background", **call,
    ...              generator=torch.Generator().manual_seed(0)).images[0]
    >>> # 2 warm-up steps (ceil(0.2 x 8)), a full call after 2 reusing ones, the last step; 1: leader block only
    >>> [r.blocks_run for r in handle.trace.for_context("cond")]
    [24, 24, 1, 1, 24, 1, 1, 24]
    >>> handle.remove()
"""

from __future__ import annotations

from typing import Any

import torch

from .base import ApplyContext, Attachment
from .diffusers_caches import attach_fbcache, find_block_hook
from .guards import guards_from_settings

_FBC_LEADER_HOOK = "fbc_leader_block_hook"  # diffusers.hooks.first_block_cache._FBC_LEADER_BLOCK_HOOK


def attach_fbcache_guarded(settings: dict[str, Any], context: ApplyContext) -> Attachment:
    meter = context.meter
    if meter is None:
        raise ValueError("fbcache-guarded needs the block meter that Method.apply attaches (step and streak)")
    guards = guards_from_settings(settings, context.num_inference_steps)
    attachment = attach_fbcache(settings, context)
    try:
        head = find_block_hook(context.transformer, _FBC_LEADER_HOOK)
    except LookupError:
        attachment.remove()
        raise
    decide = head._should_compute_remaining_blocks

    @torch.compiler.disable
    def guarded_decision(residual: torch.Tensor) -> bool:
        measured = decide(residual)  # always measured, so a forced call's distance is the method's own
        call = meter.current_call()
        if call is None:  # the block ran outside a metered transformer call: FirstBlockCache as is
            return measured
        return measured or guards.forces_full(call.step, meter.reuse_streak(call.context))

    head._should_compute_remaining_blocks = guarded_decision  # the hook object dies with disable_cache()
    attachment.description += f"; {guards.describe()}"
    return attachment
