"""H2-Cache comparison app: `python app.py`, or a Hugging Face Space (app_file: app.py).

Reads space.yaml, loads the default model once, builds the page from ui/, and serves it through
Gradio's queue. Environment:
    GRADIO_SERVER_NAME / GRADIO_SERVER_PORT  where to listen (default 127.0.0.1:7860; 0.0.0.0:7860 on a Space)
    H2CACHE_EMBEDDED_MODEL                   another directory for the embedded model (read by h2cache.pipelines)
    HF_TOKEN                                 for the gated FLUX.1 repositories (GPU machines only)
    H2CACHE_SETTINGS                         another settings file instead of space.yaml (tests use it)
    H2CACHE_DEVICE                           where models are loaded (default: CUDA when available, else CPU)

On ZeroGPU (the `spaces` package importable) every model the Space offers is loaded here at startup, in
the main process, before the page serves; each comparison is one `spaces.GPU` call sized to the request.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from pathlib import Path

if importlib.util.find_spec("spaces") is not None:
    # ZeroGPU has to patch torch before anything initialises CUDA, so `spaces` comes first.
    import spaces  # noqa: F401

import gradio as gr
from starlette.middleware import Middleware

from h2cache.metrics import lpips_availability

from ui.job import zero_gpu_active
from ui.layout import build_demo
from ui.serving import limit_heap_arenas
from ui.models import ModelRegistry
from ui.preview_store import PREVIEWS
from ui.serving import harden_queue
from ui.serving import RequestGuard
from ui.serving import server_address
from ui.validation import APP_OPTIONS, OPTION_INPUTS, SWEEP_DEFAULT
from ui.settings import DEFAULT_SETTINGS_PATH, AppSettings, load_settings

ROOT = Path(__file__).resolve().parent
CSS_PATH = ROOT / "assets" / "app.css"
log = logging.getLogger("h2cache.app")
# The unqueued handlers the page itself calls (step scrubber, model picker, examples, target mode); nothing
# else but the public endpoints.
PAGE_HANDLERS = ("show_step", "on_model_change", "load_example", "apply_target", "apply_target_for_model",
                 "report_target", "sweep_plan")
PUBLIC_APIS = ("generate", "sweep")
# Calls that send only the first ten inputs get the H2CacheConfig options at the library's defaults (off).
OPTION_DEFAULTS = (*(f.default for f in OPTION_INPUTS), *APP_OPTIONS.values())
# Sessions whose state Gradio keeps (least recently used first out). Each holds only a small key, but
# Gradio's own per-session record is ~66 KB with this page's components. The preview store behind the
# keys holds only the last dozen or so comparisons, so older sessions would have nothing left to show anyway.
STATE_SESSION_CAPACITY = 64


def create_app(settings: AppSettings | None = None, registry: ModelRegistry | None = None) -> tuple[gr.Blocks, AppSettings, ModelRegistry]:
    """The queued Blocks app, its settings and its model registry (default model already loaded)."""
    settings = settings or load_settings(os.environ.get("H2CACHE_SETTINGS") or DEFAULT_SETTINGS_PATH)
    PREVIEWS.max_bytes = settings.preview_store_mb * 2**20
    zero_gpu = zero_gpu_active()
    # ZeroGPU answers "is CUDA available" only inside a GPU call; its GPU models are offered regardless.
    registry = registry or ModelRegistry(settings, cuda_available=True if zero_gpu else None, zero_gpu=zero_gpu,
                                         device=os.environ.get("H2CACHE_DEVICE") or ("cuda" if zero_gpu else None))
    try:
        # Load before the first request, so nobody's first click pays for it. On ZeroGPU every model:
        # the weights must live in the main process, never be loaded inside a GPU call.
        if zero_gpu:
            registry.preload()
        else:
            registry.get(registry.default_key)
    except Exception as exc:  # the page still comes up and says why generation cannot work
        log.error("could not load the models at startup: %s", exc)
    # Finding out whether LPIPS can load (it may try a download) must not delay startup or the first result.
    threading.Thread(target=lpips_availability, name="lpips-warmup", daemon=True).start()
    demo = build_demo(settings, registry)
    # api_open=False: queued functions cannot be called around the queue (and its limits) via /run.
    demo.queue(default_concurrency_limit=1, max_size=settings.queue_max_size, api_open=False)
    harden_queue(demo, max_total=settings.queue_max_size, tails={"generate": OPTION_DEFAULTS, "sweep": (*OPTION_DEFAULTS, SWEEP_DEFAULT)})
    return demo, settings, registry


def main() -> None:
    limit_heap_arenas()  # before Gradio starts its worker threads (ui/serving.py)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    demo, settings, _ = create_app()
    host, port = server_address(settings.host, settings.port)
    css = CSS_PATH.read_text(encoding="utf-8") if CSS_PATH.exists() else None
    guard = Middleware(RequestGuard, demo=demo, public_api=PUBLIC_APIS, page_handlers=PAGE_HANDLERS)
    demo.launch(server_name=host, server_port=port, css=css,
                # gr.Error messages (ours, written for users) are shown; other exception text is not.
                show_error=False,
                max_file_size=0,  # the app takes no files; RequestGuard refuses uploads before this
                state_session_capacity=STATE_SESSION_CAPACITY,
                app_kwargs={"middleware": [guard]})


if __name__ == "__main__":
    main()
