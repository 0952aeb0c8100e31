"""Render the training scenes once into an .npz cache instead of on every step."""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..scenes import render_with_mask, sample_specs
from ..scenes.grammar import SHAPES, SceneSpec

# A transformer token covers 8x8 pixels: the VAE downsamples 4x and FLUX packs 2x2 latents into a token
# (components.VAE_FACTOR x 2; not imported from there, which would load diffusers in every render worker).
PIXELS_PER_TOKEN = 8


def _render_job(job: tuple) -> tuple[np.ndarray, np.ndarray]:
    spec, size, seed = job
    image, mask = render_with_mask(spec, size=size, seed=seed)
    side = size // PIXELS_PER_TOKEN
    cover = mask.reshape(side, PIXELS_PER_TOKEN, side, PIXELS_PER_TOKEN).mean(axis=(1, 3))
    return image, cover.astype(np.float16)


def shape_pairs(n: int, seed: int, held_out: bool = False) -> list[SceneSpec]:
    """`n` scenes, each followed by the same scene with another shape (2n specs).

    Training pairs (`held_out` False) take both scenes from the training split, so no held-out prompt is ever
    trained on. Held-out pairs (for judging) take the first scene from the held-out split and the partner's
    shape from all three others, whichever split that falls in. Rendered with one seed, the two images of a pair
    differ only in the object's outline.
    """
    rng = np.random.default_rng(seed)
    specs: list[SceneSpec] = []
    # Drawn with the unpaired sampler's rule, twice as many as needed: about 1 in 1,000 training scenes has
    # every other shape held out and is passed over.
    for base in sample_specs(2 * n, seed=seed, held_out=held_out):
        others = [replace(base, shape=s) for s in SHAPES if s != base.shape]
        if not held_out:
            others = [v for v in others if not v.is_held_out()]
        if others:
            specs += [base, others[rng.integers(len(others))]]
        if len(specs) == 2 * n:
            break
    return specs


def render_seed(seed: int, i: int, pairs: bool = False) -> int:
    """The renderer seed of row `i` of a dataset drawn with `seed`; the two rows of a pair share one."""
    return seed * 1_000_003 + (i // 2 if pairs else i)


def render_dataset(path: Path, n: int, size: int, seed: int, pairs: bool = False) -> dict[str, np.ndarray]:
    """Images (n, size, size, 3) uint8, their prompts, and the object's coverage of each transformer token
    (``object_cover``, (n, size // 8, size // 8), in [0, 1]), from the training split only.

    With `pairs`, the n images are n // 2 pairs (rows 2i and 2i + 1) from :func:`shape_pairs`, each pair
    rendered with one seed: same background, position and size, two shapes. Reuses ``path`` when it
    already holds a dataset made with the same arguments.
    """
    path = Path(path)
    if pairs and n % 2:
        raise ValueError(f"n={n} must be even for a paired dataset")
    key = np.array([n, size, seed, 1] if pairs else [n, size, seed])  # unpaired caches keep their old key
    if path.exists():
        data = dict(np.load(path, allow_pickle=False))
        if np.array_equal(data.get("key"), key) and "object_cover" in data:  # caches from before the cover: redo
            return data
    specs = shape_pairs(n // 2, seed) if pairs else sample_specs(n, seed=seed, held_out=False)
    jobs = [(spec, size, render_seed(seed, i, pairs)) for i, spec in enumerate(specs)]
    workers = min(os.cpu_count() or 1, max(1, n // 2000))  # a process pool pays off only for big sets
    images = np.empty((n, size, size, 3), np.uint8)
    side = size // PIXELS_PER_TOKEN
    covers = np.empty((n, side, side), np.float16)
    if workers > 1:
        # 40,000 scenes at 128x128 take ~3.5 min on one core; a GPU machine's 16 cores do it in seconds.
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            rendered = pool.imap(_render_job, jobs, chunksize=256)
            for i, (image, cover) in enumerate(tqdm(rendered, total=n, desc=f"rendering scenes ({workers} processes)")):
                images[i], covers[i] = image, cover
    else:
        for i, job in enumerate(tqdm(jobs, desc="rendering scenes")):
            images[i], covers[i] = _render_job(job)
    prompts = np.array([s.prompt() for s in specs])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, prompts=prompts, object_cover=covers, key=key)
    return {"images": images, "prompts": prompts, "object_cover": covers, "key": key}


def to_tensor_range(images: np.ndarray):
    """uint8 NHWC -> float NCHW in [-1, 1], the VAE's input range."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
