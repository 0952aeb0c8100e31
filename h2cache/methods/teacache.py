"""TeaCache for ``FluxTransformer2DModel``, on diffusers hooks.

TeaCache (Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video
Diffusion Model", 2024) decides per step whether to run the transformer blocks:

1. The signal is the timestep-modulated input of the first block: the first
   output of ``transformer_blocks[0].norm1(hidden_states, emb=temb)``.
2. Its relative L1 change since the previous step, ``mean|m_t - m_{t-1}| / mean|m_{t-1}|``,
   is rescaled by a polynomial fitted for the model (it maps input change to
   output change) and added to an accumulator.
3. While the accumulator stays below ``threshold`` the blocks are skipped and the
   residual they added at the last computed step is added to the image stream.
   Once it crosses, the blocks run, the residual is refreshed and the accumulator
   restarts from zero. The first and the last step are always computed.
4. Optional guards (:class:`~h2cache.methods.guards.Guards`, none by default) force more computed steps:
   warm-up steps, a cap on skipped steps in a row, final steps. A forced step still measures its change,
   and restarts the accumulator as a crossing does.

The polynomial comes from :func:`calibrate_teacache` (``numpy.polyfit`` over an
uncached run) and is stored per model by :class:`~h2cache.methods.calibration.CalibrationStore`.

Each cache context ('cond'/'uncond') keeps its own state; nothing crosses pipeline calls.

Example:
    >>> import torch, h2cache
    >>> pipe = h2cache.load_pipeline()
    >>> pipe.set_progress_bar_config(disable=True)
    >>> # The identity polynomial: the accumulator sums raw input changes (about 0.16, then 0.24-0.28 per step).
    >>> config = TeaCacheConfig(threshold=0.6, coefficients=(1.0, 0.0), num_inference_steps=6)
    >>> handle = apply_teacache(pipe.transformer, config)
    >>> image = pipe("a red circle at the center on a plain blue background",
    ...              **dict(h2cache.generation_defaults(pipe), num_inference_steps=6),
    ...              generator=torch.Generator().manual_seed(0)).images[0]
    >>> # step 0 and 5: always computed; step 3: the accumulator crossed 0.6 (0.72) and restarted
    >>> [(d.step, d.computed) for d in handle.decisions if d.context == "cond"]
    [(0, True), (1, False), (2, False), (3, True), (4, False), (5, True)]
    >>> handle.remove()
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from diffusers.hooks import HookRegistry
from diffusers.hooks.hooks import BaseState
from diffusers.utils.torch_utils import unwrap_module

from ..block_io import block_inputs, block_outputs, skipped_outputs
from ..hook_machinery import ContextStateManager, StatefulBlockHook, claim, detach_hooks, refuse_stacking, release
from .calibration import prompt_hashes
from .guards import Guards

_HEAD_HOOK = "teacache_head"
_BLOCK_HOOK = "teacache_block"

# Published TeaCache4FLUX rescaling polynomial for FLUX.1-dev (highest power first).
FLUX_DEV_COEFFICIENTS = (4.98651651e02, -2.83781631e02, 5.58554382e01, -3.82021401e00, 2.64230861e-01)


@dataclass
class TeaCacheConfig:
    r"""Settings of TeaCache.

    Args:
        threshold: Skip while the accumulated rescaled change stays below this. ``0`` never skips.
            Published FLUX.1-dev points: 0.25 (~1.5x), 0.4 (~1.8x), 0.6 (~2.0x), 0.8 (~2.25x).
        coefficients: The rescaling polynomial, highest power first (``numpy.polyfit`` order).
        num_inference_steps: Steps of the pipeline call, so that the last step is always computed.
        guards: Extra steps that always compute (warm-up, a cap on skips in a row, final steps); ``None``: none.

    Example:
        >>> TeaCacheConfig(threshold=-1, coefficients=(1.0, 0.0))
        Traceback (most recent call last):
        ...
        ValueError: TeaCacheConfig.threshold must be a finite number >= 0, got -1
    """

    threshold: float = 0.4
    coefficients: Sequence[float] = field(default_factory=tuple)
    num_inference_steps: int = 28
    guards: Guards | None = None

    def __post_init__(self) -> None:
        t = self.threshold
        if not (isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t >= 0):
            raise ValueError(f"TeaCacheConfig.threshold must be a finite number >= 0, got {t!r}")
        coefficients = tuple(self.coefficients)
        if not coefficients or not all(isinstance(c, (int, float)) and math.isfinite(c) for c in coefficients):
            raise ValueError(
                "TeaCacheConfig.coefficients must be a non-empty sequence of finite numbers (highest power first); "
                "fit them with h2cache.methods.calibrate_teacache")
        self.coefficients = tuple(float(c) for c in coefficients)
        n = self.num_inference_steps
        if not (isinstance(n, int) and not isinstance(n, bool) and n >= 2):
            raise ValueError(f"TeaCacheConfig.num_inference_steps must be an integer >= 2, got {n!r}")
        if self.guards is not None and not isinstance(self.guards, Guards):
            raise ValueError(f"TeaCacheConfig.guards must be a Guards or None, got {type(self.guards).__name__}")

    def rescale(self, change: float) -> float:
        return float(np.polyval(self.coefficients, change))


@dataclass
class TeaCacheDecision:
    """One call's decision: the relative change (``None`` when forced), the accumulated value it was decided on,
    and the outcome."""

    step: int
    context: str
    change: float | None
    accumulated: float
    computed: bool


class TeaCacheState(BaseState):
    def __init__(self) -> None:
        self.step = 0
        self.accumulated = 0.0
        self.previous_modulated: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None  # image-stream residual of all blocks at the last compute
        self.head_input: torch.Tensor | None = None
        self.compute = True
        self.streak = 0  # skipped steps in a row, for Guards.max_consecutive_hits

    def reset(self) -> None:
        self.__init__()


def _relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    return float(((current - previous).abs().mean() / previous.abs().mean()).item())


class TeaCacheHeadHook(StatefulBlockHook):
    """On ``transformer_blocks[0]``: measure the modulated input, decide, and on a skip apply the cached residual."""

    def __init__(self, state_manager: ContextStateManager, config: TeaCacheConfig,
                 decisions: list[TeaCacheDecision]) -> None:
        super().__init__(state_manager)
        self.config = config
        self.decisions = decisions
        self._new_run = True

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        if self._new_run:
            self.decisions.clear()
            self._new_run = False
        meta = self._meta
        hidden, encoder = block_inputs(meta, args, kwargs)
        temb = meta._get_parameter_from_args_kwargs("temb", args, kwargs)
        state: TeaCacheState = self.state_manager.get_state()
        # Computing the signal re-runs norm1 (cheap: one Linear on temb and a LayerNorm); the published
        # implementation does the same outside the block.
        modulated = unwrap_module(module).norm1(hidden, emb=temb)[0]
        compute, change, accumulated = self._decide(state, modulated)
        state.previous_modulated = modulated
        self.decisions.append(TeaCacheDecision(state.step, self.state_manager.context_name, change,
                                               accumulated, compute))
        state.step += 1
        state.compute = compute
        state.streak = 0 if compute else state.streak + 1
        if not compute:
            return skipped_outputs(meta, True, hidden + state.residual, encoder)
        state.head_input = hidden
        return self.fn_ref.original_forward(*args, **kwargs)

    @torch.compiler.disable
    def _decide(self, state: TeaCacheState, modulated: torch.Tensor) -> tuple[bool, float | None, float]:
        """(compute?, relative change or None when forced, accumulator value the decision was made on)."""
        forced = (state.step == 0 or state.step >= self.config.num_inference_steps - 1
                  or state.previous_modulated is None or state.residual is None
                  or state.previous_modulated.shape != modulated.shape)
        if forced:
            state.accumulated = 0.0
            return True, None, 0.0
        change = _relative_l1(modulated, state.previous_modulated)
        state.accumulated += self.config.rescale(change)
        accumulated = state.accumulated
        guards = self.config.guards
        guarded = guards is not None and guards.forces_full(state.step, state.streak)
        if accumulated < self.config.threshold and not guarded:
            return False, change, accumulated
        state.accumulated = 0.0  # crossed: compute, and start accumulating afresh
        return True, change, accumulated

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self._new_run = True
        return super().reset_state(module)


class TeaCacheBlockHook(StatefulBlockHook):
    """On every other block: pass through on a skip; on a compute run, and at the tail store the residual."""

    def __init__(self, state_manager: ContextStateManager, is_tail: bool) -> None:
        super().__init__(state_manager)
        self.is_tail = is_tail

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        meta = self._meta
        state: TeaCacheState = self.state_manager.get_state()
        if not state.compute:
            return skipped_outputs(meta, True, *block_inputs(meta, args, kwargs))
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.is_tail and state.head_input is not None:
            hidden_out, _ = block_outputs(output, meta)
            state.residual = hidden_out - state.head_input
            state.head_input = None
        return output



class TeaCacheHandle:
    """What :func:`apply_teacache` returns: the decisions of the latest pipeline call and ``remove()``."""

    def __init__(self, transformer: torch.nn.Module, config: TeaCacheConfig, decisions: list[TeaCacheDecision],
                 created: list[torch.nn.Module]) -> None:
        self.transformer = transformer
        self.config = config
        self.decisions = decisions
        self._created = created
        self.removed = False

    def remove(self) -> None:
        """Detach every hook; the transformer computes exactly what it did before. Safe to call twice."""
        if self.removed:
            return
        detach_hooks(self.transformer, (_HEAD_HOOK, _BLOCK_HOOK), self._created)
        release(self.transformer)
        self.removed = True


def teacache_blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    double = getattr(transformer, "transformer_blocks", None)
    single = getattr(transformer, "single_transformer_blocks", None)
    if not (isinstance(double, torch.nn.ModuleList) and isinstance(single, torch.nn.ModuleList)
            and len(double) > 0 and hasattr(double[0], "norm1")):
        raise TypeError(
            f"TeaCache is implemented for FluxTransformer2DModel (double- and single-stream blocks, the first "
            f"with an AdaLayerNormZero 'norm1'), got {type(transformer).__name__}")
    return [*double, *single]


def apply_teacache(transformer: torch.nn.Module, config: TeaCacheConfig) -> TeaCacheHandle:
    r"""Apply TeaCache to a ``FluxTransformer2DModel``.

    Raises:
        TypeError: not a FLUX transformer, or `config` is not a :class:`TeaCacheConfig`.
        ValueError: TeaCache or another cache is already applied.
    """
    if not isinstance(config, TeaCacheConfig):
        raise TypeError(f"config must be a TeaCacheConfig, got {type(config).__name__}")
    blocks = teacache_blocks(transformer)
    if any(getattr(getattr(b, "_diffusers_hook", None), "hooks", {}) for b in blocks):
        raise ValueError("the transformer's blocks already carry cache hooks; remove that cache before TeaCache")
    refuse_stacking(transformer, "TeaCache")
    state_manager = ContextStateManager(TeaCacheState)
    decisions: list[TeaCacheDecision] = []
    created = [m for m in (transformer, *blocks) if not hasattr(m, "_diffusers_hook")]
    root = HookRegistry.check_if_exists_or_initialize(transformer)
    HookRegistry.check_if_exists_or_initialize(blocks[0]).register_hook(
        TeaCacheHeadHook(state_manager, config, decisions), _HEAD_HOOK)
    for position, block in enumerate(blocks[1:], start=1):
        HookRegistry.check_if_exists_or_initialize(block).register_hook(
            TeaCacheBlockHook(state_manager, is_tail=position == len(blocks) - 1), _BLOCK_HOOK)
    root.invalidate_child_registries_cache()  # cache_context() must reach the new block hooks
    claim(transformer, "TeaCache")
    return TeaCacheHandle(transformer, config, decisions, created)


def fit_rescale_polynomial(input_changes: Sequence[float], output_changes: Sequence[float],
                           degree: int = 4) -> tuple[float, ...]:
    """``numpy.polyfit`` of output change against input change (highest power first).

    Example:
        >>> x = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
        >>> [round(c, 6) for c in fit_rescale_polynomial(x, [2 * v for v in x], degree=1)]
        [2.0, 0.0]
    """
    x = np.asarray(input_changes, dtype=np.float64)
    y = np.asarray(output_changes, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) <= degree:
        raise ValueError(f"need more than {degree} finite (input change, output change) pairs to fit "
                         f"a degree-{degree} polynomial, got {len(x)}")
    return tuple(float(c) for c in np.polyfit(x, y, degree))


def collect_teacache_pairs(pipe: Any, prompts: Sequence[str], seeds: Sequence[int],
                           **call_kwargs: Any) -> tuple[list[float], list[float]]:
    """Uncached runs of `pipe`: per consecutive steps, (relative change of the first block's modulated input,
    relative change of the transformer output), per cache context."""
    from ..compare import generate

    transformer = pipe.transformer
    block = teacache_blocks(transformer)[0]
    # With true CFG, FluxPipeline calls the transformer for 'cond' then 'uncond' at every step.
    uses_cfg = float(call_kwargs.get("true_cfg_scale") or 1.0) > 1.0 and call_kwargs.get("negative_prompt") is not None
    inputs: dict[str, list[torch.Tensor]] = {}
    outputs: dict[str, list[torch.Tensor]] = {}
    current = {"context": None, "n": 0}

    def before_transformer(module, args, kwargs):
        current["context"] = ("cond", "uncond")[current["n"] % 2] if uses_cfg else "cond"
        current["n"] += 1

    def before_block(module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        temb = kwargs.get("temb", args[2] if len(args) > 2 else None)
        with torch.no_grad():
            inputs.setdefault(current["context"], []).append(module.norm1(hidden, emb=temb)[0].detach().float())

    def after_transformer(module, args, kwargs, output):
        sample = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        outputs.setdefault(current["context"], []).append(sample.detach().float())

    x: list[float] = []
    y: list[float] = []
    handles = [transformer.register_forward_pre_hook(before_transformer, with_kwargs=True),
               block.register_forward_pre_hook(before_block, with_kwargs=True),
               transformer.register_forward_hook(after_transformer, with_kwargs=True)]
    try:
        for prompt in prompts:
            for seed in seeds:
                inputs.clear(); outputs.clear(); current["n"] = 0
                generate(pipe, prompt, seed=seed, previews=False, **call_kwargs)
                for context, mods in inputs.items():
                    outs = outputs[context]
                    for i in range(1, min(len(mods), len(outs))):
                        x.append(_relative_l1(mods[i], mods[i - 1]))
                        y.append(_relative_l1(outs[i], outs[i - 1]))
    finally:
        for handle in handles:
            handle.remove()
    return x, y


def calibrate_teacache(pipe: Any, prompts: Sequence[str], seeds: Sequence[int] = (0,), degree: int = 4,
                       **call_kwargs: Any) -> dict[str, Any]:
    """Fit TeaCache's rescaling polynomial for the model in `pipe` from uncached runs.

    Returns a JSON-ready dict: ``coefficients`` (highest power first), ``degree``, ``pairs`` and the range of
    input changes seen (the fit is only trustworthy inside it).

    Example:
        >>> import h2cache
        >>> pipe = h2cache.load_pipeline()
        >>> pipe.set_progress_bar_config(disable=True)
        >>> cal = calibrate_teacache(pipe, ["a red circle at the center on a plain blue background"],
        ...                          **dict(h2cache.generation_defaults(pipe), num_inference_steps=6))
        >>> # one (input change, output change) pair per step after the first, in each cache context (one here)
        >>> len(cal["coefficients"]), cal["pairs"], cal["num_inference_steps"]
        (5, 5, 6)
        >>> low, high = cal["input_change_range"]
        >>> 0 < low < high
        True
    """
    x, y = collect_teacache_pairs(pipe, prompts, seeds, **call_kwargs)
    coefficients = fit_rescale_polynomial(x, y, degree)
    return {"coefficients": list(coefficients), "degree": degree, "pairs": len(x),
            "input_change_range": [float(min(x)), float(max(x))],
            "num_inference_steps": int(call_kwargs.get("num_inference_steps", 0)) or None,
            "prompts": len(prompts), "seeds": list(seeds), "prompt_hashes": prompt_hashes(list(prompts))}
