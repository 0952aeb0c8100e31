"""Which samples are hard for every cache, and why (issue 32): a screen at 100 steps and a sensitivity check.

``screen``: per prompt and seed (12, 13), the uncached image, the guarded probe-factor forecast at the
bench's 84%-of-FLOPs point (tau 0.01125, pools 128 / 22) and FirstBlockCache at its 84% point (threshold
0.014975, both from the 100-step auto grid of docs/benchmarks/v2b-100-a), each scored against the uncached
image. Prompts: ``--held N`` draws N held-out-split scene prompts that no file in bench/prompts holds
(seed 2026); ``--prompts FILE`` reads them from a file. Writes one JSON line per sample, resumable.

``kicks``: for one prompt and seed, how much the uncached trajectory amplifies an error: random noise of
relative RMS 1e-4 and 1e-3 added to the latent after steps 10, 30, 60, 90, then the same three caches with
the relative latent error after every step.

    python -m devtools.hard_samples screen --held 12 --out docs/benchmarks/hard-samples/held.jsonl
    python -m devtools.hard_samples screen --prompts bench/prompts/outside_grammar.txt \\
        --out docs/benchmarks/hard-samples/outside-grammar.jsonl
    python -m devtools.hard_samples kicks "an astronaut riding a horse on the moon" 13 \\
        --out docs/benchmarks/hard-samples/kicks-astronaut-13.json      (and seed 12; the same for
        "a big crimson circle in the middle on a dotted teal background", "a photo of a cat sitting on a
        sofa" and "a watercolor painting of mountains at sunset": kicks-crimson/cat/watercolor-12/13.json)
    python -m devtools.hard_samples summary docs/benchmarks/hard-samples/*.jsonl docs/benchmarks/hard-samples/*.json

About 30 s per sample and 7 minutes for ``kicks`` on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import h2cache
from h2cache.compare import generate
from h2cache.lab import lab_flops, run_point
from h2cache.methods import apply_method
from h2cache.metrics import psnr
from h2cache.prompt_split import read_prompts

from .forecast_diagnosis import to_uint8

ROOT = Path(__file__).resolve().parent.parent
STEPS = 100
SEEDS = (12, 13)
FORECAST = ("h2cache-guarded-forecast", dict(pool_size_stage1=128, pool_size_stage2=22, forecast_probe_factor=True,
                                             tau1=0.01125, tau2=0.01125))
FBCACHE = ("fbcache", dict(threshold=0.014975))
PUBLISHED = ("h2cache", dict(pool_size_stage1=128, pool_size_stage2=22, tau1=0.01125, tau2=0.01125))


def held_prompts(n: int) -> list[str]:
    """`n` held-out-split scene prompts that no prompt file of the bench holds."""
    from embedded_model.scenes import sample_specs

    taken: set[str] = set()
    for f in (ROOT / "bench" / "prompts").iterdir():
        taken.update(line.strip() for line in f.read_text().splitlines())
    specs = [s for s in sample_specs(4 * n, seed=2026, held_out=True) if s.prompt() not in taken]
    return list(dict.fromkeys(s.prompt() for s in specs))[:n]


def _pipe() -> tuple[Any, dict[str, Any]]:
    """The embedded model on one CPU thread, and its call at STEPS steps."""
    torch.set_num_threads(1)
    pipe = h2cache.load_pipeline(device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe, {**h2cache.generation_defaults(pipe), "num_inference_steps": STEPS}


def screen(prompts: list[str], out: Path) -> None:
    done = set()
    if out.exists():
        done = {(r["prompt"], r["seed"]) for r in map(json.loads, out.read_text().splitlines())}
    out.parent.mkdir(parents=True, exist_ok=True)
    pipe, call = _pipe()
    flops = lab_flops(pipe, call)
    for prompt in prompts:
        for seed in SEEDS:
            if (prompt, seed) in done:
                continue
            start = time.time()
            base = generate(pipe, prompt, seed=seed, previews=False, **call).image
            f = run_point(pipe, FORECAST[0], FORECAST[1], prompt=prompt, seed=seed, baseline=base, flops=flops, call=call)
            b = run_point(pipe, FBCACHE[0], FBCACHE[1], prompt=prompt, seed=seed, baseline=base, flops=flops, call=call)
            row = dict(prompt=prompt, seed=seed, forecast_psnr=f.psnr, forecast_share=f.share, fb_psnr=b.psnr,
                       fb_share=b.share, secs=time.time() - start)
            print(row, flush=True)
            with out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")


def kicks(prompt: str, seed: int, out: Path) -> None:
    pipe, call = _pipe()

    def run(kick: tuple[int, float] | None = None) -> tuple[np.ndarray, list[torch.Tensor]]:
        latents = []

        def on_step(p, i, t, kw):
            if kick is not None and i == kick[0]:
                x = kw["latents"]
                noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1234))
                kw["latents"] = x + kick[1] * x.norm() / math.sqrt(x.numel()) * noise
            latents.append(kw["latents"].detach().clone())
            return kw

        image = pipe(prompt, **call, output_type="np", callback_on_step_end=on_step,
                     generator=torch.Generator().manual_seed(seed)).images[0]
        return image, latents

    ref, ref_latents = run()
    result: dict = {"prompt": prompt, "seed": seed, "kicks": {}, "methods": {}}
    for step in (10, 30, 60, 90):
        for size in (1e-4, 1e-3):
            image, _ = run((step, size))
            result["kicks"][f"{step}:{size}"] = float(psnr(to_uint8(ref), to_uint8(image)))
            print("kick", step, size, result["kicks"][f"{step}:{size}"], flush=True)
    for name, (method, settings) in {"forecast": FORECAST, "h2cache": PUBLISHED, "fbcache": FBCACHE}.items():
        with apply_method(pipe, method, num_inference_steps=STEPS, **settings) as handle:
            image, latents = run()
            share = handle.trace.blocks_share()
        errors = [float((a - b).norm() / b.norm()) for a, b in zip(latents, ref_latents)]
        result["methods"][name] = {"psnr": float(psnr(to_uint8(ref), to_uint8(image))), "err": errors, "share": share}
        print(name, result["methods"][name]["psnr"], share, flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result))


def summary(paths: list[str]) -> str:
    """Markdown: per screen file the spread of both methods and its three worst samples; per kicks file what a
    kick costs and what each cache reaches."""
    lines = ["| screen | samples | forecast dB worst / median (FLOPs) | FBCache dB worst / median (FLOPs) | "
             "forecast below FBCache | three worst for the forecast |", "|---|---:|---|---|---:|---|"]
    kick_lines = ["| kicks | prompt, seed | kick 1e-3 after step 10 / 30 / 60 / 90: dB | forecast dB (blocks) | "
                  "published dB (blocks) | FBCache dB (blocks) |", "|---|---|---|---|---|---|"]
    for path in paths:
        name = Path(path).name
        if name.endswith(".jsonl"):
            rows = sorted(map(json.loads, Path(path).read_text().splitlines()), key=lambda r: r["forecast_psnr"])
            fb = sorted(r["fb_psnr"] for r in rows)
            share = lambda key: f"{np.mean([r[key] for r in rows]):.0%}"  # noqa: E731
            worst = "; ".join(f"{r['prompt']} ({r['seed']}): {r['forecast_psnr']:.1f} vs {r['fb_psnr']:.1f}"
                              for r in rows[:3])
            lines.append(f"| `{name}` | {len(rows)} | {rows[0]['forecast_psnr']:.2f} / "
                         f"{rows[len(rows) // 2]['forecast_psnr']:.2f} ({share('forecast_share')}) | {fb[0]:.2f} / "
                         f"{fb[len(fb) // 2]:.2f} ({share('fb_share')}) | "
                         f"{sum(r['forecast_psnr'] < r['fb_psnr'] for r in rows)} | {worst} |")
        else:
            data = json.loads(Path(path).read_text())
            kicked = " / ".join(f"{data['kicks'][f'{step}:0.001']:.1f}" for step in (10, 30, 60, 90))
            cells = [f"{m['psnr']:.1f} ({m['share']:.0%})" for m in
                     (data["methods"][k] for k in ("forecast", "h2cache", "fbcache"))]
            kick_lines.append(f"| `{name}` | {data['prompt']}, {data['seed']} | {kicked} | {' | '.join(cells)} |")
    return "\n".join(lines + [""] + kick_lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.hard_samples")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("screen")
    group = s.add_mutually_exclusive_group(required=True)
    group.add_argument("--held", type=int, metavar="N")
    group.add_argument("--prompts", metavar="FILE")
    s.add_argument("--out", required=True)
    k = sub.add_parser("kicks")
    k.add_argument("prompt")
    k.add_argument("seed", type=int)
    k.add_argument("--out", required=True)
    m = sub.add_parser("summary")
    m.add_argument("files", nargs="+")
    args = parser.parse_args()
    if args.command == "screen":
        prompts = held_prompts(args.held) if args.held else read_prompts(Path(args.prompts), 10**6)
        screen(prompts, Path(args.out))
    elif args.command == "kicks":
        kicks(args.prompt, args.seed, Path(args.out))
    else:
        print(summary(args.files))


if __name__ == "__main__":
    main()
