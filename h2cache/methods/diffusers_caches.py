"""The peers diffusers ships, applied the way users apply them: ``transformer.enable_cache(config)``.

* ``fbcache``: :class:`diffusers.FirstBlockCacheConfig`.
* ``magcache``: :class:`diffusers.MagCacheConfig`, with magnitude ratios from its own calibration mode
  (:func:`calibrate_magcache`), stored per model and step count, averaged over the cache contexts.
* ``magcache-per-context``: the same, with ratios of their own for each cache context ('cond'/'uncond').
  ``MagCacheConfig`` takes one ratio list for every context, so this goes one step beyond diffusers' public
  API: the leader hook is shown a config whose ``mag_ratios`` are those of the current context
  (:class:`PerContextRatios`). It relies on diffusers 0.42's ``MagCacheHeadHook`` reading
  ``self.config.mag_ratios`` on every call, after the pipeline has set the context.
* ``taylorseer``: :class:`diffusers.TaylorSeerCacheConfig`.
"""

from __future__ import annotations

import ast
import contextlib
import io
from typing import Any, Sequence

import torch

from .base import ApplyContext, Attachment
from .calibration import prompt_hashes

_MAG_LEADER_HOOK = "mag_cache_leader_block_hook"  # diffusers.hooks.mag_cache._MAG_CACHE_LEADER_BLOCK_HOOK


def find_block_hook(transformer: torch.nn.Module, name: str) -> Any:
    """The diffusers hook registered under `name` on one of the transformer's modules; ``LookupError`` if none."""
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook(name) if registry is not None else None
        if hook is not None:
            return hook
    raise LookupError(f"no diffusers hook named {name!r} on {type(transformer).__name__}; has the diffusers "
                      "version changed its hook names?")


def _require_cache_mixin(context: ApplyContext, method: str) -> torch.nn.Module:
    transformer = context.transformer
    if not hasattr(transformer, "enable_cache"):
        raise TypeError(f"{method} goes through diffusers' transformer.enable_cache(), which "
                        f"{type(transformer).__name__} does not have (no CacheMixin)")
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


def _stored_magcache(context: ApplyContext) -> tuple[dict[str, Any] | None, str]:
    """The stored calibration at this step count, else at the nearest stored count (interpolated later)."""
    stored = context.calibration.get(context.model_key, context.fingerprint, "magcache") or {}
    steps = context.num_inference_steps
    if str(steps) in stored:
        return stored[str(steps)], f"calibrated at {steps} steps"
    if stored:
        nearest = min(stored, key=lambda k: abs(int(k) - steps))
        return stored[nearest], f"calibrated at {nearest} steps, interpolated to {steps}"
    return None, ""


def magcache_ratios(context: ApplyContext) -> tuple[list[float], str]:
    """Stored ratios for this model at this step count (else the nearest stored count, which MagCacheConfig
    interpolates); FLUX.1 hub models fall back to diffusers' published FLUX ratios."""
    entry, origin = _stored_magcache(context)
    if entry is not None:
        return list(entry["ratios"]), origin
    if context.model_key.startswith("black-forest-labs/FLUX.1"):
        from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

        return FLUX_MAG_RATIOS.tolist(), "diffusers FLUX_MAG_RATIOS (published, 28 steps)"
    raise ValueError(
        f"magcache needs magnitude ratios for model {context.model_key!r} (fingerprint {context.fingerprint}) "
        f"in {context.calibration.path}; run `python -m bench --calibrate force --methods magcache` "
        "or h2cache.methods.calibrate_magcache(pipe, prompts, ...) and store the result")


def magcache_context_ratios(context: ApplyContext) -> tuple[dict[str, list[float]], str]:
    """Stored per-context ratios (``{'cond': [...], 'uncond': [...]}``) for this model and step count."""
    entry, origin = _stored_magcache(context)
    if entry is None or not entry.get("by_context"):
        raise ValueError(
            f"magcache-per-context needs per-context magnitude ratios for model {context.model_key!r} "
            f"(fingerprint {context.fingerprint}) in {context.calibration.path}; calibrations written before "
            "they were kept per context lack them: run `python -m bench --calibrate force --methods "
            "magcache-per-context`")
    return {name: list(r) for name, r in entry["by_context"].items()}, origin


class PerContextRatios:
    """The ``MagCacheConfig`` the leader hook sees, answering ``mag_ratios`` for the current cache context.

    Contexts without ratios of their own (none calibrated under that name) get the config's averaged ratios.
    """

    def __init__(self, config: Any, by_context: dict[str, torch.Tensor], state_manager: Any) -> None:
        self._config = config
        self._by_context = by_context
        self._state_manager = state_manager

    def __getattr__(self, name: str) -> Any:  # everything but mag_ratios is the config's own
        return getattr(self._config, name)

    @property
    def mag_ratios(self) -> torch.Tensor:
        context = self._state_manager._context
        return self._by_context.get(context.name if context is not None else None, self._config.mag_ratios)


def attach_magcache(settings: dict[str, Any], context: ApplyContext) -> Attachment:
    from diffusers import MagCacheConfig
    from diffusers.hooks.mag_cache import nearest_interp

    transformer = _require_cache_mixin(context, "magcache")
    per_context = bool(settings.get("per_context_ratios"))
    steps = context.num_inference_steps
    by_context = magcache_context_ratios(context)[0] if per_context else None
    ratios, origin = magcache_ratios(context)
    config = MagCacheConfig(
        threshold=settings["threshold"], max_skip_steps=settings["max_skip_steps"],
        retention_ratio=settings["retention_ratio"], num_inference_steps=steps, mag_ratios=ratios)
    text = (f"MagCacheConfig(threshold={config.threshold}, max_skip_steps={config.max_skip_steps}, "
            f"retention_ratio={config.retention_ratio}; ratios {origin}"
            + (f", per context: {', '.join(sorted(by_context))}" if by_context else ", averaged over contexts") + ")")
    attachment = _enable(transformer, config, text)
    if by_context:
        head = find_block_hook(transformer, _MAG_LEADER_HOOK)
        tensors = {name: nearest_interp(torch.tensor(r), steps) if len(r) != steps else torch.tensor(r)
                   for name, r in by_context.items()}
        head.config = PerContextRatios(config, tensors, head.state_manager)
    return attachment


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
    """Magnitude ratios for MagCache from diffusers' own calibration mode, averaged over prompts and seeds:
    ``ratios`` over every cache context, and ``by_context`` for each context ('cond'/'uncond') on its own.

    ``MagCacheConfig(calibrate=True)`` runs uncached and prints the ratios at the end of each call; they are
    read from that output, as a user would copy them. Each context prints its own list at the end of its last
    transformer call; a hook after each call files what was printed under the context of that call.

    Example:
        >>> import h2cache
        >>> pipe = h2cache.load_pipeline()
        >>> pipe.set_progress_bar_config(disable=True)
        >>> cal = calibrate_magcache(pipe, ["a red circle at the center on a plain blue background"],
        ...                          **dict(h2cache.generation_defaults(pipe), num_inference_steps=6))
        >>> # one list per cache context: one here (guidance distilled); 'cond' and 'uncond' under true CFG
        >>> len(cal["ratios"]), sorted(cal["by_context"]), cal["runs"]
        (6, ['cond'], 1)
        >>> pipe.transformer.is_cache_enabled  # calibration mode is switched off again
        False
    """
    from diffusers import MagCacheConfig

    from ..compare import generate

    transformer = pipe.transformer
    steps = int(call_kwargs["num_inference_steps"])
    by_context: dict[str, list[list[float]]] = {}
    transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
    head = find_block_hook(transformer, _MAG_LEADER_HOOK)
    buffer = io.StringIO()

    def file_printed_ratios(module, args, output) -> None:
        printed = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        context = head.state_manager._context
        name = context.name if context is not None else "inference"
        for ratios in _parse_printed_ratios(printed):
            if len(ratios) == steps:
                by_context.setdefault(name, []).append(ratios)

    handle = transformer.register_forward_hook(file_printed_ratios)
    try:
        for prompt in prompts:
            for seed in seeds:
                with contextlib.redirect_stdout(buffer):
                    generate(pipe, prompt, seed=seed, previews=False, **call_kwargs)
    finally:
        handle.remove()
        transformer.disable_cache()
    runs = [r for lists in by_context.values() for r in lists]
    if not runs:
        raise RuntimeError("MagCache's calibration mode printed no ratios; is num_inference_steps the same as "
                           "the pipeline's step count?")

    def mean(lists: list[list[float]]) -> list[float]:
        return [round(v, 6) for v in torch.tensor(lists, dtype=torch.float64).mean(0).tolist()]

    return {"ratios": mean(runs), "by_context": {name: mean(lists) for name, lists in sorted(by_context.items())},
            "runs": len(runs), "prompts": len(prompts), "seeds": list(seeds), "prompt_hashes": prompt_hashes(prompts)}
