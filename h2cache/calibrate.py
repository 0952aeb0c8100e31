"""Calibrated H2-Cache: a compute budget or a quality floor in, (tau1, tau2) out.

Thresholds are model-specific and move with the step count, and H2-Cache has two. :func:`calibrate` runs
each calibration prompt once without the cache, then searches the two thresholds along a few lines
``tau2 = r * tau1`` (the published pair has r = 1.47): a coarse sweep of tau1 on each line, then bisection
towards the budget's boundary on each line. Every point is scored on all prompts and seeds: the share of
block executions run and each image's PSNR/SSIM against its uncached baseline.

- ``target_blocks=x``: the best median PSNR among points that run from ``x - 0.05`` to ``x`` of the blocks
  (``share_tolerance``; any point under ``x`` if the search found none in that window), differences under
  0.5 dB counting as ties that go to the larger share; :mod:`h2cache.budget_search` says why a budget is a
  window and not just a ceiling.
- ``min_psnr=y``: the fewest blocks run among points whose PSNR stays at or above ``y`` dB, for the median
  prompt (``floor="median"``) or every prompt (``floor="worst"``).

The search itself (every point) is stored per model fingerprint, size and step count
(:class:`SearchStore`), so any budget can later be answered without running the model
(:func:`stored_calibration`); :func:`search` scores towards several budgets with one set of baselines.
Calibrate on prompts you will not judge on. From the shell:
``python -m h2cache.calibrate --steps 28 50 100 --target-blocks 0.3 0.5 0.7``.

Example:
    >>> import h2cache
    >>> pipe = h2cache.load_pipeline()
    >>> cal = h2cache.calibrate(pipe, ["a small red circle at the top on a plain white background"],
    ...                         num_inference_steps=8, target_blocks=0.6, progress=False)
    >>> cal.blocks_share <= 0.6, cal.config.tau2 >= cal.config.tau1
    (True, True)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from tqdm.auto import tqdm

from .budget_search import COARSE_TAU1, QUALITY_TIE, RATIOS, SHARE_TOLERANCE, pick_for_share, sweep_line
from .config import H2CacheConfig
from .apply import apply_h2_cache
from .methods.calibration import CalibrationStore, model_fingerprint, model_key, prompt_hashes
from .pipelines import generation_defaults
from .scoring import PSNR_CAP, ImageScorer

BISECTIONS = 3
FLOORS = ("median", "worst")


@dataclass
class SearchPoint:
    """One (tau1, tau2) pair scored on every calibration prompt and seed."""

    tau1: float
    tau2: float
    blocks_share: float
    psnr: list[float]
    ssim: list[float]
    shares: list[float] = field(default_factory=list)  # per prompt and seed (searches stored before: empty)

    def floor_psnr(self, floor: str = "median") -> float:
        return statistics.median(self.psnr) if floor == "median" else min(self.psnr)


EXACT = SearchPoint(0.0, 0.0, 1.0, [PSNR_CAP], [1.0])  # thresholds 0 reuse nothing: always within any floor


@dataclass
class Calibration:
    """What :func:`calibrate` chose and how: the config, what it achieved, and every point it scored.

    Attributes:
        config: an :class:`H2CacheConfig` with the chosen tau1/tau2 (pool sizes as given).
        blocks_share: share of block executions the chosen config ran on the calibration prompts.
        psnr, ssim: per prompt and seed, against the uncached images (PSNR capped at 100 dB for identical ones).
        points: every scored point, in search order.
        met: whether the target or floor was met (else the closest point is returned).
        cost_baseline_runs: compute spent, in units of one uncached run (a cached run counts its share).
    """

    config: H2CacheConfig
    blocks_share: float
    psnr: list[float]
    ssim: list[float]
    points: list[SearchPoint]
    met: bool
    target_blocks: float | None = None
    min_psnr: float | None = None
    floor: str = "median"
    cost_baseline_runs: float = 0.0
    num_inference_steps: int = 0
    height: int = 0
    width: int = 0
    source: str = "searched"  # or "stored"


def choose(points: Iterable[SearchPoint], *, target_blocks: float | None = None, min_psnr: float | None = None,
           floor: str = "median", share_tolerance: float = SHARE_TOLERANCE,
           quality_tie: float = QUALITY_TIE) -> tuple[SearchPoint, bool]:
    """The point a budget picks, and whether it meets the budget (else the closest one).

    For `target_blocks`, see :func:`h2cache.budget_search.pick_for_share` (median PSNR, ties within
    `quality_tie` dB go to the larger share).
    """
    candidates = [EXACT, *points]
    if target_blocks is not None:
        return pick_for_share(candidates, target_blocks, share=lambda p: p.blocks_share,
                              quality=lambda p: p.floor_psnr("median"), tolerance=share_tolerance, tie=quality_tie)
    floor_ok = [p for p in candidates if p.floor_psnr(floor) >= min_psnr]
    return min(floor_ok, key=lambda p: (p.blocks_share, -p.floor_psnr(floor))), True


def _check_budget(target_blocks: float | None, min_psnr: float | None, floor: str,
                  share_tolerance: float = SHARE_TOLERANCE) -> None:
    if (target_blocks is None) == (min_psnr is None):
        raise ValueError("give exactly one of target_blocks (share of blocks to run, 0 < x <= 1) and min_psnr (dB)")
    if target_blocks is not None and not (isinstance(target_blocks, (int, float)) and 0 < target_blocks <= 1):
        raise ValueError(f"target_blocks must be a share of blocks from 0 (exclusive) to 1, got {target_blocks!r}")
    if min_psnr is not None and not (isinstance(min_psnr, (int, float)) and math.isfinite(min_psnr) and min_psnr > 0):
        raise ValueError(f"min_psnr must be a positive number of dB, got {min_psnr!r}")
    if floor not in FLOORS:
        raise ValueError(f"floor must be one of {FLOORS}, got {floor!r}")
    if not (isinstance(share_tolerance, (int, float)) and 0 <= share_tolerance <= 1):
        raise ValueError(f"share_tolerance must be a share of blocks from 0 to 1, got {share_tolerance!r}")


class PointScorer:
    """Scores (tau1, tau2) pairs on prompts x seeds (:class:`~h2cache.scoring.ImageScorer`); counts the compute.

    ``call_kwargs`` are the full pipeline call arguments (with ``num_inference_steps``); ``bar`` is ticked
    once per pipeline run.
    """

    def __init__(self, pipe: Any, prompts: list[str], seeds: tuple[int, ...], base: H2CacheConfig,
                 call_kwargs: dict[str, Any], bar: tqdm | None) -> None:
        self.pipe, self.base = pipe, base
        self.images = ImageScorer(pipe, prompts, seeds, call_kwargs, bar)
        self.points: dict[tuple[float, float], SearchPoint] = {}

    @property
    def cost(self) -> float:
        return self.images.cost

    def score(self, tau1: float, tau2: float) -> SearchPoint:
        key = (round(tau1, 6), round(tau2, 6))
        if key in self.points:
            return self.points[key]
        config = H2CacheConfig(**{**asdict(self.base), "tau1": key[0], "tau2": key[1]})
        scored = self.images.score(lambda: apply_h2_cache(self.pipe, config))
        point = SearchPoint(key[0], key[1], scored.blocks_share, scored.psnrs, scored.ssims, scored.shares)
        self.points[key] = point
        return point


def grid() -> list[tuple[float, float]]:
    """The coarse (tau1, tau2) points every search starts from: each tau1 of the sweep on each ratio line."""
    return [(t, t * ratio) for ratio in RATIOS for t in COARSE_TAU1]


def _search(scorer: PointScorer, feasible) -> None:
    """Coarse sweep of each ratio line, then bisection towards the feasibility boundary on each line."""
    for ratio in RATIOS:
        sweep_line(lambda t, r=ratio: scorer.score(t, t * r), COARSE_TAU1, [feasible], BISECTIONS)


def calibrate(pipe: Any, prompts: list[str] | tuple[str, ...], *, num_inference_steps: int,
              target_blocks: float | None = None, min_psnr: float | None = None, seeds: tuple[int, ...] = (0,),
              floor: str = "median", base_config: H2CacheConfig | None = None, store: SearchStore | None = None,
              share_tolerance: float = SHARE_TOLERANCE, progress: bool = True, **call_kwargs: Any) -> Calibration:
    """Search (tau1, tau2) for `pipe` at `num_inference_steps`: exactly one of a compute budget or a PSNR floor.

    Args:
        pipe: a pipeline H2-Cache can be applied to (``h2cache.load_pipeline()``, a FLUX.1 pipeline...).
        prompts: calibration prompts; judge the result on other prompts.
        num_inference_steps: the step count to calibrate for (thresholds move with it).
        target_blocks: the largest share of block executions to run, e.g. 0.5.
        min_psnr: the lowest PSNR in dB to keep against the uncached image, for the `floor` prompt.
        seeds: generator seeds per prompt.
        floor: ``"median"`` or ``"worst"``: which prompt the PSNR floor holds for.
        base_config: pool sizes and options to keep (thresholds are searched); ``H2CacheConfig()`` by default.
        store: where to save the search (every point) for :func:`stored_calibration`; not saved if None.
        share_tolerance: with `target_blocks`, the window under the target the choice is made in first.
        progress: show a progress bar over pipeline runs.
        **call_kwargs: passed to the pipeline (e.g. ``height``, ``width``); the model's defaults otherwise.

    Returns:
        A :class:`Calibration`. If no point met the budget, the closest one with ``met=False``.

    Raises:
        ValueError: not exactly one of `target_blocks` and `min_psnr`, values out of range, no prompts.
    """
    _check_budget(target_blocks, min_psnr, floor, share_tolerance)
    budget = (("blocks", target_blocks) if target_blocks is not None else (floor, min_psnr),)
    points, cost, args = search(pipe, prompts, num_inference_steps=num_inference_steps, budgets=budget,
                                seeds=seeds, base_config=base_config, store=store, progress=progress, **call_kwargs)
    result = _result(points, target_blocks, min_psnr, floor, base_config or H2CacheConfig(), share_tolerance)
    result.cost_baseline_runs = cost
    result.num_inference_steps = int(num_inference_steps)
    result.height, result.width = _size(args)
    return result


def _size(call_args: dict[str, Any]) -> tuple[int, int]:
    """(height, width) of pipeline call arguments; 0 where the pipeline's own default applies."""
    return int(call_args.get("height", 0) or 0), int(call_args.get("width", 0) or 0)


def search(pipe: Any, prompts: list[str] | tuple[str, ...], *, num_inference_steps: int,
           budgets: Iterable[tuple[str, float]], seeds: tuple[int, ...] = (0,),
           base_config: H2CacheConfig | None = None, store: SearchStore | None = None, progress: bool = True,
           **call_kwargs: Any) -> tuple[list[SearchPoint], float, dict[str, Any]]:
    """Score points towards each budget's boundary with one set of baselines: (points, cost, call arguments).

    A budget is ``("blocks", share)``, ``("median", dB)`` or ``("worst", dB)``. Several budgets in one search
    share the baselines and every point scored, which is how the shipped calibrations cover many budgets.
    """
    prompts = [str(p) for p in prompts]
    if not prompts:
        raise ValueError("calibrate needs at least one prompt")
    budgets = list(budgets)
    args = {**generation_defaults(pipe), **call_kwargs, "num_inference_steps": int(num_inference_steps)}
    base = base_config or H2CacheConfig()
    per_budget = len(RATIOS) * (len(COARSE_TAU1) + BISECTIONS)
    bar = tqdm(total=len(prompts) * len(seeds) * (1 + per_budget * len(budgets)), desc="calibrating H2-Cache",
               unit="run", disable=not progress)
    try:
        scorer = PointScorer(pipe, prompts, tuple(int(s) for s in seeds), base, args, bar)
        for kind, value in budgets:
            if kind == "blocks":
                _search(scorer, lambda p, v=value: p.blocks_share <= v)
            else:
                _search(scorer, lambda p, v=value, k=kind: p.floor_psnr(k) >= v)
    finally:
        bar.close()
    points = list(scorer.points.values())
    if store is not None:
        store.save(pipe, int(num_inference_steps), *_size(args), points, prompts, tuple(seeds), base)
    return points, scorer.cost, args


def _result(points: list[SearchPoint], target_blocks: float | None, min_psnr: float | None, floor: str,
            base: H2CacheConfig, share_tolerance: float = SHARE_TOLERANCE) -> Calibration:
    chosen, met = choose(points, target_blocks=target_blocks, min_psnr=min_psnr, floor=floor,
                         share_tolerance=share_tolerance)
    config = H2CacheConfig(**{**asdict(base), "tau1": chosen.tau1, "tau2": chosen.tau2})
    return Calibration(config=config, blocks_share=chosen.blocks_share, psnr=chosen.psnr, ssim=chosen.ssim,
                       points=points, met=met, target_blocks=target_blocks, min_psnr=min_psnr, floor=floor)


class SearchStore:
    """Searches by model, fingerprint, size and step count, in the project's calibration JSON file.

    Kept under method ``"h2cache"`` of :class:`~h2cache.methods.calibration.CalibrationStore`, keyed
    ``"<width>x<height>/<steps>"``, with the prompts' hashes (so benchmarks can avoid scoring on them).
    """

    def __init__(self, store: CalibrationStore | None = None) -> None:
        self.store = store or CalibrationStore()

    @staticmethod
    def key(steps: int, height: int, width: int) -> str:
        return f"{int(width)}x{int(height)}/{int(steps)}"

    def save(self, pipe: Any, steps: int, height: int, width: int, points: list[SearchPoint], prompts: list[str],
             seeds: tuple[int, ...], base: H2CacheConfig) -> None:
        name, fingerprint = model_key(pipe), model_fingerprint(pipe.transformer)
        searches = dict(self.store.get(name, fingerprint, "h2cache") or {})
        searches[self.key(steps, height, width)] = {
            "points": [asdict(p) for p in points], "prompt_hashes": prompt_hashes(prompts), "seeds": list(seeds),
            "pool_size_stage1": base.pool_size_stage1, "pool_size_stage2": base.pool_size_stage2,
        }
        self.store.put(name, fingerprint, "h2cache", searches)

    def searches(self, pipe: Any) -> dict[str, Any]:
        """Every stored search for `pipe`'s model and weights, by ``"<width>x<height>/<steps>"``."""
        return dict(self.store.get(model_key(pipe), model_fingerprint(pipe.transformer), "h2cache") or {})


def stored_calibration(pipe: Any, num_inference_steps: int, height: int, width: int, *,
                       target_blocks: float | None = None, min_psnr: float | None = None, floor: str = "median",
                       store: SearchStore | None = None,
                       share_tolerance: float = SHARE_TOLERANCE) -> Calibration | None:
    """Answer a budget from a stored search for exactly this model, size and step count; None if none is stored."""
    searches = (store or SearchStore()).searches(pipe)
    return calibration_from_searches(searches, num_inference_steps, height, width, target_blocks=target_blocks,
                                     min_psnr=min_psnr, floor=floor, share_tolerance=share_tolerance)


def calibration_from_searches(searches: dict[str, Any], num_inference_steps: int, height: int, width: int, *,
                              target_blocks: float | None = None, min_psnr: float | None = None,
                              floor: str = "median",
                              share_tolerance: float = SHARE_TOLERANCE) -> Calibration | None:
    """:func:`stored_calibration` on searches already read (:meth:`SearchStore.searches`); None if none fits."""
    _check_budget(target_blocks, min_psnr, floor, share_tolerance)
    found = searches.get(SearchStore.key(num_inference_steps, height, width))
    if not found:
        return None
    points = [SearchPoint(**p) for p in found["points"]]
    base = H2CacheConfig(pool_size_stage1=found["pool_size_stage1"], pool_size_stage2=found["pool_size_stage2"])
    result = _result(points, target_blocks, min_psnr, floor, base, share_tolerance)
    result.num_inference_steps, result.height, result.width = int(num_inference_steps), int(height), int(width)
    result.source = "stored"
    return result


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m h2cache.calibrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded", help="'embedded' (default), a hub id or a local FluxPipeline directory")
    p.add_argument("--steps", type=int, nargs="+", required=True, help="step counts to calibrate, e.g. 28 50 100")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--target-blocks", type=float, nargs="+", help="largest shares of blocks to run, e.g. 0.3 0.5")
    budget.add_argument("--min-psnr", type=float, nargs="+", help="PSNR floors in dB")
    p.add_argument("--floor", choices=FLOORS, default="median")
    p.add_argument("--prompts", type=int, default=8, help="calibration prompts (embedded model: training-split scenes)")
    p.add_argument("--prompts-file", default=None,
                   help="calibrate on this file's first --prompts prompts (one per line, '#' comments); "
                        "needed for models other than the embedded one")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--size", type=int, default=None, help="width and height (default: the model's)")
    published = H2CacheConfig()
    p.add_argument("--pool-size-stage1", type=int, default=published.pool_size_stage1,
                   help=f"PFS pool size of stage 1 the thresholds are searched for (default: the published "
                        f"{published.pool_size_stage1}); stored with the search")
    p.add_argument("--pool-size-stage2", type=int, default=published.pool_size_stage2,
                   help=f"PFS pool size of stage 2 (default: the published {published.pool_size_stage2})")
    p.add_argument("--no-store", action="store_true", help="do not save the search")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from .prompt_split import is_embedded, read_prompts, split_prompts
    from .pipelines import load_pipeline

    args = _parse(argv)
    try:  # before loading a model that may take minutes
        base = H2CacheConfig(pool_size_stage1=args.pool_size_stage1, pool_size_stage2=args.pool_size_stage2)
    except ValueError as exc:
        raise SystemExit(f"--pool-size-stage1/--pool-size-stage2: {exc}") from None
    from_file = read_prompts(args.prompts_file) if args.prompts_file else None
    if from_file is None and not is_embedded(args.model):
        raise SystemExit(f"--model {args.model}: give --prompts-file with calibration prompts (not the ones you "
                         "will judge on); only the embedded model has its own")
    prompts = split_prompts(args.model, prompts=[], num_prompts=0, calibration_count=args.prompts,
                            calibration=from_file).calibration
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    size = {"height": args.size, "width": args.size} if args.size else {}
    store = None if args.no_store else SearchStore()
    budgets = [("blocks", v) for v in args.target_blocks or []] + [(args.floor, v) for v in args.min_psnr or []]
    for kind, value in budgets:
        _check_budget(value if kind == "blocks" else None, value if kind != "blocks" else None, args.floor)
    print("| steps | budget | tau1 | tau2 | blocks run | median PSNR | worst PSNR | met |")
    print("|---|---|---|---|---|---|---|---|")
    for steps in args.steps:
        points, cost, _ = search(pipe, prompts, num_inference_steps=steps, budgets=budgets, seeds=tuple(args.seeds),
                                 base_config=base, store=store, **size)
        for kind, value in budgets:
            chosen, met = choose(points, **({"target_blocks": value} if kind == "blocks" else {"min_psnr": value}),
                                 floor=args.floor)
            label = f"<= {value:.0%} blocks" if kind == "blocks" else f">= {value:g} dB ({kind})"
            print(f"| {steps} | {label} | {chosen.tau1:.4g} | {chosen.tau2:.4g} | {chosen.blocks_share:.1%} "
                  f"| {statistics.median(chosen.psnr):.2f} | {min(chosen.psnr):.2f} | {'yes' if met else 'no'} |")
        print(f"  ({steps} steps: {len(points)} points, {cost:.1f} baseline runs)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
