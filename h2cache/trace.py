"""Per-call records of H2-Cache's decisions: what was measured, what was reused, what ran."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class StepRecord:
    """One transformer call (one denoising step in one cache context).

    ``d1``/``d2`` are ``None`` where no distance was computed: no reference yet, or
    stage 2 forced to hit because stage 1 hit. ``forced_full`` marks a call that one of
    the optional guards (warm-up, final steps, a cap on consecutive hits) made compute
    every block; its distances are still measured. ``probe2_skipped`` marks a stage-1
    hit that did not run stage 2's probe either (``skip_stage2_probe_on_hit``).
    ``stage1_blocks_run``/``stage2_blocks_run`` count the blocks each stage ran; a stage always
    runs a prefix of its blocks (its probe, then the rest on a miss), so :meth:`computed` can
    say which.

    Example:
        >>> hit = StepRecord(step=3, context="cond", hit1=True, hit2=True, forced2=True)
        >>> hit.ran(1); hit.ran(2)
        >>> hit.blocks_run, hit.computed(stage1_blocks=3, stage2_blocks=2)
        (2, [True, False, False, True, False])
    """

    step: int
    context: str
    d1: float | None = None
    hit1: bool = False
    d2: float | None = None
    hit2: bool = False
    forced2: bool = False
    blocks_run: int = 0
    blocks_total: int = 0
    forced_full: bool = False
    probe2_skipped: bool = False
    stage1_blocks_run: int = 0
    stage2_blocks_run: int = 0

    def ran(self, stage: int) -> None:
        """Count one block of `stage` (1 or 2) as run in this call."""
        self.blocks_run += 1
        if stage == 1:
            self.stage1_blocks_run += 1
        else:
            self.stage2_blocks_run += 1

    def computed(self, stage1_blocks: int, stage2_blocks: int) -> list[bool]:
        """Per block, stage 1's then stage 2's: whether it ran in this call (False: its output was reused)."""
        return ([i < self.stage1_blocks_run for i in range(stage1_blocks)]
                + [i < self.stage2_blocks_run for i in range(stage2_blocks)])

    def as_dict(self) -> dict:
        return asdict(self)


class RecordList(list):
    """Per-call records of one pipeline call, in call order (contexts interleaved).

    Shared by H2-Cache's :class:`Trace` and the peer methods' traces: any record with
    ``context``, ``blocks_run`` and ``blocks_total`` fields.
    """

    def for_context(self, context: str) -> list:
        return [r for r in self if r.context == context]

    @property
    def contexts(self) -> list[str]:
        return list(dict.fromkeys(r.context for r in self))

    def blocks_share(self) -> float:
        """Share of block executions actually run, over all calls (1.0 without reuse)."""
        total = sum(r.blocks_total for r in self)
        return sum(r.blocks_run for r in self) / total if total else 1.0


class Trace(RecordList):
    """The records of the most recent pipeline call, in call order (contexts interleaved)."""

    def hits(self) -> tuple[int, int]:
        """(stage-1 hits, stage-2 hits), forced stage-2 hits included."""
        return sum(r.hit1 for r in self), sum(r.hit2 for r in self)
