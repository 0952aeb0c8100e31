"""``python -m bench``: argument parsing into a :class:`~bench.spec.BenchConfig`."""

from __future__ import annotations

import argparse
import shlex
import sys
import textwrap
from typing import Any

from h2cache.methods import METHODS, get_method, list_families
from .quality import BASES
from .spec import DEFAULT_METHODS, DEFAULT_PROMPTS, TEXT_PROMPTS, BenchConfig, Grid, grid_points, parse_fixed, parse_grid
from .verdicts import PEERS, SUBJECTS


def _method_help() -> str:
    lines = []
    for family, presets in list_families().items():
        lines.append(f"  {family} (family; presets: " + ", ".join(f"{family}/{p} = {n}" for p, n in presets.items())
                     + ")")
    for method in METHODS.values():
        lines.append(f"  {method.name}: {method.summary}")
        for s in method.settings:
            lines.append(f"      {s.describe()}  {s.help}")
        if method.default_grid:
            grid = ":".join(f"{k}={','.join(str(v) for v in vs)}" for k, vs in method.default_grid.items())
            lines.append(f"      default grid: {method.name}:{grid}")
    return "\n".join(lines)


def _method_name(text: str) -> str:
    """A registry name from a registry or family/preset name, as argparse's usage error when unknown."""
    try:
        return get_method(text).name
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Benchmark H2-Cache against FirstBlockCache, TeaCache, MagCache and TaylorSeer on one model:
            wall time (denoising loop and end to end), blocks and FLOPs executed, and PSNR/SSIM/LPIPS
            against the uncached image of the same prompt and seed. Writes results.json, summary.csv,
            samples.csv, comparisons.csv, results.md and PNG plots into --out. Calibration (TeaCache, MagCache,
            the auto grid) never sees the benchmark prompts; verdicts compare each point with each peer's
            Pareto front at the same share of FLOPs, over distinct, non-dominated, non-degenerate points."""),
        epilog="methods and their settings:\n" + _method_help() + textwrap.dedent("""

            examples:
              python -m bench --num-prompts 8 --steps 28 --out runs/bench/embedded-28
              python -m bench --methods none h2cache fbcache --grid h2cache:tau1=0.1,0.2:tau2=0.22
              accelerate launch --multi_gpu --num_processes 2 -m bench --device cpu --out runs/bench/sharded
            (on a machine without GPUs, --multi_gpu is what makes accelerate start several processes)"""))
    parser.add_argument("--model", default="embedded",
                        help="'embedded' (assets/tiny-flux-scenes, offline), a hub id such as "
                             "black-forest-labs/FLUX.1-dev, or a local FluxPipeline directory")
    parser.add_argument("--prompts", default=str(DEFAULT_PROMPTS),
                        help=f"prompt file, one per line, '#' comments (default: the embedded model's scenes; "
                             f"text-in-image captions for FLUX.1: bench/prompts/{TEXT_PROMPTS.name})")
    parser.add_argument("--num-prompts", type=int, default=8,
                        help="score the first N benchmark prompts (0: all); for a prompt file without "
                             "--calibration-prompts-file, its last --calibration-prompts lines are held out first")
    parser.add_argument("--steps", type=int, nargs="+", default=[28], help="denoising step counts, e.g. 28 50 100")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="generator seeds per prompt")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), type=_method_name,
                        metavar="METHOD", help=f"methods to run ('none' is always run as the reference); "
                                               f"choose from {', '.join(METHODS)}, or family/preset")
    parser.add_argument("--grid", action="append", default=[], metavar="METHOD:KEY=V1,V2[:KEY=...]",
                        help="replace a method's default grid (repeatable; a method named again adds points); "
                             "values are range-checked")
    parser.add_argument("--fix", nargs="+", default=[], metavar="KEY=VALUE",
                        help="hold a setting for every method that declares it, in explicit and auto grids alike "
                             "(e.g. pool_size_stage1=128 pool_size_stage2=22: FLUX.1's PFS kernels at the "
                             "embedded model's 128x128)")
    parser.add_argument("--auto-grid", type=float, nargs="+", metavar="SHARE",
                        help="one grid rule for every method: one point per target share of block FLOPs run "
                             "(e.g. 0.85 0.65 0.45 0.3): the best PSNR within 5 points under it on the calibration "
                             "prompts, by the same search for every method, per step count, plus "
                             "the method's default; --grid still wins for the methods it names")
    parser.add_argument("--auto-grid-prompts", type=int, default=2,
                        help="how many of the calibration prompts the --auto-grid scan uses (the same for every method)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed uncached calls before timing, per step count")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per point; the median is reported")
    parser.add_argument("--out", default="runs/bench", help="output directory")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--height", type=int, help="image height (default: the model's)")
    parser.add_argument("--width", type=int, help="image width (default: the model's)")
    parser.add_argument("--max-sequence-length", type=int, help="T5 tokens (default: the model's)")
    parser.add_argument("--guidance-scale", type=float, help="distilled guidance (FLUX.1-dev)")
    parser.add_argument("--calibration", default=None,
                        help="calibration JSON for TeaCache/MagCache (default: h2cache/methods/calibration.json)")
    parser.add_argument("--calibrate", choices=("auto", "force", "never"), default="auto",
                        help="auto: calibrate TeaCache/MagCache where this model has no numbers; force: redo")
    parser.add_argument("--calibration-prompts", type=int, default=8,
                        help="prompts per calibration, never benchmark prompts (embedded model: drawn from the "
                             "training split; a prompt file: its last N lines, held out, unless "
                             "--calibration-prompts-file is given)")
    parser.add_argument("--calibration-prompts-file", default=None,
                        help="prompts for calibration and the auto grid (must share none with the benchmark's)")
    parser.add_argument("--subjects", nargs="+", default=list(SUBJECTS), choices=list(METHODS), metavar="METHOD",
                        help="methods under test in the equal-compute verdicts")
    parser.add_argument("--match-peers", nargs="+", default=list(PEERS), choices=list(METHODS),
                        metavar="METHOD", help="peers whose Pareto fronts the methods under test are compared with "
                                               "(those that ran)")
    parser.add_argument("--verdict-quality", choices=BASES, default="mean",
                        help="quality basis of the verdict table: PSNR of the mean MSE with mean SSIM, the median "
                             "sample, or the worst sample (counts are reported for all three)")
    parser.add_argument("--from-results", metavar="RESULTS_JSON",
                        help="run nothing: rewrite the tables and plots of an earlier run's results.json into --out")
    parser.add_argument("--resume", action="store_true",
                        help="continue a run that stopped: keep --out's auto grid and the (prompt, seed) items its "
                             "shards finished (written as each one ends), run the rest; refused if the settings "
                             "differ")
    parser.add_argument("--no-lpips", action="store_true", help="skip LPIPS (reported as not requested)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--no-decision-cost", action="store_true", help="skip the PFS on/off decision timing")
    return parser


def parse_config(argv: list[str] | None = None) -> BenchConfig:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    return _config_from_args(parser, parser.parse_args(argv), argv)


def _config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> BenchConfig:
    try:
        grids: dict[str, Grid] = {}
        for text in args.grid:
            name, grid = parse_grid(text)
            # A method named again adds its points (e.g. tau pairs that are not a product) instead of
            # silently replacing the earlier ones.
            grids[name] = grid_points(grids[name]) + grid_points(grid) if name in grids else grid
        fixed = parse_fixed(args.fix, tuple(dict.fromkeys(args.methods)))
    except ValueError as exc:
        parser.error(str(exc))
    for name, value in (("--num-prompts", args.num_prompts), ("--warmup", args.warmup)):
        if value < 0:
            parser.error(f"{name} must be >= 0, got {value}")
    if args.auto_grid and not all(0 < t <= 1 for t in args.auto_grid):
        parser.error(f"--auto-grid shares must be in (0, 1], got {args.auto_grid}")
    for name, value in (("--calibration-prompts", args.calibration_prompts),
                        ("--auto-grid-prompts", args.auto_grid_prompts)):
        if value < 1:
            parser.error(f"{name} must be >= 1, got {value}")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if any(s < 2 for s in args.steps):
        parser.error("--steps must all be >= 2")
    overrides: dict[str, Any] = {}
    for key in ("height", "width", "max_sequence_length", "guidance_scale"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return BenchConfig(
        model=args.model, prompts_file=args.prompts, num_prompts=args.num_prompts or None,
        steps=tuple(args.steps), seeds=tuple(args.seeds), methods=tuple(dict.fromkeys(args.methods)), grids=grids,
        fixed=fixed, warmup=args.warmup, repeats=args.repeats, out=args.out, device=args.device,
        call_overrides=overrides,
        calibration_file=args.calibration, calibrate=args.calibrate, calibration_prompts=args.calibration_prompts,
        calibration_prompts_file=args.calibration_prompts_file,
        auto_grid=tuple(args.auto_grid) if args.auto_grid else None, auto_grid_prompts=args.auto_grid_prompts,
        lpips=not args.no_lpips, plots=not args.no_plots, progress=not args.no_progress,
        decision_cost=not args.no_decision_cost, subjects=tuple(dict.fromkeys(args.subjects)),
        match_peers=tuple(dict.fromkeys(args.match_peers)), verdict_quality=args.verdict_quality,
        resume=args.resume, command=shlex.join(["python", "-m", "bench", *argv]))


def rewrite_report(results_json: str, out: str, overrides: BenchConfig | None = None) -> dict[str, Any]:
    """Tables, CSV and plots again from an earlier results.json (e.g. after a change to the report), with the
    verdict settings (subjects, peers, quality basis) and ``plots`` of `overrides` (default: the defaults)."""
    import json
    from dataclasses import fields
    from pathlib import Path

    from .report import write_outputs

    with open(results_json) as f:
        earlier = json.load(f)
    overrides = overrides or BenchConfig()
    known = {f.name for f in fields(BenchConfig)}
    stored = {k: v for k, v in earlier["meta"]["config"].items() if k in known}
    for key in ("steps", "seeds", "methods"):
        if key in stored:
            stored[key] = tuple(stored[key])
    # Verdict settings come from this command line (e.g. another --verdict-quality), the run's from the file.
    config = BenchConfig(**{**stored, "out": out, "subjects": overrides.subjects,
                            "match_peers": overrides.match_peers, "verdict_quality": overrides.verdict_quality,
                            "plots": overrides.plots})
    return write_outputs(Path(out), earlier["meta"], earlier["rows"], config)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    from .runner import ResumeRefused, run_benchmark

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    config = _config_from_args(parser, args, argv)
    if args.from_results:
        results = rewrite_report(args.from_results, config.out, config)
        print(f"[bench] rewrote {config.out}/results.md and plots from {args.from_results}")
        return results
    try:
        results = run_benchmark(config)
    except ResumeRefused as exc:
        parser.error(str(exc))
    if results is not None:
        print(f"[bench] wrote {config.out}/results.md, results.json, summary.csv, samples.csv"
              + (", " + ", ".join(results.get("plots", [])) if results.get("plots") else ""))
    return results
