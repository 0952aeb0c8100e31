"""The guards that make a cache compute a whole transformer call: warm-up steps, a cap on consecutive reuse,
and final full steps. One rule, read by H2-Cache's hooks (its ``H2CacheConfig`` options ``warmup_steps``,
``max_consecutive_hits``, ``final_full_steps``) and by every guarded peer (:mod:`h2cache.methods.guards`).

Example:
    >>> g = Guards(warmup_steps=2, max_consecutive_hits=3, final_full_steps=1, num_inference_steps=10)
    >>> [g.forced_by(step, streak=0) for step in (1, 2, 9)]
    ['warmup', None, 'final']
    >>> g.forced_by(5, streak=3), g.forces_full(5, streak=2)
    ('cap', False)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Guards:
    """When a call must compute every block. Steps count per cache context ('cond'/'uncond') from 0.

    Args:
        warmup_steps: the first ``warmup_steps`` steps compute.
        max_consecutive_hits: after this many calls in a row that reused anything, the next computes (0: no cap).
        final_full_steps: the last ``final_full_steps`` steps compute (needs ``num_inference_steps``).
        num_inference_steps: steps of the pipeline calls to come.
    """

    warmup_steps: int = 0
    max_consecutive_hits: int = 0
    final_full_steps: int = 0
    num_inference_steps: int | None = None

    def __post_init__(self) -> None:
        for name in ("warmup_steps", "max_consecutive_hits", "final_full_steps"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                raise ValueError(f"Guards.{name} must be an integer >= 0, got {value!r}")
        if self.final_full_steps and not (isinstance(self.num_inference_steps, int) and self.num_inference_steps >= 1):
            raise ValueError(f"Guards.final_full_steps = {self.final_full_steps} needs num_inference_steps "
                             f"(an integer >= 1), got {self.num_inference_steps!r}")

    def forced_by(self, step: int, streak: int) -> str | None:
        """The guard that makes the call at `step`, after `streak` reusing calls in a row, compute every
        block: ``'warmup'``, ``'final'`` or ``'cap'``; ``None`` when no guard does."""
        if step < self.warmup_steps:
            return "warmup"
        if self.final_full_steps and step >= self.num_inference_steps - self.final_full_steps:
            return "final"
        if self.max_consecutive_hits and streak >= self.max_consecutive_hits:
            return "cap"
        return None

    def forces_full(self, step: int, streak: int) -> bool:
        """True when the call at `step`, after `streak` reusing calls in a row, must compute every block."""
        return self.forced_by(step, streak) is not None

    @classmethod
    def from_h2_config(cls, config: Any) -> Guards:
        """The guards an ``H2CacheConfig`` asks for (its ``warmup_steps``, ``max_consecutive_hits``,
        ``final_full_steps`` and ``num_inference_steps``)."""
        return cls(config.warmup_steps, config.max_consecutive_hits, config.final_full_steps,
                   config.num_inference_steps)

    def h2_fields(self) -> dict[str, int]:
        """The same guards as ``H2CacheConfig`` fields."""
        return {"warmup_steps": self.warmup_steps, "max_consecutive_hits": self.max_consecutive_hits,
                "final_full_steps": self.final_full_steps}

    def describe(self) -> str:
        return (f"guards: {self.warmup_steps} warm-up steps, at most {self.max_consecutive_hits or 'any'} reusing "
                f"calls in a row, {self.final_full_steps} final full steps")
