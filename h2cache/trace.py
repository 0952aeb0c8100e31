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
