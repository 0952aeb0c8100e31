"""Train the embedded model: ``python -m h2cache.training --help``.

Stages run in order and each resumes from its checkpoint under ``--work``:
render the scene cache, train the VAE, train the transformer, export the
FluxPipeline directory. Re-running the same command continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .components import IMAGE_SIZE, SEED

STAGES = ("vae", "transformer", "export")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m h2cache.training", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=(*STAGES, "all"), default="all", help="which stage to run (default: all)")
    p.add_argument("--work", type=Path, default=Path("runs/embedded"), help="checkpoints, logs and data cache")
    p.add_argument("--out", type=Path, default=Path("assets/tiny-flux-scenes"), help="exported FluxPipeline directory")
    p.add_argument("--images", type=int, default=40_000, help="training scenes to render (default: 40000)")
    p.add_argument("--vae-steps", type=int, default=3000)
    p.add_argument("--transformer-steps", type=int, default=3500)
    p.add_argument("--batch-size", type=int, default=64, help="transformer batch size")
    p.add_argument("--minutes", type=float, default=None, help="stop the current stage after this many minutes (resume later)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from .data import render_dataset

    data = render_dataset(args.work / "scenes.npz", args.images, IMAGE_SIZE, SEED)
    stages = STAGES if args.stage == "all" else (args.stage,)
    if "vae" in stages:
        from .vae import train_vae

        train_vae(data["images"], args.work, steps=args.vae_steps, minutes=args.minutes)
    if "transformer" in stages:
        from .transformer import train_transformer

        train_transformer(data, args.work, steps=args.transformer_steps, batch_size=args.batch_size, minutes=args.minutes)
    if "export" in stages:
        from .export import export_pipeline

        export_pipeline(args.work, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
