"""Read a scene image back into its attributes and check it against a prompt.

The reading inverts the renderer: the background colour is the palette colour
most common on the border, the object colour the most common other palette
colour, its position the centroid's cell, its shape the ideal shape (drawn
at the mask's centroid, scaled to the mask's area) that overlaps the object
mask best, and the texture the blend-weight pattern (toward the background's
shade) that best explains the background.

Example:
    >>> from embedded_model.scenes import SceneSpec, render, check
    >>> spec = SceneSpec("square", "yellow", "bottom right", "large", "checkered", "purple")
    >>> result = check(render(spec, 64, seed=3), spec.prompt())
    >>> result.ok, result.reading.shape
    (True, 'square')
    >>> check(render(spec, 64, seed=3), spec.prompt().replace("square", "triangle")).shape_ok
    False
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grammar import COLORS, POSITIONS, SHAPES, SceneSpec, parse_prompt
from .render import TEXTURE_CELLS, color_array, inside_shape, shade

COLOR_TOLERANCE = 0.30  # RGB distance (0..1 scale, max sqrt(3)) to count as a palette colour
MIN_OBJECT_FRACTION = 0.006  # of the image area; a small circle covers about 3%
TEXTURE_R2 = 0.5  # a pattern must explain this share of the background's variance
PLAIN_STD = 0.08
SEGMENT_TOLERANCE = 0.12
# Below this a mask is a blob that every ideal shape fits about equally; a
# small triangle at 32 px covers about 10 pixels and is still read right.
MIN_SHAPE_PIXELS = 8
# Area of each ideal shape in units of r**2 (r: the renderer's radius), so a
# mask's area gives the radius each shape hypothesis implies.
SHAPE_AREA = {"circle": np.pi, "square": 1.8**2, "triangle": 0.75 * 3**0.5, "diamond": 2 * 1.25**2}
# The hard mask grows or shrinks at the anti-aliased edge with the colour
# contrast, so each hypothesis is also tried a little smaller and larger.
SHAPE_SCALES = (0.88, 0.94, 1.0, 1.06, 1.12)
TEMPLATE_SUPERSAMPLE = 4


@dataclass(frozen=True)
class SceneReading:
    color: str | None
    position: str | None
    texture: str | None
    background: str | None
    shape: str | None


@dataclass(frozen=True)
class SceneCheck:
    reading: SceneReading
    color_ok: bool
    position_ok: bool
    texture_ok: bool
    shape_ok: bool

    @property
    def ok(self) -> bool:
        return self.color_ok and self.position_ok and self.texture_ok and self.shape_ok


def _palette_distances(img: np.ndarray) -> tuple[list[str], np.ndarray]:
    names = list(COLORS)
    palette = np.stack([color_array(n) for n in names])  # (P, 3)
    d = np.linalg.norm(img[:, :, None, :] - palette[None, None], axis=-1)  # (H, W, P)
    return names, d


def _segment_distance(img: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel RGB distance to the segment from colour a to colour b."""
    ab = b - a
    t = np.clip(((img - a) @ ab) / float(ab @ ab), 0.0, 1.0)
    return np.linalg.norm(img - (a + t[..., None] * ab), axis=-1)


def _r2(t: np.ndarray, pattern: np.ndarray, mask: np.ndarray) -> float:
    """Share of t's variance on `mask` explained by a linear fit on `pattern`."""
    y, x = t[mask], pattern[mask]
    if y.size < 16 or np.std(x) < 1e-6 or np.std(y) < 1e-6:
        return 0.0
    r = np.corrcoef(x, y)[0, 1]
    return float(r * r)


def _template(shape: str, ys: np.ndarray, xs: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    """Anti-aliased coverage of an ideal shape at pixels (ys, xs); centre and radius in pixels."""
    # Sub-pixel offsets average the inside test over each pixel like the renderer does.
    sub = (np.arange(TEMPLATE_SUPERSAMPLE) + 0.5) / TEMPLATE_SUPERSAMPLE - 0.5
    dy = ys[:, :, None, None] + sub[:, None] - cy
    dx = xs[:, :, None, None] + sub[None, :] - cx
    return inside_shape(shape, dx, dy, r).mean(axis=(2, 3))


def _read_shape(obj: np.ndarray) -> str | None:
    """The ideal shape, fitted at the mask's centroid and area, that overlaps `obj` best."""
    ys, xs = np.nonzero(obj)
    area = float(ys.size)
    if area < MIN_SHAPE_PIXELS:
        return None
    # Every shape is centred on its centroid (the triangle is equilateral and
    # inscribed in the circle), so the centroid is the centre for all four.
    cy, cx = ys.mean(), xs.mean()
    # The triangle's apex, the farthest point of any hypothesis, lies within
    # 0.88 * sqrt(area) * max(SHAPE_SCALES) of the centre; templates are drawn
    # on that window only, and mask pixels outside it still count as misses.
    reach = int(np.ceil(np.sqrt(area))) + 2
    y0, x0 = max(0, int(cy) - reach), max(0, int(cx) - reach)
    crop = obj[y0 : int(cy) + reach + 1, x0 : int(cx) + reach + 1].astype(np.float32)
    outside = area - float(crop.sum())
    gy, gx = np.mgrid[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]].astype(np.float32)
    best, best_iou = None, -1.0
    for shape in SHAPES:
        r0 = np.sqrt(area / SHAPE_AREA[shape])
        for scale in SHAPE_SCALES:
            t = _template(shape, gy, gx, cy, cx, r0 * scale)
            iou = float(np.minimum(crop, t).sum() / (np.maximum(crop, t).sum() + outside))
            if iou > best_iou:
                best, best_iou = shape, iou
    return best


def read_scene(image: np.ndarray) -> SceneReading:
    """Attributes of an RGB uint8 scene image (H, W, 3)."""
    img = np.asarray(image, dtype=np.float32)[..., :3] / 255.0
    h, w, _ = img.shape
    names, dist = _palette_distances(img)
    nearest = dist.argmin(-1)
    matched = dist.min(-1) < COLOR_TOLERANCE

    border = np.zeros((h, w), bool)
    ring = max(2, h // 24)
    border[:ring], border[-ring:], border[:, :ring], border[:, -ring:] = True, True, True, True
    # A textured background spans the segment from its colour to its shade, so
    # each palette colour is scored by how many border pixels lie on its segment.
    on_segment = np.stack([_segment_distance(img, color_array(n), shade(color_array(n))) < SEGMENT_TOLERANCE for n in names], -1)
    votes = on_segment[border].sum(0)
    background = names[int(votes.argmax())] if votes.max() > 0 else None

    candidates = matched.copy()
    if background is not None:
        candidates &= ~on_segment[..., names.index(background)]
    counts = np.bincount(nearest[candidates], minlength=len(names)).astype(float)
    if background is not None:
        counts[names.index(background)] = 0
    color = None
    position = None
    obj = np.zeros((h, w), bool)
    if counts.max() >= MIN_OBJECT_FRACTION * h * w:
        k = int(counts.argmax())
        color = names[k]
        obj = candidates & (nearest == k)
        ys, xs = np.nonzero(obj)
        col = min(2, int(xs.mean() / w * 3))
        row = min(2, int(ys.mean() / h * 3))
        position = POSITIONS[row * 3 + col]

    texture = None
    if background is not None:
        c = color_array(background)
        s = shade(c)
        t = ((img - c) @ (s - c)) / float((s - c) @ (s - c))
        # Keep clear of the object's anti-aliased edge.
        grown = obj.copy()
        for _ in range(2):
            grown[1:] |= grown[:-1]
            grown[:-1] |= grown[1:]
            grown[:, 1:] |= grown[:, :-1]
            grown[:, :-1] |= grown[:, 1:]
        bg_mask = ~grown
        if np.std(t[bg_mask]) < PLAIN_STD:
            texture = "plain"
        else:
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            period = h / TEXTURE_CELLS
            patterns = {
                "gradient": xx,
                "striped": (yy // period) % 2,
                "checkered": ((yy // period) + (xx // period)) % 2,
            }
            scores = {name: _r2(t, p, bg_mask) for name, p in patterns.items()}
            best = max(scores, key=scores.get)
            texture = best if scores[best] >= TEXTURE_R2 else "noisy"
    shape = _read_shape(obj) if color is not None else None
    return SceneReading(color, position, texture, background, shape)


def check(image: np.ndarray, prompt: str | SceneSpec) -> SceneCheck:
    """Compare an image with the prompt it was made from."""
    spec = prompt if isinstance(prompt, SceneSpec) else parse_prompt(prompt)
    reading = read_scene(image)
    return SceneCheck(
        reading=reading,
        color_ok=reading.color == spec.color,
        position_ok=reading.position == spec.position,
        texture_ok=reading.texture == spec.texture,
        shape_ok=reading.shape == spec.shape,
    )
