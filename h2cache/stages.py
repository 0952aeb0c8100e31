"""How a transformer splits into H2-Cache's structure stage (1) and detail stage (2).

Two-list models (``FluxTransformer2DModel``): stage 1 is ``transformer_blocks``
(double stream), stage 2 is ``single_transformer_blocks``. Single-list models
(``SD3Transformer2DModel``): ``transformer_blocks`` split at ``stage_split``,
half by default.

Example:
    >>> from diffusers import FluxTransformer2DModel
    >>> t = FluxTransformer2DModel(num_layers=2, num_single_layers=4, attention_head_dim=8,
    ...                            num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16,
    ...                            axes_dims_rope=(2, 2, 4))
    >>> split = resolve_stages(t)
    >>> (len(split.stage1), len(split.stage2), split.stage1_name, split.stage2_name)
    (2, 4, 'transformer_blocks', 'single_transformer_blocks')
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.hooks._helpers import TransformerBlockRegistry


@dataclass(frozen=True)
class StageSplit:
    stage1: list[torch.nn.Module]
    stage2: list[torch.nn.Module]
    stage1_name: str  # human-readable origin, e.g. 'transformer_blocks[0:12]'
    stage2_name: str

    @property
    def blocks_total(self) -> int:
        return len(self.stage1) + len(self.stage2)

    def describe(self) -> str:
        return (f"stage 1 (structure): {len(self.stage1)} blocks of {self.stage1_name}; "
                f"stage 2 (detail): {len(self.stage2)} blocks of {self.stage2_name}")


def _block_list(module: torch.nn.Module, name: str) -> list[torch.nn.Module] | None:
    blocks = getattr(module, name, None)
    if isinstance(blocks, torch.nn.ModuleList) and len(blocks) > 0:
        return list(blocks)
    return None


def _check_known(blocks: list[torch.nn.Module], where: str) -> None:
    for block in blocks:
        try:
            TransformerBlockRegistry.get(type(block))
        except ValueError:
            raise ValueError(
                f"{where} holds {type(block).__name__}, a block type diffusers has no metadata for; "
                "H2-Cache needs to know which outputs are the image and text streams"
            ) from None


def resolve_stages(transformer: torch.nn.Module, stage_split: int | None = None) -> StageSplit:
    """Find the two stages of `transformer` without modifying it.

    Raises:
        TypeError: `transformer` is not a ``torch.nn.Module``.
        ValueError: no block list H2-Cache understands, or `stage_split` out of range.
    """
    if not isinstance(transformer, torch.nn.Module):
        raise TypeError(f"expected a diffusers transformer (torch.nn.Module), got {type(transformer).__name__}")
    kind = type(transformer).__name__
    double = _block_list(transformer, "transformer_blocks")
    single = _block_list(transformer, "single_transformer_blocks")
    if double and single:
        if stage_split is not None:
            raise ValueError(
                f"H2CacheConfig.stage_split must be None for {kind}: its stages are fixed as "
                f"transformer_blocks ({len(double)}) and single_transformer_blocks ({len(single)})"
            )
        _check_known(double + single, kind)
        return StageSplit(double, single, "transformer_blocks", "single_transformer_blocks")
    if double and not single:
        n = len(double)
        if n < 2:
            raise ValueError(f"{kind} has {n} block; H2-Cache needs at least 2 to form two stages")
        split = n // 2 if stage_split is None else stage_split
        if not 1 <= split <= n - 1:
            raise ValueError(
                f"H2CacheConfig.stage_split must be between 1 and {n - 1} for {kind} ({n} blocks), got {split}"
            )
        _check_known(double, kind)
        return StageSplit(double[:split], double[split:], f"transformer_blocks[0:{split}]", f"transformer_blocks[{split}:{n}]")
    raise ValueError(
        f"{kind} has no block list H2-Cache understands: expected 'transformer_blocks' "
        "(and optionally 'single_transformer_blocks') as non-empty torch.nn.ModuleList"
    )
