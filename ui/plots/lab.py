"""The cache lab's figures: each method's per-step decisions side by side, and the quality-against-compute front."""

from __future__ import annotations

from typing import Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from h2cache.lab import LabPoint
from h2cache.scoring import PSNR_CAP
from h2cache.trace import StepRecord

from .distances import GUARD, HIT, MISS

REUSED, COMPUTED = HIT, MISS
FRONT_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")


def decisions_figure(records: Sequence[StepRecord], peer: tuple[str, Sequence[bool]] | None, context_note: str) -> Figure:
    """One row per decision: H2-Cache's stage 1, its stage 2, and the peer's step (reused or computed).

    `peer` is (label, reused per step) for the same cache context, or None without a peer column.
    """
    rows: list[tuple[str, list[bool], list[bool]]] = [
        ("H2-Cache stage 1", [r.hit1 for r in records], [r.forced_full for r in records]),
        ("H2-Cache stage 2", [r.hit2 for r in records], [r.forced_full for r in records]),
    ]
    if peer is not None:
        rows.append((peer[0], list(peer[1]), [False] * len(peer[1])))
    fig = Figure(figsize=(9.6, 1.2 + 0.45 * len(rows)), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for y, (label, reused, guarded) in enumerate(reversed(rows)):
        for kind, colour, select in (("reused", REUSED, lambda u, g: u), ("computed", COMPUTED, lambda u, g: not u and not g),
                                     ("computed, forced by a guard", GUARD, lambda u, g: g)):
            steps = [i + 1 for i, (u, g) in enumerate(zip(reused, guarded)) if select(u, g)]
            if steps:
                ax.scatter(steps, [y] * len(steps), s=60, marker="s", color=colour, label=kind)
        ax.text(1.0, y + 0.32, f"{sum(reused)}/{len(reused)} reused", fontsize=7, color="#555555")
    ax.set_yticks(range(len(rows)), [r[0] for r in reversed(rows)])
    ax.set_ylim(-0.6, len(rows) - 0.2)
    ax.set_xlim(0.5, max(len(records), *(len(r[1]) for r in rows)) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("denoising step")
    ax.set_title(f"Per-step decisions\n{context_note}", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))  # one entry per kind, not per row
    fig.legend(unique.values(), unique.keys(), fontsize=7, loc="outside lower center", ncols=3, frameon=False)
    return fig


def front_figure(points: dict[str, list[LabPoint]], current: LabPoint | None, labels: dict[str, str],
                 title: str) -> Figure:
    """PSNR against share of compute, one line per method (its points ordered by share), `current` starred."""
    fig = Figure(figsize=(6.4, 4.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    every = [p for found in points.values() for p in found] + ([current] if current is not None else [])
    finite = [p.psnr for p in every if p.psnr < PSNR_CAP]
    # An image identical to the baseline scores the cap (100 dB); drawn at the top edge instead, so that it
    # does not squash the differences that matter into the bottom of the plot.
    top = (max(finite) + 5) if finite else PSNR_CAP

    def y(p: LabPoint) -> float:
        return top if p.psnr >= PSNR_CAP else p.psnr

    for (method, found), colour in zip(points.items(), FRONT_COLOURS):
        ordered = sorted(found, key=lambda p: p.share)
        ax.plot([p.share * 100 for p in ordered], [y(p) for p in ordered], marker="o", color=colour,
                label=f"{labels.get(method, method)}: {len(ordered)} points")
    if current is not None:
        ax.scatter([current.share * 100], [y(current)], marker="*", s=260, color="#d62728", zorder=5,
                   edgecolors="black", label="H2-Cache at your setting")
    if any(p.psnr >= PSNR_CAP for p in every):
        ax.axhline(top, color="#999999", linestyle=":", linewidth=1)
        ax.text(0.01, top, " identical to the baseline", transform=ax.get_yaxis_transform(), fontsize=7,
                va="bottom", color="#555555")
    ax.set_xlabel("share of block FLOPs run (%)")
    ax.set_ylabel("PSNR against the uncached image (dB)")
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.legend(fontsize=8, loc="outside lower center", ncols=2, frameon=False)
    return fig
