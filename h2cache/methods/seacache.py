"""SeaCache, diffusers' own (:mod:`diffusers.hooks.sea_cache`, ``SeaCacheConfig``), as a benchmark method.

SeaCache decides per denoising step whether to run the whole block stack or to reuse its residual. It looks at
the noisy latent the model is given, not at any activation: the latent is passed through a Wiener-like
spectral filter built from the current sigma and a 1/f^``power_exp`` prior on the clean signal's power
("spectral-evolution-aware"), which damps the frequencies that are still mostly noise. The relative L1
change of that filtered latent from the previous step is accumulated; while the sum stays under
``threshold`` the step is skipped and the image stream gets the stack's residual of the last full step
(``residual_order=1``: extrapolated linearly from the last two full steps), otherwise everything runs and the
sum restarts. The first ``retention_steps`` and last ``cache_end_steps`` always run, and so does the call
after ``max_consecutive_cached`` skips in a row.

diffusers ships the inputs SeaCache needs for its own Wan and Cosmos 3 pipelines only. For
``FluxTransformer2DModel`` this module supplies both:

* the raw latent (:func:`flux_raw_vision`): FLUX gets the latent packed into 2x2 patches; it is unpacked to
  ``(C, 1, H, W)`` per sample, the layout diffusers' filter expects, keeping only the generated image's
  tokens and channels (no Kontext reference tokens, no Fill/Control conditioning channels);
* the scheduler coordinates (:class:`FluxStepCoordinates`): FluxPipeline enters ``cache_context('cond')``
  without the step index, sigma and step count SeaCache reads from it, and without them diffusers' SeaCache
  computes every step (it says so once, "fail-open mode"). An outer hook fills them in for each call: sigma
  from the ``timestep`` FLUX is given (FluxPipeline passes sigma itself, ``t / 1000``), the step by counting
  the calls of each cache context, the step count from the pipeline's current call.

Example:
    >>> import torch, h2cache
    >>> from h2cache.methods.base import Method
    >>> pipe = h2cache.load_pipeline()
    >>> pipe.set_progress_bar_config(disable=True)
    >>> seacache = Method("seacache", SEACACHE_SUMMARY, SEACACHE_SETTINGS, SEACACHE_GRID, attach_seacache)
    >>> # a threshold no change reaches: only the first and last steps (retention_steps, cache_end_steps)
    >>> # and the cap of 2 skipped steps in a row (max_consecutive_cached) make a step compute
    >>> handle = seacache.apply(pipe, num_inference_steps=8, threshold=100.0)
    >>> image = pipe("a red circle at the center on a plain blue background",
    ...              **dict(h2cache.generation_defaults(pipe), num_inference_steps=8),
    ...              generator=torch.Generator().manual_seed(0)).images[0]
    >>> [r.blocks_run for r in handle.trace.for_context("cond")]
    [24, 0, 0, 24, 0, 0, 24, 24]
    >>> handle.remove()
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager
from diffusers.utils.torch_utils import unwrap_module

from .base import ApplyContext, Attachment
from .diffusers_caches import _enable, _require_cache_mixin, find_block_hook
from .settings import Setting

_COORDINATES_HOOK = "h2cache_seacache_flux_coordinates"

SEACACHE_SUMMARY = ("diffusers SeaCache: skips the block stack while the spectrally filtered input latent "
                    "barely changes (FLUX adapter here)")

SEACACHE_SETTINGS: tuple[Setting, ...] = (
    Setting("threshold", float, 0.25, 0.0, None,
            "accumulated relative L1 change of the filtered latent before a full step; 0: every step full"),
    Setting("residual_order", int, 1, 0, 1,
            "0: reuse the last stack residual; 1: extrapolate it from the last two full steps"),
    Setting("retention_steps", int, 1, 0, None, "initial steps always computed"),
    Setting("cache_end_steps", int, 1, 0, None, "final steps always computed"),
    Setting("max_consecutive_cached", int, 2, 0, None, "most skipped steps in a row; 0: no limit"),
    # SeaCacheConfig needs > 0; the paper's 3.0 is for video, natural images are nearer 2.
    Setting("power_exp", float, 3.0, 0.5, 8.0, "exponent p of the 1/f^p clean-signal power prior of the filter"),
)

# Measured on the embedded model at 28 steps, other settings at their defaults: the filtered latent changes
# by at least ~0.06 a step there (more early and late), so 0.065 skips 2-3 steps (91% of blocks run, PSNR ~60 dB)
# while 0.6 is near the floor max_consecutive_cached=2 sets (39%; 36% with no threshold at all).
SEACACHE_GRID: dict[str, tuple[Any, ...]] = {"threshold": (0.065, 0.08, 0.1, 0.16, 0.25, 0.6)}


def _flux_class() -> type:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel


def _bound_arguments(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    module = unwrap_module(module)
    return inspect.signature(type(module).forward).bind_partial(module, *args, **kwargs).arguments


def flux_raw_vision(module: torch.nn.Module, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> list[torch.Tensor] | None:
    """SeaCache's ``raw_vision_callback`` for ``FluxTransformer2DModel``: the noisy latent of each sample, unpacked
    from FLUX's 2x2-patch tokens to ``(C, 1, H, W)``.

    Only the generated image counts: tokens whose id's first axis is 0 (Kontext appends its reference image with
    1 there) and the first ``out_channels`` channels (Fill and Control append conditioning channels after the
    latent). Raises ``ValueError`` for inputs that are not such a grid; SeaCache then computes the step in full.
    """
    bound = _bound_arguments(module, args, kwargs)
    hidden, ids = bound.get("hidden_states"), bound.get("img_ids")
    if not isinstance(hidden, torch.Tensor) or hidden.ndim != 3 or not isinstance(ids, torch.Tensor):
        return None
    if ids.ndim == 3:  # the deprecated batched ids: every sample has the same
        ids = ids[0]
    channels = int(getattr(unwrap_module(module), "out_channels", hidden.shape[-1]))
    if ids.shape[0] != hidden.shape[1] or channels % 4 or channels > hidden.shape[-1]:
        raise ValueError(f"FLUX input of shape {tuple(hidden.shape)} with ids {tuple(ids.shape)} is not a packed "
                         f"latent of {channels} channels")
    generated = ids[:, 0] == 0
    rows, cols = ids[generated, 1], ids[generated, 2]
    if rows.numel() == 0:
        return None
    # min..max rather than 0..max, so that a contiguous context-parallel shard unpacks too
    height = int(rows.max().item() - rows.min().item()) + 1
    width = int(cols.max().item() - cols.min().item()) + 1
    if height * width != rows.numel():
        raise ValueError(f"the generated image's {rows.numel()} tokens do not form a {height}x{width} grid")
    tokens = hidden[:, generated, :channels]
    batch = tokens.shape[0]
    latent = (tokens.reshape(batch, height, width, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
              .reshape(batch, channels // 4, 2 * height, 2 * width))
    return list(latent.unsqueeze(2).unbind(0))


class _CallCount(BaseState):
    def __init__(self) -> None:
        self.step = -1
        self.sigma: float | None = None

    def reset(self) -> None:
        self.__init__()


class FluxStepCoordinates(ModelHook):
    """Outermost hook on a FLUX transformer: hands SeaCache the step index, sigma and step count that FluxPipeline's
    ``cache_context('cond')`` leaves out, for the duration of each transformer call.

    Contexts that already carry all three (a pipeline passing them) are left as they are. The step restarts at
    0 when sigma rises (a new trajectory, even without the pipeline's end-of-call reset); a call with the same
    sigma as the previous one of its context keeps its step, so SeaCache repeats its decision for it.
    """

    _is_stateful = True  # cache_context() sets our manager's context, the pipeline's reset clears the counts

    def __init__(self, sea_state: StateManager, pipe: Any, default_steps: int) -> None:
        super().__init__()
        self.state_manager = StateManager(_CallCount)
        self.sea_state = sea_state
        self.pipe = pipe
        self.default_steps = default_steps
        self._given = None

    def _num_steps(self) -> int:
        # the step count of the call under way (FluxPipeline sets it before its loop), else the declared one
        live = None if isinstance(self.pipe, torch.nn.Module) else getattr(self.pipe, "_num_timesteps", None)
        return int(live) if isinstance(live, int) and live > 0 else self.default_steps

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        context = self.state_manager._context
        self._given = None
        if context is None or None not in (context.step_index, context.sigma, context.num_inference_steps):
            return args, kwargs
        timestep = _bound_arguments(module, args, kwargs).get("timestep")
        if not isinstance(timestep, torch.Tensor) or timestep.numel() == 0:
            return args, kwargs  # SeaCache runs the call in full and says why
        sigma = float(timestep.flatten()[0].item())
        count = self.state_manager.get_state()
        if count.sigma is None or sigma > count.sigma:
            count.step = 0
        elif sigma < count.sigma:
            count.step += 1
        count.sigma = sigma
        self._given = context
        self.sea_state.set_context(dataclasses.replace(
            context, step_index=context.step_index if context.step_index is not None else count.step,
            sigma=context.sigma if context.sigma is not None else sigma,
            num_inference_steps=context.num_inference_steps or self._num_steps()))
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        if self._given is not None:  # back to what the pipeline set, which cache_context() clears on exit
            self.sea_state.set_context(self._given)
            self._given = None
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        self._given = None
        return module


def seacache_config(settings: dict[str, Any], raw_vision_callback: Any = None) -> Any:
    """The ``SeaCacheConfig`` of validated `settings`."""
    from diffusers import SeaCacheConfig

    return SeaCacheConfig(
        threshold=settings["threshold"], residual_order=settings["residual_order"],
        retention_steps=settings["retention_steps"], cache_end_steps=settings["cache_end_steps"],
        max_consecutive_cached=settings["max_consecutive_cached"], power_exp=settings["power_exp"],
        raw_vision_callback=raw_vision_callback)


def attach_seacache(settings: dict[str, Any], context: ApplyContext) -> Attachment:
    """``transformer.enable_cache(SeaCacheConfig(...))`` with the FLUX adapter; ``TypeError`` for other models."""
    from diffusers.hooks.sea_cache import _SEA_CACHE_ROOT_HOOK

    transformer = _require_cache_mixin(context, "seacache")
    flux = _flux_class()
    if not isinstance(unwrap_module(transformer), flux):
        raise TypeError(f"seacache has an adapter for {flux.__name__} only (the latent it measures and the step "
                        f"coordinates FluxPipeline leaves out), not for {type(unwrap_module(transformer)).__name__}")
    config = seacache_config(settings, flux_raw_vision)
    text = (f"SeaCacheConfig(threshold={config.threshold}, residual_order={config.residual_order}, "
            f"retention_steps={config.retention_steps}, cache_end_steps={config.cache_end_steps}, "
            f"max_consecutive_cached={config.max_consecutive_cached}, power_exp={config.power_exp}; "
            "FLUX latent and step coordinates from h2cache)")
    attachment = _enable(transformer, config, text)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    try:
        root = find_block_hook(transformer, _SEA_CACHE_ROOT_HOOK)
        # registered last, so it runs before SeaCache's root hook reads the context
        registry.register_hook(FluxStepCoordinates(root.state_manager, context.pipe, context.num_inference_steps),
                               _COORDINATES_HOOK)
        registry.invalidate_child_registries_cache()
    except BaseException:
        attachment.remove()
        raise
    disable = attachment.remove

    def remove() -> None:
        registry.remove_hook(_COORDINATES_HOOK, recurse=False)
        registry.invalidate_child_registries_cache()
        disable()

    attachment.remove = remove
    return attachment
