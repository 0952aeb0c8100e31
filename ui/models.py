"""The allowlisted pipelines, each loaded once per process and shared by all requests.

Only keys listed in space.yaml (and runnable on this machine) can be loaded; a request can never
name a path or an arbitrary hub id. Sharing one pipeline across requests is safe because
h2cache.compare.run_comparison holds the pipeline's lock for both runs.

GPU memory: a FLUX.1 pipeline takes ~33 GB in bf16, so two must not sit on one GPU. On a dedicated GPU
the registry keeps at most one GPU model there and moves the others to CPU memory (a switch costs a
few seconds of transfer). On ZeroGPU a Space serves one GPU model (space.yaml's `zero_gpu` flags), and
every model is loaded at startup in the main process (:meth:`ModelRegistry.preload`), never inside the
GPU call.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any, Callable

import torch

import h2cache
from h2cache.pipelines import load_pipeline

from .settings import AppSettings, ModelSpec

log = logging.getLogger("h2cache.app")


class ModelRegistry:
    """The pipelines this app may serve, by space.yaml key.

    Args:
        settings: the app's settings (which models, which need a GPU, which run on ZeroGPU).
        loader: key -> pipeline; ``h2cache.load_pipeline`` on `device` by default.
        cuda_available: whether GPU models can run here (default: ``torch.cuda.is_available()``).
        zero_gpu: serve only the models marked for ZeroGPU, and leave GPU placement to ZeroGPU.
        device: where the default loader puts pipelines (default: CUDA when available, else CPU).
    """

    def __init__(self, settings: AppSettings, loader: Callable[[str], Any] | None = None,
                 cuda_available: bool | None = None, zero_gpu: bool = False, device: str | None = None) -> None:
        self.settings = settings
        self._loader = loader or functools.partial(load_pipeline, device=device)
        cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
        self.zero_gpu = zero_gpu
        self.specs: list[ModelSpec] = settings.available_models(cuda, zero_gpu)
        self._pipes: dict[str, Any] = {}
        self._locks = {spec.key: threading.Lock() for spec in self.specs}

    @property
    def keys(self) -> list[str]:
        return [spec.key for spec in self.specs]

    @property
    def default_key(self) -> str:
        key = self.settings.defaults.model
        return key if key in self.keys else self.keys[0]

    def get(self, key: str) -> Any:
        """The pipeline for `key`, loaded on first use.

        Raises:
            ValueError: `key` is not allowed here.
            FileNotFoundError / RuntimeError: from h2cache.load_pipeline (missing model, gated or unreachable hub repo).
        """
        if key not in self._locks:
            raise ValueError(f"model must be one of {self.keys}, got {key!r}")
        # One lock per model: loading FLUX.1 for one user must not stall the embedded model for others.
        with self._locks[key]:
            if key not in self._pipes:
                pipe = self._loader(key)
                pipe.set_progress_bar_config(disable=True)  # progress goes to the page, not the server log
                self._pipes[key] = pipe
            pipe = self._pipes[key]
        if self._spec(key).requires_gpu and not self.zero_gpu:
            self._make_only_gpu_model(key, pipe)
        return pipe

    def loaded(self, key: str) -> Any | None:
        """The pipeline for `key` if it is loaded already (never loads: for quick page handlers)."""
        return self._pipes.get(key)

    def preload(self) -> None:
        """Load every model this registry serves, logging each (ZeroGPU: before the page serves)."""
        failed = []
        for number, spec in enumerate(self.specs, start=1):
            log.info("loading model %d/%d: %s", number, len(self.specs), spec.key)
            try:
                self.get(spec.key)
            except Exception as exc:  # one missing model (e.g. a gated repo without HF_TOKEN) must not stop the rest
                log.error("could not load %s at startup: %s", spec.key, exc)
                failed.append(spec.key)
        log.info("%d of %d models loaded%s", len(self.specs) - len(failed), len(self.specs),
                 f" (failed: {', '.join(failed)})" if failed else "")

    def _spec(self, key: str) -> ModelSpec:
        return next(spec for spec in self.specs if spec.key == key)

    def _make_only_gpu_model(self, key: str, pipe: Any) -> None:
        """Move the other GPU models' pipelines to CPU memory, and this one to the GPU."""
        if not torch.cuda.is_available():  # a GPU model served from the CPU (checks, tests): nothing to swap
            return
        for other, other_pipe in list(self._pipes.items()):
            if other != key and self._spec(other).requires_gpu and other_pipe.device.type == "cuda":
                log.info("moving %s to CPU memory to make room for %s", other, key)
                other_pipe.to("cpu")
                torch.cuda.empty_cache()
        if pipe.device.type != "cuda":
            pipe.to("cuda")

    def stage_split(self, key: str) -> str:
        """The stage split of a loaded model, e.g. for the About panel."""
        pipe = self._pipes.get(key)
        if pipe is None:
            return "not loaded yet"
        return h2cache.resolve_stages(pipe.transformer).describe()
