"""Scoring a cache setting against uncached images: the one scorer of calibration, the benchmark's auto grid,
``bench.score_points`` and ``bench.calibration_check``.

Each (prompt, seed) is generated once without a cache; every setting scored afterwards is one handle over all
of them, and gives per image the share of compute run, the PSNR (capped, so identical images stay finite)
and optionally the SSIM against that image.

Example:
    >>> import h2cache
    >>> pipe = h2cache.load_pipeline()
    >>> pipe.set_progress_bar_config(disable=True)
    >>> call = {**h2cache.generation_defaults(pipe), "num_inference_steps": 6}
    >>> scorer = ImageScorer(pipe, ["a large red circle at the center on a plain blue background"], (0,), call)
    >>> exact = scorer.score(lambda: h2cache.apply_h2_cache(pipe, h2cache.H2CacheConfig(tau1=0, tau2=0)))
    >>> exact.psnrs, exact.shares, scorer.cost
    ([100.0], [1.0], 2.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .compare import generate
from .metrics import psnr, ssim

PSNR_CAP = 100.0  # identical images score this instead of infinity, so medians and JSON stay finite


@dataclass
class Scored:
    """One setting over every (prompt, seed): per-image compute shares, PSNRs, SSIMs (if asked), block counts."""

    shares: list[float] = field(default_factory=list)
    psnrs: list[float] = field(default_factory=list)
    ssims: list[float] = field(default_factory=list)
    blocks_run: int = 0
    blocks_total: int = 0

    @property
    def blocks_share(self) -> float:
        return self.blocks_run / self.blocks_total if self.blocks_total else 1.0


def blocks_share(handle: Any) -> float:
    return handle.trace.blocks_share()


class ImageScorer:
    """Uncached images of `prompts` x `seeds`, made once (on first use unless `eager`), and settings scored
    against them. ``cost`` counts the compute spent in uncached runs; `bar` is ticked once per pipeline run."""

    def __init__(self, pipe: Any, prompts: list[str], seeds: tuple[int, ...], call_kwargs: dict[str, Any],
                 bar: Any = None, eager: bool = True) -> None:
        self.pipe, self.prompts, self.seeds, self.call_kwargs, self.bar = pipe, prompts, seeds, call_kwargs, bar
        self.cost = 0.0
        self._baselines: dict[tuple[str, int], Any] = {}
        if eager:
            self.baselines()

    def _generate(self, prompt: str, seed: int) -> Any:
        image = generate(self.pipe, prompt, seed=seed, previews=False, **self.call_kwargs).image
        if self.bar is not None:
            self.bar.update(1)
        return image

    def baselines(self) -> dict[tuple[str, int], Any]:
        if not self._baselines:
            for prompt in self.prompts:
                for seed in self.seeds:
                    self._baselines[prompt, seed] = self._generate(prompt, seed)
                    self.cost += 1
        return self._baselines

    def score(self, attach: Callable[[], Any], share: Callable[[Any], float] = blocks_share,
              with_ssim: bool = True) -> Scored:
        """Attach a cache (`attach()` returns a handle with ``.trace`` and ``.remove()``), generate every image,
        and score it; `share` reads a call's compute share from the handle (blocks by default)."""
        scored = Scored()
        references = self.baselines()
        handle = attach()
        try:
            for (prompt, seed), reference in references.items():
                image = self._generate(prompt, seed)
                scored.blocks_run += sum(r.blocks_run for r in handle.trace)
                scored.blocks_total += sum(r.blocks_total for r in handle.trace)
                scored.shares.append(share(handle))
                self.cost += scored.shares[-1]
                scored.psnrs.append(min(psnr(reference, image), PSNR_CAP))
                if with_ssim:
                    scored.ssims.append(ssim(reference, image))
        finally:
            handle.remove()
        return scored
