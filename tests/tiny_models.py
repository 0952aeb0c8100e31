"""Tiny, randomly initialised pipelines built from configs (no downloads) for the tests."""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel,
    SD3Transformer2DModel, StableDiffusion3Pipeline,
)
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from embedded_model.training.components import build_text_encoders, build_tokenizer


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=16, norm_num_groups=8, use_quant_conv=False, use_post_quant_conv=False,
        mid_block_add_attention=False, shift_factor=0.0,
    )


def tiny_flux_transformer(double: int = 3, single: int = 4) -> FluxTransformer2DModel:
    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=double, num_single_layers=single, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),
    )


def tiny_flux_pipeline(double: int = 3, single: int = 4) -> FluxPipeline:
    clip, t5 = build_text_encoders()
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False), vae=tiny_vae(),
        text_encoder=clip, tokenizer=build_tokenizer(16, bos=True), text_encoder_2=t5,
        tokenizer_2=build_tokenizer(16, bos=False), transformer=tiny_flux_transformer(double, single),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3_transformer(layers: int = 6) -> SD3Transformer2DModel:
    torch.manual_seed(0)
    return SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=16, num_layers=layers, attention_head_dim=16,
        num_attention_heads=2, caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=128,
        out_channels=16,
    )


def tiny_sd3_pipeline(layers: int = 6) -> StableDiffusion3Pipeline:
    def clip(seed: int) -> CLIPTextModelWithProjection:
        torch.manual_seed(seed)
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=20, pad_token_id=0, bos_token_id=3, eos_token_id=2, projection_dim=64,
        )).eval()

    _, t5 = build_text_encoders()
    pipe = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), vae=tiny_vae(),
        text_encoder=clip(1), tokenizer=build_tokenizer(16, bos=True),
        text_encoder_2=clip(2), tokenizer_2=build_tokenizer(16, bos=True),
        text_encoder_3=t5, tokenizer_3=build_tokenizer(16, bos=False), transformer=tiny_sd3_transformer(layers),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
