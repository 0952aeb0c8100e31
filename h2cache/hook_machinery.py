"""What every cache built here on diffusers' hooks shares: H2-Cache, TeaCache and the benchmark's block meter.

- :func:`transformer_of`: the transformer of a pipeline, or the module given.
- :func:`attached_cache`, :func:`refuse_stacking`, :func:`claim`, :func:`release`: what cache a transformer
  carries (ours or one of diffusers'), and one cache at a time, refused in either order.
- :class:`ContextStateManager`: per-context state ('cond'/'uncond') that also works where no context is named.
- :class:`StatefulBlockHook`: the base of hooks on transformer blocks.
- :func:`detach_hooks`: the way back, leaving the modules as they were.
- :func:`install_reset` / :func:`remove_reset`: the end-of-call reset for transformers without CacheMixin.

Example:
    >>> import h2cache
    >>> pipe = h2cache.load_pipeline()
    >>> transformer_of(pipe) is pipe.transformer
    True
    >>> with h2cache.apply_h2_cache(pipe):
    ...     refuse_stacking(pipe.transformer, "TeaCache")
    Traceback (most recent call last):
    ...
    ValueError: H2-Cache is already applied to this transformer; call its handle.remove() before applying TeaCache
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager
from diffusers.hooks._helpers import TransformerBlockRegistry
from diffusers.utils.torch_utils import unwrap_module

DEFAULT_CONTEXT = "default"


def transformer_of(pipe_or_transformer: Any) -> torch.nn.Module:
    """The pipeline's ``.transformer``, or `pipe_or_transformer` itself if it is a module. Raises ``TypeError``."""
    if isinstance(pipe_or_transformer, torch.nn.Module):
        return pipe_or_transformer
    transformer = getattr(pipe_or_transformer, "transformer", None)
    if isinstance(transformer, torch.nn.Module):
        return transformer
    raise TypeError("expected a diffusers pipeline with a .transformer or a transformer module, "
                    f"got {type(pipe_or_transformer).__name__}")


# The attribute that names what this library attached to a transformer: the one place that knows, read by
# every apply function here (H2-Cache, TeaCache, the benchmark's methods) and, through the enable_cache
# stand-in below, by diffusers' own caches.
_OWNER = "_h2cache_attached"
# diffusers' cache hooks live in these modules; they can be attached without enable_cache (apply_* functions).
_DIFFUSERS_CACHE_MODULES = tuple(f"diffusers.hooks.{m}" for m in (
    "first_block_cache", "mag_cache", "taylorseer_cache", "sea_cache", "pyramid_attention_broadcast",
    "faster_cache", "text_kv_cache"))


def attached_cache(transformer: torch.nn.Module) -> str | None:
    """What cache is attached to `transformer`, in words (``None`` if none): one of ours, or one of diffusers'.

    Example:
        >>> import h2cache
        >>> pipe = h2cache.load_pipeline()
        >>> attached_cache(pipe.transformer) is None
        True
        >>> with h2cache.apply_h2_cache(pipe):
        ...     attached_cache(pipe.transformer)
        'H2-Cache'
    """
    owner = vars(transformer).get(_OWNER)
    if owner is not None:
        return owner
    config = getattr(transformer, "_cache_config", None)
    if config is not None:
        return f"a diffusers cache ({type(config).__name__})"
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        for name, hook in (registry.hooks.items() if registry is not None else ()):
            if type(hook).__module__.startswith(_DIFFUSERS_CACHE_MODULES):
                return f"a diffusers cache ({type(hook).__name__} {name!r})"
    return None


def refuse_stacking(transformer: torch.nn.Module, applying: str) -> None:
    """Refuse to apply `applying` over any cache already attached: two caches would silently combine."""
    owner = attached_cache(transformer)
    if owner is None:
        return
    if owner.startswith("a diffusers cache"):
        how = "transformer.disable_cache()" if getattr(transformer, "_cache_config", None) is not None \
            else "remove its hooks"
        raise ValueError(f"the transformer already has {owner}; call {how} before applying {applying}")
    raise ValueError(f"{owner} is already applied to this transformer; call its handle.remove() before "
                     f"applying {applying}")


def claim(transformer: torch.nn.Module, owner: str) -> None:
    """Mark `transformer` as carrying `owner`'s cache (a later claim renames it, e.g. a method around H2-Cache).

    While marked, diffusers' ``transformer.enable_cache(...)`` is refused with a message naming `owner`:
    diffusers only knows its own caches and would attach on top.
    """
    vars(transformer)[_OWNER] = owner
    if hasattr(transformer, "enable_cache") and not isinstance(vars(transformer).get("enable_cache"),
                                                                _RefuseEnableCache):
        vars(transformer)["enable_cache"] = _RefuseEnableCache(transformer)


def release(transformer: torch.nn.Module) -> None:
    """Undo :func:`claim`. Safe to call twice."""
    vars(transformer).pop(_OWNER, None)
    if isinstance(vars(transformer).get("enable_cache"), _RefuseEnableCache):
        del vars(transformer)["enable_cache"]


class _RefuseEnableCache:
    """Stands in for ``CacheMixin.enable_cache`` while one of our caches is attached."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.transformer = transformer

    def __call__(self, config: Any) -> None:
        owner = vars(self.transformer).get(_OWNER, "a cache")
        raise ValueError(f"{owner} is applied to this transformer; call its handle.remove() before "
                         f"transformer.enable_cache({type(config).__name__}(...))")


class ContextStateManager(StateManager):
    """A diffusers ``StateManager`` that falls back to one default context.

    FluxPipeline names its calls with ``transformer.cache_context('cond'|'uncond')``;
    SD3's pipeline and direct transformer calls set no context, and all share one
    (diffusers' own manager raises there).

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Counter:
        ...     calls: int = 0
        >>> manager = ContextStateManager(Counter)
        >>> manager.context_name
        'default'
        >>> manager.get_state().calls += 1
        >>> manager.get_state().calls
        1
    """

    @property
    def context_name(self) -> str:
        return self._context.name if self._context is not None else DEFAULT_CONTEXT

    def forget_states(self) -> None:
        """Drop every context's state but keep the current context (``reset()`` clears that too)."""
        self._state_cache.clear()  # dropped, not reset: get_state() makes fresh ones

    def get_state(self) -> BaseState:
        """The state of the current context (created on first use), of the class the manager was made with."""
        name = self.context_name
        if name not in self._state_cache:
            self._state_cache[name] = self._state_cls(*self._init_args, **self._init_kwargs)
        return self._state_cache[name]


class StatefulBlockHook(ModelHook):
    """Base of the hooks on transformer blocks, for H2-Cache and caches built the same way (TeaCache here).

    Keeps the shared :class:`ContextStateManager`, reads the block's stream layout from diffusers'
    ``TransformerBlockRegistry`` when attached (``self._meta``), and forgets every context's state when the
    pipeline resets stateful hooks at the end of a call.
    """

    _is_stateful = True

    def __init__(self, state_manager: ContextStateManager) -> None:
        super().__init__()
        self.state_manager = state_manager
        self._meta = None

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self._meta = TransformerBlockRegistry.get(unwrap_module(module).__class__)
        return module

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        return module


def detach_hooks(transformer: torch.nn.Module, names: tuple[str, ...], created: list[torch.nn.Module]) -> None:
    """Remove the named hooks from `transformer` and its blocks, and the hook registries we created there.

    Registries that existed before stay (other caches or user hooks live in them); ours are deleted once
    empty, so the modules end up exactly as they were before the cache was applied.
    """
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    for name in names:
        registry.remove_hook(name, recurse=True)
    registry.invalidate_child_registries_cache()
    for module in created:
        if hasattr(module, "_diffusers_hook") and not module._diffusers_hook.hooks:
            del module._diffusers_hook


class _ResetOnPipelineEnd:
    """Stands in for CacheMixin._reset_stateful_cache: resets every stateful hook on the transformer."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.transformer = transformer

    def __call__(self, recurse: bool = True) -> None:
        registry = getattr(self.transformer, "_diffusers_hook", None)
        if registry is not None:
            registry.reset_stateful_hooks(recurse=recurse)


def install_reset(transformer: torch.nn.Module) -> bool:
    """Give a transformer without diffusers' CacheMixin (SD3) the end-of-call reset pipelines call.

    Pipelines reset stateful hooks at the end of each call only on models with ``_reset_stateful_cache``;
    without it, a cache's state would leak into the next call. Returns whether it was installed here (then
    :func:`remove_reset` is the caller's to call); a model that has one already keeps its own.
    """
    if hasattr(transformer, "_reset_stateful_cache"):
        return False
    transformer._reset_stateful_cache = _ResetOnPipelineEnd(transformer)
    return True


def remove_reset(transformer: torch.nn.Module) -> None:
    """Undo :func:`install_reset`."""
    if isinstance(vars(transformer).get("_reset_stateful_cache"), _ResetOnPipelineEnd):
        del transformer._reset_stateful_cache


class ScheduleWatch:
    """Tells when a pipeline has started a new schedule: its scheduler holds a new ``timesteps`` tensor.

    Every diffusers pipeline calls ``scheduler.set_timesteps`` at the start of a call, which makes a new
    tensor; a cache that sees one knows a new call began even when the last one ended in an exception
    between two steps, where the pipeline's end-of-call reset never ran. Costs no host sync. Without a
    pipeline (a transformer driven by hand) it never fires.

    Example:
        >>> from types import SimpleNamespace
        >>> class Pipe: scheduler = SimpleNamespace(timesteps=torch.arange(3))
        >>> pipe = Pipe()
        >>> watch = ScheduleWatch(pipe)
        >>> watch.new_schedule(), watch.new_schedule()
        (True, False)
        >>> pipe.scheduler.timesteps = torch.arange(3)
        >>> watch.new_schedule()
        True
    """

    def __init__(self, pipe: Any) -> None:
        # Weak: the transformer's hooks must not keep a dropped pipeline's encoders and VAE alive.
        self._pipe = weakref.ref(pipe) if pipe is not None else None
        self._seen: torch.Tensor | None = None

    def new_schedule(self) -> bool:
        pipe = self._pipe() if self._pipe is not None else None
        timesteps = getattr(getattr(pipe, "scheduler", None), "timesteps", None)
        if timesteps is None or timesteps is self._seen:
            return False
        self._seen = timesteps  # held, not its id: an id can be reused once the tensor is freed
        return True
