"""Grids chosen by one rule for every method and variant: one point per target share of FLOPs run.

Thresholds mean different things to different methods (a relative L1 distance, an accumulated rescaled
change, an accumulated magnitude error), so equal threshold values say nothing about equal compute. Instead,
for each target share of block FLOPs run (e.g. 0.85, 0.65, 0.45, 0.3), *every* method and variant gets
exactly one point: the value of its knob whose share, on the calibration prompts (the same ones for every
method, never the benchmark prompts), comes closest. The method's default is added as one more point, so its
out-of-the-box behaviour is on the curve too.

Knobs (:func:`knob_for`, from the method's declared settings, so a new method cannot be skipped silently):

* ``tau1`` and ``tau2`` (every H2-Cache variant): both move together along the ray through the published
  default, ``tau2 = tau1 x 0.22 / 0.15``. One number sets both, so H2-Cache gets as many points per target as
  its peers (a product of two scans gave it 25 points to the peers' 5, several of them degenerate).
* ``threshold`` (FirstBlockCache, TeaCache, MagCache and their variants).
* ``cache_interval`` (TaylorSeer).

Every other setting (guards, pool sizes, MagCache's K) stays at its default.

Two rules keep degenerate thresholds out of the grid. The scan stops once the share stops falling at the
bottom of its range (the method reuses all it can), and ties go to the smaller value, so a value past that
point is never chosen. A target the method cannot reach within :data:`OFF_TARGET` still gets the method's
closest point (every method keeps one point per target), marked ``off_target`` in ``auto_grid.json``.
Points whose quality collapses are caught after the run (:func:`h2cache.bench.verdicts.flag_degenerate`).

Example:
    >>> pick([(0.1, 1.0), (0.2, 0.8), (0.4, 0.5), (0.8, 0.31)], targets=(0.9, 0.5, 0.3))
    [0.1, 0.4, 0.8]
    >>> knob = knob_for(get_method("h2cache"))
    >>> knob.keys, knob.settings(0.15)
    (('tau1', 'tau2'), {'tau1': 0.15, 'tau2': 0.22})
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..compare import generate
from ..methods import CalibrationStore, FlopTable, Method, apply_method, get_method

OFF_TARGET = 0.05  # |share - target| beyond this: the method cannot reach the target
Measure = Callable[[str, dict[str, Any]], float]  # (method, settings) -> mean share on the calibration prompts


def scan_values(low: float = 0.01, high: float = 4.0, count: int = 20) -> list[float]:
    """Log-spaced candidate thresholds, rounded to 3 significant digits."""
    ratio = (high / low) ** (1 / (count - 1))
    return [float(f"{low * ratio ** i:.3g}") for i in range(count)]


INTERVALS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)


@dataclass(frozen=True)
class Knob:
    """What a method's grid is scanned along: ``keys[i] = value x ratios[i]``, over ``values`` (cheaper last)."""

    keys: tuple[str, ...]
    ratios: tuple[float, ...]
    values: tuple[float, ...]

    def settings(self, value: float) -> dict[str, Any]:
        return {key: value if ratio == 1 else float(f"{value * ratio:.3g}") for key, ratio in zip(self.keys, self.ratios)}


def knob_for(method: Method) -> Knob | None:
    """The knob of a registered method; ``None`` for the uncached baseline."""
    names = {s.name for s in method.settings}
    if {"tau1", "tau2"} <= names:
        tau1, tau2 = method.setting("tau1").default, method.setting("tau2").default
        return Knob(("tau1", "tau2"), (1.0, tau2 / tau1), tuple(scan_values()))
    if "threshold" in names:
        return Knob(("threshold",), (1.0,), tuple(scan_values()))
    if "cache_interval" in names:
        return Knob(("cache_interval",), (1,), INTERVALS)
    return None


def closest(curve: list[tuple[float, float]], target: float) -> tuple[float, float]:
    """The (value, share) whose share is closest to `target`; the smaller value on ties."""
    return min(curve, key=lambda vs: (abs(vs[1] - target), vs[0]))


def pick(curve: list[tuple[float, float]], targets: tuple[float, ...]) -> list[float]:
    """The values chosen for `targets`, each once, sorted."""
    return sorted({closest(curve, target)[0] for target in targets})


def share_curve(measure: Measure, method: str, knob: Knob, floor: float,
                plateau_below: float) -> tuple[list[tuple[float, float]], float | None]:
    """(value, share) for increasing values, and the value from which the share stopped falling (or ``None``).

    Stops below `floor`, or on a plateau below `plateau_below`: the method at its least compute (e.g. MagCache
    capped by max_skip_steps, a guarded method capped by its guards). Plateaus higher up, like MagCache's
    retained steps at small thresholds, are scanned through.
    """
    curve: list[tuple[float, float]] = []
    for value in knob.values:
        curve.append((value, measure(method, knob.settings(value))))
        last = [share for _, share in curve[-5:]]
        if curve[-1][1] < floor:
            return curve, None
        if len(last) == 5 and last[-1] < plateau_below and max(last) - min(last) < 1e-9:
            return curve, curve[-5][0]
    return curve, None


def choose_points(curve: list[tuple[float, float]], targets: tuple[float, ...]) -> list[dict[str, Any]]:
    """One point per target: ``{target, value, share, off_target}``."""
    points = []
    for target in targets:
        value, share = closest(curve, target)
        points.append({"target": target, "value": value, "share": share,
                       "off_target": abs(share - target) > OFF_TARGET})
    return points


def select_grids(methods: tuple[str, ...], explicit: dict[str, Any], targets: tuple[float, ...], measure: Measure,
                 log: Callable[[str], None] = print) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Grids (lists of settings) for every method in `methods` without an explicit grid, and what the scans
    found per method: the curve, the point chosen per target, the default, where the share saturated."""
    grids: dict[str, list[dict[str, Any]]] = {}
    record: dict[str, Any] = {}
    floor = min(targets) - 0.1
    for name in methods:
        method = get_method(name)
        knob = knob_for(method)
        if knob is None or name in explicit:
            continue
        log(f"auto grid: scanning {name} along {'/'.join(knob.keys)}")
        curve, saturated_at = share_curve(measure, name, knob, floor, plateau_below=min(targets) + 0.2)
        points = choose_points(curve, targets)
        default = {key: method.setting(key).default for key in knob.keys}
        chosen = [knob.settings(p["value"]) for p in points] + [default]
        grids[name] = [dict(s) for s in dict.fromkeys(tuple(s.items()) for s in chosen)]
        record[name] = {"knob": list(knob.keys), "ratios": list(knob.ratios), "curve": curve,
                        "targets": [{**p, "settings": knob.settings(p["value"])} for p in points],
                        "default": default, "saturated_at": saturated_at}
    return grids, record


def pipeline_measure(pipe: Any, prompts: list[str], call_args: dict[str, Any], store: CalibrationStore,
                     flops: FlopTable | None) -> Measure:
    """Mean share of block FLOPs run (of blocks where the FLOP table does not apply) over `prompts`, seed 0."""
    steps = int(call_args["num_inference_steps"])

    def measure(method: str, settings: dict[str, Any]) -> float:
        shares = []
        for prompt in prompts:
            with apply_method(pipe, method, num_inference_steps=steps, calibration=store, flops=flops,
                              **settings) as handle:
                generate(pipe, prompt, seed=0, previews=False, **call_args)
                share = handle.trace.flops_share()
                shares.append(handle.trace.blocks_share() if share is None else share)
        return sum(shares) / len(shares)

    return measure
