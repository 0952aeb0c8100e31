"""What the page shows of one comparison, as display values: the metrics table and summary, the
difference map, what the plots read from the trace, and the machine-readable details."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import numpy as np
from matplotlib import colormaps

from h2cache.compare import Comparison
from h2cache.trace import StepRecord, Trace

from .validation import ComparisonRequest


# --- metrics table --------------------------------------------------------------------------------
# The metrics table and one-line summary of a comparison, as display strings.

HEADERS = ["", "Baseline", "H2-Cache"]
# Two views of the gain: the measured one moves with the machine, the counted one does not.
SPEEDUP_LABEL = "Speedup (wall clock, measured)"
COMPUTE_SAVED_LABEL = "Compute saved (block executions skipped, counted)"
TIMING_NOTE = (
    "Wall-clock speedup is measured with no other request running in this app, but still moves with the "
    "machine's load. Compute saved counts the transformer block executions H2-Cache skipped: it does not "
    "depend on load."
)


def format_psnr(value: float) -> str:
    return "∞ (identical)" if math.isinf(value) else f"{value:.2f} dB"


def format_ssim(value: float) -> str:
    text = f"{value:.4f}"
    # A near-perfect SSIM must not read as the exact 1 of identical images.
    return f"{value:.6f}" if text == "1.0000" and value != 1.0 else text


def format_lpips(value: float | None, reason: str | None) -> str:
    return f"{value:.4f}" if value is not None else f"n/a — {reason or 'unavailable'}"


REUSED_NOTE = "reused: the time it took when it ran"


def metrics_rows(comparison: Comparison, quality: dict[str, Any], baseline_reused: bool = False) -> list[list[str]]:
    trace = comparison.cached.trace
    calls = len(trace)
    total = sum(r.blocks_total for r in trace)
    ran = sum(r.blocks_run for r in trace)
    hits1, hits2 = trace.hits()
    forced = sum(r.forced2 for r in trace)
    guarded = sum(r.forced_full for r in trace)
    base_s, cached_s = comparison.baseline.seconds, comparison.cached.seconds
    return [
        ["Wall time", f"{base_s:.2f} s" + (f" ({REUSED_NOTE})" if baseline_reused else ""), f"{cached_s:.2f} s"],
        [SPEEDUP_LABEL, "1.00×", f"{comparison.speedup:.2f}×"],
        [COMPUTE_SAVED_LABEL, "0%", f"{1 - trace.blocks_share():.1%}"],
        ["Blocks executed", f"100% ({total}/{total})", f"{trace.blocks_share():.1%} ({ran}/{total})"],
        ["Stage-1 hits (structure)", "—", f"{hits1}/{calls}"],
        ["Stage-2 hits (detail)", "—", f"{hits2}/{calls} ({forced} forced)"],
        # Warm-up, final steps and the hit cap (Advanced); 0 when they are off.
        ["Calls forced full by a guard", "—", f"{guarded}/{calls}"],
        ["PSNR vs baseline", "reference", format_psnr(quality["psnr"])],
        ["SSIM vs baseline", "reference", format_ssim(quality["ssim"])],
        ["LPIPS (AlexNet) vs baseline", "reference", format_lpips(quality["lpips"], quality.get("lpips_reason"))],
    ]


def summary_markdown(comparison: Comparison, quality: dict[str, Any], baseline_reused: bool = False) -> str:
    trace = comparison.cached.trace
    reused = (" The baseline was **reused** from an earlier run with the same model, prompt, seed, size and steps; "
              "its time is the time it took then (untick *Reuse the baseline* under Advanced to run it again)."
              if baseline_reused else "")
    quality_bits = f"PSNR {format_psnr(quality['psnr'])}, SSIM {format_ssim(quality['ssim'])}"
    if quality["lpips"] is not None:
        quality_bits += f", LPIPS {quality['lpips']:.4f}"
    return (
        f"**H2-Cache skipped {1 - trace.blocks_share():.1%} of the transformer block executions "
        f"(compute saved, counted) and took {comparison.cached.seconds:.2f} s against "
        f"{comparison.baseline.seconds:.2f} s for the baseline ({comparison.speedup:.2f}× wall clock, measured).** "
        f"{quality_bits}.{reused}  \n"
        f"Model split: {comparison.stages}.  \n"
        f"*{TIMING_NOTE}*"
    )


# --- difference map -------------------------------------------------------------------------------
# Amplified absolute difference of two images, as a heat map the eye can read.

def difference_map(reference: np.ndarray, image: np.ndarray, gain: float) -> np.ndarray:
    """``|image - reference|`` averaged over RGB, times `gain`, clipped, through the 'inferno' colormap.

    Black means identical pixels. The fixed gain (not normalised per image) keeps maps of
    different runs comparable: a brighter map is a larger difference.
    """
    if reference.shape != image.shape:
        raise ValueError(f"images must have one shape, got {reference.shape} and {image.shape}")
    diff = np.abs(reference.astype(np.int16) - image.astype(np.int16)).mean(axis=-1)
    scaled = np.clip(diff * gain / 255.0, 0.0, 1.0)
    rgb = colormaps["inferno"](scaled)[..., :3]
    rgb[scaled == 0] = 0.0  # exactly black where nothing changed
    return np.rint(rgb * 255).astype(np.uint8)


# --- reading the trace ----------------------------------------------------------------------------
# What the UI reads from an H2-Cache trace: which context to show, and which blocks ran at each step.

PREFERRED_CONTEXT = "cond"


def shown_context(trace: Trace) -> tuple[str, str]:
    """(context to plot, a note for titles). With true CFG there are two contexts; the conditional one is shown."""
    contexts = trace.contexts
    if not contexts:
        return PREFERRED_CONTEXT, ""
    context = PREFERRED_CONTEXT if PREFERRED_CONTEXT in contexts else contexts[0]
    others = [c for c in contexts if c != context]
    note = f"context '{context}'" + (f" ({', '.join(repr(o) for o in others)} not shown)" if others else "")
    return context, note


def computed_mask(records: list[StepRecord], stage1_blocks: int, stage2_blocks: int) -> np.ndarray:
    """Boolean (blocks, steps): True where a block was computed, False where its output was reused,
    as each record says (:meth:`h2cache.trace.StepRecord.computed`)."""
    mask = np.ones((stage1_blocks + stage2_blocks, len(records)), dtype=bool)
    for column, record in enumerate(records):
        mask[:, column] = record.computed(stage1_blocks, stage2_blocks)
    return mask


def guard_forced(records: list[StepRecord]) -> np.ndarray:
    """Boolean (steps,): True where a guard (warm-up, final steps, hit cap) forced a full computation."""
    return np.array([r.forced_full for r in records], dtype=bool)


def decision_text(record: StepRecord) -> str:
    """One line on what the cached run did at this step."""
    if record.probe2_skipped:
        return "reused stage 1 and (forced) stage 2: only the stage-1 probe block ran"
    if record.hit1:
        return "reused stage 1 and (forced) stage 2: only the 2 probe blocks ran"
    if record.hit2:
        return "computed stage 1, reused stage 2"
    if record.forced_full:
        return "computed everything (forced by a guard)"
    if record.d1 is None:
        return "computed everything (no reference yet)"
    return "computed everything"


# --- JSON details ---------------------------------------------------------------------------------
# Machine-readable results of a comparison, for the JSON panel and API clients.

def _finite_or_text(value: float | None) -> float | str | None:
    # JSON has no infinity; browsers reject the 'Infinity' token Python would write.
    if value is None or math.isfinite(value):
        return value
    return "inf" if value > 0 else "-inf"


def comparison_details(request: ComparisonRequest, comparison: Comparison, quality: dict[str, Any],
                       baseline_reused: bool = False) -> dict[str, Any]:
    trace = comparison.cached.trace
    hits1, hits2 = trace.hits()
    return {
        "request": request.as_dict(),
        "config": asdict(comparison.config),
        "stages": comparison.stages,
        "seconds": {"baseline": comparison.baseline.seconds, "h2cache": comparison.cached.seconds},
        "baseline_reused": baseline_reused,
        "speedup": comparison.speedup,
        "blocks_share": trace.blocks_share(),
        "hits": {"stage1": hits1, "stage2": hits2, "stage2_forced": sum(r.forced2 for r in trace), "calls": len(trace),
                 "forced_full": sum(r.forced_full for r in trace)},
        "quality": {
            "psnr": _finite_or_text(quality["psnr"]),
            "ssim": quality["ssim"],
            "lpips": quality["lpips"],
            "lpips_reason": quality.get("lpips_reason"),
        },
        "trace": [record.as_dict() for record in trace],
    }
