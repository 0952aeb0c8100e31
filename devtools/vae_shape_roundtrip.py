"""Whether the embedded model's VAE keeps the object's shape: encode and decode held-out scenes, parse the shape.

``python -m devtools.vae_shape_roundtrip [--scenes 200] [--sizes 128 64]`` prints, per size, the
share of scenes whose shape the parser reads right before and after the round trip, by object size and shape.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch
from diffusers import AutoencoderKL

from embedded_model.scenes import check, render, sample_specs
from embedded_model.training.data import to_tensor_range
from embedded_model.training.evaluate import to_uint8
from h2cache.pipelines import EMBEDDED_MODEL_DIR


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--scenes", type=int, default=200)
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 64])
    args = p.parse_args()
    vae = AutoencoderKL.from_pretrained(f"{EMBEDDED_MODEL_DIR}/vae", local_files_only=True).eval()
    specs = sample_specs(args.scenes, seed=123, held_out=True)
    for size in args.sizes:
        images = np.stack([render(s, size, seed=i) for i, s in enumerate(specs)])
        with torch.no_grad():
            decoded = torch.cat([vae.decode(vae.encode(to_tensor_range(images[i:i + 50])).latent_dist.mode()).sample
                                 for i in range(0, len(images), 50)])
        back = to_uint8(((decoded.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy())
        before = np.mean([check(im, s).shape_ok for im, s in zip(images, specs)])
        by = defaultdict(list)
        for im, s in zip(back, specs):
            by[(s.size, s.shape)].append(check(im, s).shape_ok)
        after = np.mean([ok for oks in by.values() for ok in oks])
        print(f"{size}x{size}: shape read right {before:.1%} rendered, {after:.1%} after the VAE round trip")
        print("  " + ", ".join(f"{k[0]} {k[1]} {np.mean(v):.0%}" for k, v in sorted(by.items())))


if __name__ == "__main__":
    main()
