"""H2CacheConfig: the thresholds and pool sizes of H2-Cache, validated on every assignment."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


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

    tau1: float = 0.15
    tau2: float = 0.22
    pool_size_stage1: int = 2048
    pool_size_stage2: int = 384
    stage_split: int | None = None
    full_residual_distance: bool = False
    independent_stage2: bool = False
    warmup_steps: int = 0
    max_consecutive_hits: int = 0
    final_full_steps: int = 0
    num_inference_steps: int | None = None
    skip_stage2_probe_on_hit: bool = False

    def __setattr__(self, name: str, value) -> None:
        _validate(name, value)
        super().__setattr__(name, value)

    def validate(self) -> None:
        """Checks between fields (each field alone is checked on assignment). Raises ``ValueError``."""
        if self.final_full_steps and self.num_inference_steps is None:
            raise ValueError(f"H2CacheConfig.final_full_steps = {self.final_full_steps} needs "
                             "H2CacheConfig.num_inference_steps (an integer >= 1), got None")
        if self.skip_stage2_probe_on_hit and self.independent_stage2:
            raise ValueError("H2CacheConfig.skip_stage2_probe_on_hit and H2CacheConfig.independent_stage2 cannot "
                             "both be True: an independent stage 2 needs its probe to decide")


# Integer fields: (lowest allowed value, what None means where None is allowed).
_INTEGERS: dict[str, tuple[int, str | None]] = {
    "pool_size_stage1": (1, None), "pool_size_stage2": (1, None), "stage_split": (1, "None (split at half)"),
    "warmup_steps": (0, None), "max_consecutive_hits": (0, None), "final_full_steps": (0, None),
    "num_inference_steps": (1, "None"),
}


def _validate(name: str, value) -> None:
    where = f"H2CacheConfig.{name}"
    if name in ("tau1", "tau2"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
        if not ok:
            raise ValueError(f"{where} must be a finite number >= 0, got {value!r}")
    elif name in _INTEGERS:
        low, none = _INTEGERS[name]
        ok = (isinstance(value, int) and not isinstance(value, bool) and value >= low) or (none and value is None)
        if not ok:
            allowed = f"an integer >= {low}" if none is None else f"{none} or an integer >= {low}"
            raise ValueError(f"{where} must be {allowed}, got {value!r}")
    elif name in ("full_residual_distance", "independent_stage2", "skip_stage2_probe_on_hit"):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be True or False, got {value!r}")
    elif name not in {f.name for f in fields(H2CacheConfig)}:
        raise AttributeError(f"H2CacheConfig has no field {name!r}")
