"""Save the trained model as a FluxPipeline directory (what ``load_pipeline()`` reads)."""

from __future__ import annotations

from pathlib import Path

from ..pipelines import EMBEDDED, GENERATION_DEFAULTS, write_generation_defaults
from .checkpoint import load_checkpoint
from .components import build_transformer
from .transformer import assemble_pipeline


def export_pipeline(work: Path, out: Path) -> Path:
    """Write the EMA transformer, the VAE (with latent statistics), the encoders and the call defaults
    (``generation_defaults.json``, so a copy of the directory loads with the sizes it was trained for)."""
    state = load_checkpoint(Path(work) / "transformer.pt")
    if state is None:
        raise FileNotFoundError(f"{work}/transformer.pt is missing: run the 'transformer' stage first")
    transformer = build_transformer()
    transformer.load_state_dict(state["ema"])
    pipe = assemble_pipeline(work, transformer.eval())
    pipe.save_pretrained(out, safe_serialization=True)
    write_generation_defaults(out, GENERATION_DEFAULTS[EMBEDDED])
    return Path(out)
