"""The About panel: H2-Cache in a few lines, and how the loaded model is split."""

from __future__ import annotations

ABOUT = """
**What H2-Cache does.** A diffusion transformer runs all of its blocks at every denoising step,
although from one step to the next many blocks change their output only a little. H2-Cache
skips blocks whose work can be reused, in two stages: the early blocks that settle the layout
(stage 1, *structure*) and the later blocks that refine detail (stage 2, *detail*).

**How it decides.** Each stage first runs only its first block, the *probe*. The change this
block makes to the features is average-pooled into a small thumbnail (*pooled feature
summarization*, PFS) and compared with the thumbnail from the last step where the stage ran in
full. If the relative L1 distance is below the stage's threshold (τ1 or τ2), the rest of the
stage is skipped and the residual it added last time is added again. When stage 1 is reused,
stage 2 is reused as well without measuring (a *forced* hit), so such a step costs only the two
probe blocks.

**Options (under Advanced, off by default).** Three *guards* make a step compute every block
whatever the distances say: the first steps (warm-up), the last steps, and the step after a run
of reusing steps (a cap on consecutive hits). The plots mark these steps as forced by a guard.
*One probe per stage-1 hit* skips stage 2's probe as well, so a reused step costs one block.

**The trade-off.** Larger thresholds reuse more and run faster, but the image drifts further from
the uncached baseline. With both thresholds at 0 nothing is reused and the two images are
identical. The plots below show every decision; the step scrubber shows where the cached run
departs from the baseline.
"""


def about_markdown(model_label: str, stage_split: str) -> str:
    return f"{ABOUT}\n**Loaded model:** {model_label}  \n**Stage split:** {stage_split}\n"
