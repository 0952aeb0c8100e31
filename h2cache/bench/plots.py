"""PNG plots of a benchmark summary: speed against quality per method, quality against compute, and the
H2-Cache tau1 x tau2 heatmap. One panel per step count."""

from __future__ import annotations

import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"none": "#000000", "h2cache": "#d62728", "fbcache": "#1f77b4", "teacache": "#2ca02c",
          "magcache": "#9467bd", "taylorseer": "#ff7f0e", "h2cache-no-pfs": "#e377c2",
          "h2cache-independent-stage2": "#8c564b", "h2cache-guarded": "#bcbd22"}


def _panels(summary: list[dict[str, Any]]):
    steps = sorted({s["steps"] for s in summary})
    fig, axes = plt.subplots(1, len(steps), figsize=(6.2 * len(steps), 4.8), squeeze=False)
    return fig, list(zip(steps, axes[0]))


def _frontier(points: list[tuple[float, float, dict]], better_low: bool) -> list[tuple[float, float, dict]]:
    """Points no other point beats on both quality (x) and speedup (y)."""
    def beats(a, b):
        qa, qb = (-a[0], -b[0]) if better_low else (a[0], b[0])
        return qa >= qb and a[1] >= b[1] and (qa > qb or a[1] > b[1])
    return sorted((p for p in points if not any(beats(q, p) for q in points)), key=lambda p: p[0])


def _speed_vs_quality(summary, path: Path, quality: Callable[[dict], float | None], xlabel: str,
                      better_low: bool, title_note: str = "") -> None:
    fig, panels = _panels(summary)
    for steps, ax in panels:
        rows = [s for s in summary if s["steps"] == steps and s["method"] != "none"]
        values = [quality(s) for s in rows if quality(s) is not None]
        by_method: dict[str, list] = defaultdict(list)
        for s in rows:
            q = quality(s)
            if q is not None and s["speedup_denoise"] is not None:
                by_method[s["method"]].append((q, s["speedup_denoise"], s))
        for method, points in by_method.items():
            color = COLORS.get(method)
            ax.scatter([p[0] for p in points], [p[1] for p in points], s=18, alpha=0.35, color=color)
            front = _frontier(points, better_low)
            ax.plot([p[0] for p in front], [p[1] for p in front], "-o", ms=4, color=color, label=method)
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("speedup of the denoising loop (x)")
        ax.set_title(f"{steps} steps{title_note}", fontsize=10 if not title_note else 6)
        if better_low:
            ax.invert_xaxis()  # better quality to the right, as for PSNR/SSIM
        if values:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle("lines: each method's Pareto front over its grid; dots: all grid points", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _psnr_or_cap(summary: list[dict[str, Any]]) -> Callable[[dict], float | None]:
    finite = [s["psnr"] for s in summary if s["psnr"] is not None]
    cap = (max(finite) + 3.0) if finite else 60.0
    return lambda s: cap if s["psnr"] is None and s["identical"] else s["psnr"]


def _heatmap(summary: list[dict[str, Any]], path: Path) -> bool:
    rows = [s for s in summary if s["method"] == "h2cache" and "tau1" in s["settings"] and "tau2" in s["settings"]]
    if not rows:
        return False
    steps_list = sorted({s["steps"] for s in rows})
    quality = _psnr_or_cap(summary)
    fig, axes = plt.subplots(2, len(steps_list), figsize=(5.2 * len(steps_list), 8.4), squeeze=False)
    for col, steps in enumerate(steps_list):
        cells = {}
        for s in rows:
            if s["steps"] == steps:
                cells.setdefault((s["settings"]["tau1"], s["settings"]["tau2"]), s)  # first if other keys vary
        tau1s = sorted({k[0] for k in cells})
        tau2s = sorted({k[1] for k in cells})
        for row, (name, get, cmap) in enumerate((
                ("PSNR dB vs uncached (= : identical)", quality, "viridis"),
                ("blocks run (share)", lambda s: s["blocks_share"], "magma"))):
            ax = axes[row][col]
            grid = [[float("nan")] * len(tau2s) for _ in tau1s]
            labels = [[""] * len(tau2s) for _ in tau1s]
            for (t1, t2), s in cells.items():
                value = get(s)
                i, j = tau1s.index(t1), tau2s.index(t2)
                grid[i][j] = float("nan") if value is None else value
                labels[i][j] = "=" if row == 0 and s["identical"] else ("" if value is None else f"{value:.2f}")
            image = ax.imshow(grid, cmap=cmap, origin="lower", aspect="auto")
            finite = [v for line in grid for v in line if v == v]
            middle = (min(finite) + max(finite)) / 2 if finite else 0.0
            for i in range(len(tau1s)):
                for j in range(len(tau2s)):
                    # dark text on the bright end of both colormaps
                    color = "black" if grid[i][j] == grid[i][j] and grid[i][j] > middle else "white"
                    ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=7, color=color)
            ax.set_xticks(range(len(tau2s)), [f"{t:g}" for t in tau2s])
            ax.set_yticks(range(len(tau1s)), [f"{t:g}" for t in tau1s])
            ax.set_xlabel("tau2 (detail stage)")
            ax.set_ylabel("tau1 (structure stage)")
            ax.set_title(f"H2-Cache, {steps} steps: {name}", fontsize=9)
            fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _quality_vs_blocks(summary: list[dict[str, Any]], path: Path) -> None:
    quality = _psnr_or_cap(summary)
    fig, panels = _panels(summary)
    for steps, ax in panels:
        by_method: dict[str, list] = defaultdict(list)
        for s in summary:
            if s["steps"] == steps and s["method"] != "none":
                by_method[s["method"]].append((s["blocks_share"], quality(s)))
        for method, points in by_method.items():
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], "o", ms=4, alpha=0.8,
                    color=COLORS.get(method), label=method)
        ax.set_xlabel("share of transformer blocks executed")
        ax.set_ylabel("PSNR dB vs uncached (top = identical)")
        ax.set_title(f"{steps} steps: quality at equal compute", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(out: Path, summary: list[dict[str, Any]]) -> list[str]:
    """Write every plot into `out`; returns the file names."""
    written = []
    _speed_vs_quality(summary, out / "speedup_vs_psnr.png", _psnr_or_cap(summary),
                      "PSNR dB vs uncached (rightmost = identical)", better_low=False)
    written.append("speedup_vs_psnr.png")
    _speed_vs_quality(summary, out / "speedup_vs_ssim.png", lambda s: s["ssim"], "SSIM vs uncached",
                      better_low=False)
    written.append("speedup_vs_ssim.png")
    if any(s["lpips"] is not None for s in summary):
        _speed_vs_quality(summary, out / "speedup_vs_lpips.png", lambda s: s["lpips"], "LPIPS vs uncached",
                          better_low=True)
    else:
        reason = next((s["lpips_reason"] for s in summary if s["lpips_reason"]), "unavailable")
        note = textwrap.fill(f"LPIPS n/a, showing 1 - SSIM instead: {reason}", 80)
        _speed_vs_quality(summary, out / "speedup_vs_lpips.png", lambda s: 1.0 - s["ssim"],
                          "1 - SSIM (stand-in: LPIPS n/a)", better_low=True, title_note="\n" + note)
    written.append("speedup_vs_lpips.png")
    _quality_vs_blocks(summary, out / "quality_vs_blocks.png")
    written.append("quality_vs_blocks.png")
    if _heatmap(summary, out / "h2cache_heatmap.png"):
        written.append("h2cache_heatmap.png")
    return written
