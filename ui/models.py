"""The allowlisted pipelines, each loaded once per process and shared by all requests.

Only keys listed in space.yaml (and runnable on this machine) can be loaded; a request can never
name a path or an arbitrary hub id. Sharing one pipeline across requests is safe because
h2cache.compare.run_comparison holds the pipeline's lock for both runs.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import torch

import h2cache
from h2cache.pipelines import load_pipeline

from .settings import AppSettings, ModelSpec


class ModelRegistry:
    def __init__(self, settings: AppSettings, loader: Callable[[str], Any] = load_pipeline,
                 cuda_available: bool | None = None) -> None:
        self.settings = settings
        self._loader = loader
        cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
        self.specs: list[ModelSpec] = settings.available_models(cuda)
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
            return self._pipes[key]

    def loaded(self, key: str) -> Any | None:
        return self._pipes.get(key)

    def stage_split(self, key: str) -> str:
        """The stage split of a loaded model, e.g. for the About panel."""
        pipe = self._pipes.get(key)
        if pipe is None:
            return "not loaded yet"
        return h2cache.resolve_stages(pipe.transformer).describe()
