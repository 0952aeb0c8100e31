"""What every cache built here on diffusers' hooks shares: H2-Cache, TeaCache and the benchmark's block meter.

- :func:`transformer_of`: the transformer of a pipeline, or the module given.
- :func:`refuse_stacking`: one cache at a time (ours or one of diffusers'), refused before anything is attached.
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


def refuse_stacking(transformer: torch.nn.Module, applying: str) -> None:
    """Refuse to apply `applying` on top of H2-Cache or a diffusers cache: the two would silently combine."""
    from .hooks import is_h2_cache_applied  # hooks.py builds on this module

    if is_h2_cache_applied(transformer):
        raise ValueError(f"H2-Cache is already applied to this transformer; call its handle.remove() before "
                         f"applying {applying}")
    if getattr(transformer, "_cache_config", None) is not None:
        raise ValueError(f"the transformer already has a diffusers cache ({type(transformer._cache_config).__name__}); "
                         f"call transformer.disable_cache() before applying {applying}")


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
