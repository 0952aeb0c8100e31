"""PNG plots of a benchmark summary. One panel per step count.

Deterministic axes first: quality against the share of block FLOPs run (``psnr_vs_flops.png``,
``ssim_vs_flops.png``), with each method's Pareto front drawn as the verdicts use it (:mod:`.fronts`,
:mod:`.verdicts`). SSIM sits close to 1, so its axis is a logit scale, on which 0.99, 0.999 and 0.9999 are
evenly spaced. Wall-clock speedups are noisier (single runs on a shared machine) and come second
(``speedup_vs_*.png``); LPIPS is plotted only where it was measured (no 1 - SSIM stand-in). Every method has
its own colour and marker (:mod:`.styles`); degenerate points are drawn hollow and left out of the fronts.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from .fronts import pareto_front  # noqa: E402
from .styles import method_style  # noqa: E402
from .verdicts import cost  # noqa: E402

SSIM_CLIP = (1e-3, 1 - 1e-6)  # the logit axis needs values strictly inside (0, 1)


def _panels(summary: list[dict[str, Any]]):
    steps = sorted({s["steps"] for s in summary})
    fig, axes = plt.subplots(1, len(steps), figsize=(6.4 * len(steps), 5.0), squeeze=False)
    return fig, list(zip(steps, axes[0]))


def _ssim(s: dict[str, Any]) -> float:
    return min(max(s["ssim"], SSIM_CLIP[0]), SSIM_CLIP[1])


def _ssim_tick(value: float, _position: Any = None) -> str:
    """0.9, 0.99, 0.999 rather than the logit axis' default '1 - 10^-3'."""
    if value >= 1.0:  # the logit axis' locator can place a tick at its upper end
        return "1"
    if value >= 0.5:
        return f"{value:.{max(1, round(-math.log10(1.0 - value)))}f}"
    return f"{value:.2g}"


def _logit_axis(axis) -> None:
    axis.set_major_formatter(FuncFormatter(_ssim_tick))
    axis.set_minor_formatter(NullFormatter())


def _by_method(summary: list[dict[str, Any]], steps: int) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in summary:
        if s["steps"] == steps and s["method"] != "none":
            groups[s["method"]].append(s)
    return groups


def _draw_method(ax, method: str, points: list[tuple[float, float, dict]], front: list[tuple[float, float, dict]]):
    color, marker = method_style(method)
    solid = [p for p in points if not p[2].get("degenerate")]
    hollow = [p for p in points if p[2].get("degenerate")]
    ax.scatter([p[0] for p in solid], [p[1] for p in solid], s=22, alpha=0.35, color=color, marker=marker)
    if hollow:
        ax.scatter([p[0] for p in hollow], [p[1] for p in hollow], s=30, facecolors="none", edgecolors=color,
                   marker=marker)
    ax.plot([p[0] for p in front], [p[1] for p in front], "-", marker=marker, ms=6, lw=1.4, color=color,
            label=method)


def _finish(fig, panels, path: Path, note: str) -> None:
    for _, ax in panels:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(note, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _quality_vs_cost(summary: list[dict[str, Any]], path: Path, quality: Callable[[dict], float | None],
                     ylabel: str, logit: bool = False) -> None:
    fig, panels = _panels(summary)
    for steps, ax in panels:
        for method, rows in _by_method(summary, steps).items():
            points = [(cost(s), quality(s), s) for s in rows if quality(s) is not None]
            front = pareto_front([p for p in points if not p[2].get("degenerate")], key=lambda p: (p[0], p[1]))
            _draw_method(ax, method, points, front)
        ax.set_xlim(0.0, 1.02)
        ax.set_xlabel("share of block FLOPs run")
        ax.set_ylabel(ylabel)
        if logit:
            ax.set_yscale("logit")
            _logit_axis(ax.yaxis)
        ax.set_title(f"{steps} steps: quality at equal compute", fontsize=10)
    _finish(fig, panels, path, "lines: each method's Pareto front (the one verdicts use); markers: every grid "
                               "point; hollow: degenerate")


def _speed_vs_quality(summary, path: Path, quality: Callable[[dict], float | None], xlabel: str,
                      better_low: bool, logit: bool = False) -> None:
    fig, panels = _panels(summary)
    for steps, ax in panels:
        for method, rows in _by_method(summary, steps).items():
            points = [(quality(s), s["speedup_denoise"], s) for s in rows
                      if quality(s) is not None and s["speedup_denoise"] is not None]
            # front: no other point both faster and better (quality is the x axis here)
            sign = -1.0 if better_low else 1.0
            front = pareto_front([p for p in points if not p[2].get("degenerate")],
                                 key=lambda p: (-p[1], sign * p[0]))
            _draw_method(ax, method, points, sorted(front, key=lambda p: p[0]))
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("speedup of the denoising loop (x, one timing per point)")
        ax.set_title(f"{steps} steps", fontsize=10)
        if logit:
            ax.set_xscale("logit")
            _logit_axis(ax.xaxis)
        if better_low:
            ax.invert_xaxis()  # better quality to the right, as for PSNR/SSIM
    _finish(fig, panels, path, "wall-clock speedups are noisy (single runs, shared machine); the FLOPs plots are "
                               "exact\nlines: each method's speed/quality front; hollow: degenerate")


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


def write_plots(out: Path, summary: list[dict[str, Any]]) -> list[str]:
    """Write every plot into `out`; returns the file names, deterministic ones first."""
    psnr = _psnr_or_cap(summary)
    plots = [
        ("psnr_vs_flops.png", lambda p: _quality_vs_cost(summary, p, psnr, "PSNR dB vs uncached (mean MSE; top = identical)")),
        ("ssim_vs_flops.png", lambda p: _quality_vs_cost(summary, p, _ssim, "SSIM vs uncached (logit scale)", logit=True)),
        ("speedup_vs_psnr.png", lambda p: _speed_vs_quality(summary, p, psnr, "PSNR dB vs uncached", better_low=False)),
        ("speedup_vs_ssim.png", lambda p: _speed_vs_quality(summary, p, _ssim, "SSIM vs uncached (logit scale)",
                                                            better_low=False, logit=True)),
    ]
    if any(s["lpips"] is not None for s in summary if s["method"] != "none"):
        plots.append(("speedup_vs_lpips.png", lambda p: _speed_vs_quality(
            summary, p, lambda s: s["lpips"], "LPIPS vs uncached", better_low=True)))
    written = []
    for name, draw in plots:
        draw(out / name)
        written.append(name)
    if _heatmap(summary, out / "h2cache_heatmap.png"):
        written.append("h2cache_heatmap.png")
    return written
