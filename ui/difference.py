"""Amplified absolute difference of two images, as a heat map the eye can read."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps


def difference_map(reference: np.ndarray, image: np.ndarray, gain: float) -> np.ndarray:
    """``|image - reference|`` averaged over RGB, times `gain`, clipped, through the 'inferno' colormap.

    Black means identical pixels. The fixed gain (not normalised per image) keeps maps of
    different runs comparable: a brighter map is a larger difference.
    """
    if reference.shape != image.shape:
        raise ValueError(f"images must have one shape, got {reference.shape} and {image.shape}")
    diff = np.abs(reference.astype(np.int16) - image.astype(np.int16)).mean(axis=-1)
    scaled = np.clip(diff * gain / 255.0, 0.0, 1.0)
    rgb = colormaps["inferno"](scaled)[..., :3]
    rgb[scaled == 0] = 0.0  # exactly black where nothing changed
    return np.rint(rgb * 255).astype(np.uint8)
