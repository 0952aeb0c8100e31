"""The app's FLUX.1 path on a FLUX.1-shaped pipeline with random weights: time, GPU memory, ZeroGPU fit.

Nothing here downloads: the pipeline is built from FLUX.1-dev's published shapes (19 double-stream and
38 single-stream blocks of width 3072, guidance embedding, the 16-channel 8x VAE), saved as a local
directory, and loaded back through ``h2cache.load_pipeline`` as the app would load the hub id. Then the
app's own code runs on it: ``ui.job.run_job`` (the function that is the ZeroGPU call: both runs with
step previews and PFS views, and the metrics) and ``ui.callbacks.build_outputs`` (plots, panels, PNGs).

The text encoders are stand-ins with FLUX.1's output widths (T5: 4096, CLIP: 768) but one layer each,
so the time to encode the prompt with the real T5-XXL (a fraction of a second on a GPU) is left out.
Random weights make random images; the point is the time and the memory of the code path.

    python -m devtools.flux_check                      # FLUX.1-dev shape, 1024x1024, bf16, 28 steps (GPU)
    python -m devtools.flux_check --steps 50           # the longest FLUX.1-dev request the app allows
    python -m devtools.flux_check --preset tiny        # the same code path in seconds on a CPU

Prints a table and writes it as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from h2cache.pipelines import FLUX_DEV, load_pipeline, write_generation_defaults

PROMPT = "a red fox in the snow at dawn, detailed fur, soft light"


@dataclass(frozen=True)
class Preset:
    transformer: dict[str, Any]
    vae_channels: tuple[int, ...]
    vae_layers: int
    size: int
    steps: int
    dtype: torch.dtype
    device: str
    text_layers: int = 1
    t5_dim: int = 4096
    clip_dim: int = 768
    max_sequence_length: int = 512
    notes: list[str] = field(default_factory=list)


FLUX_DEV_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                            guidance_embeds=True, axes_dims_rope=(16, 56, 56))
PRESETS = {
    "flux-dev": Preset(FLUX_DEV_TRANSFORMER, (128, 256, 512, 512), 2, 1024, 28, torch.bfloat16, "cuda"),
    "tiny": Preset(dict(FLUX_DEV_TRANSFORMER, num_layers=2, num_single_layers=4, attention_head_dim=16,
                        num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6)),
                   (8, 8, 16, 16), 1, 256, 4, torch.float32, "cpu", t5_dim=64, clip_dim=32, max_sequence_length=32),
}


def build_pipeline(preset: Preset) -> Any:
    """A FluxPipeline of `preset`'s shapes with random weights, built on the preset's device."""
    from embedded_model.training.components import SPECIAL_TOKENS, vocabulary

    vocab = len(SPECIAL_TOKENS) + len(vocabulary())
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    # 12 B parameters are initialised where they will run, in the dtype they run in (fp32 first would
    # need 48 GB of an 80 GB GPU).
    torch.set_default_dtype(preset.dtype)
    try:
        with torch.device(preset.device):
            return _assemble(preset, vocab)
    finally:
        torch.set_default_dtype(previous)


def _assemble(preset: Preset, vocab: int) -> Any:
    """The pipeline's parts, created under the caller's default device and dtype."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from embedded_model.training.components import build_tokenizer

    transformer = FluxTransformer2DModel(**preset.transformer)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=preset.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(preset.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(preset.vae_channels), layers_per_block=preset.vae_layers,
        norm_num_groups=8 if preset.vae_channels[0] < 32 else 32, scaling_factor=0.3611, shift_factor=0.1159,
        use_quant_conv=False, use_post_quant_conv=False,
    )
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=preset.clip_dim, intermediate_size=preset.clip_dim, projection_dim=preset.clip_dim,
        num_hidden_layers=preset.text_layers, num_attention_heads=4, max_position_embeddings=79,
        pad_token_id=0, bos_token_id=3, eos_token_id=2))
    t5 = T5EncoderModel(T5Config(
        vocab_size=vocab, d_model=preset.t5_dim, d_kv=64, d_ff=preset.t5_dim, num_layers=preset.text_layers,
        num_heads=4, pad_token_id=0, eos_token_id=2, decoder_start_token_id=0,
        feed_forward_proj="gated-gelu"))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=build_tokenizer(77, bos=True),
                        text_encoder_2=t5, tokenizer_2=build_tokenizer(preset.max_sequence_length, bos=False),
                        transformer=transformer)


def _gib(n: int) -> float:
    return n / 2**30


def run_check(preset_name: str, work: Path, settings_path: Path | None = None, steps: int | None = None) -> dict[str, Any]:
    from ui.callbacks import build_outputs
    from ui.job import register_models, run_job
    from ui.models import ModelRegistry
    from ui.settings import DEFAULT_SETTINGS_PATH, load_settings
    from ui.validation import OPTION_INPUTS, validate_request

    preset = PRESETS[preset_name] if steps is None else replace(PRESETS[preset_name], steps=int(steps))
    cuda = preset.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("the flux-dev preset needs a CUDA GPU; use --preset tiny to try the code path on a CPU")
    result: dict[str, Any] = {"preset": preset_name, "size": preset.size, "steps": preset.steps,
                              "dtype": str(preset.dtype).replace("torch.", "")}
    if cuda:
        result["gpu"] = torch.cuda.get_device_name()
    start = time.perf_counter()
    pipe = build_pipeline(preset)
    result["parameters_transformer"] = sum(p.numel() for p in pipe.transformer.parameters())
    model_dir = work / f"flux-shaped-{preset_name}"
    pipe.save_pretrained(model_dir, safe_serialization=True, max_shard_size="10GB")
    write_generation_defaults(model_dir, {"height": preset.size, "width": preset.size, "guidance_scale": 3.5,
                                          "num_inference_steps": preset.steps,
                                          "max_sequence_length": preset.max_sequence_length})
    del pipe
    if cuda:
        torch.cuda.empty_cache()
    result["build_and_save_s"] = time.perf_counter() - start

    settings = load_settings(settings_path or DEFAULT_SETTINGS_PATH)
    loads: list[float] = []

    def loader(key: str) -> Any:
        # The app's allowlisted FLUX.1-dev key, answered from the local directory instead of the hub.
        if key != FLUX_DEV:
            return load_pipeline(key)
        t0 = time.perf_counter()
        loaded = load_pipeline(str(model_dir), device=preset.device)
        loads.append(time.perf_counter() - t0)
        return loaded

    registry = ModelRegistry(settings, loader=loader, cuda_available=True)
    registry.get(FLUX_DEV)
    result["load_s"] = loads[0]
    spec = settings.model(FLUX_DEV)
    request = validate_request(settings, registry.keys, {
        "prompt": PROMPT, "model": FLUX_DEV, "seed": 0, "steps": preset.steps, "width": preset.size,
        "height": preset.size, "tau1": spec.tau1, "tau2": spec.tau2,
        "pool_size_stage1": spec.pool_size_stage1, "pool_size_stage2": spec.pool_size_stage2,
        **{f.name: f.default for f in OPTION_INPUTS},  # the options off, as in the library
    })
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_memory = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    job = run_job(register_models(registry), request)  # what app.py runs inside spaces.GPU
    result["gpu_call_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    outputs = build_outputs(request, job, registry, settings.diff_gain)
    result["post_processing_s"] = time.perf_counter() - t0
    comparison = job.comparison
    result.update({
        "baseline_s": comparison.baseline.seconds, "h2cache_s": comparison.cached.seconds,
        "speedup": comparison.speedup, "blocks_share": comparison.cached.trace.blocks_share(),
        "psnr": job.quality["psnr"], "lpips": job.quality["lpips"], "lpips_reason": job.quality.get("lpips_reason"),
        "pfs_views": len(comparison.cached.pfs or []),
        "pfs_views_bytes": sum(v.thumbnail.nbytes + v.image_magnitude.nbytes for v in comparison.cached.pfs or []),
        "pfs_panel_shown": outputs.pfs_stage1 is not None,
        # What the app asks ZeroGPU for with this request (space.yaml's estimate x margin, within bounds).
        "requested_gpu_duration_s": settings.gpu_call_seconds(FLUX_DEV, preset.steps, preset.size, preset.size),
    })
    result["fits_requested_duration"] = result["gpu_call_s"] <= result["requested_gpu_duration_s"]
    if cuda:
        result["weights_gib"] = _gib(base_memory)
        result["peak_gpu_gib"] = _gib(torch.cuda.max_memory_allocated())
        result["peak_gpu_reserved_gib"] = _gib(torch.cuda.max_memory_reserved())
    return result


def print_table(result: dict[str, Any]) -> None:
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.flux_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=tuple(PRESETS), default="flux-dev")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: the preset's; FLUX.1-dev 28)")
    parser.add_argument("--work", type=Path, default=None, help="where the random-weight model is saved (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="flux-check-") as tmp:
        result = run_check(args.preset, args.work or Path(tmp), steps=args.steps)
    print_table(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
