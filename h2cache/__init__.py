"""h2cache: H2-Cache (hierarchical two-stage caching) for diffusion transformers, on diffusers hooks.

Example:
    >>> import h2cache
    >>> cfg = h2cache.H2CacheConfig(tau1=0.15, tau2=0.22)
"""

from .calibrate import Calibration, calibrate, stored_calibration
from .config import ConfigField, H2CacheConfig, config_fields
from .apply import H2CacheHandle, apply_h2_cache, is_h2_cache_applied
from .pipelines import generation_defaults, load_pipeline
from .pfs import pfs_distance, pfs_kernel, pfs_thumbnail
from .stages import StageSplit, resolve_stages
from .trace import StepRecord, Trace

__all__ = [
    "Calibration", "ConfigField", "H2CacheConfig", "H2CacheHandle", "StageSplit", "StepRecord", "Trace", "apply_h2_cache",
    "calibrate", "config_fields", "generation_defaults", "is_h2_cache_applied", "load_pipeline", "pfs_distance", "pfs_kernel",
    "pfs_thumbnail", "resolve_stages", "stored_calibration",
]
