"""Steps x blocks map of the cached run: which blocks were computed and which were reused."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.patches import Patch

from .distances import GUARD, GUARD_LABEL

REUSED, COMPUTED = "#e8eef7", "#1f4e9c"


def compute_map_figure(mask: np.ndarray, stage1_blocks: int, context_note: str,
                       forced: np.ndarray | None = None) -> Figure:
    """`mask` is (blocks, steps), True = computed (see ui.views.computed_mask).

    `forced` is (steps,), True where a guard forced the step to compute everything
    (ui.views.guard_forced); those columns get their own colour.
    """
    blocks, steps = mask.shape
    forced = np.zeros(steps, dtype=bool) if forced is None else forced
    fig = Figure(figsize=(9.0, 0.6 + 0.22 * blocks), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    cells = mask.astype(int) + (mask & forced[np.newaxis, :])  # 0 reused, 1 computed, 2 computed by a guard
    ax.imshow(cells, cmap=ListedColormap([REUSED, COMPUTED, GUARD]), vmin=0, vmax=2, aspect="auto",
              interpolation="nearest", extent=(0.5, steps + 0.5, blocks - 0.5, -0.5))
    labels = [f"S1 block {i}" + (" (probe)" if i == 0 else "") for i in range(stage1_blocks)]
    labels += [f"S2 block {i}" + (" (probe)" if i == 0 else "") for i in range(blocks - stage1_blocks)]
    ax.set_yticks(range(blocks), labels, fontsize=7)
    ax.axhline(stage1_blocks - 0.5, color="#f28e2b", linewidth=2)
    # Thin separators keep single cells readable when there are many steps.
    ax.set_xticks(np.arange(0.5, steps + 1), minor=True)
    ax.grid(which="minor", axis="x", color="white", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("denoising step")
    share = mask.mean() if mask.size else 1.0
    ax.set_title(f"Compute map of the H2-Cache run: {share:.0%} of block executions ran — {context_note}", fontsize=10)
    handles = [Patch(color=COMPUTED, label="computed"), Patch(facecolor=REUSED, edgecolor="#999999", label="reused from cache")]
    if forced.any():
        handles.insert(1, Patch(color=GUARD, label=f"{GUARD_LABEL}: {int(forced.sum())} steps"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    return fig
