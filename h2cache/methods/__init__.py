"""One interface over H2-Cache and its peers: ``none``, ``h2cache``, ``fbcache``, ``teacache``, ``magcache``,
``taylorseer``; plus two H2-Cache ablations (``h2cache-no-pfs``, ``h2cache-independent-stage2``), the proposed
variants measured by the benchmark (``h2cache-guarded``, ``h2cache-one-probe``, ``h2cache-guarded-one-probe``),
the peers with the same guards (``fbcache-guarded``, ``teacache-guarded``; :mod:`.guards`) and MagCache with
ratios per cache context (``magcache-per-context``).

Every method is applied the same way and reports the same per-call trace fields
(blocks run, attention run, hit, FLOPs), counted by one meter inside the blocks.

Example:
    >>> import torch, h2cache
    >>> from h2cache.methods import apply_method, measure_flop_table
    >>> pipe = h2cache.load_pipeline()
    >>> pipe.set_progress_bar_config(disable=True)
    >>> call = dict(h2cache.generation_defaults(pipe), num_inference_steps=8)
    >>> flops = measure_flop_table(pipe, **call)
    >>> handle = apply_method(pipe, "h2cache", tau1=0.15, tau2=0.22, flops=flops, num_inference_steps=8)
    >>> image = pipe("a large red circle at the center on a striped blue background",
    ...              **call, generator=torch.Generator().manual_seed(0)).images[0]
    >>> len(handle.trace), handle.trace.contexts  # one record per transformer call: one call per step
    (8, ['cond'])
    >>> handle.trace.blocks_share() < 1, handle.trace.flops_share() < 1
    (True, True)
    >>> handle.remove()
    >>> with apply_method(pipe, "taylorseer", cache_interval=2, flops=flops, num_inference_steps=8) as handle:
    ...     image = pipe("a large red circle at the center on a striped blue background",
    ...                  **call, generator=torch.Generator().manual_seed(0)).images[0]
    ...     # every block runs, but from step 3 every other step predicts its attention instead of computing it
    ...     [r.attn_run for r in handle.trace.for_context("cond")], handle.trace.blocks_share()
    ([24, 24, 24, 0, 24, 0, 24, 0], 1.0)
"""

from .base import ApplyContext, Attachment, Method, MethodHandle
from .calibration import CALIBRATION_FILE, CalibrationStore, model_fingerprint, model_key
from .diffusers_caches import calibrate_magcache
from .guards import Guards
from .meter import BlockFlops, BlockMeter, FlopTable, MethodRecord, MethodTrace, measure_flop_table
from .registry import FAMILIES, METHODS, apply_method, get_method, list_families, list_methods
from .settings import Setting
from .teacache import TeaCacheConfig, TeaCacheHandle, apply_teacache, calibrate_teacache, fit_rescale_polynomial

__all__ = [
    "ApplyContext", "Attachment", "BlockFlops", "BlockMeter", "CALIBRATION_FILE", "CalibrationStore", "FlopTable", "Guards",
    "FAMILIES", "METHODS", "Method", "MethodHandle", "MethodRecord", "MethodTrace", "Setting", "TeaCacheConfig",
    "TeaCacheHandle", "apply_method", "apply_teacache", "calibrate_magcache", "calibrate_teacache",
    "fit_rescale_polynomial", "get_method", "list_families", "list_methods", "measure_flop_table", "model_fingerprint", "model_key",
]
