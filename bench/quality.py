"""Quality of a method variant over its samples: the mean-MSE PSNR, and per-sample median and worst values.

PSNR from the mean MSE lets one bad sample decide: a single 30.9 dB sample among 47 dB ones moves the
aggregate by 6 dB. The median sample says what a typical image gets; the worst sample says what a user may
get. Verdicts can use any of the three bases (``BASES``).

Identical images have an infinite PSNR: aggregates report ``None`` for them (shown as identical), and
verdicts use :data:`PSNR_IDENTICAL`, the PSNR of an MSE of 1e-12, so that comparisons stay finite.

Example:
    >>> samples = [{"mse": 1.0, "ssim": 0.99}, {"mse": 1.0, "ssim": 0.98}, {"mse": 100.0, "ssim": 0.80}]
    >>> q = aggregate_quality(samples)
    >>> round(q["psnr"], 2), round(q["psnr_median"], 2), round(q["psnr_worst"], 2)
    (32.82, 48.13, 28.13)
    >>> q["ssim_median"], q["ssim_worst"]
    (0.98, 0.8)
    >>> metric_value(q, "psnr", "worst") == q["psnr_worst"]
    True
"""

from __future__ import annotations

import math
import statistics
from typing import Any

PEAK = 255.0 ** 2
MSE_FLOOR = 1e-12
PSNR_IDENTICAL = 10.0 * math.log10(PEAK / MSE_FLOOR)  # about 168 dB; only ever used inside comparisons

BASES = ("mean", "median", "worst")
# summary field per (metric, basis); "mean" PSNR is the PSNR of the mean MSE
FIELDS = {("psnr", "mean"): "psnr", ("psnr", "median"): "psnr_median", ("psnr", "worst"): "psnr_worst",
          ("ssim", "mean"): "ssim", ("ssim", "median"): "ssim_median", ("ssim", "worst"): "ssim_worst",
          ("lpips", "mean"): "lpips"}


def psnr_from_mse(mse: float) -> float | None:
    """``None`` for identical images (MSE 0)."""
    return None if mse <= 0 else 10.0 * math.log10(PEAK / mse)


def _finite(psnr: float) -> float | None:
    return None if math.isinf(psnr) else psnr


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def aggregate_quality(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """PSNR (of the mean MSE, median sample, worst sample), SSIM (mean, median, worst) and mean LPIPS of the
    per-sample rows (``mse``, ``ssim`` and optionally ``lpips``)."""
    mses = [s["mse"] for s in samples]
    psnrs = sorted(math.inf if m <= 0 else 10.0 * math.log10(PEAK / m) for m in mses)
    ssims = [s["ssim"] for s in samples]
    lpips = [s.get("lpips") for s in samples]
    mse = sum(mses) / len(mses)
    return {
        "mse": mse, "psnr": psnr_from_mse(mse),
        "psnr_median": _finite(statistics.median(psnrs)), "psnr_worst": _finite(psnrs[0]),
        "ssim": _mean(ssims), "ssim_median": statistics.median(ssims), "ssim_worst": min(ssims),
        "lpips": None if any(v is None for v in lpips) else _mean(lpips),
    }


def metric_value(summary: dict[str, Any], metric: str, basis: str = "mean") -> float | None:
    """A quality number to compare, higher is better: PSNR in dB (identical: :data:`PSNR_IDENTICAL`), SSIM,
    or minus LPIPS. ``None`` where the metric is missing (LPIPS n/a)."""
    if metric == "psnr" and basis == "mean":
        return 10.0 * math.log10(PEAK / max(summary["mse"], MSE_FLOOR))
    value = summary.get(FIELDS[(metric, basis)])
    if metric == "psnr":
        return PSNR_IDENTICAL if value is None else value  # per-sample PSNRs are None only when identical
    if value is None:
        return None
    return -value if metric == "lpips" else value
