"""Train the embedded model: ``python -m embedded_model.training --help``.

Stages run in order and each resumes from its checkpoint under ``--work``:
render the scene cache, train the VAE (or import one with ``--vae-from``), train
the transformer phases of ``--arch`` (v1: one phase at 64x64; v2: pretrain at
64x64, fine-tune at 128x128, distil CFG into the guidance embedding), export the
FluxPipeline directory. Re-running the same command continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .arg_ranges import above, at_least, count, in_unit_interval
from .components import ARCHITECTURES, IMAGE_SIZE, SEED
from .transformer import PLANS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m embedded_model.training", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=tuple(ARCHITECTURES), default="v2", help="model version (default: v2)")
    phases = sorted({ph.name for plan in PLANS.values() for ph in plan})
    p.add_argument("--stage", choices=("vae", *phases, "export", "all"), default="all",
                   help="which stage to run (default: all); transformer phases must belong to --arch")
    p.add_argument("--work", type=Path, default=None, help="checkpoints, logs and data cache (default: runs/embedded-<arch>)")
    p.add_argument("--out", type=Path, default=Path("assets/tiny-flux-scenes"), help="exported FluxPipeline directory")
    p.add_argument("--images", type=count(1), default=40_000, help="training scenes to render per size (default: 40000)")
    p.add_argument("--vae-steps", type=count(1), default=3000)
    p.add_argument("--vae-from", type=Path, default=None,
                   help="FluxPipeline directory whose VAE to reuse instead of training one (the VAE is fully convolutional)")
    p.add_argument("--transformer-steps", type=count(1), default=3500, help="steps of a phase not named below (v1)")
    p.add_argument("--pretrain-steps", type=count(1), default=3000)
    p.add_argument("--finetune-steps", type=count(1), default=3000)
    p.add_argument("--distill-steps", type=count(1), default=1500)
    p.add_argument("--batch-size", type=count(1), default=None, help="transformer batch size (default: the phase's)")
    p.add_argument("--minutes", type=above(0), default=None, help="stop the current stage after this many minutes (resume later)")
    p.add_argument("--threads", type=count(1), default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start a phase that has no checkpoint yet from this FluxPipeline directory's transformer "
                        "(e.g. a partly trained export), instead of from the previous phase")
    p.add_argument("--object-weight", type=at_least(0), default=0.0,
                   help="weigh each token's loss by 1 + this x the share of it the object covers (default: 0, plain "
                        "MSE); the object is 1-10%% of a scene, so a plain loss is mostly background")
    p.add_argument("--pair-weight", type=at_least(0), default=0.0,
                   help="train the phases without a teacher on pairs of scenes that differ only in the shape, "
                        "adding this x the pair error (how far the two predictions' difference is from the "
                        "targets'; 1 when the shape word is ignored) to the loss (default: 0, unpaired); the "
                        "paired scenes are cached apart (scenes_<size>_pairs.npz)")
    p.add_argument("--pair-min-t", type=in_unit_interval, default=0.0,
                   help="count only pairs drawn at noise level t >= this in the pair error (default: 0, all)")
    p.add_argument("--timestep-shift", type=above(0), default=1.0,
                   help="train at noise levels moved towards pure noise by this shift (the scheduler's sigma map; "
                        "default: 1, the logit-normal levels as drawn); export then samples with the same shift")
    p.add_argument("--snapshot-every", type=count(0), default=500,
                   help="keep an EMA snapshot every this many steps, for the adherence curve (default: 500; 0: none)")
    p.add_argument("--device", default="cpu", help="torch device for encoding and training, e.g. cuda (default: cpu)")
    return p.parse_args(argv)


def phase_steps(args: argparse.Namespace, name: str) -> int:
    return getattr(args, f"{name}_steps", None) or args.transformer_steps


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    work = args.work or Path(f"runs/embedded-{args.arch}")
    from .data import render_dataset

    plan = PLANS[args.arch]
    names = [ph.name for ph in plan]
    if args.stage not in ("vae", "export", "all", *names):
        raise SystemExit(f"--stage {args.stage} is not a phase of --arch {args.arch}: choose from {names}")
    if args.pair_weight and args.images % 2:
        raise SystemExit(f"--pair-weight renders scenes in pairs: --images must be even, got {args.images}")
    if args.init_from and args.stage not in names:
        # With several phases in one run, only the first should start from it; naming the phase says which.
        raise SystemExit(f"--init-from needs --stage set to one phase of {args.arch}: {names}")
    stages = ("vae", *names, "export") if args.stage == "all" else (args.stage,)
    if "vae" in stages:
        if args.vae_from:
            from .vae import import_vae

            import_vae(args.vae_from, work)
        else:
            from .vae import train_vae

            data = render_dataset(work / f"scenes_{IMAGE_SIZE}.npz", args.images, IMAGE_SIZE, SEED)
            train_vae(data["images"], work, steps=args.vae_steps, minutes=args.minutes)
    for phase in plan:
        if phase.name in stages:
            from .transformer import train_transformer

            # Distillation copies a teacher, so a pair loss has nothing to add there.
            pair_weight = 0.0 if phase.teacher else args.pair_weight
            name = f"scenes_{phase.size}_pairs.npz" if pair_weight else f"scenes_{phase.size}.npz"
            data = render_dataset(work / name, args.images, phase.size, SEED, pairs=bool(pair_weight))
            train_transformer(data, work, steps=phase_steps(args, phase.name), batch_size=args.batch_size,
                              minutes=args.minutes, arch=args.arch, phase=phase.name, device=args.device,
                              init_weights=args.init_from, object_weight=args.object_weight,
                              pair_weight=pair_weight, pair_min_t=args.pair_min_t, snapshot_every=args.snapshot_every,
                              timestep_shift=args.timestep_shift)
    if "export" in stages:
        from .export import export_pipeline

        export_pipeline(work, args.out, arch=args.arch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
