"""Architectures of the embedded model: FLUX.1's layout, scaled down.

Every component is a stock diffusers or transformers class, so the saved
directory loads with ``FluxPipeline.from_pretrained`` like FLUX.1 itself.

Example:
    >>> vae = build_vae()
    >>> vae.config.latent_channels
    16
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast, T5Config, T5EncoderModel

from ..scenes import vocabulary

IMAGE_SIZE = 64
VAE_FACTOR = 4  # len(block_out_channels) == 3 gives 2**2 downsampling
LATENT_CHANNELS = 16
TEXT_DIM = 64
CLIP_MAX_LENGTH = 16
T5_MAX_LENGTH = 16  # longest scene prompt is 13 words plus </s>
SEED = 0

SPECIAL_TOKENS = ["<pad>", "<unk>", "</s>", "<s>"]


def build_tokenizer(max_length: int, bos: bool) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the scene vocabulary (CLIP-style with <s>, T5-style without)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in vocabulary():
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    template = "<s> $A </s>" if bos else "$A </s>"
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
    )
    kwargs = {"bos_token": "<s>"} if bos else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>",
        model_max_length=max_length, **kwargs,
    )


def build_text_encoders() -> tuple[CLIPTextModel, T5EncoderModel]:
    """Tiny CLIP and T5 encoders; they stay at their seeded random init (frozen)."""
    vocab_size = len(SPECIAL_TOKENS) + len(vocabulary())
    torch.manual_seed(SEED)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=2 * TEXT_DIM,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=CLIP_MAX_LENGTH + 2,
        pad_token_id=0, bos_token_id=3, eos_token_id=2, projection_dim=TEXT_DIM,
    ))
    t5 = T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=16, d_ff=2 * TEXT_DIM, num_layers=2,
        num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=2,
        decoder_start_token_id=0, feed_forward_proj="gated-gelu",
    ))
    return clip.eval().requires_grad_(False), t5.eval().requires_grad_(False)


def build_vae() -> AutoencoderKL:
    torch.manual_seed(SEED)
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1, latent_channels=LATENT_CHANNELS,
        norm_num_groups=16, sample_size=IMAGE_SIZE, mid_block_add_attention=False,
        use_quant_conv=False, use_post_quant_conv=False,
    )


def build_transformer() -> FluxTransformer2DModel:
    """4 double-stream + 8 single-stream blocks, FLUX.1's 1:2 ratio, hidden size 128."""
    torch.manual_seed(SEED)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=LATENT_CHANNELS * 4, num_layers=4, num_single_layers=8,
        attention_head_dim=32, num_attention_heads=4, joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=TEXT_DIM, guidance_embeds=False, axes_dims_rope=(8, 12, 12),
    )


def build_scheduler() -> FlowMatchEulerDiscreteScheduler:
    # No resolution-dependent shift: the model is trained at one size.
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
