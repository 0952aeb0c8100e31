"""Which transformer blocks really ran in each call, whatever cache is applied, and what that cost in FLOPs.

Caches skip work in different ways: FirstBlockCache, MagCache, TeaCache and
H2-Cache replace a block's ``forward``; TaylorSeer replaces only its attention.
The meter therefore listens *inside* each block, with plain torch pre-hooks on
two leaf layers that only run when the block's own computation runs:

* the attention probe: the first ``nn.Linear`` of ``block.attn`` (``to_q``);
* the work probe: the first ``nn.Linear`` of ``block.ff`` or ``block.proj_mlp``.

A block counts as run when either probe fired. Its FLOPs count in two parts
(attention, the rest), measured once per resolution by :func:`measure_flop_table`
with torch's ``FlopCounterMode``, so a cache that predicts only the attention is
charged for the rest.

One :class:`MethodRecord` per transformer call (one denoising step in one cache
context), collected in a :class:`MethodTrace` that restarts at each pipeline call.

Example:
    >>> import torch, h2cache
    >>> pipe = h2cache.load_pipeline()
    >>> pipe.set_progress_bar_config(disable=True)
    >>> meter = BlockMeter(pipe.transformer).attach()
    >>> _ = pipe("a red circle", **dict(h2cache.generation_defaults(pipe), num_inference_steps=2),
    ...          generator=torch.Generator().manual_seed(0))
    >>> # no cache: each of the 24 blocks (8 double-stream, 16 single-stream) runs in every call
    >>> [(r.context, r.step, r.blocks_run, r.hit) for r in meter.trace]
    [('cond', 0, 24, False), ('cond', 1, 24, False)]
    >>> meter.detach()
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from ..hook_machinery import DEFAULT_CONTEXT, install_reset, remove_reset
from ..stages import resolve_stages
from ..trace import RecordList

_METER_HOOK = "h2cache_meter"


@dataclass
class MethodRecord:
    """One transformer call under some caching method.

    ``hit`` is True when any block work was reused instead of computed (a skipped
    block or a predicted attention). ``signal`` is the method's own decision value
    where it has one (H2-Cache: d1; TeaCache: the accumulated rescaled distance).
    ``flops_*`` are ``None`` without a matching :class:`FlopTable`.
    """

    step: int
    context: str
    hit: bool = False
    blocks_run: int = 0
    blocks_total: int = 0
    attn_run: int = 0
    flops_run: float | None = None
    flops_total: float | None = None
    signal: float | None = None
    detail: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class MethodTrace(RecordList):
    """Records of the most recent pipeline call; ``for_context``, ``contexts`` and ``blocks_share`` are shared."""

    def attn_share(self) -> float:
        total = sum(r.blocks_total for r in self)
        return sum(r.attn_run for r in self) / total if total else 1.0

    def flops_share(self) -> float | None:
        """Block FLOPs spent over those of an uncached run; ``None`` if any call had no FLOP estimate."""
        if not self or any(r.flops_run is None for r in self):
            return None
        total = sum(r.flops_total for r in self)
        return sum(r.flops_run for r in self) / total if total else 1.0

    def hit_count(self) -> int:
        return sum(r.hit for r in self)


@dataclass(frozen=True)
class BlockFlops:
    """FLOPs of one block for one sample: its attention module, and everything else in the block."""

    attn: float
    other: float

    @property
    def total(self) -> float:
        return self.attn + self.other


@dataclass(frozen=True)
class FlopTable:
    """Per-sample FLOPs of every block, valid for one (image tokens, text tokens) shape."""

    blocks: tuple[BlockFlops, ...]
    image_tokens: int
    text_tokens: int
    source: str = "torch.utils.flop_counter.FlopCounterMode"

    @property
    def total(self) -> float:
        return sum(b.total for b in self.blocks)

    def as_dict(self) -> dict[str, Any]:
        return {"image_tokens": self.image_tokens, "text_tokens": self.text_tokens, "source": self.source,
                "blocks": [{"attn": b.attn, "other": b.other} for b in self.blocks]}


def meter_blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks in execution order (FLUX: double-stream then single-stream)."""
    split = resolve_stages(transformer)
    return [*split.stage1, *split.stage2]


def _first_linear(module: torch.nn.Module | None) -> torch.nn.Module | None:
    if module is None:
        return None
    return next((m for m in module.modules() if isinstance(m, torch.nn.Linear)), None)


def block_probes(block: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(attention probe, work probe) of a block; ``TypeError`` when the block has neither layout."""
    attn = _first_linear(getattr(block, "attn", None))
    work = _first_linear(getattr(block, "ff", None)) or _first_linear(getattr(block, "proj_mlp", None))
    if attn is None or work is None:
        raise TypeError(
            f"{type(block).__name__} has no 'attn' with a Linear layer and no 'ff'/'proj_mlp'; "
            "the block meter cannot tell whether it ran")
    return attn, work


class _MeterRootHook(ModelHook):
    """On the transformer: opens and closes one record per call; the pipeline's reset ends a run."""

    _is_stateful = True  # so that cache_context() sets our state manager's context, and resets reach us

    def __init__(self, meter: BlockMeter) -> None:
        super().__init__()
        self.meter = meter
        self.state_manager = StateManager(BaseState)  # only read for the context name

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        context = self.state_manager._context
        self.meter._begin_call(context.name if context is not None else DEFAULT_CONTEXT, args, kwargs)
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        self.meter._end_call()
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.meter._end_run()
        return module


class BlockMeter:
    """Counts blocks run and block FLOPs per transformer call.

    Args:
        transformer: a transformer whose blocks :func:`meter_blocks` understands.
        flops: per-block FLOPs for the shapes this run uses (see :func:`measure_flop_table`), or ``None``.

    Attributes:
        trace: :class:`MethodTrace` of the most recent pipeline call.
        run_started_at: ``time.perf_counter()`` at the first transformer call of that pipeline call.
    """

    def __init__(self, transformer: torch.nn.Module, flops: FlopTable | None = None) -> None:
        self.transformer = transformer
        self.blocks = meter_blocks(transformer)
        self.probes = [block_probes(b) for b in self.blocks]
        if flops is not None and len(flops.blocks) != len(self.blocks):
            raise ValueError(f"the FLOP table has {len(flops.blocks)} blocks, the transformer {len(self.blocks)}")
        self.flops = flops
        self.trace = MethodTrace()
        self.run_started_at: float | None = None
        self._new_run = True
        self._steps: dict[str, int] = {}
        self._record: MethodRecord | None = None
        self._ran = [[False, False] for _ in self.blocks]
        self._batch = 1
        self._shape_ok = False
        self._handles: list[Any] = []
        self._created_registry = False
        self._installed_reset = False
        self._root: _MeterRootHook | None = None
        self.attached = False

    # -- lifecycle -------------------------------------------------------------------------------------
    def attach(self) -> BlockMeter:
        if self.attached:
            return self
        self._created_registry = not hasattr(self.transformer, "_diffusers_hook")
        registry = HookRegistry.check_if_exists_or_initialize(self.transformer)
        if registry.get_hook(_METER_HOOK) is not None:
            raise ValueError("a method is already applied to this transformer (its block meter is attached); "
                             "call .remove() on that method's handle first")
        self._root = _MeterRootHook(self)
        registry.register_hook(self._root, _METER_HOOK)
        registry.invalidate_child_registries_cache()
        for index, (attn, work) in enumerate(self.probes):
            self._handles.append(attn.register_forward_pre_hook(self._probe(index, 0)))
            self._handles.append(work.register_forward_pre_hook(self._probe(index, 1)))
        self._installed_reset = install_reset(self.transformer)
        self.attached = True
        return self

    def detach(self) -> None:
        if not self.attached:
            return
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        registry = HookRegistry.check_if_exists_or_initialize(self.transformer)
        registry.remove_hook(_METER_HOOK, recurse=False)
        registry.invalidate_child_registries_cache()
        if self._created_registry and not registry.hooks:
            del self.transformer._diffusers_hook
        if self._installed_reset:
            remove_reset(self.transformer)
        self.attached = False

    # -- what other hooks may ask ---------------------------------------------------------------------
    def current_call(self) -> MethodRecord | None:
        """The record of the transformer call in progress (its ``step`` and ``context``); ``None`` between calls.

        Lets a wrapper around a cache that keeps no step count of its own (diffusers' FirstBlockCache) apply
        step-based rules such as :class:`~h2cache.methods.guards.Guards`.
        """
        return self._record

    def reuse_streak(self, context: str) -> int:
        """How many finished calls of `context` in a row, up to the latest, reused anything (this pipeline call)."""
        streak = 0
        for record in reversed(self.trace):
            if record.context != context:
                continue
            if not record.hit:
                break
            streak += 1
        return streak

    # -- callbacks -------------------------------------------------------------------------------------
    def _probe(self, index: int, part: int):
        def hook(module, args):
            if self._record is not None:
                self._ran[index][part] = True
        return hook

    def _begin_call(self, context: str, args: tuple, kwargs: dict) -> None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if self._new_run:
            if isinstance(hidden, torch.Tensor) and hidden.device.type == "cuda":
                torch.cuda.synchronize(hidden.device)
            self.run_started_at = time.perf_counter()
            self.trace.clear()
            self._steps.clear()
            self._new_run = False
        encoder = kwargs.get("encoder_hidden_states")
        self._batch = int(hidden.shape[0]) if isinstance(hidden, torch.Tensor) else 1
        self._shape_ok = (
            self.flops is not None and isinstance(hidden, torch.Tensor) and hidden.ndim == 3
            and hidden.shape[1] == self.flops.image_tokens
            and (encoder is None or encoder.shape[1] == self.flops.text_tokens))
        step = self._steps.get(context, 0)
        self._steps[context] = step + 1
        self._record = MethodRecord(step=step, context=context, blocks_total=len(self.blocks))
        for ran in self._ran:
            ran[0] = ran[1] = False

    def _end_call(self) -> None:
        record = self._record
        if record is None:
            return
        record.blocks_run = sum(attn or work for attn, work in self._ran)
        record.attn_run = sum(attn for attn, _ in self._ran)
        record.hit = record.blocks_run < record.blocks_total or record.attn_run < record.blocks_total
        if self._shape_ok:
            run = sum(f.attn * attn + f.other * work for f, (attn, work) in zip(self.flops.blocks, self._ran))
            record.flops_run = run * self._batch
            record.flops_total = self.flops.total * self._batch
        self.trace.append(record)
        self._record = None

    def _end_run(self) -> None:
        self._new_run = True
        self._record = None


def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    # FlopCounterMode knows the CUDA attention kernels but not the CPU one that SDPA dispatches to.
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def measure_flop_table(pipe: Any, prompt: str = "a", **call_kwargs: Any) -> FlopTable:
    """Measure each block's FLOPs (attention and the rest) in one uncached transformer call of `pipe`.

    Runs the pipeline for one step with the given call arguments (height, width, max_sequence_length...),
    under ``torch.utils.flop_counter.FlopCounterMode``. The counts are per sample, for the token shapes of
    that call; a :class:`BlockMeter` ignores the table for calls of another shape.

    Example:
        >>> import h2cache
        >>> pipe = h2cache.load_pipeline()
        >>> pipe.set_progress_bar_config(disable=True)
        >>> table = measure_flop_table(pipe, **h2cache.generation_defaults(pipe))
        >>> # 128x128 pixels: 32x32 latents (VAE factor 4) in 2x2 patches; max_sequence_length=16 T5 tokens
        >>> len(table.blocks), table.image_tokens, table.text_tokens
        (24, 256, 16)
        >>> all(0 < b.attn < b.total for b in table.blocks)
        True
    """
    from torch.utils.flop_counter import FlopCounterMode

    transformer = pipe.transformer
    blocks = meter_blocks(transformer)
    custom = {}
    cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_flash is not None:
        custom[cpu_flash] = _cpu_flash_attention_flops
    mode = FlopCounterMode(display=False, custom_mapping=custom)
    spans: dict[tuple[int, str], list[float]] = {}
    shape: dict[str, int] = {}
    calls = {"n": 0}
    handles = []

    def on_transformer(module, args, kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            encoder = kwargs.get("encoder_hidden_states")
            shape.update(batch=hidden.shape[0], image=hidden.shape[1], text=0 if encoder is None else encoder.shape[1])

    def span(key, start: bool):
        def hook(module, *unused):
            if calls["n"] != 1:
                return
            entry = spans.setdefault(key, [0.0, 0.0])
            if start:
                entry[0] = mode.get_total_flops()
            else:
                entry[1] += mode.get_total_flops() - entry[0]
        return hook

    handles.append(transformer.register_forward_pre_hook(on_transformer, with_kwargs=True))
    for index, block in enumerate(blocks):
        for key, module in (((index, "block"), block), ((index, "attn"), block.attn)):
            handles.append(module.register_forward_pre_hook(span(key, True)))
            handles.append(module.register_forward_hook(span(key, False)))
    call = {**call_kwargs, "num_inference_steps": 1, "output_type": "latent"}
    try:
        with torch.no_grad(), mode:
            pipe(prompt=prompt, generator=torch.Generator("cpu").manual_seed(0), **call)
    finally:
        for handle in handles:
            handle.remove()
    if not shape:
        raise RuntimeError("the pipeline never called its transformer; cannot measure block FLOPs")
    batch = shape["batch"]
    table = []
    for index in range(len(blocks)):
        whole = spans.get((index, "block"), [0, 0])[1] / batch
        attn = spans.get((index, "attn"), [0, 0])[1] / batch
        table.append(BlockFlops(attn=float(attn), other=float(whole - attn)))
    return FlopTable(blocks=tuple(table), image_tokens=int(shape["image"]), text_tokens=int(shape["text"]))
