"""Hold the generate queue to its size and answer malformed calls with one short message.

Gradio 6 counts only waiting events against ``queue(max_size=...)``, and checks the size before it
awaits the event's validator, so a burst of simultaneous joins all pass the check (80 at once put 54
in a queue of 32). Here the check, the validator and the append are one atomic step, and running
events count too. A call whose value count is wrong would otherwise get Gradio's message, which lists
component reprs with memory addresses.
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

import gradio as gr

QUEUE_FULL = "Queue is full ({limit} requests waiting or running); try again in a minute."


def harden_queue(demo: gr.Blocks, *, max_total: int, api_name: str, optional_tail: Sequence[Any] = ()) -> None:
    """Wrap ``demo``'s queue (call after ``demo.queue()``, before ``launch()``).

    At most `max_total` events wait or run at once; the rest are refused with "Queue is full". A call to
    `api_name` that leaves out exactly the trailing optional inputs gets `optional_tail` as their values;
    any other wrong count is refused naming the counts.
    """
    queue = demo._queue
    original_push = queue.push
    lock = asyncio.Lock()
    required = None

    async def push(body, request, username):
        nonlocal required
        fn = demo.fns.get(body.fn_index) if isinstance(body.fn_index, int) else None
        if fn is not None and fn.api_name == api_name:
            need = len(fn.inputs)
            required = need - len(optional_tail)
            data = body.data if isinstance(body.data, list) else None
            if data is not None and optional_tail and len(data) == required:
                body.data = [*data, *optional_tail]
            elif data is None or len(data) != need:
                got = len(data) if data is not None else "no list of"
                counts = f"{required} or {need}" if optional_tail else f"{need}"
                return False, f"/{api_name} takes {counts} values, got {got}", "error"
        async with lock:
            running = sum(q.current_concurrency for q in queue.event_queue_per_concurrency_id.values())
            if len(queue) + running >= max_total:
                return False, QUEUE_FULL.format(limit=max_total), "queue_full"
            return await original_push(body, request, username)

    queue.push = push
