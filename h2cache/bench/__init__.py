"""``python -m h2cache.bench``: H2-Cache against its peers on one model, prompts and step counts.

Measures per (steps, prompt, seed, method variant): median wall time of the
denoising loop and end to end, transformer blocks and FLOPs executed, and
PSNR/SSIM/LPIPS against the uncached image of the same prompt and seed. Writes
CSV, JSON, a markdown table and PNG plots. Shards prompts across processes under
``accelerate launch``.

Example:
    >>> from h2cache.bench import parse_config, run_benchmark
    >>> config = parse_config(["--num-prompts", "2", "--methods", "none", "h2cache", "--out", "/tmp/b"])
    >>> config.methods
    ('none', 'h2cache')
    >>> results = run_benchmark(config)                  # doctest: +SKIP
"""

from .cli import build_parser, main, parse_config
from .report import matched_comparison, summarize
from .runner import run_benchmark
from .spec import BenchConfig, Variant, expand_variants, parse_grid, read_prompts

__all__ = ["BenchConfig", "Variant", "build_parser", "expand_variants", "main", "matched_comparison",
           "parse_config", "parse_grid", "read_prompts", "run_benchmark", "summarize"]
