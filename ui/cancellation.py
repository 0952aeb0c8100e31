"""Stop a comparison at its next denoising step once nobody is waiting for it.

Gradio runs a handler in a worker thread and cannot stop it: a closed tab, a dropped stream or a
``Job.cancel()`` leave it computing and holding the pipeline, so the next request waits. Gradio does
mark the event (``alive``/``closed``, or drops it on cancel); the handler polls that mark at every
step through its progress callback and raises :class:`ClientGone`, which unwinds the pipeline call
and releases its lock. Outside a queued event (tests, direct calls) nothing is ever cancelled.
On ZeroGPU the steps run in another process, which does not see the mark.
"""

from __future__ import annotations

import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

from gradio.context import LocalContext

T = TypeVar("T")


class ClientGone(Exception):
    """The request was cancelled or its client went away."""


def _never() -> None:
    return None


def event_probe() -> Callable[[], str | None]:
    """Call in the handler's thread. Returns a function that says why to stop, or None to go on."""
    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    queue = getattr(blocks, "_queue", None)
    if queue is None or event_id is None:
        return _never

    def why() -> str | None:
        event = queue.event_ids_to_events.get(event_id)
        if event is None:
            return "the request was cancelled"
        if not event.alive:
            return "the client disconnected"
        if event.closed:
            return "the page was closed"
        return None

    return why


class StoppableProgress:
    """A progress callback that raises :class:`ClientGone` when the probe says so."""

    def __init__(self, progress: Callable[..., Any], why: Callable[[], str | None]) -> None:
        self.progress, self.why = progress, why

    def __reduce__(self):
        # Pickled into a ZeroGPU worker, the probe would read a copy of the queue that never changes.
        return StoppableProgress, (self.progress, _never)

    def __call__(self, fraction: float, desc: str | None = None) -> Any:
        reason = self.why()
        if reason:
            raise ClientGone(reason)
        return self.progress(fraction, desc=desc)


# Every comparison runs on this one thread. Gradio hands each request to whichever of its worker
# threads is free; large tensors allocated from many threads spread over as many malloc arenas, each
# keeping its own freed pages (see ui/memory.py for the rest of that story).
_MODEL_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="h2cache-model")


def on_model_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on the model thread, with the caller's context (Gradio's request context included)."""
    return _MODEL_THREAD.submit(contextvars.copy_context().run, fn, *args).result()


# One comparison at a time in this process: a wall-clock timing is honest only if no other request's
# runs overlap it. Gradio's concurrency limit alone is not enough: a cancelled event frees its slot
# while its thread is still finishing a step.
_RUN_GATE = threading.Lock()


@contextmanager
def exclusive_run(why: Callable[[], str | None], poll_seconds: float = 0.5) -> Iterator[None]:
    """Wait for the process's single run slot, giving up if the client leaves meanwhile."""
    while not _RUN_GATE.acquire(timeout=poll_seconds):
        reason = why()
        if reason:
            raise ClientGone(reason)
    try:
        yield
    finally:
        _RUN_GATE.release()
