"""H2-Cache (Sung et al., arXiv 2510.27171) on diffusers' hook machinery: the published algorithm.

A *probe* hook sits on each stage's first block, *block* hooks on the rest, and a *root* hook on the
transformer opens one :class:`~h2cache.trace.StepRecord` per call. They share one
:class:`~diffusers.hooks.StateManager`: one state per cache context ('cond'/'uncond'). Per call:

1. Stage 1 (structure) runs its first block. Its image-stream residual, summarised by PFS
   (:mod:`h2cache.pfs`), is compared with the reference. Below ``tau1`` the stage *hits*: the residual the
   rest of the stage added at its last miss is added, and those blocks are skipped.
2. Stage 2 (detail) runs its first block. If stage 1 hit, stage 2 hits too. Otherwise its
   ``[text; image]`` residual is compared with ``tau2`` the same way.

A miss refreshes the stage's reference and caches what the rest of the stage adds (last block's output
minus the probe's output, both streams). Every pipeline call starts afresh.

Beside the algorithm, off by default: the guards (:mod:`h2cache.guards`), one probe per structure hit
(:mod:`h2cache.one_probe`, which subclasses the detail stage's hooks), and the two seams of
:mod:`h2cache.seams`: what a hit adds (the *residual source*) and where PFS is computed (the *distance reducer*).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks import ModelHook
from diffusers.hooks.hooks import BaseState

from .block_io import Streams, add, block_inputs, block_outputs, pack_outputs, skipped_outputs, sub
from .config import H2CacheConfig
from .guards import Guards
from .hook_machinery import ContextStateManager, ScheduleWatch, StatefulBlockHook
from .pfs_views import PFSViews
from .seams import DistanceReducer, LocalPFS, residual_source
from .stages import STAGES
from .trace import StepRecord, Trace

# Fields that pick the hooks at apply time; a change afterwards is refused rather than ignored.
FIXED_AT_APPLY = ("stage_split", "skip_stage2_probe_on_hit")
ROOT_HOOK = "h2cache_root"
PROBE_HOOK = "h2cache_probe"
BLOCK_HOOK = "h2cache_block"


class _StageState:
    def __init__(self) -> None:
        self.ref: torch.Tensor | None = None  # PFS thumbnail of the probe residual at the last miss
        self.ref_step: int | None = None  # the step of that miss
        self.residual: Streams | None = None  # what the rest of the stage added at that miss
        self.head_output: Streams | None = None  # the probe's output, during a miss
        self.thumb: torch.Tensor | None = None  # this call's thumbnail
        self.hit = False
        self.tuple_output = True  # whether the blocks return a tuple of streams (HiDream's may return one tensor)


class H2CacheState(BaseState):
    """Everything H2-Cache remembers within one cache context of one pipeline call."""

    def __init__(self, config: H2CacheConfig | None = None) -> None:
        self.config = config or H2CacheConfig()
        self.stages = (_StageState(), _StageState())
        self.source = residual_source(self.config)
        self.step = 0
        self.record: StepRecord | None = None
        self.streak = 0  # calls in a row that reused anything (the cap guard)
        self.force_full = False  # a guard makes this call compute every block

    def reset(self) -> None:
        self.__init__(self.config)


class H2RootHook(ModelHook):
    """On the transformer: one trace record per call; a new pipeline call starts from a clean state and trace.

    A call is new after the pipeline's end-of-call reset, after a transformer call that raised, and when the
    pipeline's scheduler holds a new schedule (``watch``: a call interrupted between steps leaves no reset).
    """

    _is_stateful = True

    def __init__(self, state_manager: ContextStateManager, trace: Trace, blocks_total: int,
                 config: H2CacheConfig, views: PFSViews, watch: ScheduleWatch | None = None,
                 reducer: DistanceReducer | None = None) -> None:
        super().__init__()
        self.state_manager = state_manager
        self.reducer = reducer or LocalPFS()
        self.trace = trace
        self.views = views
        self.blocks_total = blocks_total
        self.config = config
        self.watch = watch or ScheduleWatch(None)
        self.guards = Guards()
        self.fixed = {name: getattr(config, name) for name in FIXED_AT_APPLY}
        self._new_run = True
        self._in_call = False

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        if self.watch.new_schedule() or self._new_run or self._in_call:
            self._check_config()
            self.reducer.check(module, self.config)
            self.guards = Guards.from_h2_config(self.config)
            self.state_manager.forget_states()  # the pipeline has set this call's context already
            self.trace.clear()
            self.views.clear()
            self._new_run = False
        self._in_call = True
        state = self.state_manager.get_state()
        state.force_full = self.guards.forced_by(state.step, state.streak) is not None
        state.record = StepRecord(step=state.step, context=self.state_manager.context_name,
                                  blocks_total=self.blocks_total, forced_full=state.force_full)
        return args, kwargs

    def _check_config(self) -> None:
        self.config.validate()  # fields may have been edited since apply_h2_cache
        for name, value in self.fixed.items():
            if getattr(self.config, name) != value:
                raise ValueError(f"H2CacheConfig.{name} was changed from {value!r} to {getattr(self.config, name)!r} "
                                 "after apply_h2_cache; it chooses the hooks: call handle.remove() and apply again")

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        state = self.state_manager.get_state()
        if state.record is not None:
            self.trace.append(state.record)
            state.streak = state.streak + 1 if state.record.hit1 or state.record.hit2 else 0
        state.record = None
        state.step += 1
        self._in_call = False
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        # Pipelines reset stateful hooks at the end of every call (maybe_free_model_hooks); the trace of
        # that call stays readable until the next call starts.
        self.state_manager.reset()
        self._new_run = True
        return module


class H2ProbeHook(StatefulBlockHook):
    """On a stage's first block: run it, measure the PFS distance, and on a hit add the cached residual."""

    def __init__(self, state_manager: ContextStateManager, config: H2CacheConfig, stage: int, is_tail: bool,
                 views: PFSViews | None = None, reducer: DistanceReducer | None = None) -> None:
        super().__init__(state_manager)
        self.config = config
        self.spec = STAGES[stage]
        self.is_tail = is_tail  # a one-block stage: nothing after the probe to skip
        self.views = views if views is not None else PFSViews()
        self.reducer = reducer or LocalPFS()

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        inputs = block_inputs(self._meta, args, kwargs)
        output = self.fn_ref.original_forward(*args, **kwargs)
        state = self.state_manager.get_state()
        if state.record is None:  # the block was called outside a transformer call: stay out of the way
            return output
        stage = state.stages[self.spec.index]
        stage.tuple_output = isinstance(output, tuple)
        state.record.ran(self.spec.number)
        hidden_out, encoder_out = block_outputs(output, self._meta)
        distance, hit, forced = self.decide(state, *inputs, hidden_out, encoder_out)
        self.spec.record(state.record, distance, hit, forced)
        if hit:
            res_hidden, res_encoder = state.source.for_hit(self.spec.index, stage.residual, state.step, stage.thumb)
            return pack_outputs(output, self._meta, add(hidden_out, res_hidden), add(encoder_out, res_encoder))
        if self.is_tail:
            stage.residual = (None, None)
        else:
            stage.head_output = (hidden_out, encoder_out)
        return output

    def decide(self, state: H2CacheState, hidden_in: torch.Tensor, encoder_in: torch.Tensor | None,
               hidden_out: torch.Tensor, encoder_out: torch.Tensor | None) -> tuple[float | None, bool, bool]:
        """The per-call decision of this stage: (distance or None, hit, forced). Refreshes the reference on a miss.

        This is all the work H2-Cache adds to a call besides running the probe block, so the overhead
        benchmark (``python -m bench.overhead``) times exactly this method.
        """
        spec, stage = self.spec, state.stages[self.spec.index]
        forced = (spec.follows_structure and state.stages[0].hit and not self.config.independent_stage2
                  and stage.residual is not None)
        if forced and not state.source.needs_forced_thumbnail:
            stage.hit = True
            return None, True, True
        if spec.joint_signal and encoder_out is not None:
            signal = torch.cat([encoder_out - encoder_in, hidden_out - hidden_in], dim=1)
            text_tokens = encoder_out.shape[1]
        else:
            signal, text_tokens = hidden_out - hidden_in, 0
        thumb = stage.thumb = self._summarise(signal, text_tokens)
        if forced:
            stage.hit = True
            return None, True, True
        distance = None
        if stage.ref is not None and stage.residual is not None and stage.ref.shape == thumb.shape:
            distance = self._distance(stage.ref, thumb)
        hit = distance is not None and distance < getattr(self.config, spec.threshold) and not state.force_full
        if self.views.enabled and state.record is not None:
            reference_step = stage.ref_step if distance is not None else None
            self._record_view(state, signal, text_tokens, thumb, distance, reference_step, hit)
        if not hit:
            stage.ref, stage.ref_step = thumb, state.step
        stage.hit = hit
        return distance, hit, False

    def _pool_size(self) -> int:
        return getattr(self.config, self.spec.pool_size)

    def _pooling(self) -> int | None:
        """The pool size PFS uses, None where the ablation compares unpooled residuals."""
        return None if self.config.full_residual_distance else self._pool_size()

    def _record_view(self, state: H2CacheState, signal: torch.Tensor, text_tokens: int, thumb: torch.Tensor,
                     distance: float | None, reference_step: int | None, hit: bool) -> None:
        signal, image_tokens, thumb, kernel = self.reducer.view(signal, text_tokens, thumb, self._pooling())
        self.views.record(step=state.step, context=self.state_manager.context_name, stage=self.spec.number,
                          signal=signal, image_tokens=image_tokens, thumbnail=thumb, pool_size=self._pool_size(),
                          kernel=kernel, distance=distance, reference_step=reference_step, hit=hit)

    def _summarise(self, signal: torch.Tensor, text_tokens: int) -> torch.Tensor:
        return self.reducer.thumbnail(signal, text_tokens, self._pooling())

    @torch.compiler.disable
    def _distance(self, ref: torch.Tensor, thumb: torch.Tensor) -> float:
        # The one host sync per stage: the decision has to be a Python bool.
        return float(self.reducer.distance(ref, thumb).item())


class H2BlockHook(StatefulBlockHook):
    """On the other blocks of a stage: pass through on a hit; on a miss run, and at the tail cache the residual."""

    def __init__(self, state_manager: ContextStateManager, stage: int, is_tail: bool) -> None:
        super().__init__(state_manager)
        self.spec = STAGES[stage]
        self.is_tail = is_tail

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        state = self.state_manager.get_state()
        stage = state.stages[self.spec.index]
        if state.record is not None and stage.hit:
            return skipped_outputs(self._meta, stage.tuple_output, *block_inputs(self._meta, args, kwargs))
        output = self.fn_ref.original_forward(*args, **kwargs)
        if state.record is None:
            return output
        state.record.ran(self.spec.number)
        if self.is_tail and stage.head_output is not None:
            hidden_out, encoder_out = block_outputs(output, self._meta)
            head_hidden, head_encoder = stage.head_output
            stage.residual = (hidden_out - head_hidden, sub(encoder_out, head_encoder))
            stage.head_output = None
            # stage.ref is this miss's thumbnail: the miss refreshed it.
            state.source.remember(self.spec.index, stage.residual, state.step, stage.ref)
        return output
