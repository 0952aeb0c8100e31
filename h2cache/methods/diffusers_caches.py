"""The peers diffusers ships, applied the way users apply them: ``transformer.enable_cache(config)``.

* ``fbcache``: :class:`diffusers.FirstBlockCacheConfig`.
* ``magcache``: :class:`diffusers.MagCacheConfig`, with magnitude ratios from its own calibration mode
  (:func:`calibrate_magcache`), stored per model and step count.
* ``taylorseer``: :class:`diffusers.TaylorSeerCacheConfig`.
"""

from __future__ import annotations

import ast
import contextlib
import io
from typing import Any, Sequence

import torch

from ..hooks import is_h2_cache_applied
from .base import ApplyContext, Attachment


def _require_cache_mixin(context: ApplyContext, method: str) -> torch.nn.Module:
    transformer = context.transformer
    if not hasattr(transformer, "enable_cache"):
        raise TypeError(f"{method} goes through diffusers' transformer.enable_cache(), which "
                        f"{type(transformer).__name__} does not have (no CacheMixin)")
    if is_h2_cache_applied(transformer):
        raise ValueError(f"H2-Cache is applied to this transformer; remove it before applying {method}")
    return transformer


def _enable(transformer: torch.nn.Module, config: Any, description: str) -> Attachment:
    transformer.enable_cache(config)
    return Attachment(remove=transformer.disable_cache, description=description, inner=config)


def attach_fbcache(settings: dict[str, Any], context: ApplyContext) -> Attachment:
    from diffusers import FirstBlockCacheConfig

    transformer = _require_cache_mixin(context, "fbcache")
    config = FirstBlockCacheConfig(threshold=settings["threshold"])
    return _enable(transformer, config, f"FirstBlockCacheConfig(threshold={config.threshold})")


def attach_taylorseer(settings: dict[str, Any], context: ApplyContext) -> Attachment:
    from diffusers import TaylorSeerCacheConfig

    transformer = _require_cache_mixin(context, "taylorseer")
    config = TaylorSeerCacheConfig(
        cache_interval=settings["cache_interval"], disable_cache_before_step=settings["disable_cache_before_step"],
        max_order=settings["max_order"], use_lite_mode=settings["lite"],
        # bfloat16 factors (the diffusers default) would make a float32 model's predictions coarser than
        # the method itself; keep them in the model's dtype.
        taylor_factors_dtype=transformer.dtype)
    return _enable(transformer, config, repr(config))


def magcache_ratios(context: ApplyContext) -> tuple[list[float], str]:
    """Stored ratios for this model at this step count (else the nearest stored count, which MagCacheConfig
    interpolates); FLUX.1 hub models fall back to diffusers' published FLUX ratios."""
    stored = context.calibration.get(context.model_key, context.fingerprint, "magcache") or {}
    steps = context.num_inference_steps
    if str(steps) in stored:
        return list(stored[str(steps)]["ratios"]), f"calibrated at {steps} steps"
    if stored:
        nearest = min(stored, key=lambda k: abs(int(k) - steps))
        return list(stored[nearest]["ratios"]), f"calibrated at {nearest} steps, interpolated to {steps}"
    if context.model_key.startswith("black-forest-labs/FLUX.1"):
        from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

        return FLUX_MAG_RATIOS.tolist(), "diffusers FLUX_MAG_RATIOS (published, 28 steps)"
    raise ValueError(
        f"magcache needs magnitude ratios for model {context.model_key!r} (fingerprint {context.fingerprint}) "
        f"in {context.calibration.path}; run `python -m h2cache.bench --calibrate force --methods magcache` "
        "or h2cache.methods.calibrate_magcache(pipe, prompts, ...) and store the result")


def attach_magcache(settings: dict[str, Any], context: ApplyContext) -> Attachment:
    from diffusers import MagCacheConfig

    transformer = _require_cache_mixin(context, "magcache")
    ratios, origin = magcache_ratios(context)
    config = MagCacheConfig(
        threshold=settings["threshold"], max_skip_steps=settings["max_skip_steps"],
        retention_ratio=settings["retention_ratio"], num_inference_steps=context.num_inference_steps,
        mag_ratios=ratios)
    text = (f"MagCacheConfig(threshold={config.threshold}, max_skip_steps={config.max_skip_steps}, "
            f"retention_ratio={config.retention_ratio}; ratios {origin})")
    return _enable(transformer, config, text)


def _parse_printed_ratios(text: str) -> list[list[float]]:
    """The lists MagCache's calibration mode prints after 'Calibration Complete' (one per context and run)."""
    found = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "Calibration Complete" in line:
            for candidate in lines[i + 1:]:
                if candidate.strip().startswith("["):
                    found.append([float(v) for v in ast.literal_eval(candidate.strip())])
                    break
    return found


def calibrate_magcache(pipe: Any, prompts: Sequence[str], seeds: Sequence[int] = (0,),
                       **call_kwargs: Any) -> dict[str, Any]:
    """Magnitude ratios for MagCache from diffusers' own calibration mode, averaged over prompts and seeds.

    ``MagCacheConfig(calibrate=True)`` runs uncached and prints the ratios at the end of each call; they are
    read from that output, as a user would copy them.

    Example:
        >>> cal = calibrate_magcache(pipe, ["a red circle at the center on a plain blue background"],
        ...                          num_inference_steps=28, height=64, width=64)   # doctest: +SKIP
        >>> len(cal["ratios"])                                                       # doctest: +SKIP
        28
    """
    from diffusers import MagCacheConfig

    from ..compare import generate

    transformer = pipe.transformer
    steps = int(call_kwargs["num_inference_steps"])
    runs: list[list[float]] = []
    transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
    try:
        for prompt in prompts:
            for seed in seeds:
                buffer = io.StringIO()
                with contextlib.redirect_stdout(buffer):
                    generate(pipe, prompt, seed=seed, previews=False, **call_kwargs)
                runs.extend(r for r in _parse_printed_ratios(buffer.getvalue()) if len(r) == steps)
    finally:
        transformer.disable_cache()
    if not runs:
        raise RuntimeError("MagCache's calibration mode printed no ratios; is num_inference_steps the same as "
                           "the pipeline's step count?")
    mean = torch.tensor(runs, dtype=torch.float64).mean(0).tolist()
    return {"ratios": [round(v, 6) for v in mean], "runs": len(runs), "prompts": len(prompts), "seeds": list(seeds)}
