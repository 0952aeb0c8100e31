"""The registry of methods the benchmark compares, under the names users type.

Example:
    >>> [m for m in list_methods()][:6]
    ['none', 'h2cache', 'fbcache', 'teacache', 'magcache', 'taylorseer']
    >>> import torch, h2cache
    >>> pipe = h2cache.load_pipeline()  # the embedded model
    >>> pipe.set_progress_bar_config(disable=True)
    >>> handle = apply_method(pipe, "fbcache", threshold=0.3)
    >>> image = pipe("a large red circle at the center on a plain blue background",
    ...              **{**h2cache.generation_defaults(pipe), "num_inference_steps": 8},
    ...              generator=torch.Generator().manual_seed(0)).images[0]
    >>> handle.trace.blocks_share() < 1
    True
    >>> handle.remove()
"""

from __future__ import annotations

from typing import Any

from ..config import ConfigField, config_fields
from .base import ApplyContext, Attachment, Method, MethodHandle
from .diffusers_caches import attach_fbcache, attach_magcache, attach_taylorseer
from .fbcache_guarded import attach_fbcache_guarded
from .guards import GUARD_SETTINGS
from .h2 import attach_h2cache
from .h2_guarded import attach_h2cache_guarded
from .seacache import SEACACHE_GRID, SEACACHE_SETTINGS, SEACACHE_SUMMARY, attach_seacache
from .settings import Setting
from .teacache_attach import attach_teacache, attach_teacache_guarded

INF = None  # an open upper bound


def _attach_none(settings: dict[str, Any], context: ApplyContext) -> Attachment:
    return Attachment(remove=lambda: None, description="uncached")


# The H2CacheConfig roles the benchmark's `h2cache` method offers as settings; all but the published ones are
# labelled with their role in the help.
_OFFERED_ROLES = ("published", "ablation", "option", "experimental")


def _config_setting(f: ConfigField) -> Setting:
    """A benchmark setting straight from H2CacheConfig's declaration of the field (same default and range)."""
    role = f"{f.role}: " if f.role != "published" else ""
    # The config says "None (unbounded)"; a benchmark setting's help adds "or none (...)" itself.
    none_means = f.none_means and (f.none_means.removeprefix("None").strip(" ()") or f.none_means)
    return Setting(f.name, f.kind, f.default, f.low, INF, role + f.help, none_means=none_means)


_H2 = {f.name: _config_setting(f) for f in config_fields() if f.role in _OFFERED_ROLES}
_TAU1, _TAU2, _POOL1, _POOL2 = (_H2[f.name] for f in config_fields("published"))
_H2_GRID = {"tau1": (0.05, 0.1, 0.15, 0.25, 0.4), "tau2": (0.1, 0.22, 0.4)}

METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


register(Method("none", "uncached baseline", (), {}, _attach_none))
register(Method(
    "h2cache", "H2-Cache: two-stage residual reuse gated by PFS distances (this project)",
    tuple(_H2.values()),
    _H2_GRID, attach_h2cache))
_FBC_THRESHOLD = Setting("threshold", float, 0.05, 0.0, INF, "relative L1 threshold on the first block's residual")
_FBC_GRID = {"threshold": (0.02, 0.05, 0.08, 0.12, 0.2, 0.3)}
_TEA_THRESHOLD = Setting("threshold", float, 0.4, 0.0, INF, "accumulated rescaled relative L1 threshold")
_TEA_GRID = {"threshold": (0.1, 0.25, 0.4, 0.6, 0.8, 1.2)}
_MAG_SETTINGS = (Setting("threshold", float, 0.06, 0.0, INF, "accumulated magnitude error threshold"),
                 Setting("max_skip_steps", int, 3, 1, INF, "most consecutive skipped steps"),
                 Setting("retention_ratio", float, 0.2, 0.0, 1.0, "share of initial steps never skipped"))
_MAG_GRID = {"threshold": (0.02, 0.06, 0.12, 0.24, 0.5)}
register(Method("fbcache", "diffusers FirstBlockCache (transformer.enable_cache)", (_FBC_THRESHOLD,), _FBC_GRID,
                attach_fbcache))
register(Method(
    "teacache", "TeaCache for FLUX: accumulated rescaled change of the modulated input (implemented here)",
    (_TEA_THRESHOLD,), _TEA_GRID, attach_teacache, calibration="teacache"))
register(Method("magcache", "diffusers MagCache with ratios calibrated on the model (averaged over cond/uncond)",
                _MAG_SETTINGS, _MAG_GRID, attach_magcache, calibration="magcache"))
register(Method(
    "taylorseer", "diffusers TaylorSeer: Taylor-extrapolated attention outputs between full steps",
    (Setting("cache_interval", int, 5, 1, INF, "steps between full computations"),
     Setting("disable_cache_before_step", int, 3, 0, INF, "warm-up steps always computed"),
     Setting("max_order", int, 1, 0, 4, "order of the Taylor expansion"),
     Setting("lite", bool, False, help="lite mode: skip whole blocks, extrapolate proj_out")),
    {"cache_interval": (2, 3, 4, 6)}, attach_taylorseer))
register(Method("seacache", SEACACHE_SUMMARY, SEACACHE_SETTINGS, SEACACHE_GRID, attach_seacache))
# Ablations of H2-Cache, as methods so that they get their own curves.
register(Method(
    "h2cache-no-pfs", "ablation: H2-Cache deciding on unpooled residuals (PFS off)",
    (_TAU1, _TAU2), _H2_GRID, attach_h2cache, fixed={"full_residual_distance": True}))
register(Method(
    "h2cache-independent-stage2", "ablation: H2-Cache without the forced stage-2 hit",
    (_TAU1, _TAU2, _POOL1, _POOL2), _H2_GRID, attach_h2cache, fixed={"independent_stage2": True}))
# The proposed changes to the method (H2CacheConfig options), measured against the default.
register(Method(
    "h2cache-guarded", "proposal: H2-Cache + full compute of the first steps, the last step, and after K reusing calls",
    (_TAU1, _TAU2, _POOL1, _POOL2, *GUARD_SETTINGS), _H2_GRID, attach_h2cache_guarded))


def _register_with_and_without_guards(suffix: str, option: str, summary: str, guarded_summary: str,
                                      extra: tuple[Setting, ...] = ()) -> None:
    """``h2cache-<suffix>`` and ``h2cache-guarded-<suffix>``: H2-Cache with the boolean `option` on, alone and
    with the proposal's guards, so that what the option adds can be told apart from what the guards add.
    `extra` are settings of the option that both methods offer."""
    base = (_TAU1, _TAU2, _POOL1, _POOL2, *extra)
    register(Method(f"h2cache-{suffix}", summary, base, _H2_GRID, attach_h2cache, fixed={option: True}))
    register(Method(f"h2cache-guarded-{suffix}", guarded_summary, (*base, *GUARD_SETTINGS),
                    _H2_GRID, attach_h2cache_guarded, fixed={option: True}))


_register_with_and_without_guards(
    "one-probe", "skip_stage2_probe_on_hit",
    "proposal: H2-Cache whose stage-1 hits skip stage 2's probe (one block per hit)",
    "proposal: both changes, the guards and one probe per stage-1 hit")
# Experimental (issue "Beyond the paper"): replayed residuals replaced by a per-stage linear forecast.
_register_with_and_without_guards(
    "forecast", "forecast_residual",
    "experimental: H2-Cache whose hits add each stage's residual forecast from its last two misses",
    "experimental: the forecast with the proposal's guards",
    extra=(_H2["forecast_probe_factor"],))
# The peers with the same guards (h2cache.methods.guards), so that what the guards buy can be told apart
# from what H2-Cache's two stages buy; and MagCache with ratios per cache context.
register(Method(
    "fbcache-guarded", "FirstBlockCache + the proposal's guards (warm-up steps, cap on reuse in a row, final steps)",
    (_FBC_THRESHOLD, *GUARD_SETTINGS), _FBC_GRID, attach_fbcache_guarded))
register(Method(
    "teacache-guarded", "TeaCache + the proposal's guards (warm-up steps, cap on skips in a row, final steps)",
    (_TEA_THRESHOLD, *GUARD_SETTINGS), _TEA_GRID, attach_teacache_guarded, calibration="teacache"))
register(Method(
    "magcache-per-context", "MagCache with ratios calibrated per cache context (cond / uncond) instead of averaged",
    _MAG_SETTINGS, _MAG_GRID, attach_magcache, fixed={"per_context_ratios": True}, calibration="magcache"))


# What a user chooses between: a family (one caching method) and its presets. Each preset is a registered
# method, so its registry name keeps working; "family/preset" names it too, and the family alone is its
# first preset.
FAMILIES: dict[str, dict[str, str]] = {
    "none": {"uncached": "none"},
    "h2cache": {"published": "h2cache", "guarded": "h2cache-guarded", "one-probe": "h2cache-one-probe",
                "guarded-one-probe": "h2cache-guarded-one-probe", "forecast": "h2cache-forecast",
                "guarded-forecast": "h2cache-guarded-forecast", "ablation-no-pfs": "h2cache-no-pfs",
                "ablation-independent-stage2": "h2cache-independent-stage2"},
    "fbcache": {"published": "fbcache", "guarded": "fbcache-guarded"},
    "teacache": {"published": "teacache", "guarded": "teacache-guarded"},
    "magcache": {"published": "magcache", "per-context": "magcache-per-context"},
    "taylorseer": {"published": "taylorseer"},
    "seacache": {"published": "seacache"},
}
ALIASES = {f"{family}/{preset}": name for family, presets in FAMILIES.items() for preset, name in presets.items()}


def list_methods() -> list[str]:
    return list(METHODS)


def list_families() -> dict[str, dict[str, str]]:
    """family -> {preset: registered method name}, in the order users see them.

    Example:
        >>> list(list_families())
        ['none', 'h2cache', 'fbcache', 'teacache', 'magcache', 'taylorseer', 'seacache']
        >>> get_method("fbcache/guarded").name
        'fbcache-guarded'
    """
    return {family: dict(presets) for family, presets in FAMILIES.items()}


def get_method(name: str) -> Method:
    """A method by its registry name or its ``family/preset`` name."""
    try:
        return METHODS[ALIASES.get(name, name)]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from: {', '.join(METHODS)} "
                         f"(or family/preset: {', '.join(ALIASES)})") from None


def apply_method(pipe_or_transformer: Any, name: str, **kwargs: Any) -> MethodHandle:
    """Apply a method by name (or ``family/preset``); see :meth:`Method.apply` for the keyword arguments."""
    return get_method(name).apply(pipe_or_transformer, **kwargs)
