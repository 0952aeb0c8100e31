"""Do stored H2-Cache calibrations hold on prompts and seeds they never saw? Prints a table.

For each step count and target share of blocks, the thresholds come from the stored search
(:func:`h2cache.stored_calibration`, nothing recomputed); they are then run on held-out benchmark prompts
(the held-out split of the embedded model's scene grammar) and seeds other than the calibration's, and the
achieved share of blocks and PSNR against the uncached images are printed next to the target.

    python -m h2cache.bench.calibration_check --steps 28 50 100 --targets 0.3 0.45 0.6 0.75 0.85
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

from tqdm.auto import tqdm

from ..calibrate import PSNR_CAP, stored_calibration
from ..compare import generate
from ..hooks import apply_h2_cache
from ..metrics import psnr
from ..pipelines import generation_defaults, load_pipeline
from ..scenes import sample_specs

HELD_OUT_SEED = 7  # a draw of the held-out split that no calibration used


def check(pipe: Any, steps: int, targets: list[float], prompts: list[str], seeds: list[int],
          progress: bool = True) -> list[dict[str, Any]]:
    """One row per target: thresholds from the stored calibration, achieved share and PSNR on `prompts` x `seeds`."""
    args = {**generation_defaults(pipe), "num_inference_steps": steps}
    height, width = int(args["height"]), int(args["width"])
    bar = tqdm(total=len(prompts) * len(seeds) * (1 + len(targets)), desc=f"{steps} steps", disable=not progress)
    baselines = {}
    for prompt in prompts:
        for seed in seeds:
            baselines[prompt, seed] = generate(pipe, prompt, seed=seed, previews=False, **args).image
            bar.update(1)
    rows = []
    for target in targets:
        cal = stored_calibration(pipe, steps, height, width, target_blocks=target)
        if cal is None:
            rows.append({"steps": steps, "target": target, "missing": True})
            bar.update(len(baselines))
            continue
        handle = apply_h2_cache(pipe, cal.config)
        ran = total = 0
        scores = []
        try:
            for (prompt, seed), reference in baselines.items():
                image = generate(pipe, prompt, seed=seed, previews=False, **args).image
                ran += sum(r.blocks_run for r in handle.trace)
                total += sum(r.blocks_total for r in handle.trace)
                scores.append(min(psnr(reference, image), PSNR_CAP))
                bar.update(1)
        finally:
            handle.remove()
        rows.append({"steps": steps, "target": target, "tau1": cal.config.tau1, "tau2": cal.config.tau2,
                     "calibrated_share": cal.blocks_share, "held_out_share": ran / total,
                     "median_psnr": statistics.median(scores), "worst_psnr": min(scores)})
    bar.close()
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print("| steps | target | tau1 | tau2 | share on calibration prompts | share held out | off by | median PSNR | worst PSNR |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("missing"):
            print(f"| {r['steps']} | {r['target']:.0%} | no stored calibration | | | | | | |")
            continue
        off = (r["held_out_share"] - r["target"]) * 100
        print(f"| {r['steps']} | {r['target']:.0%} | {r['tau1']:.3g} | {r['tau2']:.3g} | {r['calibrated_share']:.1%} "
              f"| {r['held_out_share']:.1%} | {off:+.1f} pts | {r['median_psnr']:.2f} dB | {r['worst_psnr']:.2f} dB |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m h2cache.bench.calibration_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", default=[28, 50, 100])
    p.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.45, 0.6, 0.75, 0.85])
    p.add_argument("--prompts", type=int, default=4, help="held-out prompts (default: 4)")
    p.add_argument("--seeds", type=int, nargs="+", default=[11, 12], help="seeds, none of the calibration's (default: 11 12)")
    args = p.parse_args(argv)
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    prompts = [s.prompt() for s in sample_specs(args.prompts, seed=HELD_OUT_SEED, held_out=True)]
    rows = [row for steps in args.steps for row in check(pipe, steps, args.targets, prompts, args.seeds)]
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
