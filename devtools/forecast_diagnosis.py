"""Why the guarded forecast breaks some samples: per sample, the forecast against replay with the same
decisions rule, and for each hit the forecast's factor and the latent error against the uncached run.

``python -m devtools.forecast_diagnosis --steps 100 --out runs/diagnosis/forecast-100.json`` runs the fresh
held-out prompts (bench/prompts/embedded_fresh.txt) at one seed, with H2-Cache guarded (20% warm-up, cap 3,
last step) at the given thresholds, once replaying (the published reuse) and once with the probe-measured
forecast, and writes per sample the PSNRs and per step the decisions, the factor each hit used and the
latent's relative error against the uncached latent after that step. ``--summary FILE ...`` prints the
table docs/BENCHMARKS.md shows from stored files.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

import h2cache
from h2cache import forecast as forecast_module
from h2cache.metrics import psnr
from h2cache.prompt_split import read_prompts

PROMPTS = Path(__file__).resolve().parent.parent / "bench" / "prompts" / "embedded_fresh.txt"


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A pipeline's float image in [0, 1] as the 8-bit image the metrics compare."""
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def run(pipe, prompt: str, seed: int, steps: int, config: h2cache.H2CacheConfig | None):
    latents: list[torch.Tensor] = []
    factors: dict[int, float] = {}
    real = forecast_module.ResidualForecast.extrapolate

    def extrapolate(self, residual, step, thumb=None):
        out = real(self, residual, step, thumb)
        if out is not residual and thumb is not None and self.last_thumb is not None:
            line = (self.last_thumb - self.before_thumb).float()
            f = float(((thumb - self.last_thumb).float() * line).sum() / (line * line).sum().clamp_min(1e-12))
            factors[step] = max(factors.get(step, -math.inf), f)
        return out

    def on_step(p, i, t, kw):
        latents.append(kw["latents"].detach().clone())
        return kw

    forecast_module.ResidualForecast.extrapolate = extrapolate
    handle = h2cache.apply_h2_cache(pipe, config) if config is not None else None
    try:
        image = pipe(prompt, **{**h2cache.generation_defaults(pipe), "num_inference_steps": steps},
                     output_type="np", callback_on_step_end=on_step,
                     generator=torch.Generator().manual_seed(seed)).images[0]
        trace = [(r.step, r.hit1, r.hit2, r.d1, r.d2, r.forced_full) for r in handle.trace] if handle else []
    finally:
        forecast_module.ResidualForecast.extrapolate = real
        if handle is not None:
            handle.remove()
    return image, latents, trace, factors


def summary(paths: list[str]) -> str:
    """A markdown table of stored diagnoses: per file, both variants' structure misses, PSNRs and factors."""
    rows = ["| file | variant | structure misses per call (min-max) | PSNR mean of MSE / median / worst | "
            "largest factor | samples forecast > replay |", "|---|---|---|---|---:|---:|"]
    for path in paths:
        data = json.loads(Path(path).read_text())
        for variant in ("replay", "forecast"):
            psnrs = sorted(s[variant]["psnr"] for s in data)
            mean = -10 * math.log10(sum(10 ** (-p / 10) for p in psnrs) / len(psnrs))
            misses = [s[variant]["blocks"] / len(s[variant]["trace"]) for s in data]
            factors = [max(s[variant]["factors"].values(), default=float("nan")) for s in data]
            wins = sum(s["forecast"]["psnr"] > s["replay"]["psnr"] for s in data) if variant == "forecast" else ""
            largest = f"{max(factors):.2f}" if variant == "forecast" else "-"
            rows.append(f"| `{Path(path).name}` | {variant} | {min(misses):.0%}-{max(misses):.0%} | "
                        f"{mean:.2f} / {psnrs[len(psnrs) // 2]:.2f} / {psnrs[0]:.2f} | {largest} | {wins} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.forecast_diagnosis")
    parser.add_argument("--summary", nargs="+", metavar="JSON", help="print the table of stored diagnoses, run nothing")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--tau", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--out", default="runs/diagnosis/forecast.json")
    args = parser.parse_args()
    if args.summary:
        print(summary(args.summary))
        return
    torch.set_num_threads(1)
    pipe = h2cache.load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    base = dict(tau1=args.tau, tau2=args.tau, pool_size_stage1=128, pool_size_stage2=22,
                warmup_steps=math.ceil(0.2 * args.steps), max_consecutive_hits=3, final_full_steps=1,
                num_inference_steps=args.steps)
    variants = {"replay": h2cache.H2CacheConfig(**base),
                "forecast": h2cache.H2CacheConfig(**base, forecast_residual=True, forecast_probe_factor=True)}
    out = []
    for prompt in read_prompts(PROMPTS, args.prompts):
        ref, ref_latents, _, _ = run(pipe, prompt, args.seed, args.steps, None)
        sample = {"prompt": prompt, "seed": args.seed}
        for name, config in variants.items():
            image, latents, trace, factors = run(pipe, prompt, args.seed, args.steps, config)
            errors = [float((a - b).norm() / b.norm()) for a, b in zip(latents, ref_latents)]
            sample[name] = {"psnr": float(min(psnr(to_uint8(ref), to_uint8(image)), 100.0)),
                            "blocks": sum(1 for s in trace if not s[1]),
                            "trace": trace, "factors": factors, "latent_error": errors}
        out.append(sample)
        print(f"{prompt[:50]:50s} replay {sample['replay']['psnr']:.1f}  forecast {sample['forecast']['psnr']:.1f}  "
              f"max factor {max(sample['forecast']['factors'].values(), default=float('nan')):.2f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
