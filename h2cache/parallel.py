"""H2-Cache on a context-parallel transformer (diffusers' ``transformer.enable_parallelism``): exact distances.

Under context parallelism each rank of the group runs every block on a shard of the tokens. FLUX's plan
(``FluxTransformer2DModel._cp_plan``) splits both streams along the sequence: rank ``r`` holds the ``r``-th
chunk of the image tokens *and* the ``r``-th chunk of the text tokens, so its detail-stage signal is its own
``[text_r; image_r]``, a different sequence from the global ``[text; image]``. Deciding on the shard would let
the ranks disagree, and a rank that skips blocks while another runs them leaves the attention all-to-alls
unmatched: the group hangs or computes garbage.

:class:`ContextParallelPFS`, the *distance reducer* :func:`h2cache.apply.apply_h2_cache` picks for such a
transformer, makes every rank compute the single-process distance instead. The global thumbnail's rows are
pooling windows of ``k`` consecutive global tokens (``k`` from the *global* token count); each rank pools the
rows that lie wholly in its shard, so that ``sum|ref - cur|`` and ``sum|ref|`` over all rows are sums of
per-rank partial sums, and one all-reduce of those two numbers gives every rank the same distance (the mean's
cell count cancels). Where a window straddles two shards (a shard's token count not a multiple of ``k``; for
the detail stage, a window across the text/image seam of the global sequence), each rank adds its share of
that row's average and one more all-reduce, of just those rows, completes them before the distance is taken.
That row is then counted by the lowest rank holding part of it. A stream the plan does not split (Wan's text)
is the same on every rank and counted by rank 0 alone.

Costs per stage decision: one all-reduce of two floats (plus one of the straddling rows, ``B x rows x C/k``,
only for layouts that have them; plus one all-gather of each rank's two token counts under
``ulysses_anything``/``ring_anything``, whose shards may differ in size). PFS views, when enabled, all-gather
the thumbnail and the per-token magnitudes so that every rank records the global view.

Refused (``ValueError``): H2-Cache applied before ``enable_parallelism`` (at the next call), the option
``forecast_probe_factor`` (its factor would be measured on each rank's part of the thumbnail), and a CP plan
that splits a stream along another axis than its tokens.

The peers in :mod:`h2cache.methods` do not reduce anything; whether their ranks agree depends on what they
decide on. ``fbcache``/``fbcache-guarded`` (diffusers' FirstBlockCache: the first block's residual change) and
``teacache``/``teacache-guarded`` (the first block's modulated-input change) measure the rank's own shard, so
the ranks may skip apart: not safe. ``magcache`` (calibrated ratios and the step count) and ``taylorseer`` (a
fixed schedule) decide the same on every rank; MagCache's calibration measures the shard, so calibrate in one
process. ``seacache`` reads the transformer's input latent in its root hook: registered after
``enable_parallelism``, that hook runs outside diffusers' split hook and sees the whole latent, the same on
every rank. (diffusers' SeaCache votes, an all-reduce MAX of "compute", only for Cosmos 3's ``_cp_shard_fn``.)

Example: the embedded model's detail stage on 2 ranks, as rank 0 sees it (no process group needed). Each rank
holds 8 of the 16 text tokens and 128 of the 256 image tokens; pool size 22 gives k = 272 // 22 = 12, so
window 0 is rank 0's 8 text tokens and 4 of rank 1's, window 1 rank 1's last 4 and rank 0's first 8 image
tokens:
    >>> layout = shard_layout((((8, 8), True), ((128, 128), True)), rank=0, channels=96, pool_size=22)
    >>> layout.kernel, layout.rows, layout.columns, [len(rows) for rows in layout.owned]
    (12, 22, 8, [12, 10])
    >>> layout.shared, layout.parts  # buffer rows 0 and 1 are completed by an all-reduce; rank 0's shares
    ((0, 1), ((0, 8, 0), (8, 16, 1)))
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import unwrap_module

from .config import H2CacheConfig
from .pfs import pfs_kernel

if TYPE_CHECKING:
    from diffusers import ContextParallelConfig

# The streams a block sees, by the transformer argument diffusers' CP plans split them under.
IMAGE_STREAM, TEXT_STREAM = "hidden_states", "encoder_hidden_states"


def context_parallel_config(transformer: torch.nn.Module) -> ContextParallelConfig | None:
    """The transformer's ``ContextParallelConfig`` when it runs context-parallel over more than one rank, else None.

    diffusers records it in ``enable_parallelism`` (``ModelMixin._resolve_parallel_config``) as
    ``transformer._parallel_config.context_parallel_config``, its group as ``_flattened_mesh`` (ring x ulysses).
    """
    parallel = getattr(unwrap_module(transformer), "_parallel_config", None)
    config = getattr(parallel, "context_parallel_config", None)
    mesh = getattr(config, "_flattened_mesh", None)
    return config if mesh is not None and mesh.size() > 1 else None


def refuse_changed_parallelism(transformer: torch.nn.Module, expected: ContextParallelConfig | None) -> None:
    """Raise ``ValueError`` if the transformer's context parallelism is no longer what H2-Cache was applied to."""
    if context_parallel_config(transformer) is not expected:
        raise ValueError("the transformer's context parallelism (enable_parallelism) changed after apply_h2_cache, so "
                         "its ranks would not share their PFS distances: call handle.remove(), then apply_h2_cache "
                         "after enable_parallelism")


def sharded_streams(transformer: torch.nn.Module) -> dict[str, bool]:
    """Which of the image and text streams the installed CP plan splits along the sequence (tokens, dim 1).

    Read from diffusers' split hooks on the model, so a ``cp_plan`` passed to ``enable_parallelism`` counts too.
    A plan that splits a stream along another dimension is refused (``ValueError``): PFS pools along tokens.
    """
    from diffusers.hooks.context_parallel import ContextParallelSplitHook
    from diffusers.models._modeling_parallel import ContextParallelInput

    found = {IMAGE_STREAM: False, TEXT_STREAM: False}
    for module in unwrap_module(transformer).modules():
        registry = getattr(module, "_diffusers_hook", None)
        for hook in (registry.hooks.values() if registry is not None else ()):
            if not isinstance(hook, ContextParallelSplitHook):
                continue
            for name, plan in hook.metadata.items():
                if name not in found or not isinstance(plan, ContextParallelInput):
                    continue
                if plan.split_dim != 1:
                    raise ValueError(f"H2-Cache needs {name!r} split along its tokens (split_dim=1) under context "
                                     f"parallelism; the CP plan splits it along dim {plan.split_dim}")
                found[name] = True
    return found


@dataclass(frozen=True)
class ShardLayout:
    """Where the rows of one stage signal's global PFS thumbnail lie over the ranks, seen from one rank.

    The rank pools its token ranges into a buffer of ``buffer_rows`` rows: ``cores`` are whole windows
    (``(first local token, end, first buffer row)``, average-pooled as one process pools them), ``parts`` its
    share of a window that straddles shards (``(first local token, end, buffer row)``). The ``shared`` buffer
    rows are summed over the group; ``kept`` are the buffer rows this rank counts, in global row order.

    Attributes:
        kernel, rows, columns: the global thumbnail's pooling kernel ``k`` and shape (1 and the residual's own
            shape when unpooled).
        owned: for every rank, the global rows it counts (every row exactly once over the group).
    """

    kernel: int
    rows: int
    columns: int
    cores: tuple[tuple[int, int, int], ...]
    parts: tuple[tuple[int, int, int], ...]
    buffer_rows: int
    shared: tuple[int, ...]
    kept: tuple[int, ...]
    owned: tuple[tuple[int, ...], ...]


@functools.lru_cache(maxsize=256)
def shard_layout(streams: tuple[tuple[tuple[int, ...], bool], ...], rank: int, channels: int,
                 pool_size: int | None) -> ShardLayout:
    """The layout of a signal made of `streams`, each ``(tokens on each rank, split over the ranks?)``, in order.

    The global signal is the streams one after the other, each the concatenation of the ranks' chunks in rank
    order (diffusers' sharders: ``chunk`` / ``tensor_split``); an unsplit stream is whole on every rank and
    counted by rank 0. ``k = max(1, min(N // pool_size, C))`` from the global N; ``pool_size`` None: unpooled.
    """
    world = len(streams[0][0])
    lengths = [sum(sizes) if split else sizes[0] for sizes, split in streams]
    total = sum(lengths)
    k = 1 if pool_size is None else pfs_kernel(total, channels, pool_size)
    rows, columns, counted = total // k, channels // k, total // k * k  # avg_pool drops the tail, as one process

    # Every rank's counted token ranges: (rank, first local token, first global token, length).
    pieces = []
    for q in range(world):
        local, offset = 0, 0
        for (sizes, split), length in zip(streams, lengths):
            start = offset + sum(sizes[:q]) if split else offset
            if split or q == 0:
                pieces.append((q, local, start, max(0, min(sizes[q], counted - start))))
            local, offset = local + sizes[q], offset + length
    pieces = [piece for piece in pieces if piece[3] > 0]
    holders: list[set[int]] = [set() for _ in range(rows)]
    for q, _, start, length in pieces:
        for row in range(start // k, -(-(start + length) // k)):
            holders[row].add(q)
    owner = [min(h) for h in holders]
    shared = [row for row in range(rows) if len(holders[row]) > 1]
    mine = sorted({row for row in range(rows) if rank in holders[row]} | set(shared))
    position = {row: i for i, row in enumerate(mine)}

    cores, parts = [], []
    for q, local, start, length in pieces:
        if q != rank:
            continue
        end = start + length
        whole_from = min(-(-start // k) * k, end)  # the first window that starts in the range ...
        whole_to = max(end // k * k, whole_from)  # ... and the end of the last one that ends in it
        if whole_to > whole_from:
            cores.append((local + whole_from - start, local + whole_to - start, position[whole_from // k]))
        for a, b in ((start, whole_from), (whole_to, end)):
            if b > a:
                parts.append((local + a - start, local + b - start, position[a // k]))
    return ShardLayout(
        kernel=k, rows=rows, columns=columns, cores=tuple(cores), parts=tuple(parts), buffer_rows=len(mine),
        shared=tuple(position[row] for row in shared),
        kept=tuple(position[row] for row in mine if owner[row] == rank),
        owned=tuple(tuple(row for row in range(rows) if owner[row] == q) for q in range(world)))


def pool_shard(signal: torch.Tensor, layout: ShardLayout) -> torch.Tensor:
    """This rank's buffer ``(B, buffer_rows, columns)``, float32: its whole rows, and its share of shared ones."""
    k, columns = layout.kernel, layout.columns
    batch = signal.shape[0]
    buffer = torch.zeros(batch, layout.buffer_rows, columns, dtype=torch.float32, device=signal.device)
    for a, b, row in layout.cores:
        tokens = signal[:, a:b]
        # Pooled as pfs_thumbnail pools (native dtype, then float32), so a whole row matches one process's.
        pooled = tokens.float() if k == 1 else F.avg_pool2d(tokens.unsqueeze(1), kernel_size=k, stride=k)[:, 0].float()
        buffer[:, row:row + (b - a) // k] = pooled
    for a, b, row in layout.parts:
        share = signal[:, a:b, :columns * k].float().reshape(batch, b - a, columns, k).sum(dim=(1, 3))
        buffer[:, row] += share / (k * k)
    return buffer


class ContextParallelPFS:
    """The distance reducer of a context-parallel transformer: thumbnails and distances of the whole signal.

    Every rank's thumbnail holds the global rows it counts (:class:`ShardLayout`); its distance is the global
    ``sum|ref - cur| / sum|ref|``, the same on every rank, equal to one process's up to float rounding.
    """

    def __init__(self, cp_config: ContextParallelConfig, streams: dict[str, bool]) -> None:
        import torch.distributed as dist

        self.cp_config = cp_config
        self.group = cp_config._flattened_mesh.get_group()
        self.rank = dist.get_rank(self.group)  # the shard index diffusers' sharders use
        self.world = dist.get_world_size(self.group)
        self.image_split, self.text_split = streams[IMAGE_STREAM], streams[TEXT_STREAM]
        # The "anything" modes shard with tensor_split: sizes may differ between ranks, so they are gathered.
        self.uneven = bool(cp_config.ulysses_anything or cp_config.ring_anything)
        self._indices: dict[tuple, torch.Tensor] = {}

    def _index(self, rows: tuple[int, ...], device: torch.device) -> torch.Tensor:
        # Made once per layout and device: a fresh one each call would be a host-to-device copy per decision.
        key = (rows, device)
        if key not in self._indices:
            self._indices[key] = torch.tensor(rows, dtype=torch.long, device=device)
        return self._indices[key]

    def check(self, transformer: torch.nn.Module, config: H2CacheConfig) -> None:
        refuse_changed_parallelism(transformer, self.cp_config)
        refuse_options(config)

    def _layout(self, signal: torch.Tensor, text_tokens: int, pool_size: int | None) -> ShardLayout:
        image_tokens = signal.shape[1] - text_tokens
        if self.uneven:
            import torch.distributed as dist

            mine = torch.tensor([text_tokens, image_tokens], dtype=torch.int64, device=signal.device)
            every = [torch.empty_like(mine) for _ in range(self.world)]
            dist.all_gather(every, mine, group=self.group)
            texts, images = zip(*(tuple(int(v) for v in t.tolist()) for t in every))
        else:
            texts, images = (text_tokens,) * self.world, (image_tokens,) * self.world
        streams = ((images, self.image_split),)
        if text_tokens:
            streams = ((texts, self.text_split),) + streams
        return shard_layout(streams, self.rank, signal.shape[2], pool_size)

    @torch.compiler.disable
    def thumbnail(self, signal: torch.Tensor, text_tokens: int, pool_size: int | None) -> torch.Tensor:
        import torch.distributed as dist

        layout = self._layout(signal, text_tokens, pool_size)
        buffer = pool_shard(signal, layout)
        if layout.shared:
            index = self._index(layout.shared, buffer.device)
            straddling = buffer.index_select(1, index)
            dist.all_reduce(straddling, group=self.group)
            buffer.index_copy_(1, index, straddling)
        if len(layout.kept) != layout.buffer_rows:
            buffer = buffer.index_select(1, self._index(layout.kept, buffer.device))
        return buffer if pool_size is None else buffer.unsqueeze(1)

    @torch.compiler.disable
    def distance(self, ref: torch.Tensor, thumb: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        sums = torch.stack([(ref - thumb).abs().sum(), ref.abs().sum()])
        dist.all_reduce(sums, group=self.group)
        num, den = sums[0], sums[1]
        return torch.where(den > 0, num / den,
                           torch.where(num > 0, torch.full_like(num, float("inf")), torch.zeros_like(num)))

    @torch.compiler.disable
    def view(self, signal: torch.Tensor, text_tokens: int, thumb: torch.Tensor,
             pool_size: int | None) -> tuple[torch.Tensor, int, torch.Tensor, int]:
        """The global view on every rank: the first sample's thumbnail and image-token magnitudes, gathered."""
        layout = self._layout(signal, text_tokens, pool_size)
        rows = thumb[0, 0] if thumb.ndim == 4 else thumb[0]
        pieces = self._gather(rows, [len(owned) for owned in layout.owned])
        full = rows.new_zeros(layout.rows, rows.shape[1])
        for owned, piece in zip(layout.owned, pieces):
            full[list(owned)] = piece
        magnitude = signal[0, text_tokens:].detach().abs().float().mean(dim=-1)
        image_tokens, magnitudes = magnitude.shape[0], [magnitude]
        if self.image_split:
            sizes = self._gather(torch.tensor([image_tokens], device=signal.device), [1] * self.world)
            magnitudes = self._gather(magnitude, [int(s) for s in torch.cat(sizes).tolist()])
        magnitude = torch.cat(magnitudes)
        texts = self._global_text(signal, text_tokens)
        # A stand-in (1, N, C) whose per-token mean |.| is the gathered magnitude: what the view keeps of a signal.
        stand_in = torch.cat([magnitude.new_zeros(texts), magnitude])[None, :, None].expand(1, -1, signal.shape[2])
        full = full[None, None] if thumb.ndim == 4 else full[None]
        return stand_in, magnitude.shape[0], full, layout.kernel

    def _global_text(self, signal: torch.Tensor, text_tokens: int) -> int:
        if not text_tokens or not self.text_split:
            return text_tokens
        if not self.uneven:
            return text_tokens * self.world
        sizes = self._gather(torch.tensor([text_tokens], device=signal.device), [1] * self.world)
        return int(torch.cat(sizes).sum())

    def _gather(self, tensor: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
        """Every rank's `tensor`, whose first dimension is ``sizes[rank]`` (padded to the largest for the gather)."""
        import torch.distributed as dist

        largest = max(sizes)
        padded = tensor.new_zeros((largest, *tensor.shape[1:]))
        padded[:tensor.shape[0]] = tensor
        every = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(every, padded.contiguous(), group=self.group)
        return [t[:size] for t, size in zip(every, sizes)]


def refuse_options(config: H2CacheConfig) -> None:
    """Options that cannot run exactly under context parallelism raise ``ValueError``."""
    if config.forecast_residual and config.forecast_probe_factor:
        raise ValueError("H2CacheConfig.forecast_probe_factor measures the forecast factor from the PFS thumbnail, "
                         "which under context parallelism each rank holds only a shard of, so the ranks would add "
                         "different residuals: set forecast_probe_factor=False (forecast_residual alone works)")


def context_parallel_pfs(transformer: torch.nn.Module, config: H2CacheConfig) -> ContextParallelPFS | None:
    """The reducer for a context-parallel `transformer` (refusing options it cannot honour), None for one process."""
    cp_config = context_parallel_config(transformer)
    if cp_config is None:
        return None
    refuse_options(config)
    return ContextParallelPFS(cp_config, sharded_streams(transformer))
