"""``python -m h2cache.bench``: H2-Cache against its peers on one model, prompts and step counts.

Measures per (steps, prompt, seed, method variant): median wall time of the
denoising loop and end to end, transformer blocks and FLOPs executed, and
PSNR/SSIM/LPIPS against the uncached image of the same prompt and seed. Writes
CSV, JSON, a markdown table and PNG plots. Shards prompts across processes under
``accelerate launch``.

The rules that make its verdicts hold on unseen prompts: calibration prompts are
disjoint from the benchmark prompts (:mod:`.prompt_split`), one grid rule for every
method (:mod:`.autogrid`), verdicts against each peer's Pareto front over distinct,
non-dominated, non-degenerate points (:mod:`.verdicts`), and per-sample quality
beside the mean (:mod:`.quality`).

Example:
    >>> from h2cache.bench import parse_config, run_benchmark
    >>> config = parse_config(["--num-prompts", "2", "--methods", "none", "h2cache", "--out", "/tmp/b"])
    >>> config.methods
    ('none', 'h2cache')
    >>> results = run_benchmark(config)                  # doctest: +SKIP
"""

from .cli import build_parser, main, parse_config
from .prompt_split import PromptSplit, split_prompts
from .report import summarize
from .runner import run_benchmark
from .spec import BenchConfig, Variant, expand_variants, parse_grid, read_prompts
from .verdicts import compare_with_fronts, flag_degenerate

__all__ = ["BenchConfig", "PromptSplit", "Variant", "build_parser", "compare_with_fronts", "expand_variants",
           "flag_degenerate", "main", "parse_config", "parse_grid", "read_prompts", "run_benchmark",
           "split_prompts", "summarize"]
