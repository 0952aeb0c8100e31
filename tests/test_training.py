"""Training: one step of each model on a handful of samples, checkpoint round trip, export that loads."""

from __future__ import annotations

import torch
from diffusers import FluxPipeline

from h2cache.training.checkpoint import load_checkpoint
from h2cache.training.data import render_dataset
from h2cache.training.export import export_pipeline
from h2cache.training.transformer import train_transformer
from h2cache.training.vae import train_vae

torch.set_num_threads(1)


def test_one_step_each_resume_and_export(tmp_path):
    data = render_dataset(tmp_path / "scenes.npz", 6, 64, seed=3)
    assert data["images"].shape == (6, 64, 64, 3) and len(data["prompts"]) == 6
    again = render_dataset(tmp_path / "scenes.npz", 6, 64, seed=3)  # served from the cache file
    assert (again["images"] == data["images"]).all()

    train_vae(data["images"], tmp_path, steps=1, batch_size=2, val_count=4)
    state = load_checkpoint(tmp_path / "vae.pt")
    assert state["step"] == 1 and "val_psnr" in state
    before = {k: v.clone() for k, v in state["model"].items()}
    train_vae(data["images"], tmp_path, steps=2, batch_size=2, val_count=4)  # resumes at step 1
    state = load_checkpoint(tmp_path / "vae.pt")
    assert state["step"] == 2
    assert any(not torch.equal(before[k], v) for k, v in state["model"].items())

    train_transformer(data, tmp_path, steps=1, batch_size=2)
    tstate = load_checkpoint(tmp_path / "transformer.pt")
    assert tstate["step"] == 1 and set(tstate) >= {"model", "ema", "opt"}
    train_transformer(data, tmp_path, steps=2, batch_size=2)
    assert load_checkpoint(tmp_path / "transformer.pt")["step"] == 2

    out = export_pipeline(tmp_path, tmp_path / "pipe")
    pipe = FluxPipeline.from_pretrained(out, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a small red circle at the center on a plain blue background", height=64, width=64,
                 num_inference_steps=2, max_sequence_length=16, output_type="np").images[0]
    assert image.shape == (64, 64, 3)
