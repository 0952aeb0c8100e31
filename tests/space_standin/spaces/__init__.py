"""A stand-in for Hugging Face's `spaces` package, for the Space boot check (tests/test_space_boot.py).

It does what ZeroGPU's `spaces.GPU` promises an app (run the function, with a duration that may be a
function of the call's arguments) and writes down, one JSON line per event in $H2CACHE_FAKE_SPACES_LOG,
what happened inside and outside each GPU call: every pipeline `from_pretrained`, and each call's start,
requested duration and end. It runs the function in the calling thread; real ZeroGPU forks a worker.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time

import diffusers

_inside = threading.local()
_write = threading.Lock()


def _log(event: str, **fields) -> None:
    path = os.environ.get("H2CACHE_FAKE_SPACES_LOG")
    if not path:
        return
    with _write, open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"event": event, "time": time.time(), **fields}) + "\n")


def GPU(fn=None, duration=60):  # noqa: N802 - the real package's name
    def wrap(function):
        @functools.wraps(function)
        def call(*args, **kwargs):
            seconds = duration(*args, **kwargs) if callable(duration) else duration
            _log("gpu_start", duration=seconds, function=function.__name__)
            _inside.active = True
            try:
                return function(*args, **kwargs)
            finally:
                _inside.active = False
                _log("gpu_end", function=function.__name__)
        return call
    return wrap(fn) if fn is not None else wrap


_from_pretrained = diffusers.DiffusionPipeline.from_pretrained.__func__


@classmethod
def _recorded_from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
    _log("from_pretrained", model=str(pretrained_model_name_or_path), inside_gpu=getattr(_inside, "active", False))
    return _from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs)


diffusers.DiffusionPipeline.from_pretrained = _recorded_from_pretrained
_log("imported")
