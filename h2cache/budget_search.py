"""Searching a caching knob for compute budgets; shared by :mod:`h2cache.calibrate` and the benchmark's auto-grid.

A *line* maps one number to a method's settings so that larger numbers reuse more: a threshold, or both
H2-Cache thresholds on a ray ``tau2 = r * tau1``. :func:`sweep_line` scores a coarse sweep of the line and
then bisects between the two coarse values that straddle each budget's boundary; :func:`pick_for_share`
then picks one scored point per target share of compute.

Why :func:`pick_for_share` looks in a window just under the target instead of anywhere under it: near the
uncached end, neighbouring points differ by fractions of a dB at 45-60 dB PSNR, which is below the spread
between prompts, so "the best point under 75%" can be a 64% point that wins by 0.1 dB on four prompts. A
budget then lands 11 points short of what was asked. So the choice is made within :data:`SHARE_TOLERANCE`
under the target (a cheaper point only when the search found nothing there), and quality differences of
less than :data:`QUALITY_TIE` dB count as ties, which go to the point that spends the budget: on held-out
prompts such differences reverse as often as not (``docs/BENCHMARKS_HISTORY.md``, "Calibrated H2-Cache").

Example:
    >>> scores = {}
    >>> def score(v):  # share of compute falls as the threshold grows; quality falls with it
    ...     return scores.setdefault(v, (1 / (1 + 4 * v), 60 - 40 * v))
    >>> _ = sweep_line(score, [0.1, 0.2, 0.4, 0.8], [lambda p: p[0] <= 0.5], bisections=3)
    >>> share, quality = pick_for_share(scores.values(), 0.5, share=lambda p: p[0], quality=lambda p: p[1])[0]
    >>> 0.45 <= share <= 0.5
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, TypeVar

if TYPE_CHECKING:
    from .methods import Method

P = TypeVar("P")

SHARE_TOLERANCE = 0.05  # a budget's window: from target - 0.05 up to the target
QUALITY_TIE = 0.5  # dB of PSNR: closer than this, two points are equally good, and the larger share wins
RATIOS = (1.0, 1.5, 2.25)  # tau2 / tau1 lines H2-Cache's searches follow
COARSE_TAU1 = (0.005, 0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.22, 0.32, 0.45, 0.65)


def sweep_line(score: Callable[[float], P], values: Sequence[float], feasibles: Iterable[Callable[[P], bool]],
               bisections: int) -> list[P]:
    """Score `values` (increasing reuse), then bisect each boundary of each feasibility test `bisections` times.

    `score` should remember what it scored; bisection asks again for the coarse ends. Integer values (a
    cache interval) are not bisected. Returns the coarse points, in order.
    """
    line = [score(v) for v in values]
    integer = all(isinstance(v, int) for v in values)
    for feasible in feasibles:
        for (low, a), (high, b) in zip(zip(values, line), zip(values[1:], line[1:])):
            if integer or feasible(a) == feasible(b):
                continue
            low_ok = feasible(a)
            for _ in range(bisections):
                mid = (low + high) / 2
                if feasible(score(mid)) == low_ok:
                    low = mid
                else:
                    high = mid
    return line


def pick_for_share(points: Iterable[P], target: float, *, share: Callable[[P], float],
                   quality: Callable[[P], float], tolerance: float = SHARE_TOLERANCE,
                   tie: float = QUALITY_TIE) -> tuple[P, bool]:
    """The point a compute budget picks, and whether it met the budget.

    Among points whose `share` lies in ``[target - tolerance, target]`` (if none does: at or under `target`),
    the largest share whose `quality` is within `tie` of the best there. If no point is under the target,
    the cheapest point, with ``False``.
    """
    points = list(points)
    if not points:
        raise ValueError("no scored points to choose from")
    under = [p for p in points if share(p) <= target + 1e-9]
    if not under:
        return min(points, key=share), False
    near = [p for p in under if share(p) >= target - tolerance - 1e-9] or under
    best = max(quality(p) for p in near)
    return max((p for p in near if quality(p) >= best - tie), key=lambda p: (share(p), quality(p))), True


# --- knobs ---------------------------------------------------------------------------------------
# What one number moves in each method, from its declared settings, so a new method cannot be skipped silently:
# H2-Cache's two thresholds on the lines tau2 = r * tau1, one threshold, or TaylorSeer's whole-number interval.

def scan_values(low: float = 0.01, high: float = 4.0, count: int = 20) -> list[float]:
    """Log-spaced candidate thresholds, rounded to 3 significant digits."""
    ratio = (high / low) ** (1 / (count - 1))
    return [float(f"{low * ratio ** i:.3g}") for i in range(count)]


INTERVALS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)


@dataclass(frozen=True)
class Knob:
    """What a method's grid is searched along: on line ``i``, ``keys[k] = value x lines[i][k]``, over ``values``
    (cheaper last)."""

    keys: tuple[str, ...]
    lines: tuple[tuple[float, ...], ...]
    values: tuple[float, ...]

    def settings(self, value: float, line: int = 0) -> dict[str, Any]:
        # Rounded as h2cache.calibrate rounds its points, so both name a bisected point alike.
        return {key: value if isinstance(value, int) else round(value * ratio, 6)
                for key, ratio in zip(self.keys, self.lines[line])}


def knob_for(method: Method) -> Knob | None:
    """The knob of a registered method; ``None`` for the uncached baseline."""
    names = {s.name for s in method.settings}
    if {"tau1", "tau2"} <= names:
        return Knob(("tau1", "tau2"), tuple((1.0, r) for r in RATIOS), COARSE_TAU1)
    if "threshold" in names:
        return Knob(("threshold",), ((1.0,),), tuple(scan_values()))
    if "cache_interval" in names:
        return Knob(("cache_interval",), ((1,),), INTERVALS)
    return None
