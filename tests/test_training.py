"""Training: one step of each model on a handful of samples, checkpoint round trip, export that loads."""

from __future__ import annotations

import json
import re

import pytest
import torch
from diffusers import FluxPipeline

from embedded_model.training.checkpoint import load_checkpoint, save_checkpoint
from embedded_model.training.data import render_dataset
from embedded_model.training.export import export_pipeline
from embedded_model.training.transformer import train_transformer
from embedded_model.training.vae import train_vae

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


def test_v2_phases_chain_and_export_a_one_call_per_step_model(tmp_path):
    """Pretrain at 64, fine-tune at 128 from its EMA, distil CFG into the guidance input, export."""
    from h2cache.pipelines import EMBEDDED_MODEL_DIR
    from embedded_model.training.components import ARCHITECTURES
    from embedded_model.training.transformer import phase_named
    from embedded_model.training.vae import import_vae

    import_vae(EMBEDDED_MODEL_DIR, tmp_path)
    small = render_dataset(tmp_path / "scenes_64.npz", 4, 64, seed=3)
    large = render_dataset(tmp_path / "scenes_128.npz", 4, 128, seed=3)
    train_transformer(small, tmp_path, steps=1, batch_size=2, arch="v2", phase="pretrain", snapshot_every=1)
    from embedded_model.training.curve import main as curve

    assert curve(["--work", str(tmp_path), "--phase", "pretrain", "--prompts", "2", "--steps", "2"]) == 0
    rows = json.loads((tmp_path / "snapshots" / "curve_pretrain.json").read_text())
    assert [r["training_step"] for r in rows] == [1] and set(rows[0]) >= {"color", "position", "texture", "shape", "all"}
    # Mark the pretrained EMA, so that a fine-tune that started from a fresh (seeded) init would show.
    key = "transformer_blocks.0.attn.to_q.weight"
    state = load_checkpoint(tmp_path / "pretrain.pt")
    state["ema"][key] += 0.5
    save_checkpoint(tmp_path / "pretrain.pt", **state)
    pretrained = state["ema"]
    with pytest.raises(ValueError, match="trains at 128x128"):
        train_transformer(small, tmp_path, steps=1, batch_size=2, arch="v2", phase="finetune")
    train_transformer(large, tmp_path, steps=1, batch_size=2, arch="v2", phase="finetune")
    train_transformer(large, tmp_path, steps=1, batch_size=2, arch="v2", phase="distill")
    # Fine-tuning starts from the pretrained EMA, not from a fresh initialisation.
    finetuned = load_checkpoint(tmp_path / "finetune.pt")["model"]
    assert (finetuned[key] - pretrained[key]).abs().max() < 1e-2
    assert phase_named("v2", "distill").teacher == "finetune"

    out = export_pipeline(tmp_path, tmp_path / "pipe", arch="v2")
    pipe = FluxPipeline.from_pretrained(out, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    arch = ARCHITECTURES["v2"]
    config = pipe.transformer.config
    assert (config.num_layers, config.num_single_layers, config.guidance_embeds) == (8, 16, True)
    assert arch.image_tokens >= 256
    defaults = json.loads((out / "generation_defaults.json").read_text())
    assert defaults["height"] == defaults["width"] == 128 and "true_cfg_scale" not in defaults
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda *args: calls.append(1))
    image = pipe("a small red circle at the center on a plain blue background", num_inference_steps=2,
                 output_type="np", **{k: v for k, v in defaults.items() if k != "num_inference_steps"}).images[0]
    assert image.shape == (128, 128, 3) and len(calls) == 2  # one transformer call per step


def test_a_phase_can_start_from_an_exported_model(tmp_path):
    """A partly trained export is a resume point: the next phase starts from its weights."""
    from h2cache.pipelines import EMBEDDED_MODEL_DIR
    from embedded_model.training.vae import import_vae

    import_vae(EMBEDDED_MODEL_DIR, tmp_path)
    small = render_dataset(tmp_path / "scenes_64.npz", 4, 64, seed=3)
    train_transformer(small, tmp_path, steps=1, batch_size=2, arch="v2", phase="pretrain")
    key = "single_transformer_blocks.3.proj_out.weight"
    state = load_checkpoint(tmp_path / "pretrain.pt")
    state["ema"][key] += 0.25
    save_checkpoint(tmp_path / "pretrain.pt", **state)
    exported = export_pipeline(tmp_path, tmp_path / "partial", arch="v2")
    assert "true_cfg_scale" in json.loads((exported / "generation_defaults.json").read_text())  # not distilled yet

    other = tmp_path / "resumed"
    import_vae(EMBEDDED_MODEL_DIR, other)
    large = render_dataset(other / "scenes_128.npz", 4, 128, seed=3)
    train_transformer(large, other, steps=1, batch_size=2, arch="v2", phase="finetune", init_weights=exported)
    started = load_checkpoint(other / "finetune.pt")["model"]
    assert (started[key] - state["ema"][key]).abs().max() < 1e-2


def test_the_training_command_continues_the_shipped_model_for_one_step(tmp_path):
    """`python -m embedded_model.training` from the checkout, as devtools/train_v2_on_gpu.sh calls it: import the
    shipped VAE, then one 128x128 fine-tune step that starts from the shipped (distilled) model's weights."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from h2cache.pipelines import EMBEDDED_MODEL_DIR

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "embedded_model.training", "--arch", "v2", "--work", str(tmp_path),
            "--images", "4", "--threads", "1"]
    for extra in (["--stage", "vae", "--vae-from", str(EMBEDDED_MODEL_DIR)],
                  ["--stage", "finetune", "--finetune-steps", "1", "--batch-size", "2",
                   "--init-from", str(EMBEDDED_MODEL_DIR)]):
        done = subprocess.run(base + extra, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    state = load_checkpoint(tmp_path / "finetune.pt")
    assert state["step"] == 1
    shipped = FluxPipeline.from_pretrained(EMBEDDED_MODEL_DIR, local_files_only=True).transformer.state_dict()
    key = "single_transformer_blocks.3.proj_out.weight"
    # One step at a small learning rate moves the weights a little away from the shipped ones, not to a fresh init.
    assert 0 < (state["model"][key] - shipped[key]).abs().max() < 1e-2
    assert (tmp_path / "finetune_loss.csv").exists()


def test_the_object_cover_follows_the_packed_tokens_and_weighs_the_loss(tmp_path):
    """`object_cover` is the object's share of each transformer token, in the order FluxPipeline packs latents,
    so `--object-weight` weighs the tokens the object is on: checked against the renderer's mask packed the
    way the pipeline packs latents, and by a training step whose update differs from the plain loss's."""
    from h2cache.pipelines import EMBEDDED_MODEL_DIR
    from embedded_model.scenes import render_with_mask, sample_specs
    from embedded_model.training.vae import import_vae

    data = render_dataset(tmp_path / "scenes_128.npz", 4, 128, seed=3)
    specs = sample_specs(4, seed=3, held_out=False)
    for k, spec in enumerate(specs):
        image, mask = render_with_mask(spec, size=128, seed=3 * 1_000_003 + k)
        assert (image == data["images"][k]).all()
        # The mask at latent resolution (4x down), packed 2x2 per token as the pipeline packs latents.
        latent = torch.from_numpy(mask).reshape(32, 4, 32, 4).mean(dim=(1, 3))[None, None].repeat(1, 16, 1, 1)
        packed = FluxPipeline._pack_latents(latent, 1, 16, 32, 32)[0].mean(-1)
        cover = torch.from_numpy(data["object_cover"][k].astype("float32")).flatten()
        torch.testing.assert_close(cover, packed, atol=1e-3, rtol=0)
        assert 0.005 < float(cover.mean()) < 0.12  # the object is 1-10% of the scene

    updated = {}
    for weight in (0.0, 8.0):
        work = tmp_path / f"w{weight}"
        import_vae(EMBEDDED_MODEL_DIR, work)
        train_transformer(data, work, steps=1, batch_size=2, arch="v2", phase="finetune",
                          init_weights=EMBEDDED_MODEL_DIR, object_weight=weight)
        updated[weight] = load_checkpoint(work / "finetune.pt")["model"]
    key = "transformer_blocks.0.attn.to_q.weight"
    assert not torch.equal(updated[0.0][key], updated[8.0][key])
    with pytest.raises(ValueError, match="object_weight must be >= 0"):
        train_transformer(data, tmp_path / "w0.0", steps=2, batch_size=2, arch="v2", phase="finetune", object_weight=-1)


def test_shape_pairs_differ_only_in_the_outline_and_train_with_the_pair_error(tmp_path):
    """A paired dataset holds each training scene next to the same scene with another shape, rendered with
    one seed (so the two images differ only where the outlines differ); `pair_weight` trains on it with one
    noise and timestep per pair, logs the pair error, and refuses unpaired data, odd batches and a teacher."""
    import csv

    from h2cache.pipelines import EMBEDDED_MODEL_DIR
    from embedded_model.scenes import check, parse_prompt, render_with_mask
    from embedded_model.training.transformer import pair_difference_error
    from embedded_model.training.vae import import_vae

    data = render_dataset(tmp_path / "scenes_128_pairs.npz", 6, 128, seed=3, pairs=True)
    assert data["images"].shape == (6, 128, 128, 3)
    for k in range(0, 6, 2):
        a, b = parse_prompt(str(data["prompts"][k])), parse_prompt(str(data["prompts"][k + 1]))
        assert a.shape != b.shape and a == type(a)(**{**vars(b), "shape": a.shape})
        assert not a.is_held_out() and not b.is_held_out()
        assert check(data["images"][k], a).ok and check(data["images"][k + 1], b).ok
        _, mask_a = render_with_mask(a, 128, seed=3 * 1_000_003 + k // 2)
        _, mask_b = render_with_mask(b, 128, seed=3 * 1_000_003 + k // 2)
        differs = (data["images"][k] != data["images"][k + 1]).any(-1)
        assert differs.any() and not differs[(mask_a == 0) & (mask_b == 0)].any()
    unpaired = render_dataset(tmp_path / "scenes_128_pairs.npz", 6, 128, seed=3)  # another key: rendered anew
    assert not (unpaired["images"] == data["images"]).all()
    with pytest.raises(ValueError, match="must be even"):
        render_dataset(tmp_path / "odd.npz", 5, 128, seed=3, pairs=True)

    # A model that ignores the shape word scores 1; one that predicts the difference exactly scores 0.
    target = torch.randn(4, 8, 16)
    torch.testing.assert_close(pair_difference_error(torch.zeros(4, 8, 16), target, torch.tensor([True, True])),
                               torch.tensor(1.0))
    assert float(pair_difference_error(target + 0.5, target, torch.tensor([True, True]))) < 1e-10
    assert float(pair_difference_error(torch.zeros(4, 8, 16), target, torch.tensor([False, False]))) == 0.0

    import_vae(EMBEDDED_MODEL_DIR, tmp_path)
    train_transformer(data, tmp_path, steps=2, batch_size=2, arch="v2", phase="finetune",
                      init_weights=EMBEDDED_MODEL_DIR, pair_weight=0.5)
    assert (tmp_path / "encoded_128_pairs.pt").exists() and load_checkpoint(tmp_path / "finetune.pt")["step"] == 2
    rows = list(csv.DictReader((tmp_path / "finetune_loss.csv").open()))
    assert rows[-1]["step"] == "2" and 0.0 <= float(rows[-1]["pair_error"]) < 5.0
    with pytest.raises(ValueError, match="needs a paired dataset"):
        train_transformer(unpaired, tmp_path / "u", steps=1, batch_size=2, arch="v2", phase="finetune", pair_weight=1)
    with pytest.raises(ValueError, match="even batch_size"):
        train_transformer(data, tmp_path, steps=3, batch_size=3, arch="v2", phase="finetune", pair_weight=1)
    with pytest.raises(ValueError, match="without a teacher"):
        train_transformer(data, tmp_path, steps=1, batch_size=2, arch="v2", phase="distill", pair_weight=1)
    with pytest.raises(ValueError, match="pair_weight must be >= 0"):
        train_transformer(data, tmp_path, steps=3, batch_size=2, arch="v2", phase="finetune", pair_weight=-1)
    with pytest.raises(ValueError, match=r"pair_min_t must be in \[0, 1\)"):
        train_transformer(data, tmp_path, steps=3, batch_size=2, arch="v2", phase="finetune", pair_weight=1,
                          pair_min_t=1.0)
    # A floor no drawn noise level reaches leaves no pair in the pair error: it is logged as 0.
    high = tmp_path / "high"
    import_vae(EMBEDDED_MODEL_DIR, high)
    train_transformer(data, high, steps=1, batch_size=2, arch="v2", phase="finetune",
                      init_weights=EMBEDDED_MODEL_DIR, pair_weight=0.5, pair_min_t=0.999999)
    assert float(list(csv.DictReader((high / "finetune_loss.csv").open()))[-1]["pair_error"]) == 0.0


def test_pair_error_splits_what_the_noise_shows_from_what_the_shape_word_adds(capsys):
    """`python -m embedded_model.training.pair_error` on the shipped model: one row per noise level, the pair
    error with each scene's own prompt and with one prompt for both; levels outside (0, 1) are refused."""
    from embedded_model.training.pair_error import main, parse_levels

    assert main(["--pairs", "2", "--levels", "0.3", "0.9"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 0.")]
    assert [r.split("|")[1].strip() for r in rows] == ["0.3", "0.9"]
    for row in rows:
        own, one, added = (float(c) for c in row.split("|")[2:5])
        assert 0 < own < 3 and 0 < one < 3 and added == pytest.approx(one - own, abs=2e-3)
    for bad in (["0"], ["1.0"], ["-0.2"]):
        with pytest.raises(ValueError, match="must lie in"):
            parse_levels(bad)


def test_word_sensitivity_renders_each_shape_word_on_one_scene_and_reads_it_back(capsys):
    """The shape diagnosis on the shipped model: for one scene and seed, the four shape words give four images
    (a real, non-zero pixel difference per pair), one read-back per word, the text encoders' distances per
    pair, and the first word drawn with each other word's T5 sequence, compared with both images."""
    from embedded_model.scenes.grammar import SHAPES
    from embedded_model.training.word_sensitivity import main

    assert main(["--scenes", "1", "--steps", "2"]) == 0
    tables = [[line for line in block.splitlines() if line.startswith("| ") and not line.startswith("| |")]
              for block in capsys.readouterr().out.split("\n\n") if block.startswith("|")]
    pixels, read_back, encoders, channel = tables

    def cells(row):
        return [c.strip() for c in row.strip("|").split("|")[1:]]

    assert [row.split("|")[1].strip() for row in pixels] == list(SHAPES)
    for table in (pixels, encoders):
        for row in table:
            assert cells(row).count("—") == 1 and all(float(c) > 0 for c in cells(row) if c != "—")
    assert [sum(int(c) for c in cells(row)) for row in read_back[1:]] == [1] * len(SHAPES)  # after the header
    assert len(channel) == 1 + len(SHAPES) - 1 and all(float(c) >= 0 for row in channel[1:] for c in cells(row))
    with pytest.raises(SystemExit):
        main(["--scenes", "0"])


@pytest.mark.parametrize("flag, value, says", [
    ("--timestep-shift", "0", "must be a number > 0, got '0'"),
    ("--pair-weight", "-1", "must be a number >= 0, got '-1'"),
    ("--object-weight", "nan", "must be a number >= 0, got 'nan'"),
    ("--pair-min-t", "1.0000001", r"must be a number in \[0, 1\), got '1.0000001'"),
    ("--finetune-steps", "0", "must be an integer >= 1, got '0'"),
    ("--threads", "two", "must be an integer >= 1, got 'two'"),
])
def test_the_training_cli_refuses_an_out_of_range_number_naming_the_flag(tmp_path, capsys, flag, value, says):
    """A bad number stops the command before any work, with argparse's usage error, not a traceback."""
    from embedded_model.training.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main(["--work", str(tmp_path), "--stage", "export", flag, value])
    assert stop.value.code == 2
    assert re.search(f"argument {flag}: {says}", capsys.readouterr().err)
    assert not any(tmp_path.iterdir())  # refused before touching the work directory


def test_the_training_cli_refuses_an_odd_scene_count_for_pairs(tmp_path):
    from embedded_model.training.__main__ import main

    with pytest.raises(SystemExit, match="--images must be even, got 7"):
        main(["--work", str(tmp_path), "--stage", "finetune", "--images", "7", "--pair-weight", "0.5"])
    assert not any(tmp_path.iterdir())


def test_a_timestep_shift_is_kept_with_the_checkpoint_and_exported_to_the_scheduler(tmp_path):
    """Training at shifted noise levels must sample with the same shift, and a resume cannot change it."""
    data = render_dataset(tmp_path / "scenes.npz", 4, 64, seed=5)
    train_vae(data["images"], tmp_path, steps=1, batch_size=2, val_count=2)
    with pytest.raises(ValueError, match="timestep_shift must be > 0"):
        train_transformer(data, tmp_path, steps=1, batch_size=2, timestep_shift=0.0)
    train_transformer(data, tmp_path, steps=1, batch_size=2, timestep_shift=3.0)
    shifted = load_checkpoint(tmp_path / "transformer.pt")
    assert shifted["timestep_shift"] == 3.0
    # Same seed, same init, same draws: only the noise levels differ, and the step they take shows it.
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    for name in ("vae.pt", "scenes.npz", "encoded.pt"):
        (plain_dir / name).write_bytes((tmp_path / name).read_bytes())
    train_transformer(data, plain_dir, steps=1, batch_size=2)
    unshifted = load_checkpoint(plain_dir / "transformer.pt")["model"]
    assert any(not torch.equal(unshifted[k], v) for k, v in shifted["model"].items())
    with pytest.raises(ValueError, match="timestep_shift=3.0"):
        train_transformer(data, tmp_path, steps=2, batch_size=2)  # the default, 1.0, is not what it trained with
    train_transformer(data, tmp_path, steps=2, batch_size=2, timestep_shift=3.0, snapshot_every=2)
    assert load_checkpoint(tmp_path / "transformer.pt")["step"] == 2
    # The adherence curve samples each snapshot as the export would.
    assert load_checkpoint(tmp_path / "snapshots" / "transformer_000002.pt")["timestep_shift"] == 3.0

    pipe = FluxPipeline.from_pretrained(export_pipeline(tmp_path, tmp_path / "pipe"), local_files_only=True)
    assert pipe.scheduler.config.shift == 3.0 and not pipe.scheduler.config.use_dynamic_shifting
    # The scheduler's sigma map is the one training drew its noise levels through (diffusers shifts its
    # smallest sigma twice, hence the tolerance).
    from diffusers import FlowMatchEulerDiscreteScheduler
    from embedded_model.training.transformer import shift_timesteps

    plain = FlowMatchEulerDiscreteScheduler(shift=1.0)
    for scheduler in (pipe.scheduler, plain):
        scheduler.set_timesteps(4)
    assert torch.allclose(pipe.scheduler.sigmas[:3], shift_timesteps(plain.sigmas[:3], 3.0), atol=5e-3)
    assert (pipe.scheduler.sigmas[1:3] > plain.sigmas[1:3] + 0.15).all()
