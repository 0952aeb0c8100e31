"""Save the trained model as a FluxPipeline directory (what ``load_pipeline()`` reads)."""

from __future__ import annotations

from pathlib import Path

from h2cache.pipelines import write_generation_defaults
from .components import ARCHITECTURES, T5_MAX_LENGTH
from .transformer import (DISTILL_GUIDANCE, PLANS, assemble_pipeline, checkpoint_path, ema_transformer, load_phase,
                          trained_shift)

DISTILLED_GUIDANCE_SCALE = 3.0  # inside DISTILL_GUIDANCE; the true CFG scale v1 was evaluated at
TRUE_CFG_SCALE = 3.0


def call_defaults(arch: str, size: int, distilled: bool) -> dict:
    """The pipeline call arguments a model trained by this plan expects."""
    defaults = {"height": size, "width": size, "num_inference_steps": 28, "max_sequence_length": T5_MAX_LENGTH}
    if distilled:
        assert DISTILL_GUIDANCE[0] <= DISTILLED_GUIDANCE_SCALE <= DISTILL_GUIDANCE[1]
        return {**defaults, "guidance_scale": DISTILLED_GUIDANCE_SCALE}
    if ARCHITECTURES[arch].guidance_embeds:
        # Not yet distilled: the guidance input must be what training fed it, and CFG takes two calls.
        defaults["guidance_scale"] = 1.0
    return {**defaults, "true_cfg_scale": TRUE_CFG_SCALE, "negative_prompt": ""}


def last_trained_phase(work: Path, arch: str):
    done = [ph for ph in PLANS[arch] if checkpoint_path(work, ph).exists()]
    if not done:
        raise FileNotFoundError(f"no transformer checkpoint of {arch} in {work}: train a phase first")
    return done[-1]


def export_pipeline(work: Path, out: Path, arch: str = "v1") -> Path:
    """Write the EMA transformer of the last phase trained, the VAE (with latent statistics), the encoders
    and the call defaults (``generation_defaults.json``, so a copy of the directory loads with the sizes and
    guidance it was trained for), with the scheduler's shift set to the noise-level shift the phase trained with."""
    phase = last_trained_phase(Path(work), arch)
    state = load_phase(work, arch, phase.name)
    pipe = assemble_pipeline(work, ema_transformer(state, arch).eval(), arch=arch,
                             timestep_shift=trained_shift(state))
    pipe.save_pretrained(out, safe_serialization=True)
    write_generation_defaults(out, call_defaults(arch, phase.size, distilled=phase.teacher is not None))
    write_calibration_prompts(out)
    return Path(out)


CALIBRATION_DRAW = 64  # prompts written; h2cache's calibrations use the first few


def calibration_draw(count: int = CALIBRATION_DRAW) -> list[str]:
    """The training-split scenes that h2cache calibrates the embedded model on (h2cache.prompt_split)."""
    from h2cache.prompt_split import EMBEDDED_SEED

    from ..scenes import sample_specs

    return [s.prompt() for s in sample_specs(count, seed=EMBEDDED_SEED, held_out=False)]


def write_calibration_prompts(out: Path) -> Path:
    """Ship the calibration draw in the model directory, so the installed library needs no scene grammar."""
    from h2cache.prompt_split import CALIBRATION_PROMPTS_FILE

    path = Path(out) / CALIBRATION_PROMPTS_FILE
    path.write_text("# Training-split scenes (seed 2024) that h2cache calibrates this model on; written by the "
                    "export.\n" + "\n".join(calibration_draw()) + "\n")
    return path
