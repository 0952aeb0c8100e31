"""TeaCache as a benchmark method: its polynomial from the calibration store, with or without guards.

``teacache`` is TeaCache as published (first and last step computed). ``teacache-guarded`` adds the guards
H2-Cache's proposal uses (:mod:`h2cache.methods.guards`): warm-up steps, a cap on skipped steps in a row and
final full steps, so that both are compared with the same safety net.

Example:
    >>> import torch, h2cache
    >>> from h2cache.methods import apply_method
    >>> pipe = h2cache.load_pipeline()
    >>> pipe.set_progress_bar_config(disable=True)
    >>> # The model's 28 steps, for which calibration.json holds this model's polynomial. The threshold is so
    >>> # loose that every call after the warm-up could skip: the guards alone decide which steps compute.
    >>> handle = apply_method(pipe, "teacache-guarded", threshold=1.0, max_consecutive_hits=3)
    >>> handle.inner.config.guards.warmup_steps
    6
    >>> image = pipe("a red circle at the center on a plain blue background", **h2cache.generation_defaults(pipe),
    ...              generator=torch.Generator().manual_seed(0)).images[0]
    >>> [r.step for r in handle.trace.for_context("cond") if r.blocks_run]
    [0, 1, 2, 3, 4, 5, 9, 13, 17, 21, 25, 27]
    >>> handle.remove()
"""

from __future__ import annotations

from typing import Any

from .base import ApplyContext, Attachment
from .calibration import teacache_fit
from .guards import Guards, guards_from_settings
from .meter import MethodRecord
from .teacache import FLUX_DEV_COEFFICIENTS, TeaCacheConfig, apply_teacache, teacache_blocks


def teacache_coefficients(context: ApplyContext) -> tuple[list[float], str]:
    """The rescaling polynomial for this model and step count, and where it came from."""
    steps = context.num_inference_steps
    stored = teacache_fit(context.calibration.get(context.model_key, context.fingerprint, "teacache"), steps)
    if stored:
        return list(stored["coefficients"]), f"calibrated at {steps} steps"
    if context.model_key == "black-forest-labs/FLUX.1-dev":
        return list(FLUX_DEV_COEFFICIENTS), "published TeaCache4FLUX coefficients"
    raise ValueError(
        f"teacache needs a rescaling polynomial for model {context.model_key!r} (fingerprint {context.fingerprint}) "
        f"at {steps} steps in {context.calibration.path}; run `python -m bench --calibrate force "
        f"--methods teacache --steps {steps}` or h2cache.methods.calibrate_teacache(pipe, prompts, "
        f"num_inference_steps={steps}, ...) and store it with CalibrationStore.put_teacache")


def attach_teacache(settings: dict[str, Any], context: ApplyContext, guards: Guards | None = None) -> Attachment:
    teacache_blocks(context.transformer)  # unsupported models fail on that, before any calibration lookup
    coefficients, origin = teacache_coefficients(context)
    config = TeaCacheConfig(threshold=settings["threshold"], coefficients=coefficients,
                            num_inference_steps=context.num_inference_steps, guards=guards)
    handle = apply_teacache(context.transformer, config)

    def annotate(records: list[MethodRecord]) -> None:
        if len(handle.decisions) != len(records):
            return
        for record, decision in zip(records, handle.decisions):
            record.signal = decision.accumulated
            record.detail = {"change": decision.change, "accumulated": decision.accumulated,
                             "computed": decision.computed}

    text = f"TeaCacheConfig(threshold={config.threshold}; polynomial {origin})"
    if guards is not None:
        text += f"; {guards.describe()}"
    return Attachment(remove=handle.remove, annotate=annotate, description=text, inner=handle)


def attach_teacache_guarded(settings: dict[str, Any], context: ApplyContext) -> Attachment:
    return attach_teacache(settings, context, guards_from_settings(settings, context.num_inference_steps))
