"""The model work of one request: baseline and H2-Cache runs, then the image metrics.

Kept in one function so that on ZeroGPU it becomes a single GPU call (see ui/gpu.py). Metrics are
computed here on the raw uint8 arrays the pipeline returned, never on what the browser receives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from h2cache.compare import Comparison, run_comparison
from h2cache.metrics import compare_images

from .models import ModelRegistry
from .validation import ComparisonRequest

RUN_LABELS = {"baseline": "Baseline", "h2cache": "H2-Cache"}
ProgressReport = Callable[[float, str], None]  # (fraction done of both runs, description)


@dataclass
class JobResult:
    comparison: Comparison
    quality: dict[str, Any]  # psnr, ssim, lpips, lpips_reason from h2cache.metrics.compare_images


def run_job(registry: ModelRegistry, request: ComparisonRequest, report: ProgressReport | None = None) -> JobResult:
    pipe = registry.get(request.model)

    def on_step(run: str, done: int, total: int) -> None:
        if report is not None:
            before = 0 if run == "baseline" else total  # the baseline is the first half of the work
            report((before + done) / (2 * total), f"{RUN_LABELS.get(run, run)} run: step {done}/{total}")

    comparison = run_comparison(
        pipe, request.prompt, seed=request.seed, config=request.config(), progress=on_step,
        num_inference_steps=request.steps, height=request.height, width=request.width,
    )
    quality = compare_images(comparison.baseline.image, comparison.cached.image, lpips=True)
    return JobResult(comparison=comparison, quality=quality)
