"""Measure the embedded model: prompt adherence on held-out prompts, a sample grid, CPU time per image.

``python -m embedded_model.training.evaluate --help``. Adherence is judged by the scene parser
(object colour, position, shape and background texture must all match the prompt).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..scenes import check, sample_specs


def to_uint8(images) -> list[np.ndarray]:
    """A pipeline's ``output_type="np"`` images (floats in [0, 1]) as 8-bit arrays, as the parser reads them."""
    return [np.clip(np.rint(im * 255), 0, 255).astype(np.uint8) for im in images]


def generate_batch(pipe, prompts: list[str], seeds: list[int], steps: int, call: dict) -> list[np.ndarray]:
    """One batch at `steps` steps; `call` holds the other pipeline arguments (size, guidance)."""
    call = dict(call)
    if call.get("true_cfg_scale", 1.0) > 1:
        call["negative_prompt"] = [""] * len(prompts)
    else:
        call.pop("negative_prompt", None)
    out = pipe(prompt=prompts, generator=[torch.Generator().manual_seed(s) for s in seeds],
               num_inference_steps=steps, output_type="np", **call)
    return to_uint8(out.images)


def adherence(pipe, specs, steps: int, call: dict, batch: int = 40) -> dict:
    fields = {"color": 0, "position": 0, "texture": 0, "shape": 0, "all": 0}
    images = []
    for i in tqdm(range(0, len(specs), batch), desc=f"{steps} steps"):
        chunk = specs[i : i + batch]
        imgs = generate_batch(pipe, [s.prompt() for s in chunk], list(range(i, i + len(chunk))), steps, call)
        for spec, img in zip(chunk, imgs):
            r = check(img, spec)
            fields["color"] += r.color_ok
            fields["position"] += r.position_ok
            fields["texture"] += r.texture_ok
            fields["shape"] += r.shape_ok
            fields["all"] += r.ok
        images.extend(imgs)
    n = len(specs)
    return {"steps": steps, "n": n, **{k: v / n for k, v in fields.items()}}, images


def save_grid(images: list[np.ndarray], prompts: list[str], path: Path, cols: int = 8, scale: int = 2) -> None:
    """Images in a grid (upscaled with nearest neighbour so pixels stay visible), prompts in a side file."""
    h, w, _ = images[0].shape
    rows = (len(images) + cols - 1) // cols
    grid = np.full((rows * (h * scale + 4), cols * (w * scale + 4), 3), 255, np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        big = img.repeat(scale, 0).repeat(scale, 1)
        grid[r * (h * scale + 4) : r * (h * scale + 4) + h * scale, c * (w * scale + 4) : c * (w * scale + 4) + w * scale] = big
    Image.fromarray(grid).save(path)
    path.with_suffix(".txt").write_text("\n".join(f"{k // cols},{k % cols}: {p}" for k, p in enumerate(prompts)) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m embedded_model.training.evaluate", description=__doc__)
    p.add_argument("--model", type=Path, default=None, help="FluxPipeline directory (default: the embedded model)")
    p.add_argument("--prompts", type=int, default=120, help="held-out prompts to judge (default: 120)")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 28, 50])
    p.add_argument("--true-cfg-scale", type=float, default=None, help="default: the model's generation defaults")
    p.add_argument("--guidance-scale", type=float, default=None, help="distilled guidance (default: the model's)")
    p.add_argument("--size", type=int, default=None, help="default: the model's trained size")
    p.add_argument("--out", type=Path, default=None, help="where to write eval.json and samples.png (default: the model dir)")
    p.add_argument("--device", default="cpu", help="where to judge, e.g. cuda (the per-image time is taken on the CPU)")
    args = p.parse_args(argv)

    from h2cache.pipelines import generation_defaults, load_pipeline

    pipe = load_pipeline(str(args.model) if args.model else None, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    call = {k: v for k, v in generation_defaults(pipe).items() if k != "num_inference_steps"}
    if args.size:
        call["height"] = call["width"] = args.size
    if args.true_cfg_scale is not None:
        call["true_cfg_scale"] = args.true_cfg_scale
    if args.guidance_scale is not None:
        call["guidance_scale"] = args.guidance_scale
    out = args.out or Path(args.model or pipe.config._name_or_path)
    out.mkdir(parents=True, exist_ok=True)
    specs = sample_specs(args.prompts, seed=123, held_out=True)
    results = []
    for steps in args.steps:
        res, images = adherence(pipe, specs, steps, call)
        results.append(res)
        print(json.dumps(res))
        if steps == 28 or steps == args.steps[0]:
            save_grid(images[:32], [s.prompt() for s in specs[:32]], out / "samples.png")
    pipe.to("cpu")  # the figure the model card gives is a CPU one
    start = time.perf_counter()
    generate_batch(pipe, [specs[0].prompt()], [0], 28, call)
    seconds = time.perf_counter() - start
    summary = {"call": {k: v for k, v in call.items() if k != "negative_prompt"}, "adherence": results,
               "cpu_seconds_28_steps_one_image": seconds, "threads": torch.get_num_threads()}
    (out / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
