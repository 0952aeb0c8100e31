"""Architectures of the embedded model: FLUX.1's layout, scaled down.

Every component is a stock diffusers or transformers class, so the saved
directory loads with ``FluxPipeline.from_pretrained`` like FLUX.1 itself.

Example:
    >>> vae = build_vae()
    >>> vae.config.latent_channels
    16
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast, T5Config, T5EncoderModel

from ..scenes import vocabulary

IMAGE_SIZE = 64  # v1's size; v2 pretrains here, then fine-tunes at its own size
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


@dataclass(frozen=True)
class Architecture:
    """One version of the embedded transformer and the image size it is trained for."""

    name: str
    image_size: int
    double_blocks: int
    single_blocks: int
    heads: int
    guidance_embeds: bool  # True: guidance is an input (distilled), one call per step as on FLUX.1-dev
    head_dim: int = 32
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12)  # sums to head_dim

    @property
    def width(self) -> int:
        return self.heads * self.head_dim

    @property
    def image_tokens(self) -> int:
        return (self.image_size // VAE_FACTOR // 2) ** 2


ARCHITECTURES: dict[str, Architecture] = {
    # The first embedded model: 64 image tokens, 12 blocks, true CFG (two calls per step).
    "v1": Architecture("v1", image_size=64, double_blocks=4, single_blocks=8, heads=4, guidance_embeds=False),
    # FLUX.1-dev in miniature: 256 image tokens at 128x128, 24 blocks in FLUX's 1:2 ratio, guidance distilled
    # into an embedding. Width 96 keeps the transformer near 20 MB and the CPU cost per block low.
    "v2": Architecture("v2", image_size=128, double_blocks=8, single_blocks=16, heads=3, guidance_embeds=True),
}


def build_transformer(arch: Architecture | str = "v1") -> FluxTransformer2DModel:
    """A freshly initialised (seeded) transformer of `arch`'s shape.

    Example:
        >>> build_transformer("v2").config.num_single_layers
        16
    """
    arch = ARCHITECTURES[arch] if isinstance(arch, str) else arch
    torch.manual_seed(SEED)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=LATENT_CHANNELS * 4, num_layers=arch.double_blocks,
        num_single_layers=arch.single_blocks, attention_head_dim=arch.head_dim, num_attention_heads=arch.heads,
        joint_attention_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM, guidance_embeds=arch.guidance_embeds,
        axes_dims_rope=arch.axes_dims_rope,
    )


def build_scheduler(shift: float = 1.0) -> FlowMatchEulerDiscreteScheduler:
    # A fixed shift, the one training used (--timestep-shift), rather than FLUX's resolution-dependent one:
    # the shipped model samples at the one size it was last trained at.
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift, use_dynamic_shifting=False)
