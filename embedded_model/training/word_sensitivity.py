"""How much the embedded model's image depends on one word of the prompt: a diagnosis of shape adherence.

Scenes drawn from the held-out split are each rendered once per value of one attribute (the four shapes, or
four colours as a reference), everything else and the seed fixed (a variant may fall in either split). Two numbers per pair of values: the mean absolute pixel
difference of the two images (0-255; near 0 means the model ignores the difference between the two words),
and how often the parser reads each value back (the confusion of the attribute).

``python -m embedded_model.training.word_sensitivity --scenes 24 --attribute shape`` prints both tables.

Example:
    >>> pair_table({("circle", "square"): [1.0, 3.0]}, ("circle", "square"))
    ['| | circle | square |', '|---|---:|---:|', '| circle | — | 2.00 |', '| square | 2.00 | — |']
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..scenes import check, sample_specs
from ..scenes.grammar import COLORS, SHAPES
from .evaluate import generate_batch

VALUES = {"shape": SHAPES, "color": tuple(COLORS)[:4]}


def pair_table(diffs: dict[tuple[str, str], list[float]], values: tuple[str, ...]) -> list[str]:
    """A symmetric markdown table of the mean of each pair's differences."""
    lines = ["| | " + " | ".join(values) + " |", "|---|" + "---:|" * len(values)]
    for a in values:
        cells = []
        for b in values:
            found = diffs.get((a, b)) or diffs.get((b, a))
            cells.append("—" if a == b else f"{np.mean(found):.2f}" if found else "n/a")
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m embedded_model.training.word_sensitivity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="FluxPipeline directory (default: the embedded model)")
    p.add_argument("--scenes", type=int, default=24, help="held-out scenes (default: 24)")
    p.add_argument("--attribute", choices=sorted(VALUES), default="shape")
    p.add_argument("--steps", type=int, default=28)
    args = p.parse_args(argv)
    if args.scenes < 1 or args.steps < 1:
        p.error("--scenes and --steps must be at least 1")

    from h2cache.pipelines import generation_defaults, load_pipeline

    pipe = load_pipeline(str(args.model) if args.model else None)
    pipe.set_progress_bar_config(disable=True)
    call = {k: v for k, v in generation_defaults(pipe).items() if k != "num_inference_steps"}
    values = VALUES[args.attribute]
    diffs: dict[tuple[str, str], list[float]] = defaultdict(list)
    read_back: dict[str, Counter] = {v: Counter() for v in values}
    for index, scene in enumerate(sample_specs(args.scenes, seed=321, held_out=True)):
        specs = [replace(scene, **{args.attribute: v}) for v in values]
        images = generate_batch(pipe, [s.prompt() for s in specs], [index] * len(specs), args.steps, call)
        for (a, ia), (b, ib) in itertools.combinations(zip(values, images), 2):
            diffs[(a, b)].append(float(np.abs(ia.astype(np.float32) - ib.astype(np.float32)).mean()))
        for value, spec, image in zip(values, specs, images):
            read_back[value][getattr(check(image, spec).reading, args.attribute)] += 1
    print(f"Mean absolute pixel difference (0-255) between images of the same scene and seed whose prompts differ "
          f"only in the {args.attribute} word ({args.scenes} held-out scenes, {args.steps} steps):\n")
    print("\n".join(pair_table(diffs, values)))
    print(f"\nWhat the parser reads back (rows: the prompt's {args.attribute}):\n")
    print("| prompt | " + " | ".join(values) + " | other |")
    print("|---|" + "---:|" * (len(values) + 1))
    for value in values:
        counts = read_back[value]
        other = sum(n for k, n in counts.items() if k not in values)
        print(f"| {value} | " + " | ".join(str(counts[v]) for v in values) + f" | {other} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
