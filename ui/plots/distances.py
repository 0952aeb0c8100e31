"""One figure per stage: PFS distance at each step, the threshold, and the cache decision."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from h2cache.trace import StepRecord

HIT, MISS, FORCED, NO_REF = "#2ca02c", "#d62728", "#9467bd", "#7f7f7f"
GUARD = "#17becf"  # calls a guard forced to compute everything; the compute map uses it too
GUARD_LABEL = "computed, forced by a guard"


def distance_figure(records: list[StepRecord], stage: int, tau: float, context_note: str) -> Figure:
    """PFS distance per step for `stage` (1 or 2) of one cache context.

    Steps are numbered from 1. Measured hits and misses sit at their distance. Steps with no
    distance sit on the x axis: forced stage-2 hits (stage 1 hit, so stage 2 was reused without
    measuring) and misses with no reference yet (the first step). Calls a guard forced to compute
    everything (``forced_full``) get their own marker, so that a "miss" below the threshold is explained.
    """
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    distances = [r.d1 if stage == 1 else r.d2 for r in records]
    hits = [r.hit1 if stage == 1 else r.hit2 for r in records]
    forced = [stage == 2 and r.forced2 for r in records]
    guarded = [r.forced_full for r in records]
    steps = [r.step + 1 for r in records]

    fig = Figure(figsize=(6.4, 3.4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    measured = [(s, d) for s, d in zip(steps, distances) if d is not None]
    if measured:
        ax.plot(*zip(*measured), color="#bbbbbb", linewidth=1, zorder=1)
    groups = [
        ("hit (reused)", HIT, "o", True, lambda d, h, f, g: d is not None and h),
        ("miss (computed)", MISS, "X", True, lambda d, h, f, g: d is not None and not h and not g),
        ("forced hit (stage 1 hit, not measured)", FORCED, "D", False, lambda d, h, f, g: f),
        (GUARD_LABEL, GUARD, "P", True, lambda d, h, f, g: g),
        ("miss, no reference yet", NO_REF, "s", False, lambda d, h, f, g: d is None and not h and not g),
    ]
    for label, color, marker, filled, select in groups:
        points = [(s, d if d is not None else 0.0)
                  for s, d, h, f, g in zip(steps, distances, hits, forced, guarded) if select(d, h, f, g)]
        if points:
            xs, ys = zip(*points)
            ax.scatter(xs, ys, s=36, marker=marker, label=f"{label}: {len(points)}", zorder=3, clip_on=False,
                       facecolors=color if filled else "none", edgecolors=color, linewidths=1.5)
    ax.axhline(tau, color="#1f77b4", linestyle="--", linewidth=1.5, label=f"threshold τ{stage} = {tau:g}")
    top = max([tau, *[d for d in distances if d is not None]]) * 1.15 or 1.0
    ax.set_ylim(0, top)
    ax.set_xlim(0.5, max(steps, default=1) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("denoising step")
    ax.set_ylabel("PFS distance")
    name = "structure" if stage == 1 else "detail"
    ax.set_title(f"Stage {stage} ({name}): PFS distance per step\n{context_note}", fontsize=10)
    # Outside the axes: a legend inside would hide the markers it explains.
    fig.legend(fontsize=7, loc="outside lower center", ncols=3, frameon=False)
    ax.grid(alpha=0.25)
    return fig
