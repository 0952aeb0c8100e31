"""Threshold grids chosen by one rule for every method: hit given shares of blocks executed.

Thresholds mean different things to different methods (a relative L1 distance,
an accumulated rescaled change, an accumulated magnitude error), so equal
threshold values say nothing about equal compute. Instead, for each target share
of blocks executed (e.g. 0.9, 0.75, 0.6, 0.45, 0.3), each method gets the value
of its threshold whose share, on a few *calibration* prompts (never the benchmark
prompts), comes closest. The method's default value is always added, so its
out-of-the-box behaviour is on the curve too.

H2-Cache has two thresholds: ``tau1`` is chosen with stage 2 never reusing on its
own (``tau2 = 0``) and ``tau2`` with stage 1 never reusing (``tau1 = 0``); the
grid is their product. Its ablations reuse H2-Cache's values, so that each
ablation point sits at the same thresholds as an H2-Cache point.

Example:
    >>> pick([(0.1, 1.0), (0.2, 0.8), (0.4, 0.5), (0.8, 0.31)], targets=(0.9, 0.5, 0.3))
    [0.1, 0.4, 0.8]
"""

from __future__ import annotations

from typing import Any, Callable

from ..compare import generate
from ..methods import CalibrationStore, apply_method, get_method

# threshold settings scanned per method, and the other settings held during each scan
SCANNED: dict[str, list[tuple[str, dict[str, float]]]] = {
    "fbcache": [("threshold", {})],
    "teacache": [("threshold", {})],
    "magcache": [("threshold", {})],
    "h2cache": [("tau1", {"tau2": 0.0}), ("tau2", {"tau1": 0.0})],
}
FOLLOWERS = {"h2cache-no-pfs": "h2cache", "h2cache-independent-stage2": "h2cache", "h2cache-guarded": "h2cache"}


def scan_values(low: float = 0.01, high: float = 4.0, count: int = 20) -> list[float]:
    """Log-spaced candidate thresholds, rounded to 3 significant digits."""
    ratio = (high / low) ** (1 / (count - 1))
    return [float(f"{low * ratio ** i:.3g}") for i in range(count)]


def pick(curve: list[tuple[float, float]], targets: tuple[float, ...]) -> list[float]:
    """For each target share, the scanned value whose share is closest (the smaller value on ties); sorted."""
    chosen = set()
    for target in targets:
        best = min(curve, key=lambda vs: (abs(vs[1] - target), vs[0]))
        chosen.add(best[0])
    return sorted(chosen)


def share_curve(pipe: Any, method: str, key: str, held: dict[str, float], values: list[float], prompts: list[str],
                call_args: dict[str, Any], store: CalibrationStore, floor: float,
                plateau_below: float) -> list[tuple[float, float]]:
    """(value, mean share of blocks run over `prompts`) for increasing values. Stops below `floor`, or on a
    plateau below `plateau_below` (a method at its least compute, e.g. MagCache capped by max_skip_steps;
    plateaus higher up, like MagCache's retained steps at small thresholds, are scanned through)."""
    curve = []
    steps = int(call_args["num_inference_steps"])
    for value in values:
        shares = []
        for prompt in prompts:
            with apply_method(pipe, method, num_inference_steps=steps, calibration=store,
                              **{**held, key: value}) as handle:
                generate(pipe, prompt, seed=0, previews=False, **call_args)
                shares.append(handle.trace.blocks_share())
        curve.append((value, sum(shares) / len(shares)))
        last = [share for _, share in curve[-5:]]
        if curve[-1][1] < floor or (len(last) == 5 and last[-1] < plateau_below and max(last) - min(last) < 1e-9):
            break
    return curve


def select_grids(pipe: Any, methods: tuple[str, ...], explicit: dict[str, dict], targets: tuple[float, ...],
                 prompts: list[str], call_args: dict[str, Any], store: CalibrationStore,
                 log: Callable[[str], None] = print) -> tuple[dict[str, dict[str, tuple]], dict[str, Any]]:
    """Grids for the threshold methods in `methods` that have no explicit grid; returns (grids, scan curves)."""
    grids: dict[str, dict[str, tuple]] = {}
    curves: dict[str, Any] = {}
    floor = min(targets) - 0.1
    wanted = set(methods) | {FOLLOWERS[m] for m in methods if m in FOLLOWERS}
    for method in SCANNED:
        if method not in wanted or method in explicit:
            continue
        grid = {}
        for key, held in SCANNED[method]:
            log(f"auto grid: scanning {method}.{key} on {len(prompts)} calibration prompts")
            curve = share_curve(pipe, method, key, held, scan_values(), prompts, call_args, store, floor,
                                plateau_below=min(targets) + 0.2)
            curves[f"{method}.{key}"] = curve
            default = get_method(method).setting(key).default
            grid[key] = tuple(sorted(set(pick(curve, targets)) | {default}))
        grids[method] = grid
    for follower, leader in FOLLOWERS.items():
        if follower in methods and follower not in explicit and leader in grids:
            declared = {s.name for s in get_method(follower).settings}
            grids[follower] = {k: v for k, v in grids[leader].items() if k in declared}
    return grids, curves

