"""How much of a shape change the embedded model predicts, noise level by noise level.

Held-out scenes are rendered twice with one seed, two shapes (:func:`~.data.shape_pairs`), so the two images
differ only in the outline. Both are noised with the same noise to the same level t, and the transformer
predicts the flow target (``noise - x0``) for each. The pair error (:func:`~.transformer.pair_difference_error`)
compares the difference of the two predictions with the difference of the two targets: 0 when the model draws
each outline exactly, 1 when its two predictions are equal.

Two columns per t: each scene with its own prompt, and both scenes with the first scene's prompt. The noisy
inputs themselves still differ where the outlines do (faintly at high t, since the noise is shared), so a
model can lower the first column without reading the word; the second column gives it the same inputs and no
shape word to tell them apart, so the gap between the columns is what the word is worth to the model. A model
that ignores the word (the shape failure of issue 10) shows no gap.

``python -m embedded_model.training.pair_error --model DIR --pairs 32`` prints the table.

Example:
    >>> from embedded_model.training.pair_error import parse_levels
    >>> parse_levels(["0.1", "0.9"])
    [0.1, 0.9]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from ..scenes import render
from .data import render_seed, shape_pairs, to_tensor_range
from .transformer import Denoiser, pack_normalised, pair_difference_error

LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)


def parse_levels(values: list[str]) -> list[float]:
    levels = [float(v) for v in values]
    if not all(0.0 < t < 1.0 for t in levels):
        raise ValueError(f"noise levels must lie in (0, 1), got {levels}")
    return levels


@torch.no_grad()
def pair_errors(pipe, pairs: int, levels: list[float], size: int, guidance: float | None,
                seed: int = 0) -> list[dict[str, float]]:
    """One row per noise level: the pair error with each scene's own prompt and with one prompt for both."""
    specs = shape_pairs(pairs, seed=seed, held_out=True)
    images = np.stack([render(spec, size=size, seed=render_seed(seed, i, pairs=True)) for i, spec in enumerate(specs)])
    vae = pipe.vae
    latents = vae.encode(to_tensor_range(images)).latent_dist.mode()
    h, w = latents.shape[-2:]
    x0 = pack_normalised(latents, vae.config.shift_factor, vae.config.scaling_factor)
    seq, pooled, _ = pipe.encode_prompt([s.prompt() for s in specs], None, max_sequence_length=16)
    enc = {"latent_hw": torch.tensor([h, w]), "prompt_embeds": seq, "pooled_embeds": pooled}
    denoise = Denoiser(enc, len(specs), "cpu")
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((pairs, *x0.shape[1:]), generator=gen).repeat_interleave(2, 0)
    own = torch.arange(len(specs))
    shared = own - own % 2  # both scenes of a pair read the first one's prompt
    keep = torch.ones(pairs, dtype=torch.bool)
    g = torch.full((len(specs),), guidance) if guidance is not None else None
    rows = []
    for t in levels:
        tt = torch.full((len(specs),), t)
        xt = (1 - t) * x0 + t * noise
        target = noise - x0
        row = {"t": t}
        for name, index in (("own prompts", own), ("one prompt", shared)):
            pred = denoise(pipe.transformer, xt, tt, index, g)
            row[name] = float(pair_difference_error(pred, target, keep))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m embedded_model.training.pair_error", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="FluxPipeline directory (default: the embedded model)")
    p.add_argument("--pairs", type=int, default=32, help="held-out scene pairs (default: 32)")
    p.add_argument("--levels", nargs="+", default=[str(t) for t in LEVELS], help="noise levels t in (0, 1)")
    args = p.parse_args(argv)
    if args.pairs < 1:
        p.error("--pairs must be at least 1")
    try:
        levels = parse_levels(args.levels)
    except ValueError as exc:
        p.error(f"--levels: {exc}")

    from h2cache.pipelines import generation_defaults, load_pipeline

    pipe = load_pipeline(str(args.model) if args.model else None)
    defaults = generation_defaults(pipe)
    # A CFG-trained model (not yet distilled) was trained with guidance input 1; a distilled one reads its scale.
    guidance = defaults.get("guidance_scale", 1.0) if pipe.transformer.config.guidance_embeds else None
    rows = pair_errors(pipe, args.pairs, levels, int(defaults.get("height", 128)), guidance)
    print(f"Pair error of {args.pairs} held-out scene pairs that differ only in the shape (0: both outlines "
          f"predicted, 1: the two predictions equal); guidance input {guidance}:\n")
    print("| t | own prompts | one prompt for both | what the word adds |")
    print("|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['t']:.1f} | {row['own prompts']:.3f} | {row['one prompt']:.3f} | "
              f"{row['one prompt'] - row['own prompts']:+.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
