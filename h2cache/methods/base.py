"""The common shape of a caching method: declared settings, an attach function, and the handle it returns.

Example:
    >>> from h2cache.methods import get_method
    >>> m = get_method("fbcache")
    >>> m.validate(threshold=0.1)
    {'threshold': 0.1}
    >>> m.validate(treshold=0.1)
    Traceback (most recent call last):
    ...
    ValueError: fbcache has no setting 'treshold'; its settings are: threshold
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..hook_machinery import claim, refuse_stacking, release, transformer_of
from .calibration import CalibrationStore, model_fingerprint, model_key
from .meter import BlockMeter, FlopTable, MethodRecord, MethodTrace
from .settings import Setting, validate_settings


@dataclass
class ApplyContext:
    """What an attach function may need besides its settings."""

    pipe: Any
    transformer: torch.nn.Module
    num_inference_steps: int
    calibration: CalibrationStore
    meter: BlockMeter | None = None  # attached before the method; tells a method the run and context

    @property
    def model_key(self) -> str:
        return model_key(self.pipe)

    @property
    def fingerprint(self) -> str:
        if not hasattr(self, "_fingerprint"):
            self._fingerprint = model_fingerprint(self.transformer)
        return self._fingerprint


@dataclass
class Attachment:
    """What an attach function returns: how to undo it, and optionally how to enrich the meter's records."""

    remove: Callable[[], None]
    annotate: Callable[[list[MethodRecord]], None] | None = None
    description: str = ""
    inner: Any = None  # the method's own handle or config, for inspection


@dataclass(frozen=True)
class Method:
    """A caching method under one name.

    Attributes:
        name: registry name, e.g. ``'fbcache'``.
        summary: one line for ``--help`` and reports.
        settings: the tunables, with ranges and defaults.
        default_grid: the sweep the benchmark runs when given no grid for this method.
        fixed: settings passed to the attach function but not tunable (ablation variants).
        attach: ``(settings, context) -> Attachment``.
        calibration: the calibration-store entry the method reads (``'teacache'``, ``'magcache'``), if any;
            the benchmark calibrates it on its calibration prompts.
    """

    name: str
    summary: str
    settings: tuple[Setting, ...]
    default_grid: dict[str, tuple[Any, ...]]
    attach: Callable[[dict[str, Any], ApplyContext], Attachment]
    fixed: dict[str, Any] = field(default_factory=dict)
    calibration: str | None = None

    def setting(self, name: str) -> Setting:
        for s in self.settings:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.settings) or "none"
        raise ValueError(f"{self.name} has no setting {name!r}; its settings are: {known}")

    def validate(self, **settings: Any) -> dict[str, Any]:
        return validate_settings(self.name, self.settings, settings)

    def apply(self, pipe_or_transformer: Any, *, num_inference_steps: int | None = None,
              flops: FlopTable | None = None, calibration: CalibrationStore | None = None,
              **settings: Any) -> MethodHandle:
        """Validate `settings`, attach a block meter and then the method.

        Args:
            pipe_or_transformer: a pipeline with ``.transformer`` (preferred: calibration is keyed by its model
                name) or the transformer.
            num_inference_steps: steps of the calls to come (TeaCache's forced last step, MagCache's ratios);
                the model's default when omitted.
            flops: per-block FLOPs for the resolution of the calls to come (:func:`measure_flop_table`).
            calibration: where TeaCache/MagCache numbers are read; the shipped file by default.

        Raises:
            ValueError: a setting out of range or unknown, a missing calibration, a cache already applied.
            TypeError: the model lacks what the method needs.
        """
        values = self.validate(**settings)
        transformer = transformer_of(pipe_or_transformer)
        if num_inference_steps is None:
            from ..pipelines import generation_defaults

            num_inference_steps = int(generation_defaults(pipe_or_transformer).get("num_inference_steps", 28))
        if not (isinstance(num_inference_steps, int) and num_inference_steps >= 1):
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        refuse_stacking(transformer, self.name)
        meter = BlockMeter(transformer, flops).attach()
        context = ApplyContext(pipe_or_transformer, transformer, num_inference_steps,
                               calibration or CalibrationStore(), meter)
        try:
            attachment = self.attach({**values, **self.fixed}, context)
        except BaseException:
            meter.detach()
            raise
        claim(transformer, f"method {self.name!r}")  # names the method, even over the library cache it uses
        return MethodHandle(self, values, meter, attachment)


class MethodHandle:
    """An applied method: the trace of the latest pipeline call, and the way back.

    Attributes:
        method: the :class:`Method`.
        settings: the validated settings in use.
        trace: :class:`~h2cache.methods.meter.MethodTrace` of the most recent pipeline call.
        run_started_at: ``time.perf_counter()`` at that call's first transformer call (denoising-loop timing).
    """

    def __init__(self, method: Method, settings: dict[str, Any], meter: BlockMeter, attachment: Attachment) -> None:
        self.method = method
        self.settings = settings
        self.meter = meter
        self.attachment = attachment
        self.removed = False

    @property
    def trace(self) -> MethodTrace:
        records = self.meter.trace
        if self.attachment.annotate is not None:
            self.attachment.annotate(records)
        return records

    @property
    def run_started_at(self) -> float | None:
        return self.meter.run_started_at

    @property
    def inner(self) -> Any:
        return self.attachment.inner

    def remove(self) -> None:
        """Detach the method, then the meter; the model computes exactly what it did before. Safe to call twice."""
        if self.removed:
            return
        try:
            self.attachment.remove()
        finally:
            self.meter.detach()
            release(self.meter.transformer)
            self.removed = True

    def __enter__(self) -> MethodHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "removed" if self.removed else "active"
        args = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        return f"MethodHandle({self.method.name}({args}), {state})"
