"""Pareto fronts of (cost, quality) points, and the value of a front at any cost.

A point is on the front when no other point costs as much or less and is as good or better (one of the two
strictly). Identical points count once. Between two front points the front is a straight line; it never
runs through a dominated point, and a raw grid point that the front skips cannot pull it down. A method's
quality "at cost x" is the front's value there: beyond its most expensive front point it is that point's
quality (the method reaches it for less), and below its cheapest one it is undefined (the method reaches
nothing that cheap).

Example:
    >>> points = [(0.3, 20.0), (0.5, 35.0), (0.45, 10.0), (0.8, 40.0), (0.5, 35.0)]
    >>> pareto_front(points)
    [(0.3, 20.0), (0.5, 35.0), (0.8, 40.0)]
    >>> front_value(pareto_front(points), 0.4)      # along the front, not through (0.45, 10.0)
    27.5
    >>> best_reached(pareto_front(points), 0.4)     # the best real point at no more than 0.4
    20.0
    >>> front_value(pareto_front(points), 0.9), front_value(pareto_front(points), 0.2)
    (40.0, None)
"""

from __future__ import annotations

from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
EPS = 1e-12  # costs this close are equal (shares are sums of counts divided by totals)


def _identity(point):
    return point


def pareto_front(items: Iterable[T], key: Callable[[T], tuple[float, float]] = _identity) -> list[T]:
    """The items on the (low cost, high quality) front of ``key(item) = (cost, quality)``, cheapest first.

    Of identical points the first is kept; of points with the same cost, only the best.
    """
    ordered = sorted(items, key=lambda item: (key(item)[0], -key(item)[1]))
    front: list[T] = []
    for item in ordered:
        quality = key(item)[1]
        # Sorted by cost, best first at equal cost: a point is on the front when it beats the last one kept.
        if front and quality <= key(front[-1])[1]:
            continue
        front.append(item)
    return front


def best_reached(front: list[tuple[float, float]], cost: float) -> float | None:
    """The best quality of a front point costing at most `cost`; ``None`` if none does."""
    reached = [quality for c, quality in front if c <= cost + EPS]
    return max(reached) if reached else None


def front_value(front: list[tuple[float, float]], cost: float) -> float | None:
    """The front's quality at `cost`: linear between neighbouring front points, flat past the last one,
    ``None`` below the first one."""
    if not front or cost < front[0][0] - EPS:
        return None
    for (c0, q0), (c1, q1) in zip(front, front[1:]):
        if c0 - EPS <= cost <= c1 + EPS:
            return q0 + (q1 - q0) * (cost - c0) / (c1 - c0)
    return front[-1][1]  # dearer than every front point: the best the method reaches


def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """``a = (cost, quality, ...)`` dominates `b`: no dearer, no worse in any quality, and better somewhere.

    Example:
        >>> dominates((0.4, 30.0, 0.99), (0.5, 30.0, 0.99)), dominates((0.4, 31.0, 0.98), (0.5, 30.0, 0.99))
        (True, False)
    """
    no_worse = a[0] <= b[0] + EPS and all(qa >= qb for qa, qb in zip(a[1:], b[1:]))
    return no_worse and (a[0] < b[0] - EPS or any(qa > qb for qa, qb in zip(a[1:], b[1:])))
