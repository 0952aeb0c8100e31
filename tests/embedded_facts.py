"""What the tests may assume about the embedded model, read from its files instead of restated in each test.

The shipped model changes (v1: 64x64, 12 blocks, true CFG; v2: 128x128, 24 blocks, distilled guidance), and
``H2CACHE_EMBEDDED_MODEL`` can point the tests at another one; every shape, block count and context a test
checks comes from here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from h2cache.pipelines import EMBEDDED_MODEL_DIR


def find_embedded_model() -> Path:
    """The directory the library loads as the embedded model (H2CACHE_EMBEDDED_MODEL, else assets/)."""
    return EMBEDDED_MODEL_DIR


@dataclass(frozen=True)
class EmbeddedFacts:
    size: int  # the default height and width (generation_defaults.json)
    steps: int  # the default step count
    text_tokens: int  # max_sequence_length: the text tokens stage 2 compares beside the image tokens
    double_blocks: int
    single_blocks: int
    width: int  # channels of the hidden states (heads x head dim)
    latent_factor: int  # pixels per image token along one side: VAE downsampling x FLUX's 2x2 packing
    contexts: tuple[str, ...]  # the cache contexts of one default call: one under distilled guidance, two under true CFG

    @property
    def blocks(self) -> int:
        return self.double_blocks + self.single_blocks

    def image_tokens(self, size: int | None = None) -> int:
        return ((size or self.size) // self.latent_factor) ** 2


def embedded_facts(model_dir: Path | None = None) -> EmbeddedFacts:
    model_dir = Path(model_dir or find_embedded_model())
    transformer = json.loads((model_dir / "transformer" / "config.json").read_text())
    vae = json.loads((model_dir / "vae" / "config.json").read_text())
    defaults = json.loads((model_dir / "generation_defaults.json").read_text())
    true_cfg = defaults.get("true_cfg_scale", 1.0) > 1
    return EmbeddedFacts(
        size=defaults["height"], steps=defaults["num_inference_steps"], text_tokens=defaults["max_sequence_length"],
        double_blocks=transformer["num_layers"], single_blocks=transformer["num_single_layers"],
        width=transformer["num_attention_heads"] * transformer["attention_head_dim"],
        latent_factor=2 ** (len(vae["block_out_channels"]) - 1) * 2,
        contexts=("cond", "uncond") if true_cfg else ("cond",),
    )


EMBEDDED = embedded_facts()
