"""Per-model calibration data for TeaCache (rescaling polynomial) and MagCache (magnitude ratios).

Both methods need numbers measured on the model they run on. They are kept in a
small JSON file (``calibration.json`` next to this module by default), keyed by
model name, with a fingerprint of the transformer's config and weights so that a
retrained model under the same name is not served stale numbers.

Example:
    >>> store = CalibrationStore("/tmp/h2cache-calibration-doctest.json")
    >>> store.put("my-model", "abc", "teacache", {"coefficients": [1.0, 0.0]})
    >>> store.get("my-model", "abc", "teacache")["coefficients"]
    [1.0, 0.0]
    >>> store.get("my-model", "other-weights", "teacache") is None
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..hook_machinery import transformer_of

CALIBRATION_FILE = Path(__file__).with_name("calibration.json")


def model_key(pipe_or_transformer: Any) -> str:
    """The name calibration is stored under: the loaded model's name (``'embedded'``, a hub id or a path)."""
    name = getattr(pipe_or_transformer, "_h2cache_model", None)
    if name:
        return str(name)
    transformer = transformer_of(pipe_or_transformer)
    config = getattr(transformer, "config", None)
    path = getattr(config, "_name_or_path", None) if config is not None else None
    return str(path) if path else type(transformer).__name__


def model_fingerprint(transformer: torch.nn.Module) -> str:
    """A short hash of the transformer's config and a few of its weights (cheap, even for FLUX.1)."""
    digest = hashlib.sha256()
    config = getattr(transformer, "config", None)
    if config is not None:
        public = {k: v for k, v in dict(config).items() if not str(k).startswith("_")}
        digest.update(json.dumps(public, sort_keys=True, default=str).encode())
    params = list(transformer.parameters())
    for p in (params[0], params[len(params) // 2], params[-1]) if params else ():
        flat = p.detach().reshape(-1)[:4096].float().cpu()
        digest.update(flat.numpy().tobytes())
    return digest.hexdigest()[:16]


def prompt_hashes(prompts: list[str] | tuple[str, ...]) -> list[str]:
    """Short hashes of the prompts a calibration ran on, stored with it, so that a benchmark can check that
    it never calibrates on the prompts it scores (:mod:`h2cache.prompt_split`). Whitespace and case
    are normalised first.

    Example:
        >>> prompt_hashes(["A red  circle"]) == prompt_hashes(["a red circle "])
        True
        >>> len(prompt_hashes(["a red circle"])[0])
        16
    """
    return [hashlib.sha256(" ".join(p.lower().split()).encode()).hexdigest()[:16] for p in prompts]


def calibrated_on(entry: dict[str, Any] | None) -> set[str] | None:
    """The prompt hashes a stored calibration records; ``None`` when it records none (older files)."""
    if not entry or "prompt_hashes" not in entry:
        return None
    return set(entry["prompt_hashes"])


def teacache_fit(stored: dict[str, Any] | None, steps: int) -> dict[str, Any] | None:
    """The TeaCache fit for `steps` from a stored ``teacache`` entry, or ``None``.

    Fits are kept per step count (``{"28": fit, "50": fit}``): per-step input changes shrink as steps grow,
    and a polynomial fitted at 28 steps is extrapolated, badly, at 100. An entry holding one fit at the top
    level (older files) is used only at the step count it was fitted for.
    """
    if not stored:
        return None
    if "coefficients" in stored:
        return stored if stored.get("num_inference_steps") in (None, steps) else None
    return stored.get(str(steps))


class CalibrationStore:
    """Reads and writes calibration entries: ``{"models": {key: {"fingerprint", method: data}}}``.

    An entry with fingerprint ``None`` (published numbers for hub models) matches any weights.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else CALIBRATION_FILE

    def load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"models": {}}
        with open(self.path) as f:
            data = json.load(f)
        data.setdefault("models", {})
        return data

    def get(self, key: str, fingerprint: str | None, method: str) -> Any:
        entry = self.load()["models"].get(key)
        if entry is None:
            return None
        if entry.get("fingerprint") is not None and entry["fingerprint"] != fingerprint:
            return None
        return entry.get(method)

    def put_teacache(self, key: str, fingerprint: str | None, steps: int, fit: dict[str, Any]) -> None:
        """Store a TeaCache fit for one step count, next to the fits for other step counts."""
        stored = self.get(key, fingerprint, "teacache") or {}
        if "coefficients" in stored:  # a single fit from before fits were kept per step count
            stored = {str(stored.get("num_inference_steps") or steps): stored}
        self.put(key, fingerprint, "teacache", {**stored, str(steps): fit})

    def put(self, key: str, fingerprint: str | None, method: str, value: Any) -> None:
        data = self.load()
        entry = data["models"].get(key)
        if entry is None or entry.get("fingerprint") != fingerprint:
            entry = {"fingerprint": fingerprint}  # other weights under this name: their numbers are void
        entry[method] = value
        data["models"][key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a concurrent reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".json.tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        os.replace(tmp, self.path)

    def __repr__(self) -> str:
        return f"CalibrationStore({str(self.path)!r})"
