"""H2CacheConfig: the thresholds and pool sizes of H2-Cache, validated on every assignment."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

ROLES = ("published", "ablation", "option", "experimental", "model", "call")
_KEY = "h2cache"


@dataclass(frozen=True)
class ConfigField:
    """One :class:`H2CacheConfig` field as declared: what it accepts and how the app and benchmark show it.

    ``role`` says where it belongs: ``"published"`` (the paper's knobs), ``"ablation"`` (switches parts of the
    algorithm off), ``"option"`` (changes beyond the paper, off by default, offered in the app),
    ``"experimental"`` (like an option, but under evaluation: the library and the benchmark have it, the app
    does not until measurements earn it a place), ``"model"`` (fitting a model) or
    ``"call"`` (about the pipeline calls to come). ``unit`` says what a value counts, so the app can bound it
    by its own limits (``"threshold"``, ``"pool"``, ``"steps"``, ``"calls"``; empty for flags).

    Example:
        >>> f = config_fields()[0]
        >>> f.name, f.kind.__name__, f.default, f.allowed()
        ('tau1', 'float', 0.15, 'a finite number >= 0')
        >>> [f.name for f in config_fields("option")]
        ['warmup_steps', 'max_consecutive_hits', 'final_full_steps', 'skip_stage2_probe_on_hit']
    """

    name: str
    kind: type
    default: Any
    low: float | None = None
    none_means: str | None = None
    unit: str = ""
    role: str = "published"
    label: str = ""
    help: str = ""

    def allowed(self) -> str:
        """The allowed values in words, as error messages give them."""
        if self.kind is bool:
            return "True or False"
        if self.kind is float:
            number = f"a finite number >= {self.low:g}"
            return number if self.none_means is None else f"{self.none_means} or {number}"
        whole = f"an integer >= {self.low}"
        return whole if self.none_means is None else f"{self.none_means} or {whole}"

    def accepts(self, value: Any) -> bool:
        try:
            self.convert(value)
        except ValueError:
            return False
        return True

    def convert(self, value: Any) -> Any:
        """`value` as the plain Python value this field stores (numpy and 0-d torch numbers included), or
        ``ValueError`` naming the field and, for a number out of range, the range; for a wrong type, the type."""
        if value is None and self.none_means is not None and self.kind is not bool:
            return None
        plain = plain_number(value, self.kind)
        if plain is None:
            raise ValueError(f"H2CacheConfig.{self.name} must be {self.allowed()}, got {_type_name(value)} "
                             f"{value!r}")
        if self.kind is not bool and not (math.isfinite(plain) and plain >= self.low):
            raise ValueError(f"H2CacheConfig.{self.name} must be {self.allowed()}, got {value!r}")
        return plain

    def check(self, value: Any) -> None:
        self.convert(value)


def plain_number(value: Any, kind: type) -> bool | int | float | None:
    """`value` as a plain Python `kind` (``bool``, ``int`` or ``float``), or ``None`` if its type is not one.

    numpy scalars and 0-d torch tensors count as the numbers they hold, so that sweeps built with numpy work;
    a bool is not a number and an integer field takes no float, not even ``4.0``.

    Example:
        >>> import numpy as np
        >>> plain_number(np.float32(0.5), float), plain_number(np.int64(4), int), plain_number(4, float)
        (0.5, 4, 4.0)
        >>> plain_number(4.0, int) is None, plain_number(True, int) is None, plain_number("1", float) is None
        (True, True, True)
    """
    if type(value).__module__ == "torch" and getattr(value, "ndim", None) == 0:
        value = value.detach().cpu().numpy()
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        value = value[()]
        # A float32 0.1 is 0.10000000149 as a float64; its shortest decimal is the number that was meant.
        value = float(str(value)) if value.dtype.kind == "f" and value.dtype.itemsize < 8 else value.item()
    if kind is bool:
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if kind is int:
        return value if isinstance(value, int) else None
    return float(value) if isinstance(value, (int, float)) else None


def _type_name(value: Any) -> str:
    module = type(value).__module__
    name = type(value).__name__ if module == "builtins" else f"{module}.{type(value).__name__}"
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _declare(default: Any, kind: type, **declared: Any) -> Any:
    return field(default=default, metadata={_KEY: {"kind": kind, "default": default, **declared}})


@dataclass
class H2CacheConfig:
    r"""Configuration of H2-Cache (hierarchical two-stage caching with pooled feature summarization).

    Args:
        tau1: Threshold of the structure stage (stage 1). A step reuses stage 1 when the PFS distance of its
            probe block's residual to the reference is below ``tau1``. ``0`` never reuses. Finite, ``>= 0``.
        tau2: Threshold of the detail stage (stage 2), used when stage 1 was computed. Finite, ``>= 0``.
        pool_size_stage1: PFS pooling target for stage 1: kernel ``k = max(1, N // pool_size_stage1)``
            over ``N`` image tokens. Integer ``>= 1``. 2048 is the published FLUX.1 setting.
        pool_size_stage2: The same for stage 2 (text and image tokens). Integer ``>= 1``; published: 384.
        stage_split: For models with a single block list (e.g. ``SD3Transformer2DModel``), the index of the
            first stage-2 block. ``None`` splits at half. Must be ``None`` for two-list models like FLUX.
        full_residual_distance: Ablation, off by default: compare unpooled residuals instead of PFS thumbnails.
        independent_stage2: Ablation, off by default: stage 2 measures its own distance even when stage 1 hit,
            instead of being forced to hit.

    Options that change the published algorithm. All are off by default; ``docs/BENCHMARKS.md`` measures them.

    Args:
        warmup_steps: The first ``warmup_steps`` calls of each cache context compute every block (distances
            are still measured and references refreshed). Integer ``>= 0``.
        max_consecutive_hits: After this many calls in a row that reused anything, the next call computes
            every block. ``0`` means no cap. Integer ``>= 0``.
        final_full_steps: The last ``final_full_steps`` calls of each context compute every block. Needs
            ``num_inference_steps``, since a transformer call cannot know how many steps are left.
            Integer ``>= 0``.
        num_inference_steps: Steps of the pipeline calls to come; only read by ``final_full_steps``.
            ``None`` or an integer ``>= 1``.
        skip_stage2_probe_on_hit: On a stage-1 hit, skip stage 2's probe block too and add the residual of
            the whole of stage 2 saved at the last call that ran it. A stage-1 hit then runs one block, as
            FirstBlockCache does, instead of two. Cannot be combined with ``independent_stage2``.
        forecast_residual: Experimental. On a hit, add the stage's residual extrapolated linearly from its
            last two misses to the current step (:class:`~h2cache.forecast.ResidualForecast`) instead of
            replaying the last one; decisions are unchanged. Not offered in the app.
        forecast_probe_factor: Experimental, with ``forecast_residual`` only. The factor is measured on the
            probe instead of counted in steps: the projection of the change of this call's PFS thumbnail since
            the last miss onto its change between the last two misses, relative to that change. The stage
            residual is then moved as far along its own line as the probe moved along its line.

    Options tried and removed, with their measurements, are listed in ``docs/EXPERIMENTS.md``.

    Example:
        >>> guarded = H2CacheConfig(warmup_steps=6, max_consecutive_hits=3, final_full_steps=1,
        ...                         num_inference_steps=28)
        >>> guarded.validate()
        >>> H2CacheConfig(final_full_steps=1).validate()
        Traceback (most recent call last):
        ...
        ValueError: H2CacheConfig.final_full_steps = 1 needs H2CacheConfig.num_inference_steps (an integer >= 1), got None

    Example:
        >>> H2CacheConfig(tau1=0.1, tau2=0.2).tau2
        0.2
        >>> H2CacheConfig(tau1=-1)
        Traceback (most recent call last):
        ...
        ValueError: H2CacheConfig.tau1 must be a finite number >= 0, got -1
    """

    # Each field is declared once, here: type, range, role, label and help. Validation, the method settings
    # of the benchmark, and the app's inputs, widgets and checks are all derived from it (config_fields()).
    tau1: float = _declare(0.15, float, low=0.0, unit="threshold", role="published",
                           label="τ1: stage-1 (structure) threshold",
                           help="Stage-1 (structure) PFS threshold; 0 = never reuse")
    tau2: float = _declare(0.22, float, low=0.0, unit="threshold", role="published",
                           label="τ2: stage-2 (detail) threshold",
                           help="Stage-2 (detail) PFS threshold, used when stage 1 ran; 0 = never reuse")
    pool_size_stage1: int = _declare(2048, int, low=1, unit="pool", role="published", label="PFS pool size, stage 1",
                                     help="Pooling kernel k = max(1, tokens // pool size)")
    pool_size_stage2: int = _declare(384, int, low=1, unit="pool", role="published", label="PFS pool size, stage 2",
                                     help="The same for stage 2 (text and image tokens)")
    stage_split: int | None = _declare(None, int, low=1, none_means="None (split at half)", role="model",
                                       label="Stage split", help="First stage-2 block of a one-list model")
    full_residual_distance: bool = _declare(False, bool, role="ablation", label="Unpooled distance",
                                            help="Unpooled distance instead of PFS")
    independent_stage2: bool = _declare(False, bool, role="ablation", label="Independent stage 2",
                                        help="Stage 2 decides even when stage 1 hit")
    warmup_steps: int = _declare(0, int, low=0, unit="steps", role="option", label="Warm-up steps",
                                 help="The first N steps compute every block (0 = off)")
    max_consecutive_hits: int = _declare(0, int, low=0, unit="calls", role="option", label="Max consecutive hits",
                                         help="After N steps in a row that reused anything, the next computes "
                                              "every block (0 = no cap)")
    final_full_steps: int = _declare(0, int, low=0, unit="steps", role="option", label="Final full steps",
                                     help="The last N steps compute every block (0 = off)")
    num_inference_steps: int | None = _declare(None, int, low=1, none_means="None", role="call",
                                               label="Steps", help="Steps of the calls to come (for final_full_steps)")
    skip_stage2_probe_on_hit: bool = _declare(False, bool, role="option", label="One probe per stage-1 hit",
                                              help="A step that reuses stage 1 skips stage 2's probe too: "
                                                   "1 block instead of 2")
    forecast_residual: bool = _declare(False, bool, role="experimental", label="Forecast reused residuals",
                                       help="A hit adds the stage's residual extrapolated linearly from its last "
                                            "two misses to this step, instead of replaying the last one")
    forecast_probe_factor: bool = _declare(False, bool, role="experimental", label="Forecast factor from the probe",
                                           help="The forecast's factor is how far the probe's PFS thumbnail moved "
                                                "since the last miss, along its change between the last two misses, "
                                                "instead of the steps elapsed (needs forecast_residual)")
    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, _validate(name, value))

    def validate(self) -> None:
        """Checks between fields (each field alone is checked on assignment). Raises ``ValueError``."""
        if self.final_full_steps and self.num_inference_steps is None:
            raise ValueError(f"H2CacheConfig.final_full_steps = {self.final_full_steps} needs "
                             "H2CacheConfig.num_inference_steps (an integer >= 1), got None")
        if self.forecast_probe_factor and not self.forecast_residual:
            raise ValueError("H2CacheConfig.forecast_probe_factor = True needs H2CacheConfig.forecast_residual = True "
                             "(it measures the forecast's factor)")
        if self.skip_stage2_probe_on_hit and self.independent_stage2:
            raise ValueError("H2CacheConfig.skip_stage2_probe_on_hit and H2CacheConfig.independent_stage2 cannot "
                             "both be True: an independent stage 2 needs its probe to decide")


def config_fields(role: str | None = None) -> tuple[ConfigField, ...]:
    """H2CacheConfig's fields as declared, in order; only those of `role` if given (one of :data:`ROLES`)."""
    if role is not None and role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    return tuple(f for f in _FIELDS.values() if role is None or f.role == role)


_FIELDS = {f.name: ConfigField(f.name, **f.metadata[_KEY]) for f in fields(H2CacheConfig)}


def _validate(name: str, value) -> Any:
    if name not in _FIELDS:
        raise AttributeError(f"H2CacheConfig has no field {name!r}")
    return _FIELDS[name].convert(value)
