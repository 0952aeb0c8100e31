"""Target mode: the user picks a compute budget, the app sets tau1 and tau2 from the stored calibration.

The calibrations are :func:`h2cache.calibrate` searches stored per model fingerprint, size and step count
(``python -m h2cache.calibrate``). Exactly the request's size and step count is used when stored; else the
nearest stored step count at that size, and the text says so. After a comparison, the achieved share of
blocks is set against the target.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from h2cache.calibrate import SearchStore, calibration_from_searches

MODES = ("manual", "target compute")
MANUAL_TEXT = "Thresholds are set by hand. Choose *target compute* to set them from a stored calibration."


@dataclass(frozen=True)
class TargetChoice:
    tau1: float | None  # None: nothing stored for this model and size; the thresholds stay as they are
    tau2: float | None
    text: str
    # The PFS pool sizes the search ran with: thresholds only mean the same distances with the same pooling.
    pool_size_stage1: int | None = None
    pool_size_stage2: int | None = None


def _number(value: Any, low: float, high: float) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if low <= number <= high else None


def calibrated_thresholds(pipe: Any, steps: Any, width: Any, height: Any, budget: Any,
                          store: SearchStore | None = None) -> TargetChoice:
    """Thresholds for running at most `budget` of the blocks, from the calibration nearest to the request."""
    share = _number(budget, 0.05, 1.0)
    steps_n, width_n, height_n = (_number(v, 1, 10**5) for v in (steps, width, height))
    if share is None:
        return TargetChoice(None, None, "The compute budget must be a share of blocks from 0.05 to 1.")
    if None in (steps_n, width_n, height_n):
        return TargetChoice(None, None, "Set the steps and the size first.")
    searches = (store or SearchStore()).searches(pipe)  # read once: this runs on every slider release
    sizes = f"{int(width_n)}x{int(height_n)}/"
    stored_steps = sorted(int(k.split("/")[1]) for k in searches if k.startswith(sizes))
    if not stored_steps:
        return TargetChoice(None, None, f"No calibration is stored for this model at {int(width_n)}x{int(height_n)}; "
                                        "run `python -m h2cache.calibrate` for it. The thresholds are unchanged.")
    used = min(stored_steps, key=lambda s: (abs(s - steps_n), s))
    cal = calibration_from_searches(searches, used, int(height_n), int(width_n), target_blocks=share)
    where = f"{int(width_n)}x{int(height_n)}, {used} steps"
    if used != int(steps_n):
        where += f" (nearest to the {int(steps_n)} requested; stored: {', '.join(map(str, stored_steps))})"
    verdict = "within" if cal.met else "**above** (no calibrated point reaches it; this is the cheapest)"
    pools = (cal.config.pool_size_stage1, cal.config.pool_size_stage2)
    text = (f"From the stored calibration at {where}: τ1 = {cal.config.tau1:.3f}, τ2 = {cal.config.tau2:.3f} "
            f"(pool sizes {pools[0]} and {pools[1]}) ran {cal.blocks_share:.1%} of the blocks there, {verdict} the "
            f"{share:.0%} target, at median PSNR {statistics.median(cal.psnr):.1f} dB on the calibration prompts "
            f"({len(cal.points)} points searched).")
    return TargetChoice(round(cal.config.tau1, 3), round(cal.config.tau2, 3), text, *pools)


def target_report(mode: Any, budget: Any, details: Any) -> str:
    """After a comparison in target mode: how far the achieved share of blocks landed from the target."""
    share = _number(budget, 0.05, 1.0)
    if mode != MODES[1] or share is None or not isinstance(details, dict):
        return MANUAL_TEXT if mode != MODES[1] else "Run a comparison to see the achieved share."
    achieved = _number(details.get("blocks_share"), 0.0, 1.0)
    if achieved is None:
        return "This comparison reported no share of blocks."
    gap = (achieved - share) * 100
    return (f"This comparison ran {achieved:.1%} of the blocks against a {share:.0%} target: "
            f"{abs(gap):.1f} points {'over' if gap > 0 else 'under'} it (prompts and seeds differ from the "
            "calibration's, so the share moves).")
