"""How a transformer splits into H2-Cache's structure stage (1) and detail stage (2): the model table.

:data:`MODEL_TABLE` names, for every supported diffusers transformer class, the block lists that form the
two stages. Two-list models (FLUX.1 and its relatives): stage 1 is the double-stream list, stage 2 the
single-stream list. Single-list models: the one list split at ``stage_split``, half by default. A stage's
probe compares the image stream's residual (stage 1) or the text and image streams together where the
block returns both (stage 2); blocks whose only output is one stream compare that one. Video models'
tokens are frames x height x width, flattened frame by frame: PFS pools along that order, so a kernel of
k tokens averages neighbours within a row of one frame.

Classes that derive from a table entry are supported through it. Anything else gets a ``ValueError``
naming its class and the supported ones.

:data:`STAGES` holds what tells the two stages apart once the blocks are split (which threshold and pool
size, which streams the probe compares, whether a structure hit carries over, where the trace records the
decision), so that the hooks of :mod:`h2cache.hooks` never branch on a stage index.

Example:
    >>> from diffusers import FluxTransformer2DModel
    >>> t = FluxTransformer2DModel(num_layers=2, num_single_layers=4, attention_head_dim=8,
    ...                            num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16,
    ...                            axes_dims_rope=(2, 2, 4))
    >>> split = resolve_stages(t)
    >>> (len(split.stage1), len(split.stage2), split.stage1_name, split.stage2_name)
    (2, 4, 'transformer_blocks', 'single_transformer_blocks')
    >>> MODEL_TABLE["WanTransformer3DModel"]
    ModelLayout(stage1='blocks', stage2=None, video=True)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

if TYPE_CHECKING:
    from .trace import StepRecord


@dataclass(frozen=True)
class ModelLayout:
    """The block lists of one transformer class: ``stage2`` None means "split ``stage1`` in two"."""

    stage1: str
    stage2: str | None = None
    video: bool = False


MODEL_TABLE: dict[str, ModelLayout] = {
    # Two lists: double-stream blocks form stage 1, single-stream blocks stage 2.
    "FluxTransformer2DModel": ModelLayout("transformer_blocks", "single_transformer_blocks"),
    "Flux2Transformer2DModel": ModelLayout("transformer_blocks", "single_transformer_blocks"),
    "ChromaTransformer2DModel": ModelLayout("transformer_blocks", "single_transformer_blocks"),
    "HunyuanImageTransformer2DModel": ModelLayout("transformer_blocks", "single_transformer_blocks"),
    "HunyuanVideoTransformer3DModel": ModelLayout("transformer_blocks", "single_transformer_blocks", video=True),
    "HiDreamImageTransformer2DModel": ModelLayout("double_stream_blocks", "single_stream_blocks"),
    # One list, split at stage_split (half by default).
    "SD3Transformer2DModel": ModelLayout("transformer_blocks"),
    "QwenImageTransformer2DModel": ModelLayout("transformer_blocks"),
    "CogView4Transformer2DModel": ModelLayout("transformer_blocks"),
    "LTXVideoTransformer3DModel": ModelLayout("transformer_blocks", video=True),
    "WanTransformer3DModel": ModelLayout("blocks", video=True),
    # Z-Image's refiner lists run before `layers` and are left alone.
    "ZImageTransformer2DModel": ModelLayout("layers"),
}


@functools.cache  # once per process: resolve_stages runs per app request
def _register_missing_block_metadata() -> None:
    """Tell diffusers' block registry what it lacks for the table's models.

    Chroma's blocks are not registered; HiDream's lists hold ``HiDreamBlock`` wrappers, which are not
    either (the wrapper returns (image, text) around a double-stream block and the image stream alone
    around a single-stream one; the hooks handle both); Z-Image's block takes its input as ``x``, not
    ``hidden_states`` as its registered metadata says.
    """
    from diffusers.models.transformers.transformer_chroma import ChromaSingleTransformerBlock, ChromaTransformerBlock
    from diffusers.models.transformers.transformer_hidream_image import HiDreamBlock
    from diffusers.models.transformers.transformer_z_image import ZImageTransformerBlock

    wanted = {
        ChromaTransformerBlock: TransformerBlockMetadata(return_hidden_states_index=1, return_encoder_hidden_states_index=0),
        ChromaSingleTransformerBlock: TransformerBlockMetadata(return_hidden_states_index=0),
        HiDreamBlock: TransformerBlockMetadata(return_hidden_states_index=0, return_encoder_hidden_states_index=1),
        ZImageTransformerBlock: TransformerBlockMetadata(return_hidden_states_index=0, hidden_states_argument_name="x"),
    }
    for block_class, metadata in wanted.items():
        try:
            known = TransformerBlockRegistry.get(block_class)
        except ValueError:
            known = None
        if known is None or known.hidden_states_argument_name != metadata.hidden_states_argument_name:
            TransformerBlockRegistry.register(block_class, metadata)


def model_layout(transformer: torch.nn.Module) -> tuple[str, ModelLayout]:
    """(table key, layout) of `transformer`'s class or the nearest table class it derives from.

    Raises:
        ValueError: the class is not in :data:`MODEL_TABLE`; the message lists the supported classes.
    """
    for cls in type(transformer).__mro__:
        if cls.__name__ in MODEL_TABLE:
            return cls.__name__, MODEL_TABLE[cls.__name__]
    raise ValueError(
        f"H2-Cache does not know how to split {type(transformer).__name__} into two stages; supported: "
        f"{', '.join(sorted(MODEL_TABLE))}. Add its block lists to h2cache.stages.MODEL_TABLE."
    )


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
    """Find the two stages of `transformer` (see :data:`MODEL_TABLE`) without modifying it.

    Raises:
        TypeError: `transformer` is not a ``torch.nn.Module``.
        ValueError: a class not in the table, missing or empty block lists, or `stage_split` out of range.
    """
    if not isinstance(transformer, torch.nn.Module):
        raise TypeError(f"expected a diffusers transformer (torch.nn.Module), got {type(transformer).__name__}")
    kind = type(transformer).__name__
    _, layout = model_layout(transformer)
    _register_missing_block_metadata()
    first = _block_list(transformer, layout.stage1)
    if first is None:
        raise ValueError(f"{kind} has no non-empty torch.nn.ModuleList '{layout.stage1}' for H2-Cache's stage 1")
    if layout.stage2 is not None:
        second = _block_list(transformer, layout.stage2)
        if second is None:
            raise ValueError(f"{kind} has no non-empty torch.nn.ModuleList '{layout.stage2}' for H2-Cache's stage 2")
        if stage_split is not None:
            raise ValueError(
                f"H2CacheConfig.stage_split must be None for {kind}: its stages are fixed as "
                f"{layout.stage1} ({len(first)}) and {layout.stage2} ({len(second)})"
            )
        _check_known(first + second, kind)
        return StageSplit(first, second, layout.stage1, layout.stage2)
    n = len(first)
    if n < 2:
        raise ValueError(f"{kind} has {n} block; H2-Cache needs at least 2 to form two stages")
    split = n // 2 if stage_split is None else stage_split
    if not 1 <= split <= n - 1:
        raise ValueError(
            f"H2CacheConfig.stage_split must be between 1 and {n - 1} for {kind} ({n} blocks), got {split}"
        )
    _check_known(first, kind)
    name = layout.stage1
    return StageSplit(first[:split], first[split:], f"{name}[0:{split}]", f"{name}[{split}:{n}]")


@dataclass(frozen=True)
class StageSpec:
    """What tells the paper's two stages apart, as data, so that the hooks never branch on a stage index.

    Attributes:
        index: 0 for the structure stage, 1 for the detail stage (``number`` counts from 1, as the paper does).
        threshold, pool_size: the :class:`H2CacheConfig` fields of its threshold and PFS pool size.
        joint_signal: the probe signal is ``[text; image]`` residuals (detail), or the image stream alone.
        follows_structure: a structure-stage hit makes this stage hit too (unless ``independent_stage2``).
        distance_field, hit_field, forced_field: where its decision goes in a :class:`StepRecord`.
    """

    index: int
    threshold: str
    pool_size: str
    joint_signal: bool
    follows_structure: bool
    distance_field: str
    hit_field: str
    forced_field: str | None

    @property
    def number(self) -> int:
        return self.index + 1

    def record(self, record: StepRecord, distance: float | None, hit: bool, forced: bool) -> None:
        setattr(record, self.distance_field, distance)
        setattr(record, self.hit_field, hit)
        if self.forced_field:
            setattr(record, self.forced_field, forced)


STAGES = (
    StageSpec(0, "tau1", "pool_size_stage1", joint_signal=False, follows_structure=False,
              distance_field="d1", hit_field="hit1", forced_field=None),
    StageSpec(1, "tau2", "pool_size_stage2", joint_signal=True, follows_structure=True,
              distance_field="d2", hit_field="hit2", forced_field="forced2"),
)
