"""The two seams of H2-Cache's hooks (:mod:`h2cache.hooks`), each with the published method's implementation.

The hooks run the paper's algorithm and call out at two points where an extension may differ from it, so that
an extension lives in a module of its own and the published path never branches on it:

- the *residual source* (:class:`ResidualSource`): what a stage hit adds. :class:`Replay` adds the residual
  cached at the stage's last miss, as the paper does; the experimental forecast
  (``H2CacheConfig.forecast_residual``) is :class:`h2cache.forecast.ForecastSource`. :func:`residual_source`
  picks one from the config.
- the *distance reducer* (:class:`DistanceReducer`): where PFS's thumbnail and distance are computed.
  :class:`LocalPFS` computes them in this process, as :mod:`h2cache.pfs` does; over the ranks of a
  context-parallel transformer, each holding a shard of the tokens, it is
  :class:`h2cache.parallel.ContextParallelPFS`, which :func:`h2cache.apply.apply_h2_cache` picks there.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .block_io import Streams
from .config import H2CacheConfig
from .parallel import refuse_changed_parallelism
from .pfs import pfs_distance, pfs_kernel, pfs_thumbnail


class ResidualSource(Protocol):
    """The seam for what a stage hit adds: told each miss's residual, asked for a hit's."""

    needs_forced_thumbnail: bool  # pool the detail probe's thumbnail on forced hits too

    def remember(self, stage: int, residual: Streams, step: int, thumb: torch.Tensor | None) -> None: ...

    def for_hit(self, stage: int, cached: Streams, step: int, thumb: torch.Tensor | None) -> Streams: ...


class Replay:
    """The published residual source: a hit adds the residual cached at the stage's last miss, unchanged."""

    needs_forced_thumbnail = False

    def remember(self, stage: int, residual: Streams, step: int, thumb: torch.Tensor | None) -> None:
        pass

    def for_hit(self, stage: int, cached: Streams, step: int, thumb: torch.Tensor | None) -> Streams:
        return cached


def residual_source(config: H2CacheConfig) -> ResidualSource:
    """The residual source `config` asks for; a new one per cache context and pipeline call."""
    if config.forecast_residual:
        from .forecast import ForecastSource

        return ForecastSource(probe_factor=config.forecast_probe_factor)
    return Replay()


class DistanceReducer(Protocol):
    """The seam for where PFS runs: asked for a probe signal's thumbnail and for the distance of two.

    A signal is ``(B, N, C)``: ``text_tokens`` text tokens, then image tokens; ``pool_size`` None compares it
    unpooled (``full_residual_distance``). :meth:`view` gives what a PFS view records: the signal (or a stand-in
    with its per-token magnitudes), its image tokens, the thumbnail and the kernel.
    """

    def check(self, transformer: torch.nn.Module, config: H2CacheConfig) -> None: ...

    def thumbnail(self, signal: torch.Tensor, text_tokens: int, pool_size: int | None) -> torch.Tensor: ...

    def distance(self, ref: torch.Tensor, thumb: torch.Tensor) -> torch.Tensor: ...

    def view(self, signal: torch.Tensor, text_tokens: int, thumb: torch.Tensor,
             pool_size: int | None) -> tuple[torch.Tensor, int, torch.Tensor, int]: ...


class LocalPFS:
    """The published reducer: the whole signal is in this process, so PFS is :mod:`h2cache.pfs` as it is."""

    def check(self, transformer: torch.nn.Module, config: H2CacheConfig) -> None:
        # Parallelism enabled after apply_h2_cache would make every rank decide on its own shard.
        refuse_changed_parallelism(transformer, None)

    def thumbnail(self, signal: torch.Tensor, text_tokens: int, pool_size: int | None) -> torch.Tensor:
        return signal.float() if pool_size is None else pfs_thumbnail(signal, pool_size)

    def distance(self, ref: torch.Tensor, thumb: torch.Tensor) -> torch.Tensor:
        return pfs_distance(ref, thumb)

    def view(self, signal: torch.Tensor, text_tokens: int, thumb: torch.Tensor,
             pool_size: int | None) -> tuple[torch.Tensor, int, torch.Tensor, int]:
        _, n, c = signal.shape
        return signal, n - text_tokens, thumb, 1 if pool_size is None else pfs_kernel(n, c, pool_size)
