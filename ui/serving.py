"""Serving limits: what keeps one Gradio server answering, whatever its clients send or do.

In the order a request meets them:

- **Address** (:func:`server_address`): space.yaml locally, the Spaces convention on a Space, env overrides always.
- **Request guard** (:class:`RequestGuard`, ASGI middleware): only the handlers the page uses are reachable,
  bodies are small JSON, no upload at all.
- **Queue guard** (:func:`harden_queue`): at most N events waiting or running, counted atomically; a call with
  the wrong number of values gets one short message.
- **Cancellation** (:func:`event_probe`, :class:`StoppableProgress`, :func:`exclusive_run`): a comparison
  stops at its next step once nobody waits for it, and only one runs at a time, on one thread.
- **Memory** (:func:`limit_heap_arenas`, :func:`release_free_memory`): freed heap pages go back to the OS.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import ctypes.util
import functools
import json
import os
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence, TypeVar

import gradio as gr
from gradio.context import LocalContext


# --- server address -------------------------------------------------------------------------------
# Where the app listens: space.yaml locally, the Spaces convention on a Space, env overrides always.

SPACES_HOST, SPACES_PORT = "0.0.0.0", 7860


def on_space(env: Mapping[str, str] = os.environ) -> bool:
    return bool(env.get("SPACE_ID"))


def server_address(default_host: str, default_port: int, env: Mapping[str, str] = os.environ) -> tuple[str, int]:
    """(host, port). GRADIO_SERVER_NAME / GRADIO_SERVER_PORT win; a Space binds 0.0.0.0:7860.

    Raises:
        ValueError: GRADIO_SERVER_PORT is not a port number.
    """
    host, port = (SPACES_HOST, SPACES_PORT) if on_space(env) else (default_host, default_port)
    host = env.get("GRADIO_SERVER_NAME") or host
    raw_port = env.get("GRADIO_SERVER_PORT")
    if raw_port:
        try:
            port = int(raw_port)
        except ValueError:
            raise ValueError(f"GRADIO_SERVER_PORT must be a port number, got {raw_port!r}") from None
        if not 0 < port < 65536:
            raise ValueError(f"GRADIO_SERVER_PORT must be between 1 and 65535, got {port}")
    return host, port


# --- request guard --------------------------------------------------------------------------------
# ASGI middleware: only the handlers the page uses are reachable, and no file can be uploaded.
#
# Gradio lets any registered function be called by index, including ``api_visibility="private"`` ones,
# and accepts uploads of any size though this app has no upload component. This middleware sits in
# front of Gradio's routes and lets through:
#
# - queue joins and ``/call/<name>`` only for the public endpoints (``generate``, ``sweep``);
# - ``/run/<name>`` only for the page's unqueued handlers (the step scrubber, the model picker, the examples), with
#   exactly their number of values;
# - no upload at all, refused before its body is read.
#
# Everything else that names a function gets 404. Bodies are JSON and small; larger ones get 413.

MAX_BODY_BYTES = 64 * 1024
UPLOAD_PATHS = ("/gradio_api/upload", "/gradio_api/process_recording")


class RequestGuard:
    """Pure ASGI middleware; add it with ``launch(app_kwargs={"middleware": [Middleware(RequestGuard, ...)]})``."""

    def __init__(self, app: Any, demo: gr.Blocks, public_api: Sequence[str], page_handlers: Sequence[str],
                 max_body: int = MAX_BODY_BYTES) -> None:
        self.app, self.demo, self.max_body = app, demo, max_body
        self.public_api = (public_api,) if isinstance(public_api, str) else tuple(public_api)
        self.page_handlers = set(page_handlers)

    async def _reply(self, send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _function(self, path: str, payload: Any):
        """The BlockFunction a call names, by ``fn_index`` in the body or by the name in the path."""
        fns = self.demo.fns
        index = payload.get("fn_index") if isinstance(payload, dict) else None
        if isinstance(index, int) and not isinstance(index, bool):
            return fns.get(index)
        name = path.rstrip("/").rsplit("/", 1)[-1]
        return next((fn for fn in fns.values() if fn.api_name == name), None)

    def _allowed(self, path: str, fn: Any) -> bool:
        if fn is None:
            return False
        if "/gradio_api/queue/join" in path or "/gradio_api/call/" in path:
            return fn.api_name in self.public_api
        return fn.api_name in self.page_handlers and not fn.queue  # /gradio_api/run/...

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path.endswith(UPLOAD_PATHS):
            return await self._reply(send, 403, "This app accepts no file uploads.")
        if not any(route in path for route in ("/gradio_api/queue/join", "/gradio_api/run/", "/gradio_api/call/")):
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:  # buffer the small JSON body, check it, then hand it on unchanged
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return await self._reply(send, 413, f"Request body too large (at most {self.max_body} bytes).")
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        try:
            payload = json.loads(raw)
        except ValueError:
            return await self._reply(send, 400, "The request body must be JSON.")
        fn = self._function(path, payload)
        if not self._allowed(path, fn):
            return await self._reply(send, 404, f"No such endpoint. The API is {', '.join('/' + a for a in self.public_api)}.")
        data = payload.get("data") if isinstance(payload, dict) else None
        if not fn.queue and (not isinstance(data, list) or len(data) != len(fn.inputs)):
            return await self._reply(send, 400, f"Expected {len(fn.inputs)} values.")
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


# --- queue guard ----------------------------------------------------------------------------------
# Hold the generate queue to its size and answer malformed calls with one short message.
#
# Gradio 6 counts only waiting events against ``queue(max_size=...)``, and checks the size before it
# awaits the event's validator, so a burst of simultaneous joins all pass the check (80 at once put 54
# in a queue of 32). Here the check, the validator and the append are one atomic step, and running
# events count too. A call whose value count is wrong would otherwise get Gradio's message, which lists
# component reprs with memory addresses.

QUEUE_FULL = "Queue is full ({limit} requests waiting or running); try again in a minute."


def harden_queue(demo: gr.Blocks, *, max_total: int, tails: dict[str, Sequence[Any]]) -> None:
    """Wrap ``demo``'s queue (call after ``demo.queue()``, before ``launch()``).

    At most `max_total` events wait or run at once; the rest are refused with "Queue is full". A call to
    an endpoint in `tails` that leaves out some of its trailing optional inputs gets the missing ones' values
    from its tail (as Python fills in trailing defaults); any other count is refused naming the range.
    """
    queue = demo._queue
    original_push = queue.push
    lock = asyncio.Lock()

    async def push(body, request, username):
        fn = demo.fns.get(body.fn_index) if isinstance(body.fn_index, int) else None
        if fn is not None and fn.api_name in tails:
            api_name, optional_tail = fn.api_name, tails[fn.api_name]
            need = len(fn.inputs)
            required = need - len(optional_tail)
            data = body.data if isinstance(body.data, list) else None
            if data is not None and required <= len(data) < need:
                body.data = [*data, *optional_tail[len(data) - required:]]
            elif data is None or len(data) != need:
                got = len(data) if data is not None else "no list of"
                counts = f"{required} to {need}" if optional_tail else f"{need}"
                return False, f"/{api_name} takes {counts} values, got {got}", "error"
        async with lock:
            running = sum(q.current_concurrency for q in queue.event_queue_per_concurrency_id.values())
            if len(queue) + running >= max_total:
                return False, QUEUE_FULL.format(limit=max_total), "queue_full"
            return await original_push(body, request, username)

    queue.push = push


# --- cancellation ---------------------------------------------------------------------------------
# Stop a comparison at its next denoising step once nobody is waiting for it.
#
# Gradio runs a handler in a worker thread and cannot stop it: a closed tab, a dropped stream or a
# ``Job.cancel()`` leave it computing and holding the pipeline, so the next request waits. Gradio does
# mark the event (``alive``/``closed``, or drops it on cancel); the handler polls that mark at every
# step through its progress callback and raises :class:`ClientGone`, which unwinds the pipeline call
# and releases its lock. Outside a queued event (tests, direct calls) nothing is ever cancelled.
# On ZeroGPU the steps run in another process, which does not see the mark.

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
# keeping its own freed pages (see the memory section below).
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


# --- memory ---------------------------------------------------------------------------------------
# Hand freed heap memory back to the operating system after each comparison.
#
# A comparison allocates and frees hundreds of MB of tensors while small long-lived objects (preview PNGs,
# session state) land between them on the heap. glibc then keeps the freed pages, and a server's RSS grew
# about 1.5 MB per request (+300 MB over 200 requests at 128x128). ``malloc_trim(0)`` returns them; with
# it, 30 requests grew RSS by 16 MB, all of it the bounded preview store. The app trims at the start and
# the end of each comparison (Gradio encodes a response after its handler returns), and limits the number
# of heap arenas at startup. Elsewhere (macOS, musl) these are no-ops.

# glibc's mallopt parameter for the number of heap arenas (malloc.h: M_ARENA_MAX).
M_ARENA_MAX = -8
ARENAS = 2


@functools.cache
def _libc_function(name: str):
    library = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(library), name) if library else None
    except (OSError, AttributeError):
        return None


def _malloc_trim():
    return _libc_function("malloc_trim")


def limit_heap_arenas(arenas: int = ARENAS) -> bool:
    """Make threads share `arenas` heap arenas instead of glibc's default of up to 8 per core.

    Gradio runs handlers on a pool of up to 40 worker threads; each new thread that allocates would get
    an arena of its own that keeps its freed pages, so RSS climbs while the pool warms up. Call it at
    startup, before the server's threads exist. True if the C library took it.
    """
    mallopt = _libc_function("mallopt")
    return bool(mallopt(M_ARENA_MAX, int(arenas))) if mallopt is not None else False


def release_free_memory() -> bool:
    """Return free heap pages to the OS; True if the C library could."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
