"""A zoo of tiny, randomly initialised diffusers transformers with ready forward inputs.

H2-Cache hooks the block lists of a denoiser transformer, so its tests need every supported
architecture at a size that runs in milliseconds on a CPU. Each :data:`ZOO` entry, keyed by the
diffusers class name, builds the model from an explicit tiny config (seeded, float32, eval mode;
at least 4 blocks, at least 2 per block list, hidden width 32), gives the keyword arguments of one
forward for a batch of 1 (seeded tensors, ``return_dict=False`` where the forward accepts it),
picks the denoiser's main output from the forward's return value, and names the block lists the
cache hooks, in the order the forward runs them.

Example:
    >>> import torch
    >>> entry = ZOO["FluxTransformer2DModel"]
    >>> model = entry.build()
    >>> with torch.no_grad():
    ...     sample = entry.output(model(**entry.inputs(model)))
    >>> tuple(sample.shape), entry.block_lists
    ((1, 16, 16), ('transformer_blocks', 'single_transformer_blocks'))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from diffusers import (
    ChromaTransformer2DModel, CogView4Transformer2DModel, Flux2Transformer2DModel, FluxTransformer2DModel,
    HiDreamImageTransformer2DModel, HunyuanImageTransformer2DModel, HunyuanVideoTransformer3DModel,
    LTXVideoTransformer3DModel, QwenImageTransformer2DModel, SD3Transformer2DModel, WanTransformer3DModel,
    ZImageTransformer2DModel,
)

HEADS = 2
HEAD_DIM = 16  # hidden width HEADS * HEAD_DIM = 32 everywhere
TEXT_DIM = 32  # width of every text-encoder embedding fed to the models
TEXT_LEN = 8  # text tokens; where the forward takes a text mask, the last TEXT_PAD of them are padding
TEXT_PAD = 2
LATENT_CHANNELS = 4
GRID = 4  # image tokens per side after patchify
FRAMES = 2  # latent frames of the video models


@dataclass(frozen=True)
class ZooModel:
    """``build()`` the model; ``inputs(model)`` its forward kwargs; ``output(return_value)`` the sample;
    ``block_lists`` the main ``nn.ModuleList`` attributes in execution order; ``video``: tokens are frames x h x w."""

    build: Callable[[], torch.nn.Module]
    inputs: Callable[[torch.nn.Module], dict[str, Any]]
    output: Callable[[Any], torch.Tensor]
    block_lists: tuple[str, ...]
    video: bool


def _tiny(cls: type[torch.nn.Module], **config: Any) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return cls(**config).eval()  # float32: torch's default dtype
    return build


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _text() -> torch.Tensor:
    return _randn(1, TEXT_LEN, TEXT_DIM, seed=1)


def _text_mask() -> torch.Tensor:
    mask = torch.ones(1, TEXT_LEN, dtype=torch.bool)
    mask[:, TEXT_LEN - TEXT_PAD:] = False
    return mask


def _grid_ids(axes: int, height: int = GRID, width: int = GRID) -> torch.Tensor:
    """Position ids (height * width, axes) of a token grid: row in column 1, column in column 2, zeros elsewhere."""
    ids = torch.zeros(height, width, axes)
    ids[..., 1] = torch.arange(height)[:, None]
    ids[..., 2] = torch.arange(width)[None, :]
    return ids.reshape(height * width, axes)


def _first(output: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return output[0]


def _flux_inputs(model: torch.nn.Module) -> dict[str, Any]:
    return {
        "hidden_states": _randn(1, GRID * GRID, model.config.in_channels, seed=0),
        "encoder_hidden_states": _text(),
        "pooled_projections": _randn(1, model.config.pooled_projection_dim, seed=2),
        "timestep": torch.tensor([0.5]),
        "img_ids": _grid_ids(3),
        "txt_ids": torch.zeros(TEXT_LEN, 3),
        "return_dict": False,
    }


def _flux2_inputs(model: torch.nn.Module) -> dict[str, Any]:
    txt_ids = torch.zeros(TEXT_LEN, 4)
    txt_ids[:, 3] = torch.arange(TEXT_LEN)  # Flux2Pipeline numbers text tokens on the 4th (l) axis
    return {
        "hidden_states": _randn(1, GRID * GRID, model.config.in_channels, seed=0),
        "encoder_hidden_states": _text(),
        "timestep": torch.tensor([0.5]),
        "img_ids": _grid_ids(4),
        "txt_ids": txt_ids,
        "guidance": torch.tensor([4.0]),
        "return_dict": False,
    }


def _qwen_inputs(model: torch.nn.Module) -> dict[str, Any]:
    return {
        "hidden_states": _randn(1, GRID * GRID, model.config.in_channels, seed=0),
        "encoder_hidden_states": _text(),
        "encoder_hidden_states_mask": _text_mask(),
        "timestep": torch.tensor([0.5]),
        "img_shapes": [[(1, GRID, GRID)]],  # (frames, height, width) in tokens, per sample as QwenImagePipeline
        "return_dict": False,
    }


def _hunyuan_video_inputs(model: torch.nn.Module) -> dict[str, Any]:
    p = model.config.patch_size
    return {
        "hidden_states": _randn(1, model.config.in_channels, FRAMES, GRID * p, GRID * p, seed=0),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": _text(),
        "encoder_attention_mask": _text_mask(),
        "pooled_projections": _randn(1, model.config.pooled_projection_dim, seed=2),
        "guidance": torch.tensor([6000.0]),  # HunyuanVideoPipeline passes guidance_scale * 1000
        "return_dict": False,
    }


def _hunyuan_image_inputs(model: torch.nn.Module) -> dict[str, Any]:
    ph, pw = model.config.patch_size
    return {
        "hidden_states": _randn(1, model.config.in_channels, GRID * ph, GRID * pw, seed=0),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": _text(),
        "encoder_attention_mask": _text_mask(),
        "return_dict": False,
    }


def _cogview4_inputs(model: torch.nn.Module) -> dict[str, Any]:
    p = model.config.patch_size
    size = float(GRID * p * 8)  # pixels, as CogView4Pipeline passes (VAE scale factor 8)
    return {
        "hidden_states": _randn(1, model.config.in_channels, GRID * p, GRID * p, seed=0),
        "encoder_hidden_states": _text(),
        "timestep": torch.tensor([500.0]),
        "original_size": torch.tensor([[size, size]]),
        "target_size": torch.tensor([[size, size]]),
        "crop_coords": torch.tensor([[0.0, 0.0]]),
        "return_dict": False,
    }


def _ltx_inputs(model: torch.nn.Module) -> dict[str, Any]:
    return {
        "hidden_states": _randn(1, FRAMES * GRID * GRID, model.config.in_channels, seed=0),
        "encoder_hidden_states": _text(),
        "timestep": torch.tensor([500.0]),
        "encoder_attention_mask": _text_mask(),
        "num_frames": FRAMES,
        "height": GRID,
        "width": GRID,
        "rope_interpolation_scale": (8 / 25, 32.0, 32.0),  # LTXPipeline: (temporal compression / fps, 32, 32)
        "return_dict": False,
    }


def _sd3_inputs(model: torch.nn.Module) -> dict[str, Any]:
    p = model.config.patch_size
    return {
        "hidden_states": _randn(1, model.config.in_channels, GRID * p, GRID * p, seed=0),
        "encoder_hidden_states": _text(),
        "pooled_projections": _randn(1, model.config.pooled_projection_dim, seed=2),
        "timestep": torch.tensor([500.0]),
        "return_dict": False,
    }


def _wan_inputs(model: torch.nn.Module) -> dict[str, Any]:
    pt, ph, pw = model.config.patch_size
    return {
        "hidden_states": _randn(1, model.config.in_channels, FRAMES * pt, GRID * ph, GRID * pw, seed=0),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": _text(),
        "return_dict": False,
    }


def _hidream_inputs(model: torch.nn.Module) -> dict[str, Any]:
    p = model.config.patch_size
    layers = len(model.config.llama_layers)
    return {
        # square latents: the forward patchifies them itself and needs no token mask
        "hidden_states": _randn(1, model.config.in_channels, GRID * p, GRID * p, seed=0),
        "timesteps": torch.tensor([500.0]),
        "encoder_hidden_states_t5": _text(),
        # one hidden state per Llama layer: (layers, batch, tokens, width) as HiDreamImagePipeline stacks them
        "encoder_hidden_states_llama3": _randn(layers, 1, TEXT_LEN, TEXT_DIM, seed=3),
        "pooled_embeds": _randn(1, model.config.text_emb_dim, seed=2),
        "return_dict": False,
    }


def _z_image_inputs(model: torch.nn.Module) -> dict[str, Any]:
    p = model.config.all_patch_size[0]
    return {
        # per-sample lists: latents (channels, frames, height, width) and caption features (tokens, width)
        "x": [_randn(model.config.in_channels, 1, GRID * p, GRID * p, seed=0)],
        "t": torch.tensor([0.5]),
        "cap_feats": [_randn(TEXT_LEN, model.config.cap_feat_dim, seed=1)],
        "patch_size": p,
        "return_dict": False,
    }


def _z_image_output(output: tuple[list[torch.Tensor]]) -> torch.Tensor:
    return torch.stack(output[0])  # one (channels, frames, height, width) tensor per sample


def _chroma_inputs(model: torch.nn.Module) -> dict[str, Any]:
    # ChromaPipeline's mask covers text and image tokens, image tokens always kept
    attention_mask = torch.cat([_text_mask(), torch.ones(1, GRID * GRID, dtype=torch.bool)], dim=1)
    return {
        "hidden_states": _randn(1, GRID * GRID, model.config.in_channels, seed=0),
        "encoder_hidden_states": _text(),
        "timestep": torch.tensor([0.5]),
        "img_ids": _grid_ids(3),
        "txt_ids": torch.zeros(TEXT_LEN, 3),
        "attention_mask": attention_mask,
        "return_dict": False,
    }


_DOUBLE_SINGLE = ("transformer_blocks", "single_transformer_blocks")
_PACKED = LATENT_CHANNELS * 2 * 2  # channels of a 2x2-packed latent token (Flux, Flux2, Qwen-Image, Chroma)

ZOO: dict[str, ZooModel] = {
    "FluxTransformer2DModel": ZooModel(
        build=_tiny(
            FluxTransformer2DModel, in_channels=_PACKED, num_layers=2, num_single_layers=2,
            attention_head_dim=HEAD_DIM, num_attention_heads=HEADS, joint_attention_dim=TEXT_DIM,
            pooled_projection_dim=TEXT_DIM, guidance_embeds=False, axes_dims_rope=(4, 6, 6),
        ),
        inputs=_flux_inputs, output=_first, block_lists=_DOUBLE_SINGLE, video=False,
    ),
    "Flux2Transformer2DModel": ZooModel(
        build=_tiny(
            Flux2Transformer2DModel, in_channels=_PACKED, num_layers=2, num_single_layers=2,
            attention_head_dim=HEAD_DIM, num_attention_heads=HEADS, joint_attention_dim=TEXT_DIM,
            timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=True,
        ),
        inputs=_flux2_inputs, output=_first, block_lists=_DOUBLE_SINGLE, video=False,
    ),
    "QwenImageTransformer2DModel": ZooModel(
        build=_tiny(
            QwenImageTransformer2DModel, in_channels=_PACKED, out_channels=LATENT_CHANNELS, num_layers=4,
            attention_head_dim=HEAD_DIM, num_attention_heads=HEADS, joint_attention_dim=TEXT_DIM,
            axes_dims_rope=(4, 6, 6),
        ),
        inputs=_qwen_inputs, output=_first, block_lists=("transformer_blocks",), video=False,
    ),
    "HunyuanVideoTransformer3DModel": ZooModel(
        # the text token refiner (context_embedder) runs before the block lists and is not listed
        build=_tiny(
            HunyuanVideoTransformer3DModel, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
            num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, num_layers=2, num_single_layers=2,
            num_refiner_layers=1, text_embed_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM,
            rope_axes_dim=(4, 6, 6),
        ),
        inputs=_hunyuan_video_inputs, output=_first, block_lists=_DOUBLE_SINGLE, video=True,
    ),
    "HunyuanImageTransformer2DModel": ZooModel(
        # the text token refiner (context_embedder) runs before the block lists and is not listed
        build=_tiny(
            HunyuanImageTransformer2DModel, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
            num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, num_layers=2, num_single_layers=2,
            num_refiner_layers=1, text_embed_dim=TEXT_DIM, rope_axes_dim=(8, 8),
        ),
        inputs=_hunyuan_image_inputs, output=_first, block_lists=_DOUBLE_SINGLE, video=False,
    ),
    "CogView4Transformer2DModel": ZooModel(
        build=_tiny(
            CogView4Transformer2DModel, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_layers=4,
            attention_head_dim=HEAD_DIM, num_attention_heads=HEADS, text_embed_dim=TEXT_DIM, time_embed_dim=32,
            condition_dim=16, pos_embed_max_size=16, sample_size=16, rope_axes_dim=(16, 16),
        ),
        inputs=_cogview4_inputs, output=_first, block_lists=("transformer_blocks",), video=False,
    ),
    "LTXVideoTransformer3DModel": ZooModel(
        build=_tiny(
            LTXVideoTransformer3DModel, in_channels=8, out_channels=8, num_attention_heads=HEADS,
            attention_head_dim=HEAD_DIM, cross_attention_dim=HEADS * HEAD_DIM, num_layers=4,
            caption_channels=TEXT_DIM,
        ),
        inputs=_ltx_inputs, output=_first, block_lists=("transformer_blocks",), video=True,
    ),
    "SD3Transformer2DModel": ZooModel(
        build=_tiny(
            SD3Transformer2DModel, sample_size=GRID * 2, patch_size=2, in_channels=LATENT_CHANNELS,
            out_channels=LATENT_CHANNELS, num_layers=4, attention_head_dim=HEAD_DIM, num_attention_heads=HEADS,
            joint_attention_dim=TEXT_DIM, caption_projection_dim=HEADS * HEAD_DIM, pooled_projection_dim=TEXT_DIM,
            pos_embed_max_size=16,
        ),
        inputs=_sd3_inputs, output=_first, block_lists=("transformer_blocks",), video=False,
    ),
    "WanTransformer3DModel": ZooModel(
        build=_tiny(
            WanTransformer3DModel, patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=HEAD_DIM,
            in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=64,
            num_layers=4, rope_max_seq_len=32,
        ),
        inputs=_wan_inputs, output=_first, block_lists=("blocks",), video=True,
    ),
    "HiDreamImageTransformer2DModel": ZooModel(
        # llama_layers needs one entry per block (num_layers + num_single_layers): block i reads that Llama layer
        build=_tiny(
            HiDreamImageTransformer2DModel, patch_size=2, in_channels=LATENT_CHANNELS, num_layers=2,
            num_single_layers=2, attention_head_dim=HEAD_DIM, num_attention_heads=HEADS,
            caption_channels=[TEXT_DIM, TEXT_DIM], text_emb_dim=TEXT_DIM, num_routed_experts=2,
            num_activated_experts=2, axes_dims_rope=(8, 4, 4), max_resolution=(GRID * 2, GRID * 2),
            llama_layers=[0, 1, 2, 3],
        ),
        inputs=_hidream_inputs, output=_first, block_lists=("double_stream_blocks", "single_stream_blocks"),
        video=False,
    ),
    "ZImageTransformer2DModel": ZooModel(
        # noise_refiner (image tokens) and context_refiner (caption tokens) run before `layers`, the main
        # list over the joined [image, caption] sequence; only `layers` is listed
        build=_tiny(
            ZImageTransformer2DModel, in_channels=LATENT_CHANNELS, dim=HEADS * HEAD_DIM, n_layers=4,
            n_refiner_layers=1, n_heads=HEADS, n_kv_heads=HEADS, cap_feat_dim=TEXT_DIM, axes_dims=[4, 6, 6],
            axes_lens=[256, 64, 64],
        ),
        inputs=_z_image_inputs, output=_z_image_output, block_lists=("layers",), video=False,
    ),
    "ChromaTransformer2DModel": ZooModel(
        build=_tiny(
            ChromaTransformer2DModel, in_channels=_PACKED, num_layers=2, num_single_layers=2,
            attention_head_dim=HEAD_DIM, num_attention_heads=HEADS, joint_attention_dim=TEXT_DIM,
            axes_dims_rope=(4, 6, 6), approximator_num_channels=16, approximator_hidden_dim=32,
            approximator_layers=2,
        ),
        inputs=_chroma_inputs, output=_first, block_lists=_DOUBLE_SINGLE, video=False,
    ),
}
