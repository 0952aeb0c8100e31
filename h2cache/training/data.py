"""Render the training scenes once into an .npz cache instead of on every step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..scenes import render, sample_specs


def render_dataset(path: Path, n: int, size: int, seed: int) -> dict[str, np.ndarray]:
    """Images (n, size, size, 3) uint8 and their prompts, from the training split only.

    Reuses ``path`` when it already holds a dataset made with the same arguments.
    """
    path = Path(path)
    key = np.array([n, size, seed])
    if path.exists():
        data = dict(np.load(path, allow_pickle=False))
        if np.array_equal(data.get("key"), key):
            return data
    specs = sample_specs(n, seed=seed, held_out=False)
    images = np.empty((n, size, size, 3), np.uint8)
    for i, spec in enumerate(tqdm(specs, desc="rendering scenes")):
        images[i] = render(spec, size=size, seed=seed * 1_000_003 + i)
    prompts = np.array([s.prompt() for s in specs])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, prompts=prompts, key=key)
    return {"images": images, "prompts": prompts, "key": key}


def to_tensor_range(images: np.ndarray):
    """uint8 NHWC -> float NCHW in [-1, 1], the VAE's input range."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
