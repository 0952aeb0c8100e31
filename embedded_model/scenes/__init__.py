"""Procedural scenes: a prompt grammar, a renderer and a parser (the embedded model's data)."""

from .grammar import COLORS, POSITIONS, SHAPES, SIZES, TEXTURES, SceneSpec, all_specs, parse_prompt, sample_specs, vocabulary
from .parse import SceneCheck, SceneReading, check, read_scene
from .render import render, render_with_mask

__all__ = [
    "COLORS", "POSITIONS", "SHAPES", "SIZES", "TEXTURES", "SceneSpec", "SceneCheck", "SceneReading",
    "all_specs", "check", "parse_prompt", "read_scene", "render", "render_with_mask", "sample_specs", "vocabulary",
]
