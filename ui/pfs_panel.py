"""The PFS panel: what each stage compared at the scrubbed step, drawn from the run's PFS views.

For each stage, one picture of four tiles, left to right:
1. the probe residual's magnitude (mean |r| over channels) on the image's token grid;
2. the PFS thumbnail compared at this step (tokens down, channels across, average-pooled k x k);
3. the reference thumbnail it was compared with (the stage's last full computation);
4. their absolute difference, whose mean over the reference's mean magnitude is the distance.

Tiles 2 and 3 share one colour scale.
A table under the pictures gives N, the pool size, the kernel, the distance against the threshold
and the decision, with the same numbers as the trace.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib import colormaps

from h2cache.pfs_views import PFSView, PFSViews

TILE_HEIGHT = 160
GAP = 6
STAGE_NAMES = {1: "Stage 1 (structure)", 2: "Stage 2 (detail)"}
EMPTY_TABLE = "Run a comparison to see what pooled feature summarization (PFS) compared at each step."
StepViews = dict[int, dict[str, Any]]  # stage -> the view's numbers and arrays (see compact_views)


def _half(array: np.ndarray) -> np.ndarray:
    # Display only (the distances come from the hooks), so float16 is plenty; saturate rather than overflow.
    limit = float(np.finfo(np.float16).max)
    return np.clip(array, -limit, limit).astype(np.float16)


def compact_views(views: PFSViews | None, context: str, steps: int) -> list[StepViews]:
    """Per step (0-based) of `context`: each measured stage's numbers, thumbnail, reference and magnitudes.

    Each step can be shown on its own: its entry points at its reference's thumbnail, which is the same
    array object as the reference step's own (no copy).
    """
    per_step: list[StepViews] = [{} for _ in range(steps)]
    if not views:
        return per_step
    thumbnails: dict[int, np.ndarray] = {}

    def thumbnail_of(view: PFSView) -> np.ndarray:
        if id(view) not in thumbnails:
            thumbnails[id(view)] = _half(view.thumbnail)
        return thumbnails[id(view)]

    for view in views:
        if view.context != context or not 0 <= view.step < steps:
            continue
        reference = views.reference_of(view)
        per_step[view.step][view.stage] = {
            "num_tokens": view.num_tokens, "num_channels": view.num_channels, "image_tokens": view.image_tokens,
            "pool_size": view.pool_size, "kernel": view.kernel, "thumbnail_shape": view.thumbnail_shape,
            "distance": view.distance, "reference_step": view.reference_step, "hit": view.hit,
            "thumbnail": thumbnail_of(view), "magnitude": _half(view.image_magnitude),
            "reference": None if reference is None else thumbnail_of(reference),
        }
    return per_step


def views_nbytes(per_step: list[StepViews]) -> int:
    """Bytes of the arrays in `per_step`, each array counted once however many steps point at it."""
    arrays = {id(a): a for step in per_step for view in step.values()
              for a in (view["thumbnail"], view["magnitude"], view["reference"]) if a is not None}
    return sum(a.nbytes for a in arrays.values())


def token_grid(tokens: int, height: int, width: int) -> tuple[int, int]:
    """(rows, columns) of the image tokens of a height x width image; one row if they do not tile it."""
    rows = round(math.sqrt(tokens * height / width)) if height > 0 and width > 0 else 1
    if rows > 0 and tokens % rows == 0 and rows * (tokens // rows) == tokens:
        return rows, tokens // rows
    return 1, tokens


def _colour(values: np.ndarray, cmap: str, low: float, high: float) -> np.ndarray:
    span = high - low if high > low else 1.0
    rgba = colormaps[cmap](np.clip((values - low) / span, 0.0, 1.0))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def _tile(image: np.ndarray, height: int = TILE_HEIGHT, max_width: int = 2 * TILE_HEIGHT) -> np.ndarray:
    """Nearest-neighbour enlargement to about `height` rows (whole factors only, so cells stay square)."""
    factor = max(1, min(-(-height // image.shape[0]), max_width // image.shape[1]))
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def _row(tiles: list[np.ndarray]) -> np.ndarray:
    height = max(t.shape[0] for t in tiles)
    gap = np.full((height, GAP, 3), 255, np.uint8)
    padded = []
    for tile in tiles:
        pad = np.full((height - tile.shape[0], tile.shape[1], 3), 255, np.uint8)
        padded += [np.concatenate([tile, pad]), gap]
    return np.concatenate(padded[:-1], axis=1)


def stage_picture(view: dict[str, Any], height: int, width: int) -> np.ndarray:
    """|residual| on the token grid | thumbnail | reference | |thumbnail - reference|, as one RGB image."""
    magnitude = view["magnitude"].astype(np.float32)
    grid = magnitude.reshape(token_grid(len(magnitude), height, width))
    # Min to max, not 0 to max: the spatial pattern is what a teacher points at, not the offset.
    tiles = [_tile(_colour(grid, "magma", float(grid.min()), float(grid.max())))]
    current = view["thumbnail"].astype(np.float32)
    reference = None if view["reference"] is None else view["reference"].astype(np.float32)
    if reference is None or reference.shape != current.shape:
        bound = float(np.abs(current).max()) or 1.0
        tiles.append(_tile(_colour(current, "RdBu_r", -bound, bound)))
        tiles += [np.full_like(tiles[-1], 235)] * 2  # no reference yet: empty tiles keep the layout
        return _row(tiles)
    bound = max(float(np.abs(current).max()), float(np.abs(reference).max())) or 1.0
    difference = np.abs(current - reference)
    tiles += [_tile(_colour(current, "RdBu_r", -bound, bound)), _tile(_colour(reference, "RdBu_r", -bound, bound)),
              _tile(_colour(difference, "magma", 0.0, float(difference.max())))]
    return _row(tiles)


def _decision(stage: int, view: dict[str, Any] | None, record: dict[str, Any] | None) -> str:
    if view is None:
        if record and record.get("probe2_skipped"):
            return "reused, probe skipped too (stage 1 reused; one probe per hit)"
        if record and stage == 2 and record.get("forced2"):
            return "reused, not compared (stage 1 reused)"
        return "not compared"
    if view["hit"]:
        return "**reused** (distance < threshold)"
    if view["distance"] is None:
        return "computed (no reference yet)"
    if record and record.get("forced_full"):
        return "computed (forced by a guard)"
    return "computed; new reference"


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.4f}" if math.isfinite(value) else "∞"


def pfs_table(step_views: StepViews, taus: tuple[float, float], record: dict[str, Any] | None, step: int,
              context: str = "cond") -> str:
    """The numbers of both stages' comparisons at 1-based `step` (Markdown), matching the trace's d1/d2."""
    rows = ["| | N | pool size | k | thumbnail | distance | threshold | reference | decision |",
            "|---|---|---|---|---|---|---|---|---|"]
    for stage in (1, 2):
        view = step_views.get(stage)
        tau = f"τ{stage} = {taus[stage - 1]:g}"
        if view is None:
            rows.append(f"| {STAGE_NAMES[stage]} | — | — | — | — | — | {tau} | — | {_decision(stage, None, record)} |")
            continue
        text = view["num_tokens"] - view["image_tokens"]
        tokens = f"{view['num_tokens']}" + (f" ({text} text + {view['image_tokens']} image)" if text else " (image)")
        r, c = view["thumbnail_shape"]
        ref = "—" if view["reference_step"] is None else f"step {view['reference_step'] + 1}"
        rows.append(f"| {STAGE_NAMES[stage]} | {tokens} | {view['pool_size']} | {view['kernel']} | {r} × {c} "
                    f"| {_fmt(view['distance'])} | {tau} | {ref} | {_decision(stage, view, record)} |")
    note = (f"**Step {step}**, context '{context}'. N: tokens of the compared probe residual. k = max(1, N // pool "
            "size), at most the channel count C; the thumbnail is the residual (N tokens × C channels) average-pooled "
            "k × k. Distance = mean|reference − thumbnail| / mean|reference|. A computed stage's thumbnail becomes "
            "its reference; a stage-1 reuse makes stage 2 reuse too. Pictures, left to right: |residual| per image token on the image grid (dark = low, "
            "bright = high); the thumbnail and its reference on one colour scale (red +, blue −); "
            "|thumbnail − reference|. Thumbnails over 128 on a side are shown box-averaged to fit.")
    return "\n".join(rows) + "\n\n" + note
