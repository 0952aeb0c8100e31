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

from h2cache.compare import Comparison, RunResult, generate, pipeline_lock, run_comparison
from h2cache.lab import MAX_MATCH_RUNS, LabPoint, PeerMatch, lab_flops, run_at_share, run_point, sweep, sweep_settings
from h2cache.methods import FlopTable, model_fingerprint
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
    peer: PeerMatch | None = None  # the peer column (request.peer), at the H2-Cache run's share of compute
    peer_quality: dict[str, Any] | None = None  # the peer's image against the baseline, as `quality`
    peer_error: str | None = None  # why the chosen peer could not run (e.g. no calibration for these steps)


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


def job_runs(request: ComparisonRequest, sweep_points: int = 0) -> int:
    """Pipeline calls a request may make at most: baseline and H2-Cache, the peer's tries, or a sweep's points
    (H2-Cache's current setting, then `sweep_points` per method)."""
    if sweep_points:
        return 2 + sweep_points * (2 if request.peer != "none" else 1)
    return 2 + (MAX_MATCH_RUNS if request.peer != "none" else 0)


def _call(pipe: Any, request: ComparisonRequest) -> dict[str, Any]:
    return {**generation_defaults(pipe), "num_inference_steps": request.steps, "height": request.height,
            "width": request.width}


# One FLOP table per model and call shape: measuring one takes a one-step pipeline call.
_FLOPS = ByteLRU(2**20, 8)


def _flops(pipe: Any, request: ComparisonRequest) -> FlopTable | None:
    call = _call(pipe, request)
    key = (request.model, model_fingerprint(pipe.transformer), request.height, request.width,
           tuple(sorted((k, repr(v)) for k, v in call.items() if k != "num_inference_steps")))
    table = _FLOPS.get(key)
    if table is None:
        table = lab_flops(pipe, {**call, "num_inference_steps": 1})
        _FLOPS.put(key, table, 1024)
    return table


class _Stages:
    """Progress over a job's runs: run `i` of `total` covers [i / total, (i + 1) / total] of the bar."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def skip(self, desc: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done / self.total, desc=desc)

    def __call__(self, run: str, step: int, steps: int) -> None:
        if self.progress is not None:
            self.progress(min(1.0, (self.done + step / steps) / self.total),
                          desc=f"{RUN_LABELS.get(run, run)} run: step {step}/{steps}")
        if step == steps:
            self.done += 1


def _baseline(pipe: Any, request: ComparisonRequest, stages: _Stages) -> tuple[RunResult, bool]:
    """The stored uncached run for this request, or a new one (stored); and whether it was reused."""
    key = baseline_key(pipe, request.model, request)
    stored = BASELINES.get(key) if request.reuse_baseline else None
    if stored is not None:
        stages.skip("Baseline reused from an earlier run")
        return stored, True
    run = generate(pipe, request.prompt, seed=request.seed, name="baseline", progress=stages, **_call(pipe, request))
    BASELINES.put(key, run, _run_bytes(run))
    return run, False


def run_job(registry_id: int, request: ComparisonRequest, progress: Progress | None = None) -> JobResult:
    pipe = _REGISTRIES[registry_id].get(request.model)
    peer = request.peer != "none"
    stages = _Stages(progress, job_runs(request))
    with pipeline_lock(pipe):
        baseline, reused = _baseline(pipe, request, stages)
    flops = _flops(pipe, request) if peer else None
    comparison = run_comparison(
        pipe, request.prompt, seed=request.seed, config=request.config(), progress=stages, record_pfs=True,
        baseline=baseline, flops=flops, num_inference_steps=request.steps, height=request.height, width=request.width,
    )
    quality = compare_images(comparison.baseline.image, comparison.cached.image, lpips=True)
    result = JobResult(comparison=comparison, quality=quality, baseline_reused=reused)
    if peer:
        cached = comparison.cached
        target = cached.flops_share if cached.flops_share is not None else cached.trace.blocks_share()
        try:
            with pipeline_lock(pipe):
                result.peer = run_at_share(pipe, request.peer, target, prompt=request.prompt, seed=request.seed,
                                           baseline=baseline.image, flops=flops, call=_call(pipe, request),
                                           progress=stages)
        except (ValueError, TypeError) as exc:  # the method refused this model or step count; H2-Cache's result stands
            result.peer_error = str(exc)
        else:
            result.peer_quality = compare_images(baseline.image, result.peer.best.run.image, lpips=True)
    return result


@dataclass
class SweepResult:
    """A sweep for one prompt and seed: H2-Cache at the request's setting, then each method's points."""

    request: ComparisonRequest
    baseline: RunResult
    baseline_reused: bool
    current: LabPoint  # H2-Cache at the request's own thresholds: the point the front marks
    points: dict[str, list[LabPoint]]  # method -> its points, H2-Cache first
    peer_error: str | None = None  # why the chosen peer could not run


def run_sweep_job(registry_id: int, request: ComparisonRequest, points: int,
                  progress: Progress | None = None) -> SweepResult:
    """H2-Cache at the request's setting and at `points` settings along its thresholds' ray, and the request's
    peer (if any) at `points` values of its knob, each scored against the uncached image."""
    pipe = _REGISTRIES[registry_id].get(request.model)
    stages = _Stages(progress, job_runs(request, points))
    base = dict(request.settings)
    with pipeline_lock(pipe):
        baseline, reused = _baseline(pipe, request, stages)
        flops = _flops(pipe, request)
        lab = dict(prompt=request.prompt, seed=request.seed, baseline=baseline.image, flops=flops,
                   call=_call(pipe, request), progress=stages)
        current = run_point(pipe, "h2cache", base, name="H2-Cache at your setting", **lab)
        found = {"h2cache": sweep(pipe, "h2cache", sweep_settings("h2cache", points, base), **lab)}
        error = None
        if request.peer != "none":
            try:
                found[request.peer] = sweep(pipe, request.peer, sweep_settings(request.peer, points), **lab)
            except (ValueError, TypeError) as exc:
                error = str(exc)
    return SweepResult(request, baseline, reused, current, found, error)


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
