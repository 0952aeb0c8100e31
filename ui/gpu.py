"""Run a function under ``spaces.GPU`` on ZeroGPU Spaces, and as it is everywhere else."""

from __future__ import annotations

import importlib.util
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


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
