"""Score chosen settings on the calibration prompts, as the auto grid scores them: for trying ideas out.

The tuning half of the benchmark's rule (tune on calibration prompts, judge on held-out ones) by hand: each
``METHOD|{json settings}`` point runs on the first N calibration prompts of a prompt file (training split,
seed 0, never a benchmark prompt) and prints its mean share of FLOPs and its PSNR against the uncached image
(mean-MSE basis, median and worst prompt). No benchmark prompt is touched, so nothing printed here is a verdict.

``python -m bench.score_points 'h2cache-guarded-forecast|{"tau1": 0.3, "tau2": 0.3, "forecast_probe_factor": true}' \\
    --steps 28 --prompts 8 --fix pool_size_stage1=128 pool_size_stage2=22`` (the points first: ``--fix`` takes
every word after it).

Example:
    >>> parse_point('fbcache|{"threshold": 0.1}'), parse_point("none")
    (('fbcache', {'threshold': 0.1}), ('none', {}))
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from .spec import DEFAULT_PROMPTS, parse_fixed, with_fixed


def parse_point(text: str) -> tuple[str, dict[str, Any]]:
    """``'METHOD|{json}'`` (settings optional) -> (method, settings)."""
    method, _, settings = text.partition("|")
    try:
        parsed = json.loads(settings) if settings.strip() else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"{text!r}: the settings after '|' must be a JSON object ({exc})") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{text!r}: the settings after '|' must be a JSON object")
    return method.strip(), parsed


def mean_mse_psnr(psnrs: tuple[float, ...]) -> float:
    """The PSNR of the mean MSE of images scored one by one (as the benchmark's main basis)."""
    return -10 * math.log10(sum(10 ** (-p / 10) for p in psnrs) / len(psnrs))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.score_points", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("points", nargs="+", metavar="METHOD|{JSON}", help="a method and its settings, e.g. "
                   "'fbcache|{\"threshold\": 0.1}'")
    p.add_argument("--model", default=None, help="FluxPipeline directory or hub id (default: the embedded model)")
    p.add_argument("--prompt-file", type=Path, default=DEFAULT_PROMPTS)
    p.add_argument("--prompts", type=int, default=8, help="calibration prompts to score on (default: 8)")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--fix", nargs="+", default=[], metavar="KEY=VALUE",
                   help="settings held for every point whose method declares them (as python -m bench --fix); "
                        "give it after the points")
    args = p.parse_args(argv)
    try:
        points = [parse_point(text) for text in args.points]
        fixed = parse_fixed(args.fix, tuple(dict.fromkeys(m for m, _ in points)))
        from h2cache.methods import get_method
        for method, settings in points:
            get_method(method).validate(**with_fixed(method, settings, fixed))
    except (ValueError, KeyError) as exc:
        p.error(str(exc))
    if args.prompts < 1 or args.steps < 1:
        p.error("--prompts and --steps must be at least 1")

    import h2cache
    from h2cache.methods import CalibrationStore, measure_flop_table
    from h2cache.prompt_split import read_prompts, split_prompts
    from h2cache.scoring import PSNR_CAP

    from .autogrid import holding, pipeline_measure

    pipe = h2cache.load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    prompts = split_prompts(args.model or "embedded", read_prompts(args.prompt_file), 8,
                            max(8, args.prompts)).calibration[:args.prompts]
    call = {**h2cache.generation_defaults(pipe), "num_inference_steps": args.steps}
    flops = measure_flop_table(pipe, prompts[0], **{k: v for k, v in call.items() if k != "num_inference_steps"})
    measure = holding(pipeline_measure(pipe, prompts, call, CalibrationStore(), flops), fixed)
    print(f"{len(prompts)} calibration prompts, seed 0, {args.steps} steps; fixed: {fixed or 'nothing'}; "
          f"PSNR capped at {PSNR_CAP:g} dB (identical images)\n")
    print("| method | settings | FLOPs run | PSNR dB (mean MSE) | median | worst |")
    print("|---|---|---:|---:|---:|---:|")
    for method, settings in points:
        score = measure(method, settings)
        print(f"| {method} | `{json.dumps(settings)}` | {score.share:.1%} | {mean_mse_psnr(score.psnr):.2f} "
              f"| {score.median_psnr:.2f} | {min(score.psnr):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
