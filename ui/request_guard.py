"""ASGI middleware: only the handlers the page uses are reachable, and no file can be uploaded.

Gradio lets any registered function be called by index, including ``api_visibility="private"`` ones,
and accepts uploads of any size though this app has no upload component. This middleware sits in
front of Gradio's routes and lets through:

- queue joins and ``/call/<name>`` only for the public endpoint (``generate``);
- ``/run/<name>`` only for the page's unqueued handlers (the step scrubber, the model picker, the examples), with
  exactly their number of values;
- no upload at all, refused before its body is read.

Everything else that names a function gets 404. Bodies are JSON and small; larger ones get 413.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import gradio as gr

MAX_BODY_BYTES = 64 * 1024
UPLOAD_PATHS = ("/gradio_api/upload", "/gradio_api/process_recording")


class RequestGuard:
    """Pure ASGI middleware; add it with ``launch(app_kwargs={"middleware": [Middleware(RequestGuard, ...)]})``."""

    def __init__(self, app: Any, demo: gr.Blocks, public_api: str, page_handlers: Sequence[str],
                 max_body: int = MAX_BODY_BYTES) -> None:
        self.app, self.demo, self.max_body = app, demo, max_body
        self.public_api, self.page_handlers = public_api, set(page_handlers)

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
            return fn.api_name == self.public_api
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
            return await self._reply(send, 404, f"No such endpoint. The API is /{self.public_api}.")
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
