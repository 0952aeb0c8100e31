"""Run the uncached baseline and H2-Cache with the same prompt and seed; collect what a comparison shows.

Example:
    >>> import h2cache
    >>> from h2cache.compare import run_comparison
    >>> pipe = h2cache.load_pipeline()
    >>> result = run_comparison(pipe, "a large red circle at the center on a plain blue background",
    ...                         seed=0, config=h2cache.H2CacheConfig())
    >>> result.speedup > 0
    True
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .config import H2CacheConfig
from .apply import apply_h2_cache
from .methods.meter import BlockMeter, FlopTable
from .pfs_views import PFSViews
from .pipelines import generation_defaults
from .trace import Trace

ProgressFn = Callable[[str, int, int], None]  # (run name, steps done, total steps)

# One pipeline object serves one run at a time: hooks and schedulers hold per-call state.
_PIPE_LOCKS: dict[int, threading.Lock] = {}
_PIPE_LOCKS_GUARD = threading.Lock()


def pipeline_lock(pipe: Any) -> threading.Lock:
    with _PIPE_LOCKS_GUARD:
        return _PIPE_LOCKS.setdefault(id(pipe), threading.Lock())


@dataclass
class RunResult:
    name: str
    image: np.ndarray  # HxWx3 uint8, straight from the pipeline (no lossy encoding)
    seconds: float
    trace: Trace | None = None
    pfs: PFSViews | None = None  # what PFS compared, with record_pfs=True (H2-Cache run only)
    previews: list[np.ndarray] = field(default_factory=list)  # predicted clean image after each step
    sigmas: list[float] = field(default_factory=list)
    flops_share: float | None = None  # block FLOPs run over an uncached run's, when run_comparison got a FLOP table


@dataclass
class Comparison:
    baseline: RunResult
    cached: RunResult
    config: H2CacheConfig
    stages: str

    @property
    def speedup(self) -> float:
        return self.baseline.seconds / self.cached.seconds if self.cached.seconds > 0 else float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """Decoded VAE output in [-1, 1], (B, 3, H, W) -> uint8 HxWx3 arrays."""
    x = (images.float().clamp(-1, 1) + 1) * 127.5
    return [a for a in x.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()]


def decode_latents(pipe: Any, packed: torch.Tensor, height: int, width: int) -> list[np.ndarray]:
    """Packed FLUX latents -> uint8 images, exactly as FluxPipeline decodes its final latents."""
    latents = pipe._unpack_latents(packed, height, width, pipe.vae_scale_factor)
    latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
    with torch.no_grad():
        return _to_uint8(pipe.vae.decode(latents.to(pipe.vae.dtype), return_dict=False)[0])


def generate(pipe: Any, prompt: str, *, seed: int, name: str = "run", previews: bool = True,
             progress: ProgressFn | None = None, **kwargs: Any) -> RunResult:
    """One pipeline call. With `previews`, also the predicted clean image after every step.

    The prediction at step i is ``x_i - sigma_i * v_i``, with the velocity recovered from the
    scheduler's Euler update, so it is exact under true CFG too. Previews are decoded after the
    timed call, so they don't count in ``seconds``.
    """
    args = {**generation_defaults(pipe), **kwargs}
    # Unknown pipelines have no defaults of ours: fall back to FluxPipeline's own.
    steps = int(args.setdefault("num_inference_steps", 28))
    height = int(args.setdefault("height", pipe.default_sample_size * pipe.vae_scale_factor))
    width = int(args.setdefault("width", pipe.default_sample_size * pipe.vae_scale_factor))
    device = pipe._execution_device
    x0_latents: list[torch.Tensor] = []
    last_input: dict[str, torch.Tensor] = {}

    def capture_input(module, a, kw):
        last_input["x"] = kw.get("hidden_states", a[0] if a else None)

    def on_step_end(p, i, t, callback_kwargs):
        if previews and "x" in last_input:
            sigmas = p.scheduler.sigmas
            s, s_next = float(sigmas[i]), float(sigmas[i + 1])
            x, x_next = last_input["x"], callback_kwargs["latents"]
            velocity = (x_next.float() - x.float()) / (s_next - s)
            x0_latents.append((x.float() - s * velocity).to(x.dtype))
        if progress is not None:
            progress(name, i + 1, steps)
        return callback_kwargs

    handle = pipe.transformer.register_forward_pre_hook(capture_input, with_kwargs=True) if previews else None
    generator = torch.Generator("cpu").manual_seed(int(seed))
    try:
        _sync(device)
        start = time.perf_counter()
        out = pipe(prompt=prompt, generator=generator, output_type="np", callback_on_step_end=on_step_end, **args)
        _sync(device)
        seconds = time.perf_counter() - start
    finally:
        if handle is not None:
            handle.remove()
    image = np.clip(np.rint(out.images[0] * 255), 0, 255).astype(np.uint8)
    preview_images = [decode_latents(pipe, x, height, width)[0] for x in x0_latents]
    sigmas = [float(s) for s in pipe.scheduler.sigmas[:steps]]
    return RunResult(name=name, image=image, seconds=seconds, previews=preview_images, sigmas=sigmas)


def run_comparison(pipe: Any, prompt: str, *, seed: int, config: H2CacheConfig, previews: bool = True,
                   record_pfs: bool = False, progress: ProgressFn | None = None, baseline: RunResult | None = None,
                   flops: FlopTable | None = None, **kwargs: Any) -> Comparison:
    """Baseline, then H2-Cache with the same seed; the cache is removed afterwards, even on error.

    With `record_pfs`, the H2-Cache run also keeps what PFS compared at every step (``cached.pfs``,
    see :mod:`h2cache.pfs_views`); that adds a few small tensor copies per step to its timed call.
    A `baseline` from an earlier call with the same pipeline, prompt, seed and arguments is used as it is
    (its ``seconds`` are those it took then) instead of running the uncached call again. With `flops`
    (:func:`h2cache.methods.measure_flop_table` for these call arguments), a block meter counts the H2-Cache
    run's share of block FLOPs (``cached.flops_share``), the measure peers are compared by.
    """
    with pipeline_lock(pipe):
        if baseline is None:
            baseline = generate(pipe, prompt, seed=seed, name="baseline", previews=previews, progress=progress,
                                **kwargs)
        meter = BlockMeter(pipe.transformer, flops).attach() if flops is not None else None
        try:
            handle = apply_h2_cache(pipe, config)
            if record_pfs:
                handle.pfs.enable()
            try:
                cached = generate(pipe, prompt, seed=seed, name="h2cache", previews=previews, progress=progress,
                                  **kwargs)
                cached.trace = Trace(handle.trace)
                if record_pfs:
                    cached.pfs = handle.pfs.to_host()
            finally:
                handle.remove()
        finally:
            if meter is not None:
                meter.detach()
        if meter is not None:
            cached.flops_share = meter.trace.flops_share()
        return Comparison(baseline=baseline, cached=cached, config=config, stages=handle.split.describe())
