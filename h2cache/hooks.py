"""H2-Cache on diffusers' hook machinery.

Each stage gets a *probe* hook on its first block and *block* hooks on the rest,
all sharing one :class:`~diffusers.hooks.StateManager` (one state per cache
context, e.g. 'cond'/'uncond'). A *root* hook on the transformer opens and
closes one :class:`~h2cache.trace.StepRecord` per call. Per call:

1. Stage 1's probe runs; its image-stream residual, summarised by PFS, is
   compared with the reference. Below ``tau1`` the stage hits: the cached
   residual of the remaining blocks is added and they are skipped.
2. Stage 2's probe runs. If stage 1 hit, stage 2 is forced to hit. Otherwise
   its ``[text; image]`` residual is compared with ``tau2`` the same way.

A miss refreshes the stage's reference and caches the residual the rest of the
stage adds (last block's output minus the probe's output, both streams).

Options in :class:`~h2cache.config.H2CacheConfig`, off by default, change this:
guards that force a full call (warm-up, final steps, a cap on consecutive hits),
``skip_stage2_probe_on_hit``, which on a stage-1 hit adds the whole of stage 2's
last residual instead of running its probe, and (experimental) ``forecast_residual``,
which on a hit adds the residual extrapolated from the stage's last two misses, with options that judge
that forecast at each miss (:mod:`h2cache.forecast_error`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState

from .config import H2CacheConfig
from .forecast_error import ForecastError
from .hook_machinery import (ContextStateManager, StatefulBlockHook, detach_hooks, install_reset, refuse_stacking,
                             remove_reset, transformer_of)
from .pfs import pfs_distance, pfs_kernel, pfs_thumbnail
from .pfs_views import PFSViews
from .stages import StageSplit, resolve_stages
from .trace import StepRecord, Trace

_ROOT_HOOK = "h2cache_root"
_PROBE_HOOK = "h2cache_probe"
_BLOCK_HOOK = "h2cache_block"


class _StageState:
    def __init__(self) -> None:
        self.ref: torch.Tensor | None = None  # PFS thumbnail of the probe residual at the last miss
        self.ref_step: int | None = None  # the step of that miss
        self.residual: tuple[torch.Tensor | None, torch.Tensor | None] | None = None  # (image, text) added on a hit
        self.head_output: tuple[torch.Tensor, torch.Tensor | None] | None = None  # probe output during a miss
        self.thumb: torch.Tensor | None = None  # this call's PFS thumbnail (forecast_probe_factor reads it)
        self.hit = False
        # Whether the stage's blocks return a tuple of streams or one tensor (HiDream's wrapper does either).
        self.tuple_output = True


@dataclass(frozen=True)
class StageSpec:
    """What tells the paper's two stages apart; the hooks read this instead of branching on a stage index.

    Attributes:
        index: 0 for the structure stage, 1 for the detail stage (``number`` counts from 1, as the paper does).
        threshold, pool_size: the :class:`H2CacheConfig` fields of its threshold and PFS pool size.
        joint_signal: the probe signal is ``[text; image]`` residuals (detail), or the image stream alone.
        follows_structure: a structure-stage hit makes this stage hit too (unless ``independent_stage2``).
        distance_field, hit_field, forced_field: where its decision goes in a :class:`StepRecord`.
        error_fields: where the forecast's and replay's errors measured at its misses go.
    """

    index: int
    threshold: str
    pool_size: str
    joint_signal: bool
    follows_structure: bool
    distance_field: str
    hit_field: str
    forced_field: str | None
    error_fields: tuple[str, str]

    @property
    def number(self) -> int:
        return self.index + 1

    def record(self, record: StepRecord, distance: float | None, hit: bool, forced: bool) -> None:
        setattr(record, self.distance_field, distance)
        setattr(record, self.hit_field, hit)
        if self.forced_field:
            setattr(record, self.forced_field, forced)


STAGES = (
    StageSpec(0, "tau1", "pool_size_stage1", joint_signal=False, follows_structure=False,
              distance_field="d1", hit_field="hit1", forced_field=None,
              error_fields=("forecast_error1", "replay_error1")),
    StageSpec(1, "tau2", "pool_size_stage2", joint_signal=True, follows_structure=True,
              distance_field="d2", hit_field="hit2", forced_field="forced2",
              error_fields=("forecast_error2", "replay_error2")),
)


class WholeStageResidual:
    """The option ``skip_stage2_probe_on_hit``: what the whole detail stage added the last time its probe ran.

    A structure hit then adds it to the detail stage's input without running the probe (one block per hit,
    as FirstBlockCache runs). Kept apart from the published path: nothing here is read when the option is off.
    """

    def __init__(self) -> None:
        self.probe_input: tuple[torch.Tensor, torch.Tensor | None] | None = None  # during a miss that runs on
        self.added: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def ready(self) -> bool:
        return self.added is not None

    def apply(self, hidden_in: torch.Tensor, encoder_in: torch.Tensor | None):
        hidden, encoder = self.added
        return hidden_in + hidden, None if encoder is None or encoder_in is None else encoder_in + encoder

    def remember(self, inputs: tuple, outputs: tuple) -> None:
        """The stage ran from `inputs` to `outputs` (its probe with a hit, or a one-block stage)."""
        self.added = (outputs[0] - inputs[0], _sub(outputs[1], inputs[1]))

    def finish(self, outputs: tuple) -> None:
        """The stage's last block ran on a miss: the whole stage added `outputs` minus the probe's input."""
        if self.probe_input is not None:
            self.remember(self.probe_input, outputs)
            self.probe_input = None


class ResidualForecast:
    """The experimental option ``forecast_residual``: a stage's residuals at its last two misses.

    A hit at step ``s`` then adds ``r + (s - t) / (t - t0) * (r - r0)``, the residual ``r`` of the last miss
    (step ``t``) carried on along the line from the one before (``r0``, step ``t0``): a first-order forecast,
    as TaylorSeer makes for attention outputs, here per stage and at the steps the PFS decision chose. With
    only one miss so far, the last residual is replayed as in the paper. Nothing here is read when the option
    is off; the one-probe path (``skip_stage2_probe_on_hit``) replays its whole-stage residual unchanged.

    With ``forecast_probe_factor`` the factor is measured instead of assumed: how far this call's PFS
    thumbnail of the probe residual ``p`` has moved since the last miss, along the line between the last two
    misses' thumbnails, ``<p - p_t, p_t - p_t0> / |p_t - p_t0|^2``. It is 0 when the probe has not moved that
    way (the residual is replayed) and 1 when it moved as far as it did between the two misses.

    Example:
        >>> import torch
        >>> f = ResidualForecast()
        >>> f.remember((torch.tensor([1.0]), None), step=2); f.remember((torch.tensor([2.0]), None), step=4)
        >>> f.extrapolate(f.last, step=7)  # 2 + (7 - 4) / (4 - 2) x (2 - 1)
        (tensor([3.5000]), None)
        >>> f.extrapolate(f.last, step=7, max_factor=1.0)  # forecast_max_factor: at most 2 + 1 x (2 - 1)
        (tensor([3.]), None)
        >>> g = ResidualForecast()
        >>> g.remember((torch.tensor([1.0]), None), step=2, thumb=torch.tensor([0.0, 0.0]))
        >>> g.remember((torch.tensor([2.0]), None), step=4, thumb=torch.tensor([1.0, 0.0]))
        >>> g.extrapolate(g.last, step=7, thumb=torch.tensor([1.5, 3.0]))  # the probe moved half a gap that way
        (tensor([2.5000]), None)
    """

    def __init__(self) -> None:
        self.last: tuple[torch.Tensor | None, torch.Tensor | None] | None = None
        self.last_step: int | None = None
        self.last_thumb: torch.Tensor | None = None
        self.before: tuple[torch.Tensor | None, torch.Tensor | None] | None = None
        self.before_step: int | None = None
        self.before_thumb: torch.Tensor | None = None

    def remember(self, residual: tuple[torch.Tensor | None, torch.Tensor | None], step: int,
                 thumb: torch.Tensor | None = None) -> None:
        self.before, self.before_step, self.before_thumb = self.last, self.last_step, self.last_thumb
        self.last, self.last_step, self.last_thumb = residual, step, thumb

    def extrapolate(self, residual: tuple[torch.Tensor | None, torch.Tensor | None], step: int,
                    max_factor: float | None = None,
                    thumb: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        # `residual` is the stage's cached one; anything else (e.g. cached before the option was turned on)
        # is replayed as it is.
        if self.before is None or self.last is not residual or self.last_step <= self.before_step:
            return residual
        factor: float | torch.Tensor = (step - self.last_step) / (self.last_step - self.before_step)
        if thumb is not None and self.last_thumb is not None and self.before_thumb is not None \
                and thumb.shape == self.last_thumb.shape == self.before_thumb.shape:
            # A 0-dim tensor, so that the factor costs no host sync on an accelerator.
            line = (self.last_thumb - self.before_thumb).float()
            factor = ((thumb - self.last_thumb).float() * line).sum() / (line * line).sum().clamp_min(1e-12)
        if max_factor is not None:
            # forecast_max_factor: a line followed too far overshoots.
            factor = factor.clamp(max=max_factor) if torch.is_tensor(factor) else min(factor, max_factor)
        return tuple(None if r is None or b is None else r + factor * (r - b) for r, b in zip(self.last, self.before))


class H2CacheState(BaseState):
    """Everything H2-Cache remembers within one cache context of one pipeline call."""

    def __init__(self) -> None:
        self.stages = (_StageState(), _StageState())
        self.whole_detail = WholeStageResidual()  # skip_stage2_probe_on_hit only
        self.forecasts = (ResidualForecast(), ResidualForecast())  # forecast_residual only
        self.forecast_errors = (ForecastError(), ForecastError())  # forecast_fallback / forecast_error_limit only
        self.step = 0
        self.record: StepRecord | None = None
        self.streak = 0  # calls in a row that reused anything (max_consecutive_hits)
        self.force_full = False  # a guard makes this call compute (every block, or the structure stage only)
        self.force_detail = False  # ... and the detail stage too (not so with guards_structure_only)

    def reset(self) -> None:
        self.__init__()


def _streams(output: Any, meta) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not isinstance(output, tuple):
        return output, None
    enc = output[meta.return_encoder_hidden_states_index] if meta.return_encoder_hidden_states_index is not None else None
    return output[meta.return_hidden_states_index], enc


def _pack(output: Any, meta, hidden: torch.Tensor, encoder: torch.Tensor | None) -> Any:
    if not isinstance(output, tuple):
        return hidden
    out = list(output)
    out[meta.return_hidden_states_index] = hidden
    if meta.return_encoder_hidden_states_index is not None:
        out[meta.return_encoder_hidden_states_index] = encoder
    return tuple(out)


def _inputs(meta, args, kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    # The metadata names the arguments: not every block calls its input `hidden_states` (Z-Image: `x`).
    hidden = meta._get_parameter_from_args_kwargs(meta.hidden_states_argument_name, args, kwargs)
    encoder = None
    if meta.return_encoder_hidden_states_index is not None:
        encoder = meta._get_parameter_from_args_kwargs(meta.encoder_hidden_states_argument_name, args, kwargs)
    return hidden, encoder


def _skipped(meta, tuple_output: bool, hidden: torch.Tensor, encoder: torch.Tensor | None) -> Any:
    """A skipped block's return value, shaped like the block's own (one tensor, or a tuple of streams)."""
    if not tuple_output or meta.return_encoder_hidden_states_index is None:
        return hidden
    return _pack((None, None), meta, hidden, encoder)


def _sub(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return None if a is None or b is None else a - b


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return a if a is None or b is None else a + b


class H2RootHook(ModelHook):
    """On the transformer: one trace record per call; the trace restarts at the first call after a reset."""

    _is_stateful = True

    def __init__(self, state_manager: ContextStateManager, trace: Trace, blocks_total: int,
                 config: H2CacheConfig | None = None, views: PFSViews | None = None) -> None:
        super().__init__()
        self.state_manager = state_manager
        self.trace = trace
        self.views = views if views is not None else PFSViews()
        self.blocks_total = blocks_total
        self.config = config or H2CacheConfig()
        self._new_run = True

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        if self._new_run:
            self.config.validate()  # fields may have been edited since apply_h2_cache
            self.trace.clear()
            self.views.clear()
            self._new_run = False
        state = self.state_manager.get_state()
        guard = self._guard(state)
        state.force_full = guard is not None
        # guards_structure_only: the warm-up and the cap refresh the structure stage; the detail stage decides
        # by its own distance. The final steps still compute every block.
        state.force_detail = state.force_full and not (self.config.guards_structure_only and guard != "final")
        state.record = StepRecord(step=state.step, context=self.state_manager.context_name,
                                  blocks_total=self.blocks_total, forced_full=state.force_full)
        return args, kwargs

    def _guard(self, state: H2CacheState) -> str | None:
        """The guard that forces this call ('warmup', 'final' or 'cap'), or None."""
        cfg = self.config
        if state.step < cfg.warmup_steps:
            return "warmup"
        if cfg.final_full_steps and state.step >= cfg.num_inference_steps - cfg.final_full_steps:
            return "final"
        if cfg.max_consecutive_hits and state.streak >= cfg.max_consecutive_hits:
            return "cap"
        return None

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        state = self.state_manager.get_state()
        record = state.record
        if record is not None:
            self.trace.append(record)
            # With guards_structure_only the cap counts calls that reused the structure stage.
            reused = record.hit1 or (record.hit2 and not self.config.guards_structure_only)
            state.streak = state.streak + 1 if reused else 0
        state.record = None
        state.step += 1
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
                 views: PFSViews | None = None) -> None:
        super().__init__(state_manager)
        self.config = config
        self.spec = STAGES[stage]
        self.is_tail = is_tail  # a one-block stage: nothing after the probe to skip
        self.views = views if views is not None else PFSViews()

    def _one_probe(self) -> bool:
        # Read at every call: the config may be edited between pipeline calls.
        return self.spec.follows_structure and self.config.skip_stage2_probe_on_hit

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        hidden_in, encoder_in = _inputs(self._meta, args, kwargs)
        state = self.state_manager.get_state()
        stage = state.stages[self.spec.index]
        record = state.record
        one_probe = record is not None and self._one_probe()
        if one_probe and state.stages[0].hit and state.whole_detail.ready():
            stage.hit = True
            self.spec.record(record, None, True, True)
            record.probe2_skipped = True
            return _skipped(self._meta, stage.tuple_output, *state.whole_detail.apply(hidden_in, encoder_in))
        output = self.fn_ref.original_forward(*args, **kwargs)
        if record is None:  # the block was called outside a transformer call: stay out of the way
            return output
        stage.tuple_output = isinstance(output, tuple)
        record.ran(self.spec.number)
        hidden_out, encoder_out = _streams(output, self._meta)
        distance, hit, forced = self.decide(state, hidden_in, encoder_in, hidden_out, encoder_out)
        self.spec.record(record, distance, hit, forced)
        inputs = (hidden_in, encoder_in)
        if hit:
            residual = stage.residual
            cfg = self.config
            replays = cfg.forecast_fallback and state.forecast_errors[self.spec.index].replays()
            if cfg.forecast_residual and not replays:
                thumb = stage.thumb if cfg.forecast_probe_factor else None
                residual = state.forecasts[self.spec.index].extrapolate(residual, state.step,
                                                                        cfg.forecast_max_factor, thumb)
            res_hidden, res_encoder = residual
            hidden_out, encoder_out = _add(hidden_out, res_hidden), _add(encoder_out, res_encoder)
            if one_probe:
                state.whole_detail.remember(inputs, (hidden_out, encoder_out))
            return _pack(output, self._meta, hidden_out, encoder_out)
        if self.is_tail:
            stage.residual = (None, None)
            if one_probe:
                state.whole_detail.remember(inputs, (hidden_out, encoder_out))
        else:
            stage.head_output = (hidden_out, encoder_out)
            if one_probe:
                state.whole_detail.probe_input = inputs
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
        # forecast_probe_factor measures its factor on this call's thumbnail, forced hits included.
        wants_thumb = self.config.forecast_residual and self.config.forecast_probe_factor
        if forced and not wants_thumb:
            stage.hit = True
            return None, True, True
        if spec.joint_signal and encoder_out is not None:
            signal = torch.cat([encoder_out - encoder_in, hidden_out - hidden_in], dim=1)
        else:
            signal = hidden_out - hidden_in
        thumb = stage.thumb = self._summarise(signal)
        if forced:
            stage.hit = True
            return None, True, True
        distance = None
        if stage.ref is not None and stage.residual is not None and stage.ref.shape == thumb.shape:
            distance = self._distance(stage.ref, thumb)
        forced_to_run = state.force_detail if spec.follows_structure else state.force_full
        hit = distance is not None and distance < self._threshold(state) and not forced_to_run
        if self.views.enabled and state.record is not None:
            reference_step = stage.ref_step if distance is not None else None
            self._record_view(state, signal, hidden_out.shape[1], thumb, distance, reference_step, hit)
        if not hit:
            stage.ref, stage.ref_step = thumb, state.step
        stage.hit = hit
        return distance, hit, False

    def _threshold(self, state: H2CacheState) -> float:
        cfg = self.config
        threshold = getattr(cfg, self.spec.threshold)
        if cfg.forecast_error_limit is None:
            return threshold
        scales = [e.threshold_scale(cfg.forecast_error_limit, cfg.forecast_fallback) for e in state.forecast_errors]
        # A structure hit reuses the detail stage as well (unless the ablation decouples them).
        if self.spec.follows_structure or cfg.independent_stage2:
            return threshold * scales[self.spec.index]
        return threshold * min(scales)

    def _pool_size(self) -> int:
        return getattr(self.config, self.spec.pool_size)

    def _record_view(self, state: H2CacheState, signal: torch.Tensor, image_tokens: int, thumb: torch.Tensor,
                     distance: float | None, reference_step: int | None, hit: bool) -> None:
        _, n, c = signal.shape
        kernel = 1 if self.config.full_residual_distance else pfs_kernel(n, c, self._pool_size())
        self.views.record(step=state.step, context=self.state_manager.context_name, stage=self.spec.number,
                          signal=signal, image_tokens=image_tokens, thumbnail=thumb, pool_size=self._pool_size(),
                          kernel=kernel, distance=distance, reference_step=reference_step, hit=hit)

    def _summarise(self, signal: torch.Tensor) -> torch.Tensor:
        if self.config.full_residual_distance:
            return signal.float()
        return pfs_thumbnail(signal, self._pool_size())

    @torch.compiler.disable
    def _distance(self, ref: torch.Tensor, thumb: torch.Tensor) -> float:
        # The one host sync per stage: the decision has to be a Python bool.
        return float(pfs_distance(ref, thumb).item())


class H2BlockHook(StatefulBlockHook):
    """On the other blocks of a stage: pass through on a hit; on a miss run, and at the tail cache the residual."""

    def __init__(self, state_manager: ContextStateManager, stage: int, is_tail: bool,
                 config: H2CacheConfig | None = None) -> None:
        super().__init__(state_manager)
        self.spec = STAGES[stage]
        self.is_tail = is_tail
        self.config = config or H2CacheConfig()

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        state = self.state_manager.get_state()
        stage = state.stages[self.spec.index]
        if state.record is not None and stage.hit:
            hidden_in, encoder_in = _inputs(self._meta, args, kwargs)
            return _skipped(self._meta, stage.tuple_output, hidden_in, encoder_in)
        output = self.fn_ref.original_forward(*args, **kwargs)
        if state.record is None:
            return output
        state.record.ran(self.spec.number)
        if self.is_tail and stage.head_output is not None:
            hidden_out, encoder_out = _streams(output, self._meta)
            head_hidden, head_encoder = stage.head_output
            stage.residual = (hidden_out - head_hidden, _sub(encoder_out, head_encoder))
            stage.head_output = None
            cfg = self.config
            if cfg.forecast_residual:
                forecast = state.forecasts[self.spec.index]
                # stage.ref is this miss's thumbnail: the miss refreshed it.
                if cfg.forecast_fallback or cfg.forecast_error_limit is not None:
                    thumb = stage.ref if cfg.forecast_probe_factor else None
                    errors = state.forecast_errors[self.spec.index]
                    errors.measure(forecast, stage.residual, state.step, cfg.forecast_max_factor, thumb)
                    for name, value in zip(self.spec.error_fields, (errors.forecast, errors.replay)):
                        setattr(state.record, name, value)
                forecast.remember(stage.residual, state.step, stage.ref)
            if self.spec.follows_structure:
                state.whole_detail.finish((hidden_out, encoder_out))
        return output


class H2CacheHandle:
    """What :func:`apply_h2_cache` returns: the trace of the latest pipeline call, and the way back.

    Attributes:
        trace: :class:`~h2cache.trace.Trace` of the most recent pipeline call.
        pfs: :class:`~h2cache.pfs_views.PFSViews`, what PFS compared in that call; records only after
            ``handle.pfs.enable()``.
        split: the :class:`~h2cache.stages.StageSplit` in use.
        config: the :class:`H2CacheConfig` the hooks read (changes to thresholds apply from the next call).
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
        """Forget all references and cached residuals, e.g. after a pipeline call that raised."""
        if not self.removed:
            HookRegistry.check_if_exists_or_initialize(self.transformer).reset_stateful_hooks(recurse=True)

    def remove(self) -> None:
        """Detach every hook; the transformer computes exactly what it did before. Safe to call twice."""
        if self.removed:
            return
        detach_hooks(self.transformer, (_ROOT_HOOK, _PROBE_HOOK, _BLOCK_HOOK), self._created)
        if self._installed_reset:
            remove_reset(self.transformer)
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
    return registry is not None and registry.get_hook(_ROOT_HOOK) is not None


def apply_h2_cache(pipe_or_transformer: Any, config: H2CacheConfig | None = None) -> H2CacheHandle:
    r"""Apply H2-Cache to a pipeline's transformer (or to a transformer).

    Args:
        pipe_or_transformer: a diffusers pipeline with a ``.transformer`` (e.g. ``FluxPipeline``) or the
            transformer itself (``FluxTransformer2DModel``, ``SD3Transformer2DModel``).
        config: thresholds and pool sizes; ``H2CacheConfig()`` (the published FLUX.1 settings) if omitted.

    Returns:
        An :class:`H2CacheHandle` with ``.trace`` and ``.remove()``.

    Raises:
        TypeError: not a pipeline or module, or `config` is not an ``H2CacheConfig``.
        ValueError: a transformer class not in ``h2cache.stages.MODEL_TABLE``, a bad ``stage_split``, options
            that contradict each other (:meth:`H2CacheConfig.validate`), or a cache already applied.
        On any error the model is left untouched.

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
    refuse_stacking(transformer, "H2-Cache")

    state_manager = ContextStateManager(H2CacheState)
    trace = Trace()
    views = PFSViews()
    created = [m for m in (transformer, *split.stage1, *split.stage2) if not hasattr(m, "_diffusers_hook")]
    root = HookRegistry.check_if_exists_or_initialize(transformer)
    root.register_hook(H2RootHook(state_manager, trace, split.blocks_total, config, views), _ROOT_HOOK)
    for index, blocks in enumerate((split.stage1, split.stage2)):
        head, rest = blocks[0], blocks[1:]
        HookRegistry.check_if_exists_or_initialize(head).register_hook(
            H2ProbeHook(state_manager, config, index, is_tail=not rest, views=views), _PROBE_HOOK)
        for position, block in enumerate(rest):
            HookRegistry.check_if_exists_or_initialize(block).register_hook(
                H2BlockHook(state_manager, index, is_tail=position == len(rest) - 1, config=config), _BLOCK_HOOK)
    # cache_context() walks a cached list of child registries; it must see the new block hooks.
    root.invalidate_child_registries_cache()
    handle = H2CacheHandle(transformer, config, split, trace, created, views)
    handle._installed_reset = install_reset(transformer)  # SD3 has no CacheMixin to reset hooks after a call
    return handle
