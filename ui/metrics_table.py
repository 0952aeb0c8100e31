"""The metrics table and one-line summary of a comparison, as display strings."""

from __future__ import annotations

import math
from typing import Any

from h2cache.compare import Comparison

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


def metrics_rows(comparison: Comparison, quality: dict[str, Any]) -> list[list[str]]:
    trace = comparison.cached.trace
    calls = len(trace)
    total = sum(r.blocks_total for r in trace)
    ran = sum(r.blocks_run for r in trace)
    hits1, hits2 = trace.hits()
    forced = sum(r.forced2 for r in trace)
    guarded = sum(r.forced_full for r in trace)
    base_s, cached_s = comparison.baseline.seconds, comparison.cached.seconds
    return [
        ["Wall time", f"{base_s:.2f} s", f"{cached_s:.2f} s"],
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


def summary_markdown(comparison: Comparison, quality: dict[str, Any]) -> str:
    trace = comparison.cached.trace
    quality_bits = f"PSNR {format_psnr(quality['psnr'])}, SSIM {format_ssim(quality['ssim'])}"
    if quality["lpips"] is not None:
        quality_bits += f", LPIPS {quality['lpips']:.4f}"
    return (
        f"**H2-Cache skipped {1 - trace.blocks_share():.1%} of the transformer block executions "
        f"(compute saved, counted) and took {comparison.cached.seconds:.2f} s against "
        f"{comparison.baseline.seconds:.2f} s for the baseline ({comparison.speedup:.2f}× wall clock, measured).** "
        f"{quality_bits}.  \n"
        f"Model split: {comparison.stages}.  \n"
        f"*{TIMING_NOTE}*"
    )
