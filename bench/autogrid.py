"""Grids chosen by one rule for every method and variant: one point per target share of FLOPs run.

Thresholds mean different things to different methods (a relative L1 distance, an accumulated rescaled
change, an accumulated magnitude error), so equal threshold values say nothing about equal compute. Instead,
for each target share of block FLOPs run (e.g. 0.85, 0.65, 0.45, 0.3), *every* method and variant gets
exactly one point, found by the same search on the same calibration prompts (never the benchmark prompts):

1. a coarse sweep of the method's knob along each of its lines, then bisection between the two coarse
   values that straddle each target (:func:`h2cache.budget_search.sweep_line`), every point scored for its
   share of FLOPs and its PSNR against the uncached image of each calibration prompt;
2. per target, the best median PSNR among the points that run from ``target - 0.05`` up to the target
   (:func:`h2cache.budget_search.pick_for_share`, the rule of :func:`h2cache.calibrate`).

The method's default is added as one more point, so its out-of-the-box behaviour is on the curve too.

Knobs (:func:`h2cache.budget_search.knob_for`, from the method's declared settings, so a new method cannot be skipped silently):

* ``tau1`` and ``tau2`` (every H2-Cache variant): :func:`h2cache.calibrate`'s search, the lines
  ``tau2 = r * tau1`` for r in :data:`h2cache.budget_search.RATIOS` over its coarse tau1 values. Each target still
  gets one point, so H2-Cache has as many points as its peers (a product of two scans once gave it 25 to
  the peers' 5, several of them degenerate).
* ``threshold`` (FirstBlockCache, TeaCache, MagCache and their variants): the analogous one-threshold search.
* ``cache_interval`` (TaylorSeer): whole numbers, scanned without bisection.

Every other setting (guards, pool sizes, MagCache's K) stays at its default, or at the value ``--fix`` holds
it at (:func:`holding`), in the search and in the benchmark alike.

Two rules keep degenerate thresholds out of the grid. The sweep stops once the share stops falling at the
bottom of its range (the method reuses all it can), and a target the method cannot reach gets its cheapest
point with the smallest value, never a looser one; such a point is marked ``off_target`` in
``auto_grid.json`` when it lands more than :data:`OFF_TARGET` from the target. Points whose quality collapses
are caught after the run (:func:`bench.verdicts.flag_degenerate`).

Example:
    >>> knob = knob_for(get_method("h2cache"))
    >>> knob.keys, knob.lines, knob.settings(0.1, line=2)
    (('tau1', 'tau2'), ((1.0, 1.0), (1.0, 1.5), (1.0, 2.25)), {'tau1': 0.1, 'tau2': 0.225})
    >>> knob_for(get_method("fbcache")).lines
    ((1.0,),)
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable

from h2cache.budget_search import Knob, knob_for, pick_for_share, sweep_line
from h2cache.calibrate import BISECTIONS
from h2cache.methods import CalibrationStore, FlopTable, apply_method, get_method
from h2cache.scoring import ImageScorer

from .spec import with_fixed

OFF_TARGET = 0.05  # |share - target| beyond this: the method cannot reach the target


@dataclass(frozen=True)
class Score:
    """A method's settings scored on the calibration prompts: mean share of FLOPs run, PSNR per prompt."""

    share: float
    psnr: tuple[float, ...]

    @property
    def median_psnr(self) -> float:
        return statistics.median(self.psnr)


Measure = Callable[[str, dict[str, Any]], Score]  # (method, settings) -> its score on the calibration prompts


def coarse_sweep(score: Callable[[float], Score], values: tuple[float, ...], floor: float,
                 plateau_below: float) -> tuple[list[float], float | None]:
    """The values swept (increasing), and the value from which the share stopped falling (or ``None``).

    Stops below `floor`, or on a plateau below `plateau_below`: the method at its least compute (e.g. MagCache
    capped by max_skip_steps, a guarded method capped by its guards). Plateaus higher up, like MagCache's
    retained steps at small thresholds, are swept through.
    """
    swept: list[float] = []
    for value in values:
        swept.append(value)
        last = [score(v).share for v in swept[-5:]]
        if last[-1] < floor:
            return swept, None
        if len(last) == 5 and last[-1] < plateau_below and max(last) - min(last) < 1e-9:
            return swept, swept[-5]
    return swept, None


def search_method(measure: Measure, name: str, knob: Knob, targets: tuple[float, ...]) -> dict[str, Any]:
    """Every point scored for one method, and the point each target picks (see the module docstring)."""
    scored: dict[tuple, tuple[int, float, Score]] = {}  # settings -> (line, value, score)
    floor, plateau_below = min(targets) - 0.1, min(targets) + 0.2
    saturated_at: list[float | None] = []
    for line in range(len(knob.lines)):
        def score(value: float, line: int = line) -> Score:
            settings = knob.settings(value, line)
            key = tuple(settings.items())
            if key not in scored:
                scored[key] = (line, value, measure(name, settings))
            return scored[key][2]

        swept, saturated = coarse_sweep(score, knob.values, floor, plateau_below)
        saturated_at.append(saturated)
        feasibles = [lambda p, t=t: p.share <= t for t in targets]
        sweep_line(score, swept, feasibles, BISECTIONS)
    # Cheapest-point ties go to the line's smallest value: never a looser threshold than the plateau needs.
    ordered = sorted(scored.items(), key=lambda kv: (kv[1][0], kv[1][1]))
    points = []
    for target in targets:
        (settings, (line, value, found)), met = pick_for_share(
            ordered, target, share=lambda kv: kv[1][2].share, quality=lambda kv: kv[1][2].median_psnr)
        points.append({"target": target, "settings": dict(settings), "line": line, "value": value,
                       "share": found.share, "median_psnr": found.median_psnr, "met": met,
                       "off_target": abs(found.share - target) > OFF_TARGET})
    curve = [{"settings": dict(key), "line": line, "value": value, "share": sc.share, "median_psnr": sc.median_psnr}
             for key, (line, value, sc) in ordered]
    return {"knob": list(knob.keys), "lines": [list(r) for r in knob.lines], "curve": curve, "targets": points,
            "saturated_at": saturated_at}


def select_grids(methods: tuple[str, ...], explicit: dict[str, Any], targets: tuple[float, ...], measure: Measure,
                 log: Callable[[str], None] = print) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Grids (lists of settings) for every method in `methods` without an explicit grid, and what the searches
    found per method: every point scored, the point chosen per target, the default, where the share saturated."""
    grids: dict[str, list[dict[str, Any]]] = {}
    record: dict[str, Any] = {}
    for name in methods:
        method = get_method(name)
        knob = knob_for(method)
        if knob is None or name in explicit:
            continue
        log(f"auto grid: searching {name} along {'/'.join(knob.keys)}")
        found = search_method(measure, name, knob, targets)
        default = {key: method.setting(key).default for key in knob.keys}
        chosen = [p["settings"] for p in found["targets"]] + [default]
        grids[name] = [dict(s) for s in dict.fromkeys(tuple(s.items()) for s in chosen)]
        record[name] = {**found, "default": default}
    return grids, record


def holding(measure: Measure, fixed: dict[str, Any]) -> Measure:
    """`measure` with the ``--fix`` settings added where the method declares them (:func:`bench.spec.with_fixed`),
    so the search scores the settings the benchmark will run.

    Example:
        >>> seen = []
        >>> held = holding(lambda name, settings: seen.append((name, settings)), {"pool_size_stage1": 128})
        >>> held("h2cache", {"tau1": 0.1}); held("fbcache", {"threshold": 0.1}); seen
        [('h2cache', {'pool_size_stage1': 128, 'tau1': 0.1}), ('fbcache', {'threshold': 0.1})]
    """
    return lambda name, settings: measure(name, with_fixed(name, settings, fixed))


def pipeline_measure(pipe: Any, prompts: list[str], call_args: dict[str, Any], store: CalibrationStore,
                     flops: FlopTable | None) -> Measure:
    """Mean share of block FLOPs run (of blocks where the FLOP table does not apply) over `prompts`, seed 0,
    and each prompt's PSNR against its uncached image (computed once, on first use): h2cache's one scorer."""
    steps = int(call_args["num_inference_steps"])
    images = ImageScorer(pipe, prompts, (0,), call_args, eager=False)

    def flops_share(handle: Any) -> float:
        share = handle.trace.flops_share()
        return handle.trace.blocks_share() if share is None else share

    def measure(method: str, settings: dict[str, Any]) -> Score:
        scored = images.score(lambda: apply_method(pipe, method, num_inference_steps=steps, calibration=store,
                                                   flops=flops, **settings), flops_share, with_ssim=False)
        return Score(sum(scored.shares) / len(scored.shares), tuple(scored.psnrs))

    return measure

