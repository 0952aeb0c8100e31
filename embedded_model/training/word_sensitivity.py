"""How much the embedded model's image depends on one word of the prompt: a diagnosis of shape adherence.

Scenes drawn from the held-out split are each rendered once per value of one attribute (the four shapes, or
four colours as a reference), everything else and the seed fixed (a variant may fall in either split). Two numbers per pair of values: the mean absolute pixel
difference of the two images (0-255; near 0 means the model ignores the difference between the two words),
and how often the parser reads each value back (the confusion of the attribute). Two more say where the
word's information goes missing, if it does:

- the text encoders: how far apart the prompts' T5 sequence embeddings and CLIP pooled embeddings are for
  each pair of values (relative L2 difference), i.e. whether the encoders tell the words apart at all;
- the channel: the first value's prompt drawn with the T5 sequence of another value's prompt (and its own
  pooled embedding), compared with both values' own images; an image close to the T5 word's own says the
  transformer reads the word from the T5 sequence.

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
import torch

from ..scenes import check, sample_specs
from ..scenes.grammar import COLORS, SHAPES
from .evaluate import to_uint8

VALUES = {"shape": SHAPES, "color": tuple(COLORS)[:4]}


def pair_table(upper: dict[tuple[str, str], list[float]], values: tuple[str, ...],
               lower: dict[tuple[str, str], list[float]] | None = None, digits: int = 2) -> list[str]:
    """A markdown table of the mean of each pair's numbers: `upper` above the diagonal, `lower` below it
    (the same numbers, mirrored, when not given)."""
    lines = ["| | " + " | ".join(values) + " |", "|---|" + "---:|" * len(values)]
    for i, a in enumerate(values):
        cells = []
        for j, b in enumerate(values):
            numbers = upper if lower is None or i < j else lower
            found = numbers.get((a, b)) or numbers.get((b, a))
            cells.append("—" if a == b else f"{np.mean(found):.{digits}f}" if found else "n/a")
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return lines


def variant_sets(count: int, attribute: str, values: tuple[str, ...]) -> list[list]:
    """`count` held-out scenes, each as one spec per value of `attribute`; scenes where a value is not
    allowed (a colour equal to the background) are passed over.

    Example:
        >>> sets = variant_sets(2, "color", ("red", "green"))
        >>> [[s.color for s in specs] for specs in sets]
        [['red', 'green'], ['red', 'green']]
    """
    sets = []
    for scene in sample_specs(20 * count, seed=321, held_out=True):
        try:
            sets.append([replace(scene, **{attribute: v}) for v in values])
        except ValueError:
            continue
        if len(sets) == count:
            return sets
    raise ValueError(f"fewer than {count} held-out scenes allow every {attribute} in {values}")


def _images(pipe, embeds: list[tuple[torch.Tensor, torch.Tensor]], seed: int, steps: int, call: dict) -> list[np.ndarray]:
    """One image per (T5 sequence, pooled) embedding pair, all from one seed."""
    call = {k: v for k, v in call.items() if k != "max_sequence_length"}
    out = pipe(prompt_embeds=torch.cat([t for t, _ in embeds]), pooled_prompt_embeds=torch.cat([p for _, p in embeds]),
               generator=[torch.Generator().manual_seed(seed) for _ in embeds], num_inference_steps=steps,
               output_type="np", **call)
    return to_uint8(out.images)


def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


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
    t5_gaps: dict[tuple[str, str], list[float]] = defaultdict(list)
    pooled_gaps: dict[tuple[str, str], list[float]] = defaultdict(list)
    swapped: dict[str, list[tuple[float, float]]] = defaultdict(list)  # other value -> (to T5 word, to own)
    read_back: dict[str, Counter] = {v: Counter() for v in values}
    for index, specs in enumerate(variant_sets(args.scenes, args.attribute, values)):
        with torch.no_grad():
            embeds = [pipe.encode_prompt(s.prompt(), None, max_sequence_length=call.get("max_sequence_length", 512))[:2]
                      for s in specs]
        images = _images(pipe, embeds, index, args.steps, call)
        for (i, a), (j, b) in itertools.combinations(enumerate(values), 2):
            diffs[(a, b)].append(_mean_abs(images[i], images[j]))
            t5_gaps[(a, b)].append(_relative(embeds[i][0], embeds[j][0]))
            pooled_gaps[(a, b)].append(_relative(embeds[i][1], embeds[j][1]))
        mixed = _images(pipe, [(t5, embeds[0][1]) for t5, _ in embeds[1:]], index, args.steps, call)
        for j, image in enumerate(mixed, start=1):
            swapped[values[j]].append((_mean_abs(image, images[j]), _mean_abs(image, images[0])))
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
    print("\nText encoders: relative L2 difference of the T5 sequence embeddings (upper) and of the CLIP pooled "
          "embeddings (lower) between the two prompts:\n")
    print("\n".join(pair_table(t5_gaps, values, lower=pooled_gaps, digits=3)))
    first = values[0]
    print(f"\nThe channel: the '{first}' prompt drawn with another prompt's T5 sequence (its own pooled embedding); "
          "mean absolute pixel difference to each prompt's own image:\n")
    print(f"| T5 sequence of | to that prompt's image | to the '{first}' image |")
    print("|---|---:|---:|")
    for value, pairs in swapped.items():
        print(f"| {value} | {np.mean([p[0] for p in pairs]):.2f} | {np.mean([p[1] for p in pairs]):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
