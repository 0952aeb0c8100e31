"""Deterministic renderer for :class:`SceneSpec` scenes.

A background colour ``c`` is textured by blending it with its shade ``s(c)``
through a per-pixel weight ``t`` in [0, 1]; the parser inverts exactly this.

Example:
    >>> from embedded_model.scenes import SceneSpec, render
    >>> img = render(SceneSpec("circle", "red", "center", "large", "plain", "blue"), size=64, seed=0)
    >>> img.shape, img.dtype
    ((64, 64, 3), dtype('uint8'))
"""

from __future__ import annotations

import numpy as np

from .grammar import COLORS, POSITIONS, SceneSpec

SUPERSAMPLE = 4
SHADE_FACTOR = 0.62  # bright colours darken to this fraction
RADIUS = {"small": 0.10, "large": 0.16}  # fraction of the image side
TEXTURE_CELLS = 8  # stripes, checks and noise have this many cells per side


def color_array(name: str) -> np.ndarray:
    return np.asarray(COLORS[name], dtype=np.float32) / 255.0


def shade(rgb: np.ndarray) -> np.ndarray:
    """The second tone of a texture: darker for bright colours, lighter for dark ones."""
    if rgb.mean() < 0.25:
        return rgb + (1.0 - rgb) * 0.45
    return rgb * SHADE_FACTOR


def cell_center(position: str) -> tuple[float, float]:
    """(x, y) of a position's cell centre, as fractions of the image side."""
    index = POSITIONS.index(position)
    row, col = divmod(index, 3)
    return (col + 0.5) / 3.0, (row + 0.5) / 3.0


def texture_weight(texture: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Per-pixel blend weight toward the shade, shape (size, size)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    period = size / TEXTURE_CELLS
    if texture == "plain":
        return np.zeros((size, size), np.float32)
    if texture == "gradient":
        return 1.0 - x / (size - 1)  # shaded on the left, pure colour on the right
    if texture == "striped":
        return ((y // period) % 2).astype(np.float32)
    if texture == "checkered":
        return (((y // period) + (x // period)) % 2).astype(np.float32)
    if texture == "noisy":
        grid = rng.uniform(0.0, 1.0, (TEXTURE_CELLS + 1, TEXTURE_CELLS + 1)).astype(np.float32)
        gy = y / (size - 1) * TEXTURE_CELLS
        gx = x / (size - 1) * TEXTURE_CELLS
        y0 = np.minimum(gy.astype(int), TEXTURE_CELLS - 1)
        x0 = np.minimum(gx.astype(int), TEXTURE_CELLS - 1)
        fy, fx = gy - y0, gx - x0
        top = grid[y0, x0] * (1 - fx) + grid[y0, x0 + 1] * fx
        bottom = grid[y0 + 1, x0] * (1 - fx) + grid[y0 + 1, x0 + 1] * fx
        return top * (1 - fy) + bottom * fy
    raise ValueError(f"texture={texture!r} is unknown")


def inside_shape(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Whether offsets (dx, dy) from the centre fall inside `shape` of radius `r` (the parser fits the same shapes)."""
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return (np.abs(dx) <= r * 0.9) & (np.abs(dy) <= r * 0.9)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r * 1.25
    if shape == "triangle":
        # Upward triangle inscribed in the circle of radius r.
        return (dy <= r * 0.5) & (dy >= -r + 1.732 * np.abs(dx))
    raise ValueError(f"shape={shape!r} is unknown")


def shape_mask(spec: SceneSpec, size: int, rng: np.random.Generator) -> np.ndarray:
    """Anti-aliased coverage of the shape in [0, 1], shape (size, size)."""
    big = size * SUPERSAMPLE
    cx, cy = cell_center(spec.position)
    # Small jitter so the model learns regions, not single pixels.
    cx += rng.uniform(-0.035, 0.035)
    cy += rng.uniform(-0.035, 0.035)
    r = RADIUS[spec.size] * rng.uniform(0.9, 1.1)
    y, x = (np.mgrid[0:big, 0:big].astype(np.float32) + 0.5) / big
    inside = inside_shape(spec.shape, x - cx, y - cy, r)
    return inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3)).astype(np.float32)


def render_with_mask(spec: SceneSpec, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The scene as :func:`render` draws it, and the object's coverage in [0, 1], shape (size, size).

    The coverage lets training weight the object's pixels (``--object-weight``).
    """
    if size % TEXTURE_CELLS:
        raise ValueError(f"size={size} must be a multiple of {TEXTURE_CELLS}")
    rng = np.random.default_rng(seed)
    bg = color_array(spec.background)
    t = texture_weight(spec.texture, size, rng)[..., None]
    image = bg * (1.0 - t) + shade(bg) * t
    mask = shape_mask(spec, size, rng)
    image = image * (1.0 - mask[..., None]) + color_array(spec.color) * mask[..., None]
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8), mask


def render(spec: SceneSpec, size: int = 64, seed: int = 0) -> np.ndarray:
    """Render a scene as an RGB uint8 array of shape (size, size, 3)."""
    return render_with_mask(spec, size, seed)[0]
