"""The cache lab: a peer method at H2-Cache's compute, and a small sweep, for one prompt and seed.

A threshold means something different to each method (a relative L1 distance, an accumulated rescaled change,
an accumulated magnitude error), so equal values say nothing about equal compute. :func:`run_at_share` finds,
for one image, the value of a method's knob (:func:`h2cache.budget_search.knob_for`) whose share of block FLOPs
run lands within `tolerance` of a target, such as what H2-Cache just ran: each try is one pipeline call, and
the tries bisect the knob's range in log space (whole numbers for TaylorSeer's interval) for at most
`max_runs` calls. The closest try is kept; ``matched`` says whether it is within tolerance, and ``note`` why not
(a method whose floor or ceiling does not reach the target, such as MagCache's retained steps).

:func:`sweep` runs a method at `points` values of its knob, spread in log space over the range of its default
grid (:attr:`h2cache.methods.Method.default_grid`), every point a real run scored against the uncached image.

Shares are of block FLOPs when a FLOP table for the call's shape is given (:func:`lab_flops`), else of blocks.

Example:
    >>> import h2cache
    >>> from h2cache.compare import generate
    >>> pipe = h2cache.load_pipeline()
    >>> pipe.set_progress_bar_config(disable=True)
    >>> call = {**h2cache.generation_defaults(pipe), "num_inference_steps": 10}
    >>> prompt = "a large red circle at the center on a plain blue background"
    >>> baseline = generate(pipe, prompt, seed=0, previews=False, **call)
    >>> peer = run_at_share(pipe, "fbcache", 0.6, prompt=prompt, seed=0, baseline=baseline.image,
    ...                     flops=lab_flops(pipe, call), call=call)
    >>> len(peer.tries) <= 5, peer.matched == (abs(peer.share - 0.6) <= 0.05)
    (True, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .budget_search import Knob, knob_for
from .compare import ProgressFn, RunResult, generate
from .methods import FlopTable, MethodTrace, apply_method, get_method, measure_flop_table
from .metrics import psnr, ssim
from .scoring import PSNR_CAP

MATCH_TOLERANCE = 0.05  # the "same compute": within 5 points of the target share
MAX_MATCH_RUNS = 5
MAX_SWEEP_POINTS = 8
# The peers the lab offers: every registered method outside H2-Cache's family that has a knob.
PEERS = ("fbcache", "fbcache-guarded", "teacache", "teacache-guarded", "magcache", "taylorseer", "seacache")



@dataclass
class LabPoint:
    """One run of one method at one setting: its image, share of compute, quality and per-call trace."""

    method: str
    settings: dict[str, Any]
    run: RunResult
    trace: MethodTrace
    share: float  # of block FLOPs where a FLOP table applied, else of blocks
    blocks_share: float
    psnr: float  # against the uncached image, capped at PSNR_CAP (identical images)
    ssim: float

    def as_row(self) -> dict[str, Any]:
        return {"method": self.method, **{f"setting.{k}": v for k, v in self.settings.items()},
                "share": self.share, "blocks_share": self.blocks_share, "psnr": self.psnr, "ssim": self.ssim,
                "seconds": self.run.seconds}


@dataclass
class PeerMatch:
    """What :func:`run_at_share` found: the try closest to the target and every try on the way."""

    target: float
    best: LabPoint
    tries: list[LabPoint] = field(default_factory=list)
    tolerance: float = MATCH_TOLERANCE
    note: str = ""  # why the target was not met, when it was not

    @property
    def share(self) -> float:
        return self.best.share

    @property
    def matched(self) -> bool:
        return abs(self.best.share - self.target) <= self.tolerance + 1e-9


def lab_flops(pipe: Any, call: dict[str, Any]) -> FlopTable | None:
    """Per-block FLOPs for `call`'s shapes, or ``None`` where the transformer's blocks are not understood
    (shares then count blocks)."""
    try:
        return measure_flop_table(pipe, **call)
    except (TypeError, ValueError, RuntimeError, AttributeError):
        return None


def run_point(pipe: Any, method: str, settings: dict[str, Any], *, prompt: str, seed: int, baseline: np.ndarray,
              flops: FlopTable | None, call: dict[str, Any], name: str | None = None,
              progress: ProgressFn | None = None) -> LabPoint:
    """Apply `method` with `settings`, generate once, remove it, and score the image against `baseline`.

    `progress` is told ``(name, step, steps)`` after every step, as :func:`h2cache.compare.generate` tells it.
    """
    steps = int(call.get("num_inference_steps", 28))
    with apply_method(pipe, method, num_inference_steps=steps, flops=flops, **settings) as handle:
        run = generate(pipe, prompt, seed=seed, name=name or method, previews=False, progress=progress, **call)
        trace = handle.trace
    flops_share = trace.flops_share()
    blocks = trace.blocks_share()
    return LabPoint(method, dict(settings), run, trace, blocks if flops_share is None else flops_share, blocks,
                    min(psnr(baseline, run.image), PSNR_CAP), ssim(baseline, run.image))


def _knob(method: str) -> Knob:
    knob = knob_for(get_method(method))
    if knob is None:
        raise ValueError(f"method {method!r} has no knob to search; the lab's peers are: {', '.join(PEERS)}")
    return knob


def _range(method: str, knob: Knob) -> tuple[float, float]:
    """The knob's span in the method's default grid (a TaylorSeer interval of 1 reuses nothing)."""
    grid = get_method(method).default_grid.get(knob.keys[0]) or knob.values
    return float(min(grid)), float(max(grid))


def _between(low: float, high: float, integer: bool) -> float | None:
    if integer:
        mid = (low + high) // 2
        return int(mid) if low < mid < high else None
    return math.sqrt(low * high) if low > 0 else (low + high) / 2


def run_at_share(pipe: Any, method: str, target: float, *, prompt: str, seed: int, baseline: np.ndarray,
                 flops: FlopTable | None, call: dict[str, Any], base: dict[str, Any] | None = None,
                 max_runs: int = MAX_MATCH_RUNS, tolerance: float = MATCH_TOLERANCE,
                 progress: ProgressFn | None = None) -> PeerMatch:
    """Search `method`'s knob for the setting whose share of compute is nearest `target` on this image.

    Args:
        target: the share of block FLOPs (blocks without a FLOP table) to land on, in (0, 1].
        base: the method's other settings (its defaults when omitted).
        max_runs: pipeline calls at most, 1 to 10; the search also stops once a try is within `tolerance`.
    """
    if not (0 < target <= 1):
        raise ValueError(f"target must be a share of compute in (0, 1], got {target!r}")
    if not (isinstance(max_runs, int) and 1 <= max_runs <= 10):
        raise ValueError(f"max_runs must be an integer from 1 to 10, got {max_runs!r}")
    knob = _knob(method)
    integer = all(isinstance(v, int) for v in knob.values)
    # The knob's whole searched range: reuse rises with the value, so share falls along it.
    low, high = float(knob.values[0]), float(knob.values[-1])
    if integer:
        low, high = 1, int(high)
    value: float | None = get_method(method).setting(knob.keys[0]).default
    tries: list[LabPoint] = []
    for i in range(max_runs):
        if value is None:
            break
        settings = {**(base or {}), **knob.settings(value)}
        name = f"{method} try {i + 1} of at most {max_runs} ({_describe(settings, knob)})"
        point = run_point(pipe, method, settings, prompt=prompt, seed=seed, baseline=baseline, flops=flops, call=call,
                          name=name, progress=progress)
        tries.append(point)
        if abs(point.share - target) <= tolerance:
            break
        # A share that did not move with the knob is the method's floor (guards, retained steps) or ceiling.
        if any(abs(t.share - point.share) < 1e-9 for t in tries[:-1]):
            break
        if point.share > target:  # runs too much: reuse more
            low = value
        else:
            high = value
        value = _between(low, high, integer)
        if value is not None and any(t.settings.get(knob.keys[0]) == knob.settings(value)[knob.keys[0]] for t in tries):
            break
    best = min(tries, key=lambda p: (abs(p.share - target), -p.share))
    match = PeerMatch(target, best, tries, tolerance)
    if not match.matched:
        shares = sorted(p.share for p in tries)
        if all(s > target for s in shares):
            match.note = f"its least compute over {len(tries)} tries was {shares[0]:.0%}, above the target"
        elif all(s < target for s in shares):
            match.note = f"its most compute over {len(tries)} tries was {shares[-1]:.0%}, under the target"
        else:
            match.note = f"no setting landed within {tolerance:.0%} in {len(tries)} tries (shares jump between steps)"
    return match


def _describe(settings: dict[str, Any], knob: Knob) -> str:
    return ", ".join(f"{k}={settings[k]:g}" for k in knob.keys)


def sweep_settings(method: str, points: int, base: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """`points` settings along `method`'s knob, log-spaced over its default grid's range.

    For H2-Cache, tau2 keeps the ratio to tau1 that `base` has (the paper's 1.47 when `base` has none).

    Example:
        >>> [s["threshold"] for s in sweep_settings("fbcache", 3)]
        [0.02, 0.0775, 0.3]
        >>> sweep_settings("h2cache", 2, {"tau1": 0.1, "tau2": 0.2})
        [{'tau1': 0.05, 'tau2': 0.1}, {'tau1': 0.4, 'tau2': 0.8}]
    """
    if not (isinstance(points, int) and 2 <= points <= MAX_SWEEP_POINTS):
        raise ValueError(f"points must be an integer from 2 to {MAX_SWEEP_POINTS}, got {points!r}")
    knob = _knob(method)
    low, high = _range(method, knob)
    integer = all(isinstance(v, int) for v in knob.values)
    values: list[float] = []
    for i in range(points):
        v = low * (high / low) ** (i / (points - 1)) if low > 0 else low + (high - low) * i / (points - 1)
        v = int(round(v)) if integer else float(f"{v:.3g}")
        if v not in values:
            values.append(v)
    base = dict(base or {})
    ratio = (base["tau2"] / base["tau1"]) if knob.keys == ("tau1", "tau2") and base.get("tau1") else 1.47
    out = []
    for v in values:
        settings = {**base, knob.keys[0]: v}
        if len(knob.keys) == 2:
            settings[knob.keys[1]] = round(v * ratio, 6)
        out.append(settings)
    return out


def sweep(pipe: Any, method: str, settings: list[dict[str, Any]], *, prompt: str, seed: int, baseline: np.ndarray,
          flops: FlopTable | None, call: dict[str, Any], progress: ProgressFn | None = None) -> list[LabPoint]:
    """Run `method` at each of `settings` (e.g. :func:`sweep_settings`) and score each image."""
    knob = _knob(method)
    points = []
    for i, s in enumerate(settings):
        name = f"{method} point {i + 1} of {len(settings)} ({_describe(s, knob)})"
        points.append(run_point(pipe, method, s, prompt=prompt, seed=seed, baseline=baseline, flops=flops, call=call,
                                name=name, progress=progress))
    return points
