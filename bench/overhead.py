"""Benchmark of what H2-Cache adds to each transformer call: ``python -m bench.overhead --help``.

1. Decision cost (residual, PFS thumbnail, distance, the one host sync, bookkeeping) of both stages,
   timed on the real ``H2ProbeHook.decide``, as a share of one full transformer call:
   on the embedded model, and on FLUX.1-size residuals (B=1, N=4096 image + 512 text tokens, C=3072).
   The FLUX.1-size call is estimated from one measured double block and one single block
   (19 x double + 38 x single; embedders and the output layer are left out, so the share is an upper bound).
2. Wall time of the embedded pipeline with H2-Cache at tau1 = tau2 = 0 (hooks on, nothing reused)
   against no cache, alternating runs, as a ratio of medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import torch

from h2cache.config import H2CacheConfig
from h2cache.hook_machinery import ContextStateManager
from h2cache.apply import apply_h2_cache
from h2cache.hooks import H2CacheState, H2ProbeHook

FLUX_DIM, FLUX_HEADS, FLUX_DOUBLE, FLUX_SINGLE = 3072, 24, 19, 38
FLUX_IMAGE_TOKENS, FLUX_TEXT_TOKENS = 4096, 512


def _time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median seconds of `fn` over `repeats` runs after one warm-up."""
    fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def decision_seconds(image_tokens: int, text_tokens: int, dim: int, device: torch.device, dtype: torch.dtype,
                     config: H2CacheConfig, repeats: int) -> tuple[float, float]:
    """Median time of stage 1's and stage 2's decision on a miss with a reference (the costliest path)."""
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(n: int) -> torch.Tensor:
        return torch.randn(1, n, dim, generator=gen).to(device, dtype)

    h_in, h_out, e_in, e_out = rand(image_tokens), rand(image_tokens), rand(text_tokens), rand(text_tokens)
    manager = ContextStateManager(H2CacheState)
    results = []
    for stage in (0, 1):
        probe = H2ProbeHook(manager, config, stage, is_tail=False)
        state = H2CacheState()
        state.stages[stage].residual = (h_out, e_out)  # a reference exists, so the distance is computed
        probe.decide(state, h_in, e_in, h_out, e_out)
        results.append(_time(lambda: probe.decide(state, h_in, e_in, h_out, e_out), repeats, device))
    return results[0], results[1]


def flux_block_seconds(device: torch.device, dtype: torch.dtype, repeats: int) -> tuple[float, float]:
    """Median forward time of one FLUX.1 double block and one single block at 1024x1024."""
    from diffusers.models.embeddings import FluxPosEmbed
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock

    head_dim = FLUX_DIM // FLUX_HEADS
    n_img, n_txt = FLUX_IMAGE_TOKENS, FLUX_TEXT_TOKENS
    ids = torch.zeros(n_txt + n_img, 3)
    ids[n_txt:, 1] = torch.arange(n_img) // 64
    ids[n_txt:, 2] = torch.arange(n_img) % 64
    rope = FluxPosEmbed(theta=10000, axes_dim=[16, 56, 56])(ids.to(device))
    hidden = torch.randn(1, n_img, FLUX_DIM, device=device, dtype=dtype)
    text = torch.randn(1, n_txt, FLUX_DIM, device=device, dtype=dtype)
    temb = torch.randn(1, FLUX_DIM, device=device, dtype=dtype)
    times = []
    for cls in (FluxTransformerBlock, FluxSingleTransformerBlock):
        block = cls(dim=FLUX_DIM, num_attention_heads=FLUX_HEADS, attention_head_dim=head_dim).to(device, dtype).eval()
        with torch.no_grad():
            times.append(_time(lambda: block(hidden_states=hidden, encoder_hidden_states=text, temb=temb,
                                             image_rotary_emb=rope), repeats, device))
        del block
    return times[0], times[1]


def embedded_rows(repeats: int) -> list[tuple[str, str]]:
    from h2cache.compare import generate
    from h2cache.pipelines import load_pipeline

    pipe = load_pipeline(device="cpu")
    pipe.set_progress_bar_config(disable=True)
    t = pipe.transformer
    captured = {}

    def capture_shape(module, args, kwargs) -> None:  # a pre-hook that returns None changes nothing
        captured["shape"] = (kwargs["hidden_states"].shape[1], kwargs["encoder_hidden_states"].shape[1],
                             kwargs["hidden_states"].shape[2])

    shape_hook = t.transformer_blocks[0].register_forward_pre_hook(capture_shape, with_kwargs=True)
    prompt = "a large red circle at the center on a striped blue background"
    base = generate(pipe, prompt, seed=0, previews=False)
    shape_hook.remove()
    n_img, n_txt, dim = captured["shape"]
    d1, d2 = decision_seconds(n_img, n_txt, dim, torch.device("cpu"), torch.float32, H2CacheConfig(), 200)

    # One transformer call: time the model alone on the captured shapes.
    calls: list[float] = []
    hooks = [t.register_forward_pre_hook(lambda *_: calls.append(time.perf_counter()) and None),
             t.register_forward_hook(lambda *_: calls.append(time.perf_counter()) and None)]
    generate(pipe, prompt, seed=0, previews=False)
    per_call = statistics.median(calls[i + 1] - calls[i] for i in range(0, len(calls) - 1, 2))
    for hook in hooks:
        hook.remove()

    off, on = [], []
    for _ in range(repeats):
        off.append(generate(pipe, prompt, seed=0, previews=False).seconds)
        with apply_h2_cache(pipe, H2CacheConfig(tau1=0, tau2=0)):
            on.append(generate(pipe, prompt, seed=0, previews=False).seconds)
    ratio = statistics.median(on) / statistics.median(off)
    return [
        ("embedded model: tokens (image, text), width", f"{n_img}, {n_txt}, {dim}"),
        ("embedded: one transformer call (median)", f"{per_call * 1e3:.2f} ms"),
        ("embedded: decision stage 1 + stage 2", f"{(d1 + d2) * 1e3:.3f} ms ({(d1 + d2) / per_call:.1%} of a call)"),
        (f"embedded pipeline, 28 steps: tau=0 hooks vs no cache (median of {repeats})",
         f"{statistics.median(on):.3f} s vs {statistics.median(off):.3f} s = x{ratio:.3f}"),
        ("(check) baseline image shape", str(base.image.shape)),
    ]


def flux_rows(device: torch.device, dtype: torch.dtype, blocks: bool) -> list[tuple[str, str]]:
    d1, d2 = decision_seconds(FLUX_IMAGE_TOKENS, FLUX_TEXT_TOKENS, FLUX_DIM, device, dtype, H2CacheConfig(), 20)
    label = f"FLUX.1 size on {device.type} ({str(dtype).replace('torch.', '')})"
    rows = [(f"{label}: decision stage 1 / stage 2", f"{d1 * 1e3:.2f} ms / {d2 * 1e3:.2f} ms")]
    if blocks:
        double, single = flux_block_seconds(device, dtype, 1 if device.type == "cpu" else 10)
        call = FLUX_DOUBLE * double + FLUX_SINGLE * single
        rows += [
            (f"{label}: one double / single block", f"{double:.3f} s / {single:.3f} s"),
            (f"{label}: estimated full call (19 double + 38 single)", f"{call:.2f} s"),
            (f"{label}: decision share of a full call", f"{(d1 + d2) / call:.4%}"),
        ]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="alternating pipeline runs per setting (default: 5)")
    p.add_argument("--skip-flux-blocks", action="store_true", help="don't time FLUX.1-size blocks (slow on a CPU)")
    p.add_argument("--skip-embedded", action="store_true")
    args = p.parse_args(argv)
    rows = [("torch threads", str(torch.get_num_threads()))]
    if not args.skip_embedded:
        rows += embedded_rows(args.repeats)
    rows += flux_rows(torch.device("cpu"), torch.float32, not args.skip_flux_blocks)
    if torch.cuda.is_available():
        rows += flux_rows(torch.device("cuda"), torch.bfloat16, True)
    print("| measurement | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
