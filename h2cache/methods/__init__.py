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
    >>> pipe = h2cache.load_pipeline()                                                   # doctest: +SKIP
    >>> flops = measure_flop_table(pipe, **h2cache.generation_defaults(pipe))            # doctest: +SKIP
    >>> handle = apply_method(pipe, "h2cache", tau1=0.15, tau2=0.22, flops=flops)        # doctest: +SKIP
    >>> image = pipe("a large red circle at the center on a striped blue background",
    ...              **h2cache.generation_defaults(pipe), generator=torch.Generator().manual_seed(0))  # doctest: +SKIP
    >>> handle.trace.blocks_share(), handle.trace.flops_share()                          # doctest: +SKIP
    (0.52, 0.55)
    >>> handle.remove()                                                                  # doctest: +SKIP
"""

from .base import ApplyContext, Attachment, Method, MethodHandle
from .calibration import CALIBRATION_FILE, CalibrationStore, model_fingerprint, model_key
from .diffusers_caches import calibrate_magcache
from .guards import Guards
from .meter import BlockFlops, BlockMeter, FlopTable, MethodRecord, MethodTrace, measure_flop_table
from .registry import METHODS, apply_method, get_method, list_methods
from .settings import Setting
from .teacache import TeaCacheConfig, TeaCacheHandle, apply_teacache, calibrate_teacache, fit_rescale_polynomial

__all__ = [
    "ApplyContext", "Attachment", "BlockFlops", "BlockMeter", "CALIBRATION_FILE", "CalibrationStore", "FlopTable", "Guards",
    "METHODS", "Method", "MethodHandle", "MethodRecord", "MethodTrace", "Setting", "TeaCacheConfig",
    "TeaCacheHandle", "apply_method", "apply_teacache", "calibrate_magcache", "calibrate_teacache",
    "fit_rescale_polynomial", "get_method", "list_methods", "measure_flop_table", "model_fingerprint", "model_key",
]
