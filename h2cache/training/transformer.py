"""Train the embedded FluxTransformer2DModel with rectified flow.

Latents and text embeddings are computed once through the same FluxPipeline
code paths used at inference (``encode_prompt``, ``_pack_latents``), so the
training inputs match what the pipeline feeds the transformer.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import FluxPipeline
from tqdm.auto import tqdm

from .checkpoint import LossLog, load_checkpoint, save_checkpoint
from .components import (
    SEED, T5_MAX_LENGTH, build_scheduler, build_text_encoders, build_tokenizer, build_transformer, build_vae,
    CLIP_MAX_LENGTH,
)
from .data import to_tensor_range

CFG_DROPOUT = 0.1  # share of steps trained on the empty prompt, so true CFG works at inference
EMA_DECAY = 0.999
WARMUP = 100


def assemble_pipeline(work: Path, transformer=None) -> FluxPipeline:
    """A FluxPipeline from the trained VAE checkpoint, the frozen encoders and `transformer`."""
    vae = build_vae()
    state = load_checkpoint(Path(work) / "vae.pt")
    if state is None:
        raise FileNotFoundError(f"{work}/vae.pt is missing: run the 'vae' stage first")
    vae.load_state_dict(state["model"])
    stats = load_checkpoint(Path(work) / "latent_stats.pt")
    if stats is not None:
        vae.register_to_config(scaling_factor=stats["scaling_factor"], shift_factor=stats["shift_factor"])
    clip, t5 = build_text_encoders()
    return FluxPipeline(
        scheduler=build_scheduler(), vae=vae.eval(), text_encoder=clip, tokenizer=build_tokenizer(CLIP_MAX_LENGTH, bos=True),
        text_encoder_2=t5, tokenizer_2=build_tokenizer(T5_MAX_LENGTH, bos=False),
        transformer=transformer if transformer is not None else build_transformer(),
    )


@torch.no_grad()
def encode_dataset(data: dict[str, np.ndarray], work: Path) -> dict[str, torch.Tensor]:
    """Packed, normalised latents and prompt embeddings for every training image (cached)."""
    path = Path(work) / "encoded.pt"
    cached = load_checkpoint(path)
    if cached is not None:
        return cached
    pipe = assemble_pipeline(work)
    means = []
    for i in tqdm(range(0, len(data["images"]), 256), desc="encoding latents"):
        x = to_tensor_range(data["images"][i : i + 256])
        means.append(pipe.vae.encode(x).latent_dist.mode())
    latents = torch.cat(means)
    shift, scale = latents.mean().item(), 1.0 / latents.std().item()
    save_checkpoint(Path(work) / "latent_stats.pt", shift_factor=shift, scaling_factor=scale)
    latents = (latents - shift) * scale
    b, c, h, w = latents.shape
    packed = FluxPipeline._pack_latents(latents, b, c, h, w)

    prompts = [str(p) for p in data["prompts"]]
    unique = sorted(set(prompts)) + [""]
    pooled, seq = [], []
    for i in tqdm(range(0, len(unique), 512), desc="encoding prompts"):
        embeds, pooled_embeds, _ = pipe.encode_prompt(unique[i : i + 512], prompt_2=None, max_sequence_length=T5_MAX_LENGTH)
        seq.append(embeds)
        pooled.append(pooled_embeds)
    index = {p: i for i, p in enumerate(unique)}
    encoded = {
        "latents": packed, "latent_hw": torch.tensor([h, w]),
        "prompt_index": torch.tensor([index[p] for p in prompts]),
        "prompt_embeds": torch.cat(seq), "pooled_embeds": torch.cat(pooled), "empty_index": torch.tensor(index[""]),
    }
    save_checkpoint(path, **encoded)
    return encoded


def train_transformer(data: dict[str, np.ndarray], work: Path, steps: int, batch_size: int = 64, lr: float = 6e-4,
                      minutes: float | None = None, save_every: int = 200) -> Path:
    """Train (or resume) the transformer; returns the checkpoint path."""
    work = Path(work)
    enc = encode_dataset(data, work)
    ckpt_path = work / "transformer.pt"
    model = build_transformer().train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    state = load_checkpoint(ckpt_path)
    step = 0
    if state:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    gen = torch.Generator().manual_seed(SEED + 1 + step)
    h, w = enc["latent_hw"].tolist()
    img_ids = FluxPipeline._prepare_latent_image_ids(batch_size, h // 2, w // 2, "cpu", torch.float32)
    txt_ids = torch.zeros(enc["prompt_embeds"].shape[1], 3)
    log = LossLog(work / "transformer_loss.csv")
    start, running = time.time(), None
    bar = tqdm(total=steps, initial=step, desc="transformer")
    while step < steps:
        warm = min(1.0, (step + 1) / WARMUP)
        for group in opt.param_groups:
            group["lr"] = lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        idx = torch.randint(0, len(enc["latents"]), (batch_size,), generator=gen)
        x0 = enc["latents"][idx]
        p_idx = enc["prompt_index"][idx].clone()
        p_idx[torch.rand(batch_size, generator=gen) < CFG_DROPOUT] = enc["empty_index"]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.sigmoid(torch.randn(batch_size, generator=gen))  # logit-normal, as in SD3
        xt = (1 - t)[:, None, None] * x0 + t[:, None, None] * noise
        pred = model(
            hidden_states=xt, timestep=t, pooled_projections=enc["pooled_embeds"][p_idx],
            encoder_hidden_states=enc["prompt_embeds"][p_idx], txt_ids=txt_ids, img_ids=img_ids, return_dict=False,
        )[0]
        loss = F.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        decay = min(EMA_DECAY, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        done = step >= steps or (minutes is not None and time.time() - start > minutes * 60)
        if step % 50 == 0:
            log.write(step, loss=running)
        if step % save_every == 0 or done:
            save_checkpoint(ckpt_path, model=model.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(), step=step)
        if done:
            break
    bar.close()
    return ckpt_path
