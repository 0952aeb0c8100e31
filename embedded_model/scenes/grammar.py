"""Prompt grammar of the procedural scenes the embedded model is trained on.

A scene is one solid shape on a textured background. Every attribute has a
small closed vocabulary so that a parser can check an image against its prompt.

Example:
    >>> spec = SceneSpec("circle", "red", "top left", "large", "striped", "blue")
    >>> spec.prompt()
    'a large red circle at the top left on a striped blue background'
    >>> parse_prompt(spec.prompt()) == spec
    True
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Iterator

# RGB values are far apart so a nearest-colour rule can tell them apart even
# after a lossy VAE round trip.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (34, 170, 60),
    "blue": (37, 80, 225),
    "yellow": (240, 215, 40),
    "purple": (145, 55, 195),
    "orange": (250, 140, 25),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond")
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
SIZES = ("small", "large")
TEXTURES = ("plain", "gradient", "striped", "checkered", "noisy")


@dataclass(frozen=True)
class SceneSpec:
    """One scene: the shape, its colour, position and size, and the background."""

    shape: str
    color: str
    position: str
    size: str
    texture: str
    background: str

    def __post_init__(self) -> None:
        for field, value, allowed in (
            ("shape", self.shape, SHAPES),
            ("color", self.color, tuple(COLORS)),
            ("position", self.position, POSITIONS),
            ("size", self.size, SIZES),
            ("texture", self.texture, TEXTURES),
            ("background", self.background, tuple(COLORS)),
        ):
            if value not in allowed:
                raise ValueError(f"{field}={value!r} is not one of {list(allowed)}")
        if self.color == self.background:
            raise ValueError("color and background must differ, or the shape would be invisible")

    def prompt(self) -> str:
        where = "the center" if self.position == "center" else f"the {self.position}"
        return f"a {self.size} {self.color} {self.shape} at {where} on a {self.texture} {self.background} background"

    def is_held_out(self) -> bool:
        """True for the ~10% of combinations that training never sees.

        The split is a hash of the full combination, so it is stable across
        runs and machines without storing a list.
        """
        digest = hashlib.sha256(self.prompt().encode()).digest()
        return digest[0] % 10 == 0


def parse_prompt(prompt: str) -> SceneSpec:
    """Read a prompt written by :meth:`SceneSpec.prompt` back into a spec."""
    words = prompt.strip().lower().split()
    try:
        at = words.index("at")
        on = words.index("on")
        head = words[1:at]
        size, color, shape = head
        where = words[at + 1 : on]
        position = "center" if where == ["the", "center"] else " ".join(where[1:])
        texture, background = words[on + 2], words[on + 3]
        return SceneSpec(shape, color, position, size, texture, background)
    except (ValueError, IndexError) as exc:
        raise ValueError(f"not a scene prompt: {prompt!r}") from exc


def all_specs() -> Iterator[SceneSpec]:
    for shape in SHAPES:
        for color in COLORS:
            for position in POSITIONS:
                for size in SIZES:
                    for texture in TEXTURES:
                        for background in COLORS:
                            if background != color:
                                yield SceneSpec(shape, color, position, size, texture, background)


def sample_specs(n: int, seed: int, held_out: bool) -> list[SceneSpec]:
    """`n` specs drawn with replacement from the training or held-out split."""
    pool = [s for s in all_specs() if s.is_held_out() == held_out]
    rng = random.Random(seed)
    return [rng.choice(pool) for _ in range(n)]


def vocabulary() -> list[str]:
    """Every word a scene prompt can contain, for building tokenizers."""
    words = {"a", "at", "the", "on", "background", "center"}
    words.update(SHAPES, COLORS, SIZES, TEXTURES)
    for p in POSITIONS:
        words.update(p.split())
    return sorted(words)
