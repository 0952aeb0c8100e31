"""load_pipeline(): the embedded model offline by default, FLUX.1 hub ids on GPU machines.

Example:
    >>> import h2cache
    >>> pipe = h2cache.load_pipeline()                     # assets/tiny-flux-scenes, no network
    >>> h2cache.generation_defaults(pipe)["height"]
    128
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

EMBEDDED = "embedded"
EMBEDDED_MODEL_DIR = Path(os.environ.get(
    "H2CACHE_EMBEDDED_MODEL", Path(__file__).resolve().parent.parent / "assets" / "tiny-flux-scenes"))
FLUX_SCHNELL = "black-forest-labs/FLUX.1-schnell"
FLUX_DEV = "black-forest-labs/FLUX.1-dev"

# Per-model call arguments: what the model was trained or distilled for.
GENERATION_DEFAULTS: dict[str, dict[str, Any]] = {
    # Trained at 128x128 with 16 T5 tokens; CFG distilled into the guidance embedding (one call per step),
    # trained for scales 1 to 5. The shipped directory's generation_defaults.json says the same.
    EMBEDDED: {"height": 128, "width": 128, "num_inference_steps": 28, "max_sequence_length": 16,
               "guidance_scale": 3.0},
    FLUX_SCHNELL: {"height": 1024, "width": 1024, "num_inference_steps": 4, "guidance_scale": 0.0,
                   "max_sequence_length": 256},
    FLUX_DEV: {"height": 1024, "width": 1024, "num_inference_steps": 28, "guidance_scale": 3.5,
               "max_sequence_length": 512},
}


# A local FluxPipeline directory may carry its own defaults in this file (the training export writes it).
DEFAULTS_FILE = "generation_defaults.json"


def write_generation_defaults(model_dir: str | Path, defaults: dict[str, Any]) -> Path:
    """Store `defaults` in a local model directory so :func:`load_pipeline` users get them."""
    path = Path(model_dir) / DEFAULTS_FILE
    path.write_text(json.dumps(defaults, indent=2, sort_keys=True) + "\n")
    return path


def _local_defaults(model_dir: Path) -> dict[str, Any] | None:
    path = model_dir / DEFAULTS_FILE
    if not path.is_file():
        return None
    try:
        defaults = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); fix or delete it") from exc
    if not isinstance(defaults, dict):
        raise ValueError(f"{path} must hold a JSON object of pipeline call arguments, got {type(defaults).__name__}")
    return defaults


def _embedded_defaults() -> dict[str, Any]:
    # The shipped directory's own file wins: it is written by the export that produced the weights.
    return _local_defaults(EMBEDDED_MODEL_DIR) or GENERATION_DEFAULTS[EMBEDDED]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(model: str | None = None, device: str | None = None, dtype: torch.dtype | None = None):
    """Load a ``FluxPipeline``.

    Args:
        model: ``None`` or ``"embedded"`` for the model shipped in ``assets/`` (loaded with no network,
            works under ``HF_HUB_OFFLINE=1``); a hub id such as ``black-forest-labs/FLUX.1-schnell``
            (``HF_TOKEN`` is read from the environment for gated repos); or a local FluxPipeline directory.
        device: ``"cuda"`` when available, else ``"cpu"``.
        dtype: float32 for the embedded model and on the CPU; bfloat16 for hub models on CUDA.

    Raises:
        FileNotFoundError: the embedded model directory is missing.
        RuntimeError: a hub model could not be fetched (no access, no network); the message says why.
    """
    from diffusers import FluxPipeline

    device = device or default_device()
    key = EMBEDDED if model in (None, EMBEDDED) else model
    local = Path(key) if key != EMBEDDED and Path(key).is_dir() else None
    if local is not None and local.resolve() == EMBEDDED_MODEL_DIR.resolve():
        key, local = EMBEDDED, None
    if key == EMBEDDED:
        if not (EMBEDDED_MODEL_DIR / "model_index.json").exists():
            raise FileNotFoundError(
                f"embedded model not found at {EMBEDDED_MODEL_DIR}; train it with `python -m embedded_model.training` "
                "or set H2CACHE_EMBEDDED_MODEL")
        pipe = FluxPipeline.from_pretrained(EMBEDDED_MODEL_DIR, local_files_only=True, dtype=dtype or torch.float32)
        # pipe(prompt) without a size then renders at the trained size, not FLUX's 1024.
        pipe.default_sample_size = _embedded_defaults()["height"] // pipe.vae_scale_factor
    else:
        if dtype is None:
            dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        try:
            pipe = FluxPipeline.from_pretrained(key, dtype=dtype, token=os.environ.get("HF_TOKEN"))
        except Exception as exc:  # hub errors come in many types; the user needs the reason and the fix
            raise RuntimeError(
                f"could not load {key!r}: {exc}. FLUX.1 repositories are gated: accept the license on the "
                "Hugging Face Hub and set HF_TOKEN, or pre-download the weights into the HF cache."
            ) from exc
    pipe._h2cache_model = key
    if local is not None:
        pipe._h2cache_defaults = _local_defaults(local)
    return pipe.to(device)


def generation_defaults(pipe_or_model: Any = None) -> dict[str, Any]:
    """The call arguments a model was trained for (a copy), e.g. ``pipe(prompt, **generation_defaults(pipe))``.

    ``None`` means the embedded model. A local model directory gets what its ``generation_defaults.json``
    holds (:func:`write_generation_defaults`). A pipeline that :func:`load_pipeline` did not load is an
    unknown model and gets no defaults (``{}``): the pipeline's own defaults apply.
    """
    if pipe_or_model is None or isinstance(pipe_or_model, (str, Path)):
        key = str(pipe_or_model or EMBEDDED)
        if key != EMBEDDED and Path(key).is_dir():
            return dict(_local_defaults(Path(key)) or {})
    else:
        local = getattr(pipe_or_model, "_h2cache_defaults", None)
        if local is not None:
            return dict(local)
        key = getattr(pipe_or_model, "_h2cache_model", None)
    if key == EMBEDDED:
        return dict(_embedded_defaults())
    return dict(GENERATION_DEFAULTS.get(key, {}))
