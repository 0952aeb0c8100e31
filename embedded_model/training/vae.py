"""Train the embedded model's AutoencoderKL (16 latent channels, 4x downsampling)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..scenes import render, sample_specs
from .checkpoint import LossLog, load_checkpoint, save_checkpoint
from .components import IMAGE_SIZE, SEED, build_vae
from .data import to_tensor_range

KL_WEIGHT = 1e-6


def held_out_images(n: int = 256, size: int = IMAGE_SIZE) -> torch.Tensor:
    specs = sample_specs(n, seed=SEED + 7, held_out=True)
    return to_tensor_range(np.stack([render(s, size, seed=10_000 + i) for i, s in enumerate(specs)]))


@torch.no_grad()
def reconstruction_psnr(vae, images: torch.Tensor, batch: int = 64) -> float:
    """Mean PSNR (dB, images in [0, 1]) of encode-mean -> decode."""
    vae.eval()
    scores = []
    for i in range(0, len(images), batch):
        x = images[i : i + batch]
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        mse = ((rec - x) / 2).pow(2).flatten(1).mean(1)
        scores.append(10 * torch.log10(1.0 / mse.clamp_min(1e-10)))
    vae.train()
    return float(torch.cat(scores).mean())


def random_crops(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """One random square crop per image; the VAE is fully convolutional, so crops train it 4x cheaper."""
    if size >= x.shape[-1]:
        return x
    out = torch.empty(x.shape[0], x.shape[1], size, size)
    offsets = torch.randint(0, x.shape[-1] - size + 1, (x.shape[0], 2), generator=gen)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = x[i, :, dy : dy + size, dx : dx + size]
    return out


def train_vae(images: np.ndarray, out_dir: Path, steps: int, batch_size: int = 32, lr: float = 1e-3,
              crop: int = 32, minutes: float | None = None, eval_every: int = 250, val_count: int = 256) -> Path:
    """Train (or resume) the VAE on random crops; returns the checkpoint path.

    Stops at `steps` or after `minutes` of this run, checkpointing every `eval_every` steps.
    """
    ckpt_path = Path(out_dir) / "vae.pt"
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    state = load_checkpoint(ckpt_path)
    step = 0
    if state:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    log = LossLog(Path(out_dir) / "vae_loss.csv")
    val = held_out_images(val_count)
    gen = torch.Generator().manual_seed(SEED + step)
    data = to_tensor_range(images)
    start = time.time()
    bar = tqdm(total=steps, initial=step, desc="vae")
    vae.train()
    while step < steps:
        # Cosine decay keeps the final PSNR steady instead of bouncing at a high rate.
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(0, len(data), (batch_size,), generator=gen)
        x = random_crops(data[idx], crop, gen)
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + KL_WEIGHT * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        done = step >= steps or (minutes is not None and time.time() - start > minutes * 60)
        if step % eval_every == 0 or done:
            psnr = reconstruction_psnr(vae, val)
            log.write(step, loss=loss.item(), val_psnr=psnr)
            bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{psnr:.2f}")
            save_checkpoint(ckpt_path, model=vae.state_dict(), opt=opt.state_dict(), step=step, val_psnr=psnr)
        if done:
            break
    bar.close()
    return ckpt_path


def import_vae(model_dir: Path, out_dir: Path) -> Path:
    """Reuse a trained FluxPipeline directory's VAE as this run's ``vae.pt`` (and its latent statistics).

    Keeping the latent statistics means a transformer trained on it sees latents normalised exactly
    as the pipeline will scale them at inference.
    """
    from diffusers import AutoencoderKL

    ckpt_path = Path(out_dir) / "vae.pt"
    if ckpt_path.exists():
        return ckpt_path
    vae = AutoencoderKL.from_pretrained(Path(model_dir) / "vae", local_files_only=True)
    fresh = build_vae()
    fresh.load_state_dict(vae.state_dict())  # fails loudly if the architectures differ
    save_checkpoint(Path(out_dir) / "latent_stats.pt", shift_factor=vae.config.shift_factor,
                    scaling_factor=vae.config.scaling_factor)
    save_checkpoint(ckpt_path, model=fresh.state_dict(), step=0, imported_from=str(model_dir))
    return ckpt_path
