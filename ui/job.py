"""The model work of one request: baseline and H2-Cache runs, then the image metrics.

Kept in one function so that on ZeroGPU it becomes a single GPU call (see ui/gpu.py). Metrics are
computed here on the raw uint8 arrays the pipeline returned, never on what the browser receives.

The function takes only small, picklable arguments (a registry id, the checked request, a
progress object): a GPU worker may receive its arguments pickled, and the pipelines must stay
in the process that loaded them rather than travel with each call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from h2cache.compare import Comparison, run_comparison
from h2cache.metrics import compare_images

from .models import ModelRegistry
from .validation import ComparisonRequest

RUN_LABELS = {"baseline": "Baseline", "h2cache": "H2-Cache"}
_REGISTRIES: dict[int, ModelRegistry] = {}


class Progress(Protocol):
    """What gr.Progress offers: ``progress(fraction, desc=...)``."""

    def __call__(self, progress: float, desc: str | None = None) -> Any: ...


@dataclass
class JobResult:
    comparison: Comparison
    quality: dict[str, Any]  # psnr, ssim, lpips, lpips_reason from h2cache.metrics.compare_images


def register_models(registry: ModelRegistry) -> int:
    """Make `registry` reachable from run_job by a plain integer id."""
    _REGISTRIES[id(registry)] = registry
    return id(registry)


def run_job(registry_id: int, request: ComparisonRequest, progress: Progress | None = None) -> JobResult:
    pipe = _REGISTRIES[registry_id].get(request.model)

    def on_step(run: str, done: int, total: int) -> None:
        if progress is not None:
            before = 0 if run == "baseline" else total  # the baseline is the first half of the work
            progress((before + done) / (2 * total), desc=f"{RUN_LABELS.get(run, run)} run: step {done}/{total}")

    comparison = run_comparison(
        pipe, request.prompt, seed=request.seed, config=request.config(), progress=on_step, record_pfs=True,
        num_inference_steps=request.steps, height=request.height, width=request.width,
    )
    quality = compare_images(comparison.baseline.image, comparison.cached.image, lpips=True)
    return JobResult(comparison=comparison, quality=quality)
