"""What the page shows of one comparison, as display values: the metrics table and summary, the
difference map, what the plots read from the trace, and the machine-readable details."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import numpy as np
from matplotlib import colormaps

from h2cache.compare import Comparison
from h2cache.lab import LabPoint, PeerMatch
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


# --- the cache lab: the peer column and the sweep ---------------------------------------------------
# What the page shows of the peer run beside H2-Cache, and of a sweep (h2cache.lab).

PEER_HEADERS = ["", "Peer"]
SWEEP_HEADERS = ["method", "settings", "share of block FLOPs", "blocks run", "PSNR (dB)", "SSIM", "wall time (s)"]


def peer_label(method: str) -> str:
    return {"fbcache": "FirstBlockCache", "fbcache-guarded": "FirstBlockCache + guards", "teacache": "TeaCache",
            "teacache-guarded": "TeaCache + guards", "magcache": "MagCache", "taylorseer": "TaylorSeer",
            "seacache": "SeaCache", "h2cache": "H2-Cache"}.get(method, method)


def _settings_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{k}={v}"
                     for k, v in settings.items())


def peer_match_text(match: PeerMatch) -> str:
    """Whether the peer ran at H2-Cache's compute, and if not, why."""
    if match.matched:
        return (f"{match.share:.1%} of block FLOPs against H2-Cache's {match.target:.1%}: within "
                f"{match.tolerance:.0%} (found in {len(match.tries)} tries)")
    return (f"{match.share:.1%} of block FLOPs against H2-Cache's {match.target:.1%}: not within "
            f"{match.tolerance:.0%}, because {match.note}; the closest try is shown")


def peer_rows(match: PeerMatch | None, quality: dict[str, Any] | None, baseline_seconds: float,
              peer: str = "none", error: str | None = None) -> list[list[str]]:
    if error is not None:
        return [["Method", peer_label(peer)], ["Not run", error]]
    if match is None or quality is None:
        return [["Peer", "none chosen (pick one under Peer)"]]
    best = match.best
    speedup = baseline_seconds / best.run.seconds if best.run.seconds > 0 else float("nan")
    ran = sum(r.blocks_run for r in best.trace)
    total = sum(r.blocks_total for r in best.trace)
    return [
        ["Method", peer_label(best.method)],
        ["Setting found", _settings_text(best.settings)],
        ["Compute matched to H2-Cache", peer_match_text(match)],
        ["Blocks executed", f"{best.blocks_share:.1%} ({ran}/{total})"],
        ["Steps reused", f"{best.trace.hit_count()}/{len(best.trace)}"],
        ["Wall time", f"{best.run.seconds:.2f} s"],
        [SPEEDUP_LABEL, f"{speedup:.2f}×"],
        ["PSNR vs baseline", format_psnr(quality["psnr"])],
        ["SSIM vs baseline", format_ssim(quality["ssim"])],
        ["LPIPS (AlexNet) vs baseline", format_lpips(quality["lpips"], quality.get("lpips_reason"))],
    ]


def peer_details(match: PeerMatch | None, quality: dict[str, Any] | None) -> dict[str, Any] | None:
    if match is None or quality is None:
        return None
    return {
        "method": match.best.method, "settings": match.best.settings, "target_share": match.target,
        "share": match.share, "matched": match.matched, "tolerance": match.tolerance, "note": match.note or None,
        "seconds": match.best.run.seconds, "blocks_share": match.best.blocks_share,
        "quality": {"psnr": _finite_or_text(quality["psnr"]), "ssim": quality["ssim"], "lpips": quality["lpips"],
                    "lpips_reason": quality.get("lpips_reason")},
        "tries": [{"settings": t.settings, "share": t.share, "psnr": _finite_or_text(t.psnr)} for t in match.tries],
        "trace": [r.as_dict() for r in match.best.trace],
    }


def sweep_rows(points: dict[str, list[LabPoint]], current: LabPoint) -> list[list[str]]:
    """One row per run, H2-Cache's current setting first, then each method's points by share."""
    rows = []
    for label, p in [("H2-Cache (your setting)", current),
                     *((peer_label(m), p) for m, found in points.items() for p in sorted(found, key=lambda p: -p.share))]:
        rows.append([label, _settings_text({k: v for k, v in p.settings.items() if k in ("tau1", "tau2", "threshold",
                                                                                          "cache_interval")}),
                     f"{p.share:.1%}", f"{p.blocks_share:.1%}", f"{p.psnr:.2f}", format_ssim(p.ssim),
                     f"{p.run.seconds:.2f}"])
    return rows


def sweep_records(points: dict[str, list[LabPoint]], current: LabPoint) -> list[dict[str, Any]]:
    """The sweep's runs as flat records (the CSV's rows and the JSON's list); ``current`` marks your setting."""
    records = [{**current.as_row(), "current": True}]
    records += [{**p.as_row(), "current": False} for found in points.values() for p in found]
    return records
