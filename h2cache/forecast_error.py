"""The forecast's own error, measured at each miss (experimental options of ``forecast_residual``).

At a miss a stage computes its residual, so what a hit at that step would have added can be judged against
it: the forecast (:class:`~h2cache.hooks.ResidualForecast`) and the plain replay of the last miss's
residual. Two options read the result until the stage's next miss:

- ``forecast_fallback``: replay instead of forecasting when replay was the closer of the two;
- ``forecast_error_limit``: scale the stage's threshold down by ``limit / error`` when the error of what the
  stage adds exceeded the limit, so that a stage whose reuse went wrong is refreshed sooner.
"""

from __future__ import annotations

import torch

Residual = tuple[torch.Tensor | None, torch.Tensor | None]


@torch.compiler.disable
def relative_l1(estimate: Residual, truth: Residual) -> float:
    """``|estimate - truth|_1 / |truth|_1`` over both streams (a stream missing on either side is left out).

    Example:
        >>> relative_l1((torch.tensor([1.0, 1.0]), None), (torch.tensor([2.0, 2.0]), None))
        0.5
    """
    error = scale = 0.0
    for e, t in zip(estimate, truth):
        if e is None or t is None:
            continue
        error = error + (e.float() - t.float()).abs().sum()
        scale = scale + t.float().abs().sum()
    # One host sync per stage and miss: the next decisions compare Python floats.
    return float(error / scale) if torch.is_tensor(scale) and scale > 0 else 0.0


class ForecastError:
    """A stage's forecast and replay errors at its latest miss, and what the two options make of them.

    ``forecast`` and ``replay`` are ``None`` until the stage has a residual to reuse (its second miss); with
    one earlier miss only, the forecast is the replay and the two are equal.

    Example:
        >>> from h2cache.hooks import ResidualForecast
        >>> f, err = ResidualForecast(), ForecastError()
        >>> f.remember((torch.tensor([1.0]), None), step=0); f.remember((torch.tensor([2.0]), None), step=1)
        >>> err.measure(f, (torch.tensor([4.0]), None), step=2)  # forecast 3 (error 1/4), replay 2 (2/4)
        >>> err.forecast, err.replay, err.replays()
        (0.25, 0.5, False)
        >>> err.threshold_scale(limit=0.1, fallback=False)  # 0.1 / 0.25: the threshold shrinks
        0.4
    """

    def __init__(self) -> None:
        self.forecast: float | None = None
        self.replay: float | None = None

    def measure(self, forecast, residual: Residual, step: int, max_factor: float | None = None,
                thumb: torch.Tensor | None = None) -> None:
        """Judge, against the `residual` just computed at `step`, what a hit would have added (before
        `forecast` remembers it). `max_factor` and `thumb` as in :meth:`ResidualForecast.extrapolate`."""
        if forecast.last is None:
            return
        predicted = forecast.extrapolate(forecast.last, step, max_factor, thumb)
        self.replay = relative_l1(forecast.last, residual)
        self.forecast = self.replay if predicted is forecast.last else relative_l1(predicted, residual)

    def replays(self) -> bool:
        """``forecast_fallback``: whether replay was closer than the forecast at the latest miss."""
        return self.forecast is not None and self.replay < self.forecast

    def threshold_scale(self, limit: float | None, fallback: bool) -> float:
        """``forecast_error_limit``: the factor on the stage's threshold, ``min(1, limit / error)``, where
        `error` is that of the residual the stage adds (the smaller one with `fallback`); 1 when unmeasured."""
        if limit is None or self.forecast is None:
            return 1.0
        error = min(self.forecast, self.replay) if fallback else self.forecast
        return 1.0 if error <= limit else limit / error
