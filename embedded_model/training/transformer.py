"""Train the embedded FluxTransformer2DModel with rectified flow, in phases.

Latents and text embeddings are computed once per image size through the same
FluxPipeline code paths used at inference (``encode_prompt``, ``_pack_latents``),
so the training inputs match what the pipeline feeds the transformer.

A phase is one training run at one size. v1 has a single phase at 64x64. v2
pretrains at 64x64, fine-tunes at 128x128 (FLUX's RoPE positions carry over),
then distils true CFG into the guidance embedding, as FLUX.1-dev does, so the
shipped model needs one transformer call per step.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import FluxPipeline
from tqdm.auto import tqdm

from .checkpoint import LossLog, load_checkpoint, save_checkpoint
from .components import (
    ARCHITECTURES, CLIP_MAX_LENGTH, SEED, T5_MAX_LENGTH, Architecture, build_scheduler, build_text_encoders,
    build_tokenizer, build_transformer, build_vae,
)
from .data import to_tensor_range

CFG_DROPOUT = 0.1  # share of samples trained on the empty prompt, so true CFG works at inference
EMA_DECAY = 0.999
WARMUP = 100
TEACHER_GUIDANCE = 1.0  # the guidance input a CFG-trained model always sees (it is not yet meaningful)
DISTILL_GUIDANCE = (1.0, 5.0)  # range of CFG scales the distilled model learns to follow


@dataclass(frozen=True)
class Phase:
    """One training run: its size, optimiser settings, and which earlier phase it starts from.

    ``teacher`` names a phase whose EMA model, run with true CFG, gives the targets (guidance distillation).
    """

    name: str
    size: int
    lr: float
    batch_size: int
    init_from: str | None = None
    teacher: str | None = None


PLANS: dict[str, tuple[Phase, ...]] = {
    "v1": (Phase("transformer", 64, 6e-4, 64),),
    "v2": (
        Phase("pretrain", 64, 6e-4, 64),
        Phase("finetune", 128, 3e-4, 32, init_from="pretrain"),
        Phase("distill", 128, 1.5e-4, 32, init_from="finetune", teacher="finetune"),
    ),
}


def phase_named(arch: str, name: str) -> Phase:
    for phase in PLANS[arch]:
        if phase.name == name:
            return phase
    raise ValueError(f"phase {name!r} is not one of {[p.name for p in PLANS[arch]]} for arch {arch!r}")


def assemble_pipeline(work: Path, transformer=None, arch: str = "v1", timestep_shift: float = 1.0) -> FluxPipeline:
    """A FluxPipeline from the trained VAE checkpoint, the frozen encoders and `transformer`, sampling with the
    `timestep_shift` it was trained with."""
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
        scheduler=build_scheduler(timestep_shift), vae=vae.eval(), text_encoder=clip, tokenizer=build_tokenizer(CLIP_MAX_LENGTH, bos=True),
        text_encoder_2=t5, tokenizer_2=build_tokenizer(T5_MAX_LENGTH, bos=False),
        transformer=transformer if transformer is not None else build_transformer(arch),
    )


def is_paired(data: dict[str, np.ndarray]) -> bool:
    """Whether a rendered dataset holds shape pairs (``render_dataset(..., pairs=True)``)."""
    return len(data["key"]) == 4


def encoded_path(work: Path, size: int, pairs: bool = False) -> Path:
    # v1's single size keeps its original file name, so its work directories still resume.
    if pairs:
        return Path(work) / f"encoded_{size}_pairs.pt"
    return Path(work) / ("encoded.pt" if size == 64 else f"encoded_{size}.pt")


@torch.no_grad()
def encode_dataset(data: dict[str, np.ndarray], work: Path, device: str = "cpu", batch: int = 256) -> dict[str, torch.Tensor]:
    """Packed, normalised latents and prompt embeddings for every training image (cached per size).

    The latent shift and scale are computed once, from the first size encoded, and reused for every
    other size: a model fine-tuned at a new size must see latents normalised the same way.
    """
    size = int(data["images"].shape[1])
    path = encoded_path(work, size, is_paired(data))
    cached = load_checkpoint(path)
    if cached is not None:
        return cached
    pipe = assemble_pipeline(work).to(device)
    means = []
    for i in tqdm(range(0, len(data["images"]), batch), desc=f"encoding latents at {size}x{size}"):
        x = to_tensor_range(data["images"][i : i + batch]).to(device)
        means.append(pipe.vae.encode(x).latent_dist.mode().cpu())
    latents = torch.cat(means)
    stats = load_checkpoint(Path(work) / "latent_stats.pt")
    if stats is None:
        stats = {"shift_factor": latents.mean().item(), "scaling_factor": 1.0 / latents.std().item()}
        save_checkpoint(Path(work) / "latent_stats.pt", **stats)
    h, w = latents.shape[-2:]
    packed = pack_normalised(latents, stats["shift_factor"], stats["scaling_factor"])

    prompts = [str(p) for p in data["prompts"]]
    unique = sorted(set(prompts)) + [""]
    pooled, seq = [], []
    for i in tqdm(range(0, len(unique), 512), desc="encoding prompts"):
        embeds, pooled_embeds, _ = pipe.encode_prompt(unique[i : i + 512], prompt_2=None, max_sequence_length=T5_MAX_LENGTH)
        seq.append(embeds.cpu())
        pooled.append(pooled_embeds.cpu())
    index = {p: i for i, p in enumerate(unique)}
    encoded = {
        "latents": packed, "latent_hw": torch.tensor([h, w]),
        "prompt_index": torch.tensor([index[p] for p in prompts]),
        "prompt_embeds": torch.cat(seq), "pooled_embeds": torch.cat(pooled), "empty_index": torch.tensor(index[""]),
    }
    save_checkpoint(path, **encoded)
    return encoded


def checkpoint_path(work: Path, phase: Phase) -> Path:
    return Path(work) / f"{phase.name}.pt"


def snapshot_path(work: Path, phase: Phase, step: int) -> Path:
    return Path(work) / "snapshots" / f"{phase.name}_{step:06d}.pt"


def load_phase(work: Path, arch: str, phase_name: str) -> dict:
    """The checkpoint a finished (or stopped) phase left behind."""
    state = load_checkpoint(checkpoint_path(work, phase_named(arch, phase_name)))
    if state is None:
        raise FileNotFoundError(f"{work}/{phase_name}.pt is missing: run the '{phase_name}' phase first")
    return state


def ema_transformer(state: dict, arch: str) -> torch.nn.Module:
    """The EMA model of a phase checkpoint or snapshot."""
    model = build_transformer(arch)
    model.load_state_dict(state["ema"])
    return model


def trained_shift(state: dict) -> float:
    """The timestep shift a phase checkpoint or snapshot trained with (those from before the option: 1)."""
    return state.get("timestep_shift", 1.0)


def load_ema(work: Path, arch: str, phase_name: str) -> torch.nn.Module:
    """The EMA model a finished (or stopped) phase left behind."""
    return ema_transformer(load_phase(work, arch, phase_name), arch)


def pack_normalised(latents: torch.Tensor, shift_factor: float, scaling_factor: float) -> torch.Tensor:
    """VAE latents (b, c, h, w), normalised as training saw them and packed into FLUX tokens."""
    latents = (latents - shift_factor) * scaling_factor
    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def load_exported(model_dir: Path, arch: str) -> torch.nn.Module:
    """The transformer of an exported FluxPipeline directory, checked against `arch`'s shape."""
    from diffusers import FluxTransformer2DModel

    exported = FluxTransformer2DModel.from_pretrained(Path(model_dir) / "transformer", local_files_only=True)
    model = build_transformer(arch)
    model.load_state_dict(exported.state_dict())  # fails loudly if the shapes differ
    return model


class Denoiser:
    """Calls a FLUX transformer on packed latents with a fixed text/image position layout."""

    def __init__(self, enc: dict[str, torch.Tensor], batch_size: int, device: str) -> None:
        h, w = enc["latent_hw"].tolist()
        self.img_ids = FluxPipeline._prepare_latent_image_ids(batch_size, h // 2, w // 2, device, torch.float32)
        self.txt_ids = torch.zeros(enc["prompt_embeds"].shape[1], 3, device=device)
        self.enc = enc

    def __call__(self, model, xt, t, p_idx, guidance=None) -> torch.Tensor:
        return model(
            hidden_states=xt, timestep=t, guidance=guidance, pooled_projections=self.enc["pooled_embeds"][p_idx],
            encoder_hidden_states=self.enc["prompt_embeds"][p_idx], txt_ids=self.txt_ids, img_ids=self.img_ids,
            return_dict=False,
        )[0]


def pair_difference_error(pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Relative L2 error of the pairs' prediction differences: rows 2i and 2i + 1 form pair i, `keep` (one
    flag per pair) leaves out pairs trained on the empty prompt, whose difference no model can predict.

    Example:
        >>> target = torch.tensor([[[1.0]], [[0.0]]])
        >>> float(pair_difference_error(torch.zeros(2, 1, 1), target, torch.tensor([True])))
        1.0
    """
    if not keep.any():
        return pred.new_zeros(())
    d_pred = (pred[0::2] - pred[1::2])[keep]
    d_target = (target[0::2] - target[1::2])[keep]
    return (d_pred - d_target).pow(2).sum() / d_target.pow(2).sum().clamp_min(1e-12)


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Move noise levels towards pure noise (`shift` > 1) with the map FlowMatchEulerDiscreteScheduler's
    ``shift`` applies to its sigmas, so that training and sampling can spend their steps alike.

    Example:
        >>> shift_timesteps(torch.tensor([0.0, 0.5, 1.0]), 3.0).tolist()
        [0.0, 0.75, 1.0]
    """
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)


def train_transformer(data: dict[str, np.ndarray], work: Path, steps: int, batch_size: int | None = None,
                      lr: float | None = None, minutes: float | None = None, save_every: int = 200,
                      arch: str = "v1", phase: str | None = None, device: str = "cpu",
                      init_weights: Path | None = None, snapshot_every: int = 500,
                      object_weight: float = 0.0, pair_weight: float = 0.0, pair_min_t: float = 0.0,
                      timestep_shift: float = 1.0) -> Path:
    """Train (or resume) one phase of `arch`'s plan on `data` (images at the phase's size); returns the checkpoint.

    Resumes from ``<work>/<phase>.pt``; a phase that has not started yet begins from `init_weights` (a
    FluxPipeline directory, e.g. an exported partly trained model) if given, else from the EMA of its
    ``init_from`` phase. Stops at `steps` or after `minutes` of this run.

    `object_weight` w weighs each token's loss by ``1 + w x`` the share of it the object covers (0: plain
    MSE). The object is 1-10% of a scene, so under a plain loss the background's tokens dominate; shape is the
    attribute the v2 model has not learned.

    `pair_weight` (needs a paired dataset, see ``render_dataset(pairs=True)``) trains on pairs of scenes that
    differ only in the shape, with one noise and one timestep per pair, and adds ``pair_weight x`` the pair
    error: how far the difference of the pair's two predictions is from the difference of their targets,
    relative to the latter (1 when the two predictions are equal, 0 when both outlines are predicted). Circle,
    square and diamond of one size cover nearly the same pixels, so in the plain loss the shape word is worth
    a fraction of a percent. Only pairs drawn at a noise level of at least `pair_min_t` count in the pair
    error, to keep it where the outline is hidden by noise. Measured on the v2 model (model card): either way
    the pair error falls through the noise, not the word (``python -m embedded_model.training.pair_error``
    tells the two apart), and shape adherence does not rise.

    `timestep_shift` S draws the noise levels through :func:`shift_timesteps` (S > 1: more practice at high
    noise, where a scene's layout is decided). The checkpoint keeps S and a resume must pass the same value;
    the export samples with it. Measured on the v2 model (model card): S = 3 for 600 fine-tune steps raised
    striped backgrounds from 38% to 90% against an identical S = 1 arm, and left shapes at chance.
    """
    if object_weight < 0:
        raise ValueError(f"object_weight must be >= 0, got {object_weight}")
    if pair_weight < 0:
        raise ValueError(f"pair_weight must be >= 0, got {pair_weight}")
    if not 0 <= pair_min_t < 1:
        raise ValueError(f"pair_min_t must be in [0, 1), got {pair_min_t}")
    if not timestep_shift > 0:
        raise ValueError(f"timestep_shift must be > 0, got {timestep_shift}")
    work = Path(work)
    spec = phase_named(arch, phase or PLANS[arch][0].name)
    size = int(data["images"].shape[1])
    if size != spec.size:
        raise ValueError(f"phase {spec.name!r} trains at {spec.size}x{spec.size}, got images of {size}x{size}")
    batch_size = batch_size or spec.batch_size
    lr = lr or spec.lr
    if pair_weight and not is_paired(data):
        raise ValueError("pair_weight needs a paired dataset (render_dataset(..., pairs=True), as --pair-weight renders)")
    if pair_weight and (spec.teacher or batch_size % 2):
        raise ValueError(f"pair_weight needs an even batch_size (got {batch_size}) and a phase without a teacher "
                         f"(phase {spec.name!r} distils {spec.teacher!r})")
    enc = {k: v.to(device) for k, v in encode_dataset(data, work, device=device).items()}
    # Rows of the cover follow the packed tokens' row-major order (FluxPipeline._pack_latents).
    cover = torch.from_numpy(data["object_cover"].astype(np.float32)).flatten(1).to(device) if object_weight else None
    ckpt_path = checkpoint_path(work, spec)
    model = build_transformer(arch)
    state = load_checkpoint(ckpt_path)
    if state is None and init_weights is not None:
        model.load_state_dict(load_exported(init_weights, arch).state_dict())
    elif state is None and spec.init_from:
        model.load_state_dict(load_ema(work, arch, spec.init_from).state_dict())
    model = model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    step = 0
    if state:
        resumed_shift = trained_shift(state)
        if resumed_shift != timestep_shift:
            raise ValueError(f"{ckpt_path} was trained with timestep_shift={resumed_shift}; resume it with that "
                             f"value, not {timestep_shift}")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    teacher = load_ema(work, arch, spec.teacher).to(device).eval().requires_grad_(False) if spec.teacher else None
    guided = ARCHITECTURES[arch].guidance_embeds
    gen = torch.Generator(device).manual_seed(SEED + 1 + step)
    denoise = Denoiser(enc, batch_size, device)
    teacher_denoise = Denoiser(enc, 2 * batch_size, device) if teacher is not None else None
    log = LossLog(work / f"{spec.name}_loss.csv")
    start, running, running_pair = time.time(), None, None
    bar = tqdm(total=steps, initial=step, desc=f"{arch} {spec.name} {spec.size}px")
    while step < steps:
        warm = min(1.0, (step + 1) / WARMUP)
        for group in opt.param_groups:
            group["lr"] = lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        if pair_weight:
            # Rows 2i and 2i + 1 of a paired dataset are one pair; they share the noise and the timestep.
            first = 2 * torch.randint(0, len(enc["latents"]) // 2, (batch_size // 2,), generator=gen, device=device)
            idx = torch.stack([first, first + 1], 1).flatten()
            noise = torch.randn((batch_size // 2, *enc["latents"].shape[1:]), generator=gen, device=device)
            noise = noise.repeat_interleave(2, 0)
            t = torch.sigmoid(torch.randn(batch_size // 2, generator=gen, device=device)).repeat_interleave(2)
            dropped = (torch.rand(batch_size // 2, generator=gen, device=device) < CFG_DROPOUT).repeat_interleave(2)
        else:
            idx = torch.randint(0, len(enc["latents"]), (batch_size,), generator=gen, device=device)
            noise = torch.randn((batch_size, *enc["latents"].shape[1:]), generator=gen, device=device)
            t = torch.sigmoid(torch.randn(batch_size, generator=gen, device=device))  # logit-normal, as in SD3
            dropped = None  # drawn below, and only without a teacher, as before pairs existed (same random stream)
        t = shift_timesteps(t, timestep_shift)
        x0 = enc["latents"][idx]
        p_idx = enc["prompt_index"][idx].clone()
        xt = (1 - t)[:, None, None] * x0 + t[:, None, None] * noise
        if teacher is None:
            if dropped is None:
                dropped = torch.rand(batch_size, generator=gen, device=device) < CFG_DROPOUT
            p_idx[dropped] = enc["empty_index"]
            target = noise - x0
            guidance = torch.full((batch_size,), TEACHER_GUIDANCE, device=device) if guided else None
        else:
            lo, hi = DISTILL_GUIDANCE
            guidance = lo + (hi - lo) * torch.rand(batch_size, generator=gen, device=device)
            with torch.no_grad():
                both = teacher_denoise(
                    teacher, torch.cat([xt, xt]), torch.cat([t, t]),
                    torch.cat([p_idx, torch.full_like(p_idx, int(enc["empty_index"]))]),
                    torch.full((2 * batch_size,), TEACHER_GUIDANCE, device=device),
                )
                cond, uncond = both.chunk(2)
                target = uncond + guidance[:, None, None] * (cond - uncond)
        pred = denoise(model, xt, t, p_idx, guidance)
        if cover is None:
            loss = F.mse_loss(pred, target)
        else:
            weight = 1.0 + object_weight * cover[idx]
            loss = ((pred - target).pow(2).mean(-1) * weight).sum() / weight.sum()
        pair_error = None
        if pair_weight:
            pair_error = pair_difference_error(pred, target, ~dropped[0::2] & (t[0::2] >= pair_min_t))
            loss = loss + pair_weight * pair_error
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
        if pair_error is not None:
            running_pair = pair_error.item() if running_pair is None else 0.98 * running_pair + 0.02 * pair_error.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}", **({"pair": f"{running_pair:.3f}"} if pair_weight else {}))
        done = step >= steps or (minutes is not None and time.time() - start > minutes * 60)
        if step % 50 == 0 or done:  # the last step too, so a run stopped early (--minutes) logs where it stopped
            log.write(step, loss=running, **({"pair_error": running_pair} if pair_weight else {}))
        if step % save_every == 0 or done:
            save_checkpoint(ckpt_path, model=model.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(), step=step,
                            timestep_shift=timestep_shift)
        if snapshot_every and step % snapshot_every == 0:
            # Kept for the curve of adherence against training steps (python -m embedded_model.training.curve).
            save_checkpoint(snapshot_path(work, spec, step), ema=ema.state_dict(), step=step, timestep_shift=timestep_shift)
        if done:
            break
    bar.close()
    return ckpt_path
