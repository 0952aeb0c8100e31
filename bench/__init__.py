"""``python -m bench``: H2-Cache against its peers on one model, prompts and step counts.

Measures per (steps, prompt, seed, method variant): median wall time of the
denoising loop and end to end, transformer blocks and FLOPs executed, and
PSNR/SSIM/LPIPS against the uncached image of the same prompt and seed. Writes
CSV, JSON, a markdown table and PNG plots. Shards prompts across processes under
``accelerate launch``.

The rules that make its verdicts hold on unseen prompts: calibration prompts are
disjoint from the benchmark prompts (:mod:`h2cache.prompt_split`), one grid rule for every
method (:mod:`.autogrid`), verdicts against each peer's Pareto front over distinct,
non-dominated, non-degenerate points (:mod:`.verdicts`), and per-sample quality
beside the mean (:mod:`.quality`).

Example:
    >>> import os, shutil, tempfile
    >>> from bench import parse_config, run_benchmark
    >>> config = parse_config(["--num-prompts", "2", "--methods", "none", "h2cache", "--out", "/tmp/b"])
    >>> config.methods, config.steps, config.lpips
    (('none', 'h2cache'), (28,), True)

    A run small enough for a docstring: one prompt, 6 steps, one H2-Cache point, one timed call, on the CPU
    (so that the results do not depend on the machine's GPU), without LPIPS (its weights come from the network):

    >>> out = tempfile.mkdtemp()
    >>> config = parse_config(["--num-prompts", "1", "--steps", "6", "--methods", "none", "h2cache",
    ...                        "--grid", "h2cache:tau1=0.3:tau2=0.5", "--repeats", "1", "--warmup", "0",
    ...                        "--device", "cpu", "--no-lpips", "--no-plots", "--no-progress",
    ...                        "--no-decision-cost", "--out", out])
    >>> results = run_benchmark(config)
    [bench] WARNING: only 1 prompt(s) x 1 seed(s): ...
    >>> # each point against the uncached image of the same prompt and seed: the reference is that image itself
    >>> [(s["variant"], s["blocks_share"] < 1, s["identical"]) for s in results["summary"]]
    [('none', False, True), ('h2cache(tau1=0.3,tau2=0.5)', True, False)]
    >>> sorted(os.listdir(out))
    ['comparisons.csv', 'results.json', 'results.md', 'samples.csv', 'summary.csv']
    >>> shutil.rmtree(out)
"""

from .cli import build_parser, main, parse_config
from h2cache.prompt_split import PromptSplit, split_prompts
from .report import summarize
from .runner import run_benchmark
from .spec import BenchConfig, Variant, expand_variants, parse_grid, read_prompts
from .verdicts import compare_with_fronts, flag_degenerate

__all__ = ["BenchConfig", "PromptSplit", "Variant", "build_parser", "compare_with_fronts", "expand_variants",
           "flag_degenerate", "main", "parse_config", "parse_grid", "read_prompts", "run_benchmark",
           "split_prompts", "summarize"]
