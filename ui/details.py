"""Machine-readable results of a comparison, for the JSON panel and API clients."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from h2cache.compare import Comparison

from .validation import ComparisonRequest


def _finite_or_text(value: float | None) -> float | str | None:
    # JSON has no infinity; browsers reject the 'Infinity' token Python would write.
    if value is None or math.isfinite(value):
        return value
    return "inf" if value > 0 else "-inf"


def comparison_details(request: ComparisonRequest, comparison: Comparison, quality: dict[str, Any]) -> dict[str, Any]:
    trace = comparison.cached.trace
    hits1, hits2 = trace.hits()
    return {
        "request": request.as_dict(),
        "config": asdict(comparison.config),
        "stages": comparison.stages,
        "seconds": {"baseline": comparison.baseline.seconds, "h2cache": comparison.cached.seconds},
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
