"""Attaching H2-Cache to a transformer (:func:`apply_h2_cache`) and the handle that gives its trace and the way back."""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks import HookRegistry

from .config import H2CacheConfig
from .hook_machinery import (ContextStateManager, ScheduleWatch, claim, detach_hooks, install_reset, refuse_stacking,
                             release, remove_reset, transformer_of)
from .hooks import BLOCK_HOOK, PROBE_HOOK, ROOT_HOOK, H2BlockHook, H2CacheState, H2ProbeHook, H2RootHook
from .one_probe import OneProbeDetailProbe, OneProbeDetailTail, OneProbeState
from .parallel import context_parallel_pfs
from .pfs_views import PFSViews
from .seams import LocalPFS
from .stages import StageSplit, resolve_stages
from .trace import Trace

OWNER = "H2-Cache"


class H2CacheHandle:
    """What :func:`apply_h2_cache` returns: the trace of the latest pipeline call, and the way back.

    Attributes:
        trace: :class:`~h2cache.trace.Trace` of the most recent pipeline call.
        pfs: :class:`~h2cache.pfs_views.PFSViews`, what PFS compared in that call; records only after
            ``handle.pfs.enable()``.
        split: the :class:`~h2cache.stages.StageSplit` in use.
        config: the :class:`H2CacheConfig` the hooks read (threshold and guard changes apply from the next call).
    """

    def __init__(self, transformer: torch.nn.Module, config: H2CacheConfig, split: StageSplit,
                 trace: Trace, created_registries: list[torch.nn.Module], pfs: PFSViews | None = None) -> None:
        self.transformer = transformer
        self.config = config
        self.split = split
        self.trace = trace
        self.pfs = pfs if pfs is not None else PFSViews()
        self._created = created_registries
        self._installed_reset = False
        self.removed = False

    def reset(self) -> None:
        """Forget all references and cached residuals. Pipeline calls start afresh by themselves; this is for
        a transformer driven by hand, whose consecutive calls otherwise count as steps of one run."""
        if not self.removed:
            HookRegistry.check_if_exists_or_initialize(self.transformer).reset_stateful_hooks(recurse=True)

    def remove(self) -> None:
        """Detach every hook; the transformer computes exactly what it did before. Safe to call twice."""
        if self.removed:
            return
        detach_hooks(self.transformer, (ROOT_HOOK, PROBE_HOOK, BLOCK_HOOK), self._created)
        if self._installed_reset:
            remove_reset(self.transformer)
        release(self.transformer)
        self.removed = True

    def __enter__(self) -> H2CacheHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "removed" if self.removed else "active"
        return f"H2CacheHandle({state}, {self.config}, {self.split.describe()})"


def is_h2_cache_applied(pipe_or_transformer: Any) -> bool:
    registry = getattr(transformer_of(pipe_or_transformer), "_diffusers_hook", None)
    return registry is not None and registry.get_hook(ROOT_HOOK) is not None


def apply_h2_cache(pipe_or_transformer: Any, config: H2CacheConfig | None = None) -> H2CacheHandle:
    r"""Apply H2-Cache to a pipeline's transformer (or to a transformer).

    Args:
        pipe_or_transformer: a diffusers pipeline with a ``.transformer`` (e.g. ``FluxPipeline``) or the
            transformer itself (``FluxTransformer2DModel``, ``SD3Transformer2DModel``). Given the pipeline, a
            call that starts after one that raised (an interrupt, an error in a callback) starts afresh too.
        config: thresholds and pool sizes; ``H2CacheConfig()`` (the published FLUX.1 settings) if omitted.

    Returns:
        An :class:`H2CacheHandle` with ``.trace`` and ``.remove()``.

    Raises:
        TypeError: not a pipeline or module, or `config` is not an ``H2CacheConfig``.
        ValueError: a transformer class not in ``h2cache.stages.MODEL_TABLE``, a bad ``stage_split``, options
            that contradict each other (:meth:`H2CacheConfig.validate`) or that context parallelism cannot run
            exactly (:func:`h2cache.parallel.refuse_options`), or a cache already applied.
        On any error the model is left untouched.

    On a context-parallel transformer (``transformer.enable_parallelism(...)`` first, then this, on every rank)
    the ranks reduce each stage's PFS sums over the group (:mod:`h2cache.parallel`): they all take the decision
    one process would take, with the distance one process would measure.

    Example:
        ```python
        >>> import torch, h2cache
        >>> pipe = h2cache.load_pipeline()  # the embedded model
        >>> handle = h2cache.apply_h2_cache(pipe, h2cache.H2CacheConfig(tau1=0.15, tau2=0.22))
        >>> image = pipe("a small red circle at the top left on a striped blue background",
        ...              **h2cache.generation_defaults(pipe), generator=torch.Generator().manual_seed(0)).images[0]
        >>> # one transformer call per step (guidance distilled, as in FLUX.1-dev), so one cache context;
        >>> # step 0 has no reference to compare with
        >>> [(r.context, r.step, r.hit1) for r in handle.trace][:2]
        [('cond', 0, False), ('cond', 1, True)]
        >>> handle.remove()

        ```
    """
    transformer = transformer_of(pipe_or_transformer)
    if config is None:
        config = H2CacheConfig()
    if not isinstance(config, H2CacheConfig):
        raise TypeError(f"config must be an H2CacheConfig, got {type(config).__name__}")
    config.validate()
    split = resolve_stages(transformer, config.stage_split)
    refuse_stacking(transformer, OWNER)
    # Where PFS runs is chosen once: over the context-parallel group if there is one, else in this process.
    reducer = context_parallel_pfs(transformer, config) or LocalPFS()

    # The one-probe option is a variant of the detail stage's hooks, chosen here once.
    one_probe = config.skip_stage2_probe_on_hit
    state_manager = ContextStateManager(OneProbeState if one_probe else H2CacheState, (config,))
    trace, views = Trace(), PFSViews()
    pipe = None if pipe_or_transformer is transformer else pipe_or_transformer
    created = [m for m in (transformer, *split.stage1, *split.stage2) if not hasattr(m, "_diffusers_hook")]
    root = HookRegistry.check_if_exists_or_initialize(transformer)
    root.register_hook(H2RootHook(state_manager, trace, split.blocks_total, config, views, ScheduleWatch(pipe),
                                  reducer), ROOT_HOOK)
    for index, blocks in enumerate((split.stage1, split.stage2)):
        head, rest = blocks[0], blocks[1:]
        detail_variant = one_probe and index == 1
        probe = OneProbeDetailProbe if detail_variant else H2ProbeHook
        HookRegistry.check_if_exists_or_initialize(head).register_hook(
            probe(state_manager, config, index, is_tail=not rest, views=views, reducer=reducer), PROBE_HOOK)
        for position, block in enumerate(rest):
            is_tail = position == len(rest) - 1
            hook = OneProbeDetailTail if detail_variant and is_tail else H2BlockHook
            HookRegistry.check_if_exists_or_initialize(block).register_hook(
                hook(state_manager, index, is_tail=is_tail), BLOCK_HOOK)
    # cache_context() walks a cached list of child registries; it must see the new block hooks.
    root.invalidate_child_registries_cache()
    handle = H2CacheHandle(transformer, config, split, trace, created, views)
    handle._installed_reset = install_reset(transformer)  # SD3 has no CacheMixin to reset hooks after a call
    claim(transformer, OWNER)
    return handle
