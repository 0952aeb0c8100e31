"""The model work of one request: baseline (or the stored one) and H2-Cache runs, then the image metrics.

Kept in one function so that on ZeroGPU it becomes a single GPU call (see the ZeroGPU section below). Metrics are
computed here on the raw uint8 arrays the pipeline returned, never on what the browser receives.

The function takes only small, picklable arguments (a registry id, the checked request, a
progress object): a GPU worker may receive its arguments pickled, and the pipelines must stay
in the process that loaded them rather than travel with each call.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Callable, Protocol, TypeVar

from h2cache.compare import Comparison, RunResult, run_comparison
from h2cache.methods import model_fingerprint
from h2cache.metrics import compare_images
from h2cache.pipelines import generation_defaults

from .models import ModelRegistry
from .preview_store import ByteLRU
from .validation import ComparisonRequest

F = TypeVar("F", bound=Callable[..., Any])
RUN_LABELS = {"baseline": "Baseline", "h2cache": "H2-Cache"}
_REGISTRIES: dict[int, ModelRegistry] = {}


class Progress(Protocol):
    """What gr.Progress offers: ``progress(fraction, desc=...)``."""

    def __call__(self, progress: float, desc: str | None = None) -> Any: ...


@dataclass
class JobResult:
    comparison: Comparison
    quality: dict[str, Any]  # psnr, ssim, lpips, lpips_reason from h2cache.metrics.compare_images
    baseline_reused: bool = False  # the baseline came from BASELINES: its seconds are those of the run that made it


# The uncached run depends on none of H2-Cache's settings, so a click that changed only those reuses it.
# Keyed by everything that changes its image (baseline_key); a few entries, bounded by bytes (the image and
# its step previews, uncompressed). Per process: on ZeroGPU, where each GPU call may run in a fresh worker,
# a baseline is reused only when the call lands in the worker that made it.
BASELINE_STORE_ITEMS = 8
BASELINE_STORE_BYTES = 64 * 2**20
BASELINES = ByteLRU(BASELINE_STORE_BYTES, BASELINE_STORE_ITEMS)


def baseline_key(pipe: Any, model: str, request: ComparisonRequest) -> tuple:
    """What the uncached image depends on: the model and its weights, the prompt, seed, size, steps, and the
    pipeline's other call arguments (guidance, sequence length)."""
    defaults = tuple(sorted((k, repr(v)) for k, v in generation_defaults(pipe).items()))
    return (model, model_fingerprint(pipe.transformer), request.prompt, request.seed, request.height,
            request.width, request.steps, defaults)


def _run_bytes(run: RunResult) -> int:
    return run.image.nbytes + sum(p.nbytes for p in run.previews)


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

    key = baseline_key(pipe, request.model, request)
    stored = BASELINES.get(key) if request.reuse_baseline else None
    if stored is not None and progress is not None:
        progress(0.5, desc="Baseline reused from an earlier run")
    comparison = run_comparison(
        pipe, request.prompt, seed=request.seed, config=request.config(), progress=on_step, record_pfs=True,
        baseline=stored, num_inference_steps=request.steps, height=request.height, width=request.width,
    )
    if stored is None:
        BASELINES.put(key, comparison.baseline, _run_bytes(comparison.baseline))
    quality = compare_images(comparison.baseline.image, comparison.cached.image, lpips=True)
    return JobResult(comparison=comparison, quality=quality, baseline_reused=stored is not None)


# --- ZeroGPU --------------------------------------------------------------------------------------
# Run a function under ``spaces.GPU`` on ZeroGPU Spaces, and as it is everywhere else.



def zero_gpu_active() -> bool:
    """Whether this process runs under ZeroGPU, i.e. the ``spaces`` package is importable.

    Off Spaces the package is normally absent; where it is installed for other reasons, ``spaces.GPU``
    itself does nothing outside ZeroGPU, so treating its presence as ZeroGPU is safe.
    """
    try:
        return importlib.util.find_spec("spaces") is not None
    except (ImportError, ValueError):
        return False


def on_gpu(fn: F, duration: int | Callable[..., int]) -> F:
    """`fn` wrapped in ``spaces.GPU(duration=...)`` when the ``spaces`` package is importable.

    On ZeroGPU a GPU is attached only for the duration of such a call, so everything that needs
    it (both runs and the metrics) must happen inside one call. `duration` is seconds, or a function
    of `fn`'s arguments that returns them (sized per request). Outside Spaces `fn` is returned unchanged.
    """
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)
