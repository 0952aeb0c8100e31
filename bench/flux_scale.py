"""FLUX.1-scale timing check with random weights: ``python -m bench.flux_scale --help``.

The real FluxPipeline runs a FLUX.1-dev-shaped transformer (19 double + 38 single blocks, width 3072,
guidance embedding) at 1024x1024, fed random prompt embeddings, and returns latents (no VAE). It answers
two questions that need FLUX.1's shapes but not its weights:

1. What do the hooks cost when nothing is reused? (threshold 0, compared with no cache), and does threshold 0
   reproduce the uncached latents bit for bit at this scale?
2. How much of a block saving becomes wall time? Thresholds so large that every call after the first
   reuses pin the block pattern down whatever the weights; ``h2cache`` with only ``tau2`` large shows
   stage-2-only reuse (the first 19 + 1 blocks run). The options ``skip_stage2_probe_on_hit`` (one block
   per hit) and the guards of ``h2cache-guarded`` (first 20% of steps, the last step, and every 4th call
   computed) show their own ceilings.

Random weights make the natural hit pattern meaningless, so no realistic threshold is run here; quality
and speed at real thresholds need the real weights (``python -m bench --model ...``).

Example (one H100, about 4 minutes; ``--config tiny`` runs in seconds on a CPU):
    $ python -m bench.flux_scale --device cuda --dtype bfloat16 --steps 28 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from h2cache.methods import apply_method, measure_flop_table

# FLUX.1-dev's transformer and scheduler configs (public model card values); "tiny" keeps the layout.
CONFIGS: dict[str, dict[str, Any]] = {
    "flux1": dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                  num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                  guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
    "tiny": dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                 guidance_embeds=True, axes_dims_rope=(4, 6, 6)),
}
SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
                 num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True)
HUGE = 1e6  # every distance of a sane model is far below this: "always reuse after the first call"

# (label, method, settings); the labels say what the pattern is, since the weights cannot.
VARIANTS: tuple[tuple[str, str, dict[str, float]], ...] = (
    ("no cache", "none", {}),
    ("h2cache, tau1 = tau2 = 0 (hooks only)", "h2cache", {"tau1": 0.0, "tau2": 0.0}),
    ("h2cache, stage-2 reuse only", "h2cache", {"tau1": 0.0, "tau2": HUGE}),
    ("h2cache, full reuse", "h2cache", {"tau1": HUGE, "tau2": HUGE}),
    ("h2cache one probe (option), full reuse", "h2cache", {"tau1": HUGE, "tau2": HUGE,
                                                            "skip_stage2_probe_on_hit": True}),
    ("h2cache guarded (options), full reuse", "h2cache-guarded", {"tau1": HUGE, "tau2": HUGE}),
    ("fbcache, threshold 0 (hooks only)", "fbcache", {"threshold": 0.0}),
    ("fbcache, full reuse", "fbcache", {"threshold": HUGE}),
)


@dataclass
class ScaleRow:
    label: str
    method: str
    settings: dict[str, float]
    seconds: float
    seconds_runs: list[float]
    blocks_share: float
    flops_share: float | None
    speedup: float | None = None
    ideal_speedup: float | None = None
    peak_memory_gib: float | None = None
    matches_uncached: bool | None = None


def build_pipeline(config: str, device: str, dtype: torch.dtype, seed: int = 0) -> Any:
    """A FluxPipeline around a randomly initialised FLUX-shaped transformer; no VAE, no text encoders.

    Weights are drawn N(0, 0.02) with zero biases, the usual transformer init, so activations stay finite
    through 57 blocks in bfloat16.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build directly in the target dtype: FLUX.1 in fp32 would need 48 GB
    try:
        with torch.device(device):
            transformer = FluxTransformer2DModel(**CONFIGS[config])
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        for module in transformer.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, 0.02)
                if module.bias is not None:
                    module.bias.zero_()
    transformer.eval()
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=None, text_encoder=None,
                        tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)  # dozens of calls: the per-variant bar is the useful one
    return pipe


def call_args(pipe: Any, size: int, steps: int, text_tokens: int, seed: int) -> dict[str, Any]:
    """Pipeline arguments with fixed random prompt embeddings (the text encoders are not part of the test)."""
    cfg = pipe.transformer.config
    device, dtype = pipe.transformer.device, pipe.transformer.dtype
    gen = torch.Generator("cpu").manual_seed(seed)
    embeds = torch.randn(1, text_tokens, cfg.joint_attention_dim, generator=gen).to(device, dtype)
    pooled = torch.randn(1, cfg.pooled_projection_dim, generator=gen).to(device, dtype)
    return dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=size, width=size,
                num_inference_steps=steps, guidance_scale=3.5, output_type="latent")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_variant(pipe: Any, label: str, method: str, settings: dict[str, float], args: dict[str, Any],
                flops: Any, warmup: int, repeats: int, seed: int) -> tuple[ScaleRow, torch.Tensor]:
    """Time `repeats` pipeline calls (after `warmup`) with one method applied; returns the row and latents."""
    device = pipe.transformer.device
    handle = apply_method(pipe, method, num_inference_steps=args["num_inference_steps"], flops=flops, **settings)
    times: list[float] = []
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for i in range(warmup + repeats):
            gen = torch.Generator("cpu").manual_seed(seed)
            _sync(device)
            start = time.perf_counter()
            with torch.no_grad():
                latents = pipe(generator=gen, **args).images
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        trace = handle.trace
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        row = ScaleRow(label, method, dict(settings), statistics.median(times), times, trace.blocks_share(),
                       trace.flops_share(), peak_memory_gib=peak)
    finally:
        handle.remove()
    return row, latents.detach().float().cpu()


def run(config: str = "flux1", device: str = "cuda", dtype: torch.dtype = torch.bfloat16, size: int = 1024,
        steps: int = 28, text_tokens: int = 512, warmup: int = 1, repeats: int = 3, seed: int = 0,
        progress: bool = True) -> dict[str, Any]:
    """Build the pipeline and measure every variant; returns the machine, the arguments and the rows."""
    from tqdm.auto import tqdm

    pipe = build_pipeline(config, device, dtype, seed)
    args = call_args(pipe, size, steps, text_tokens, seed)
    flops = measure_flop_table(pipe, prompt=None, **{k: v for k, v in args.items()
                                                      if k not in ("num_inference_steps", "output_type")})
    rows: list[ScaleRow] = []
    reference: torch.Tensor | None = None
    for label, method, settings in tqdm(VARIANTS, desc="variants", disable=not progress):
        row, latents = run_variant(pipe, label, method, settings, args, flops, warmup, repeats, seed)
        if reference is None:
            reference = latents
        elif "hooks only" in label:
            row.matches_uncached = bool(torch.equal(latents, reference))
        rows.append(row)
    base = rows[0].seconds
    for row in rows:
        row.speedup = base / row.seconds
        share = row.flops_share if row.flops_share is not None else row.blocks_share
        row.ideal_speedup = 1.0 / share if share > 0 else None
    dev = torch.device(device)
    machine = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
               "torch": torch.__version__, "threads": torch.get_num_threads()}
    try:
        import diffusers
        machine["diffusers"] = diffusers.__version__
    except ImportError:  # pragma: no cover - diffusers is a hard dependency
        pass
    blocks = len(pipe.transformer.transformer_blocks) + len(pipe.transformer.single_transformer_blocks)
    return {"machine": machine,
            "arguments": {"config": config, "blocks": blocks, "dtype": str(dtype).removeprefix("torch."),
                          "size": size, "image_tokens": flops.image_tokens, "text_tokens": flops.text_tokens,
                          "steps": steps, "warmup": warmup, "repeats": repeats, "seed": seed},
            "rows": [asdict(r) for r in rows]}


def to_markdown(result: dict[str, Any]) -> str:
    a, m = result["arguments"], result["machine"]
    lines = [f"{m['device']}, torch {m['torch']}, diffusers {m.get('diffusers', '?')}; {a['config']} shape "
             f"({a['blocks']} blocks), {a['dtype']}, {a['size']}x{a['size']} ({a['image_tokens']} image + "
             f"{a['text_tokens']} text tokens), {a['steps']} steps, median of {a['repeats']} after "
             f"{a['warmup']} warm-up",
             "",
             "| variant | blocks run | FLOPs run | time (s) | speedup | ideal (1 / FLOPs run) | share of ideal "
             "| peak GPU memory (GiB) | same latents as no cache |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        flops = "n/a" if r["flops_share"] is None else f"{r['flops_share']:.1%}"
        ideal = "n/a" if r["ideal_speedup"] is None else f"{r['ideal_speedup']:.2f}x"
        share = "n/a" if r["ideal_speedup"] is None else f"{r['speedup'] / r['ideal_speedup']:.0%}"
        mem = "n/a" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.2f}"
        same = {None: "", True: "yes (bitwise)", False: "NO"}[r["matches_uncached"]]
        lines.append(f"| {r['label']} | {r['blocks_share']:.1%} | {flops} | {r['seconds']:.3f} | "
                     f"{r['speedup']:.2f}x | {ideal} | {share} | {mem} | {same} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.flux_scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="flux1", help="transformer shape (default: flux1)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                   help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default: 1024 flux1, 128 tiny)")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--text-tokens", type=int, default=None, help="default: 512 flux1, 16 tiny")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write result.json and result.md here")
    a = p.parse_args(argv)
    for name in ("steps", "repeats"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(a, name)}")
    if a.warmup < 0:
        p.error(f"--warmup must be >= 0, got {a.warmup}")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda was asked for but torch sees no CUDA device")
    tiny = a.config == "tiny"
    size = a.size or (128 if tiny else 1024)
    if size < 16 or size % 16:
        p.error(f"--size must be a multiple of 16 and >= 16, got {size}")
    dtype = getattr(torch, a.dtype or ("bfloat16" if a.device.startswith("cuda") else "float32"))
    result = run(a.config, a.device, dtype, size, a.steps, a.text_tokens or (16 if tiny else 512),
                 a.warmup, a.repeats, a.seed)
    text = to_markdown(result)
    print(text)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "result.json").write_text(json.dumps(result, indent=2))
        (a.out / "result.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
