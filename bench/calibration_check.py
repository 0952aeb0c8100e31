"""Do stored H2-Cache calibrations hold on prompts and seeds they never saw? Prints a table.

For each step count and target share of blocks, the thresholds come from the stored search
(:func:`h2cache.stored_calibration`, nothing recomputed); they are then run on held-out benchmark prompts
(the held-out split of the embedded model's scene grammar) and seeds other than the calibration's, and the
achieved share of blocks and PSNR against the uncached images are printed next to the target. With
``--grid``, the search's coarse grid is run on the same held-out set too, and each calibrated choice is
set against the grid's best median PSNR among points that ran no more blocks than it did.

    python -m bench.calibration_check --steps 28 50 100 --targets 0.3 0.45 0.6 0.75 0.85 [--grid]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

from tqdm.auto import tqdm

from h2cache.calibrate import PointScorer, SearchStore, grid, stored_calibration
from h2cache.config import H2CacheConfig
from h2cache.pipelines import generation_defaults, load_pipeline
from embedded_model.scenes import sample_specs

HELD_OUT_SEED = 7  # a draw of the held-out split that no calibration used


def check(pipe: Any, steps: int, targets: list[float], prompts: list[str], seeds: list[int], with_grid: bool = False,
          progress: bool = True, store: SearchStore | None = None, **call_kwargs: Any) -> list[dict[str, Any]]:
    """One row per target: thresholds from the stored calibration, achieved share and PSNR on `prompts` x `seeds`."""
    args = {**generation_defaults(pipe), **call_kwargs, "num_inference_steps": steps}
    height, width = int(args["height"]), int(args["width"])
    runs = len(prompts) * len(seeds) * (1 + len(targets) + (len(grid()) if with_grid else 0))
    found = {t: stored_calibration(pipe, steps, height, width, target_blocks=t, store=store) for t in targets}
    # The thresholds were searched at the search's PFS pool sizes; distances at other pool sizes are another
    # scale, so the check (and its grid) must run at the same ones, not at the library's defaults.
    bases = {(c.config.pool_size_stage1, c.config.pool_size_stage2) for c in found.values() if c is not None}
    pools = bases.pop() if bases else None
    base = H2CacheConfig() if pools is None else H2CacheConfig(pool_size_stage1=pools[0], pool_size_stage2=pools[1])
    with tqdm(total=runs, desc=f"{steps} steps", disable=not progress) as bar:
        scorer = PointScorer(pipe, prompts, tuple(seeds), base, args, bar)
        grid_points = [scorer.score(t1, t2) for t1, t2 in grid()] if with_grid else []
        rows = []
        for target, cal in found.items():
            if cal is None:
                rows.append({"steps": steps, "target": target, "missing": True})
                continue
            held = scorer.score(cal.config.tau1, cal.config.tau2)
            row = {"steps": steps, "target": target, "tau1": cal.config.tau1, "tau2": cal.config.tau2,
                   "pool_sizes": pools, "calibrated_share": cal.blocks_share, "held_out_share": held.blocks_share,
                   "median_psnr": statistics.median(held.psnr), "worst_psnr": min(held.psnr),
                   "share_range": (min(held.shares), max(held.shares))}
            cheaper = [p for p in grid_points if p.blocks_share <= held.blocks_share + 1e-9]
            if cheaper:
                best = max(cheaper, key=lambda p: statistics.median(p.psnr))
                row["grid_best_psnr"] = statistics.median(best.psnr)
            rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    with_grid = any("grid_best_psnr" in r for r in rows)
    extra = " grid's best at no more blocks | gap |" if with_grid else ""
    print("| steps | target | tau1 | tau2 | share on calibration prompts | share held out | off by | one image's share "
          f"| median PSNR | worst PSNR |{extra}")
    print("|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if with_grid else ""))
    for r in rows:
        if r.get("missing"):
            print(f"| {r['steps']} | {r['target']:.0%} | no stored calibration | | | | | | | |")
            continue
        off = (r["held_out_share"] - r["target"]) * 100
        low, high = r["share_range"]
        line = (f"| {r['steps']} | {r['target']:.0%} | {r['tau1']:.3g} | {r['tau2']:.3g} | {r['calibrated_share']:.1%} "
                f"| {r['held_out_share']:.1%} | {off:+.1f} pts | {low:.0%}-{high:.0%} "
                f"| {r['median_psnr']:.2f} dB | {r['worst_psnr']:.2f} dB |")
        if with_grid:
            best = r.get("grid_best_psnr")
            line += (f" {best:.2f} dB | {r['median_psnr'] - best:+.2f} dB |" if best is not None
                     else " no grid point that cheap | |")
        print(line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.calibration_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", default=[28, 50, 100])
    p.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.45, 0.6, 0.75, 0.85])
    p.add_argument("--prompts", type=int, default=8, help="held-out prompts (default: 8)")
    p.add_argument("--seeds", type=int, nargs="+", default=[11, 12], help="seeds, none of the calibration's (default: 11 12)")
    p.add_argument("--grid", action="store_true", help="also run the search's coarse grid on the held-out set")
    args = p.parse_args(argv)
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    prompts = [s.prompt() for s in sample_specs(args.prompts, seed=HELD_OUT_SEED, held_out=True)]
    rows = [row for steps in args.steps for row in check(pipe, steps, args.targets, prompts, args.seeds, args.grid)]
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
