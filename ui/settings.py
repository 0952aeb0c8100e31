"""space.yaml -> AppSettings: the allowed models, input limits, defaults and queue settings.

A malformed file fails at startup with the offending key named, not at the first request.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from h2cache import H2CacheConfig
from h2cache.pipelines import generation_defaults

_PUBLISHED = H2CacheConfig()  # the library's defaults, where space.yaml gives none
DEFAULT_SETTINGS_PATH = Path(__file__).resolve().parent.parent / "space.yaml"


class SettingsError(ValueError):
    """space.yaml is missing a key or holds a value of the wrong kind."""


def _get(mapping: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    if key not in mapping:
        if default is ...:
            raise SettingsError(f"space.yaml: {where}.{key} is missing")
        return default
    value = mapping[key]
    # YAML reads 1 as int; allow it where a float is wanted, never a bool for a number.
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and kind is not bool:
        raise SettingsError(f"space.yaml: {where}.{key} must be {kind}, got {value!r}")
    if not isinstance(value, kind):
        raise SettingsError(f"space.yaml: {where}.{key} must be {kind}, got {value!r}")
    return value


@dataclass(frozen=True)
class GpuEstimate:
    """Seconds a comparison of this model takes on the Space's GPU, at 1024x1024 (scaled by pixel count).

    Both runs cost ``step_seconds`` per step, both runs' step previews ``preview_seconds`` per step to
    decode, and ``fixed_seconds`` once (prompt encoding, the final decodes, metrics, moving weights in).
    """

    step_seconds: float
    preview_seconds: float
    fixed_seconds: float
    source: str

    def seconds(self, steps: int, width: int, height: int, runs: int = 2) -> float:
        """A comparison's seconds; `runs` pipeline calls in all (a peer's tries and a sweep's points add runs,
        without step previews)."""
        scale = width * height / 1024**2
        return self.fixed_seconds + steps * scale * (runs * self.step_seconds + 2 * self.preview_seconds)


@dataclass(frozen=True)
class ZeroGpu:
    """How long each ``spaces.GPU`` call asks for: ``margin`` x the model's estimate, within the bounds."""

    min_duration: int
    max_duration: int
    margin: float


@dataclass(frozen=True)
class ModelSpec:
    key: str
    label: str
    requires_gpu: bool
    min_size: int
    max_size: int
    size_multiple: int
    min_steps: int
    max_steps: int
    default_size: int
    default_steps: int
    tau1: float
    tau2: float
    # PFS pool sizes the page starts with for this model: the published 2048/384 pool a small model's few
    # tokens with k = 1 (no pooling), so a small model lists the sizes that give FLUX.1's kernels at its size.
    pool_size_stage1: int = _PUBLISHED.pool_size_stage1
    pool_size_stage2: int = _PUBLISHED.pool_size_stage2
    zero_gpu: bool = True  # offered (and loaded at startup) on a ZeroGPU Space
    gpu_estimate: GpuEstimate | None = None


@dataclass(frozen=True)
class Limits:
    prompt_max_chars: int
    tau_max: float
    pool_size_min: int
    pool_size_max: int
    seed_max: int
    max_consecutive_hits_max: int


@dataclass(frozen=True)
class Defaults:
    model: str
    prompt: str
    seed: int


@dataclass(frozen=True)
class Example:
    prompt: str
    seed: int
    steps: int
    size: int
    tau1: float
    tau2: float


@dataclass(frozen=True)
class AppSettings:
    title: str
    host: str
    port: int
    queue_max_size: int
    zero_gpu_duration: int  # the GPU call's duration for models without a gpu_estimate
    zero_gpu: ZeroGpu
    limits: Limits
    defaults: Defaults
    diff_gain: float
    preview_store_mb: int  # memory for the scrubber's previews and PFS thumbnails, all sessions together
    models: tuple[ModelSpec, ...]
    examples: tuple[Example, ...]

    def available_models(self, cuda_available: bool, zero_gpu: bool = False) -> list[ModelSpec]:
        """The models this machine may serve: GPU-only ones are dropped without CUDA; on ZeroGPU, only
        those marked ``zero_gpu``."""
        return [m for m in self.models if (cuda_available or not m.requires_gpu) and (m.zero_gpu or not zero_gpu)]

    def gpu_call_seconds(self, key: str, steps: int, width: int, height: int, runs: int = 2) -> int:
        """Seconds to ask ZeroGPU for one comparison of `runs` pipeline calls: margin x the model's estimate,
        within the bounds (``zero_gpu_duration`` for a model without an estimate)."""
        estimate = self.model(key).gpu_estimate
        if estimate is None:
            return self.zero_gpu_duration
        wanted = self.zero_gpu.margin * estimate.seconds(steps, width, height, runs)
        return int(min(max(wanted, self.zero_gpu.min_duration), self.zero_gpu.max_duration) + 0.999)

    def model(self, key: str) -> ModelSpec:
        for spec in self.models:
            if spec.key == key:
                return spec
        raise KeyError(key)


def _model(raw: dict[str, Any], index: int, pools: tuple[int, int]) -> ModelSpec:
    """One ``models`` entry; `pools` are the pool sizes of a model that lists none (``defaults``)."""
    where = f"models[{index}]"
    key = _get(raw, "key", str, where)
    sizes = _get(raw, "sizes", dict, where)
    steps = _get(raw, "steps", dict, where)
    gen = generation_defaults(key)
    spec = ModelSpec(
        key=key,
        label=_get(raw, "label", str, where, key),
        requires_gpu=_get(raw, "requires_gpu", bool, where, False),
        min_size=_get(sizes, "min", int, f"{where}.sizes"),
        max_size=_get(sizes, "max", int, f"{where}.sizes"),
        size_multiple=_get(sizes, "multiple", int, f"{where}.sizes", 16),
        min_steps=_get(steps, "min", int, f"{where}.steps", 1),
        max_steps=_get(steps, "max", int, f"{where}.steps"),
        default_size=_get(raw, "default_size", int, where, gen.get("height", 0)),
        default_steps=_get(raw, "default_steps", int, where, gen.get("num_inference_steps", 0)),
        tau1=_get(raw, "tau1", float, where, _PUBLISHED.tau1),
        tau2=_get(raw, "tau2", float, where, _PUBLISHED.tau2),
        pool_size_stage1=_get(raw, "pool_size_stage1", int, where, pools[0]),
        pool_size_stage2=_get(raw, "pool_size_stage2", int, where, pools[1]),
        zero_gpu=_get(raw, "zero_gpu", bool, where, True),
        gpu_estimate=_gpu_estimate(raw, where),
    )
    if not 0 < spec.min_size <= spec.default_size <= spec.max_size:
        raise SettingsError(f"space.yaml: {where}: need 0 < sizes.min <= default size ({spec.default_size}) <= sizes.max")
    if not 0 < spec.min_steps <= spec.default_steps <= spec.max_steps:
        raise SettingsError(f"space.yaml: {where}: need 0 < steps.min <= default steps ({spec.default_steps}) <= steps.max")
    return spec


def _positive(value: int, key: str) -> int:
    if value < 1:
        raise SettingsError(f"space.yaml: {key} must be >= 1, got {value}")
    return value


def _gpu_estimate(raw: dict[str, Any], where: str) -> GpuEstimate | None:
    est = _get(raw, "gpu_estimate", dict, where, None)
    if est is None:
        return None
    at = f"{where}.gpu_estimate"
    estimate = GpuEstimate(
        step_seconds=_get(est, "step_seconds", float, at), preview_seconds=_get(est, "preview_seconds", float, at),
        fixed_seconds=_get(est, "fixed_seconds", float, at), source=_get(est, "source", str, at))
    if min(estimate.step_seconds, estimate.preview_seconds, estimate.fixed_seconds) < 0:
        raise SettingsError(f"space.yaml: {at}: seconds must be >= 0")
    return estimate


def _zero_gpu(raw: dict[str, Any], models: tuple[ModelSpec, ...]) -> ZeroGpu:
    zero = ZeroGpu(min_duration=_get(raw, "min_duration", int, "zero_gpu", 30),
                   max_duration=_get(raw, "max_duration", int, "zero_gpu", 300),
                   margin=_get(raw, "margin", float, "zero_gpu", 1.5))
    if not 0 < zero.min_duration <= zero.max_duration or zero.margin < 1:
        raise SettingsError("space.yaml: zero_gpu: need 0 < min_duration <= max_duration and margin >= 1")
    # Every model a ZeroGPU Space serves is loaded at startup, and a GPU call may place all of them
    # on its GPU: two FLUX.1 pipelines (~33 GB each in bf16) must not share one.
    gpu_models = [m.key for m in models if m.requires_gpu and m.zero_gpu]
    if len(gpu_models) > 1:
        raise SettingsError(f"space.yaml: at most one GPU model may have zero_gpu: true (one FLUX.1 per ZeroGPU "
                            f"Space), got {gpu_models}")
    return zero


def load_settings(path: str | Path = DEFAULT_SETTINGS_PATH) -> AppSettings:
    """Read and check space.yaml.

    Raises:
        SettingsError: a key is missing, has the wrong type, or the defaults contradict the limits.
    """
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    server = _get(raw, "server", dict, "<root>", {})
    queue = _get(raw, "queue", dict, "<root>", {})
    limits_raw = _get(raw, "limits", dict, "<root>")
    defaults_raw = _get(raw, "defaults", dict, "<root>")
    pools = (_get(defaults_raw, "pool_size_stage1", int, "defaults", _PUBLISHED.pool_size_stage1),
             _get(defaults_raw, "pool_size_stage2", int, "defaults", _PUBLISHED.pool_size_stage2))
    models = tuple(_model(m, i, pools) for i, m in enumerate(_get(raw, "models", list, "<root>")))
    if not models:
        raise SettingsError("space.yaml: models must list at least one model")
    limits = Limits(
        prompt_max_chars=_get(limits_raw, "prompt_max_chars", int, "limits"),
        tau_max=_get(limits_raw, "tau_max", float, "limits"),
        pool_size_min=_get(limits_raw, "pool_size_min", int, "limits", 1),
        pool_size_max=_get(limits_raw, "pool_size_max", int, "limits"),
        seed_max=_get(limits_raw, "seed_max", int, "limits", 2**32 - 1),
        max_consecutive_hits_max=_get(limits_raw, "max_consecutive_hits_max", int, "limits", 100),
    )
    defaults = Defaults(
        model=_get(defaults_raw, "model", str, "defaults"),
        prompt=_get(defaults_raw, "prompt", str, "defaults"),
        seed=_get(defaults_raw, "seed", int, "defaults", 0),
    )
    for spec in models:
        for pool in (spec.pool_size_stage1, spec.pool_size_stage2):
            if not limits.pool_size_min <= pool <= limits.pool_size_max:
                raise SettingsError(f"space.yaml: model {spec.key!r}: pool sizes must be from limits.pool_size_min "
                                    f"({limits.pool_size_min}) to limits.pool_size_max ({limits.pool_size_max}), got {pool}")
    if defaults.model not in {m.key for m in models}:
        raise SettingsError(f"space.yaml: defaults.model {defaults.model!r} is not one of the listed models")
    examples = tuple(
        Example(
            prompt=_get(e, "prompt", str, f"examples[{i}]"), seed=_get(e, "seed", int, f"examples[{i}]", 0),
            steps=_get(e, "steps", int, f"examples[{i}]"), size=_get(e, "size", int, f"examples[{i}]"),
            tau1=_get(e, "tau1", float, f"examples[{i}]"), tau2=_get(e, "tau2", float, f"examples[{i}]"),
        )
        for i, e in enumerate(_get(raw, "examples", list, "<root>", []))
    )
    return AppSettings(
        title=_get(raw, "title", str, "<root>", "H2-Cache comparison"),
        host=_get(server, "host", str, "server", "127.0.0.1"),
        port=_get(server, "port", int, "server", 7860),
        queue_max_size=_get(queue, "max_size", int, "queue", 32),
        zero_gpu_duration=_get(raw, "zero_gpu_duration", int, "<root>", 120),
        zero_gpu=_zero_gpu(_get(raw, "zero_gpu", dict, "<root>", {}), models),
        limits=limits,
        defaults=defaults,
        diff_gain=_get(raw, "diff_gain", float, "<root>", 8.0),
        preview_store_mb=_positive(_get(raw, "preview_store_mb", int, "<root>", 16), "preview_store_mb"),
        models=models,
        examples=examples,
    )
