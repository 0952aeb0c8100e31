"""The experimental residual forecast (``H2CacheConfig.forecast_residual``): an extension beside the paper.

In the published method a stage hit replays the residual cached at the stage's last miss. With the forecast,
a hit adds that residual carried on along the line from the miss before it, per stage, at the steps the PFS
decision chose. This module is the forecast's whole implementation; the hooks reach it through one seam,
the *residual source* (:func:`h2cache.seams.residual_source`), and name nothing else of it.

Its records, what was tried around it and did not help (a cap on the factor, a fallback to replay and a
threshold scaled by the forecast's own error, all removed in the refactor after commit ``0cf4901``), are in
``docs/EXPERIMENTS.md``.
"""

from __future__ import annotations

import torch

Residual = tuple[torch.Tensor | None, torch.Tensor | None]


class ResidualForecast:
    """One stage's residuals at its last two misses, and the forecast a hit adds.

    A hit at step ``s`` adds ``r + (s - t) / (t - t0) * (r - r0)``, the residual ``r`` of the last miss
    (step ``t``) carried on along the line from the one before (``r0``, step ``t0``): a first-order forecast,
    as TaylorSeer makes for attention outputs. With only one miss so far, the last residual is replayed.

    Given PFS thumbnails (``forecast_probe_factor``), the factor is measured instead of assumed: how far this
    call's thumbnail of the probe residual ``p`` has moved since the last miss, along the line between the
    last two misses' thumbnails, ``<p - p_t, p_t - p_t0> / |p_t - p_t0|^2``: 0 when the probe has not moved
    that way (replay), 1 when it moved as far as between the two misses.

    Example:
        >>> f = ResidualForecast()
        >>> f.remember((torch.tensor([1.0]), None), step=2); f.remember((torch.tensor([2.0]), None), step=4)
        >>> f.extrapolate(f.last, step=7)  # 2 + (7 - 4) / (4 - 2) x (2 - 1)
        (tensor([3.5000]), None)
        >>> g = ResidualForecast()
        >>> g.remember((torch.tensor([1.0]), None), step=2, thumb=torch.tensor([0.0, 0.0]))
        >>> g.remember((torch.tensor([2.0]), None), step=4, thumb=torch.tensor([1.0, 0.0]))
        >>> g.extrapolate(g.last, step=7, thumb=torch.tensor([1.5, 3.0]))  # the probe moved half a gap that way
        (tensor([2.5000]), None)
    """

    def __init__(self) -> None:
        self.last: Residual | None = None
        self.last_step: int | None = None
        self.last_thumb: torch.Tensor | None = None
        self.before: Residual | None = None
        self.before_step: int | None = None
        self.before_thumb: torch.Tensor | None = None

    def remember(self, residual: Residual, step: int, thumb: torch.Tensor | None = None) -> None:
        self.before, self.before_step, self.before_thumb = self.last, self.last_step, self.last_thumb
        self.last, self.last_step, self.last_thumb = residual, step, thumb

    def extrapolate(self, residual: Residual, step: int, thumb: torch.Tensor | None = None) -> Residual:
        # `residual` is the stage's cached one; anything else (a one-block stage's empty residual) is replayed.
        if self.before is None or self.last is not residual or self.last_step <= self.before_step:
            return residual
        factor: float | torch.Tensor = (step - self.last_step) / (self.last_step - self.before_step)
        if thumb is not None and self.last_thumb is not None and self.before_thumb is not None \
                and thumb.shape == self.last_thumb.shape == self.before_thumb.shape:
            # A 0-dim tensor, so that the factor costs no host sync on an accelerator.
            line = (self.last_thumb - self.before_thumb).float()
            factor = ((thumb - self.last_thumb).float() * line).sum() / (line * line).sum().clamp_min(1e-12)
        return tuple(None if r is None or b is None else r + factor * (r - b) for r, b in zip(self.last, self.before))


class ForecastSource:
    """The residual source of the forecast: one :class:`ResidualForecast` per stage, within one cache context.

    Attributes:
        needs_forced_thumbnail: with the probe-measured factor, the detail stage's thumbnail is pooled on its
            forced hits too (the published method computes nothing there).
    """

    def __init__(self, probe_factor: bool = False) -> None:
        self.probe_factor = probe_factor
        self.needs_forced_thumbnail = probe_factor
        self.stages = (ResidualForecast(), ResidualForecast())

    def remember(self, stage: int, residual: Residual, step: int, thumb: torch.Tensor | None) -> None:
        self.stages[stage].remember(residual, step, thumb)

    def for_hit(self, stage: int, cached: Residual, step: int, thumb: torch.Tensor | None) -> Residual:
        return self.stages[stage].extrapolate(cached, step, thumb if self.probe_factor else None)
