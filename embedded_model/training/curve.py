"""Prompt adherence against training steps, from the EMA snapshots a phase saved.

``python -m embedded_model.training.curve --work runs/embedded-v2 --phase finetune --prompts 40``
prints one row per snapshot and writes ``curve.json`` next to them. Adherence is judged as in
``embedded_model.training.evaluate`` (colour, position, texture and shape against the prompt).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..scenes import sample_specs
from .checkpoint import load_checkpoint
from .evaluate import adherence
from .export import call_defaults
from .transformer import assemble_pipeline, ema_transformer, phase_named, trained_shift


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m embedded_model.training.curve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="the training run's work directory")
    p.add_argument("--arch", default="v2")
    p.add_argument("--phase", required=True)
    p.add_argument("--prompts", type=int, default=40, help="held-out prompts per snapshot (default: 40)")
    p.add_argument("--steps", type=int, default=28, help="denoising steps (default: 28)")
    args = p.parse_args(argv)
    phase = phase_named(args.arch, args.phase)
    snapshots = sorted((args.work / "snapshots").glob(f"{phase.name}_*.pt"))
    if not snapshots:
        raise SystemExit(f"no snapshots of {phase.name} in {args.work / 'snapshots'}")
    specs = sample_specs(args.prompts, seed=123, held_out=True)
    call = {k: v for k, v in call_defaults(args.arch, phase.size, phase.teacher is not None).items()
            if k != "num_inference_steps"}
    rows = []
    for path in snapshots:
        state = load_checkpoint(path)
        transformer = ema_transformer(state, args.arch)
        # Sampled as the export would: with the noise-level shift the snapshot trained with.
        pipe = assemble_pipeline(args.work, transformer.eval(), arch=args.arch,
                                 timestep_shift=trained_shift(state))
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            result, _ = adherence(pipe, specs, args.steps, call)
        rows.append({"phase": phase.name, "training_step": state["step"], **result})
        print(json.dumps(rows[-1]), flush=True)
    (args.work / "snapshots" / f"curve_{phase.name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
