"""Run a function under ``spaces.GPU`` on ZeroGPU Spaces, and as it is everywhere else."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def on_gpu(fn: F, duration: int) -> F:
    """`fn` wrapped in ``spaces.GPU(duration=...)`` when the ``spaces`` package is importable.

    On ZeroGPU a GPU is attached only for the duration of such a call, so everything that needs
    it (both runs and the metrics) must happen inside one call. Outside Spaces the package is
    normally absent and `fn` is returned unchanged.
    """
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)
