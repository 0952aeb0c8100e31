"""The option ``H2CacheConfig.skip_stage2_probe_on_hit``: one probe block per structure hit, beside the paper.

In the published method a structure hit still runs the detail stage's probe (two blocks per hit). With this
option a structure hit adds, instead, everything the whole detail stage added the last time its probe ran,
so such a call runs one block, as FirstBlockCache does. It is built as subclasses of the detail stage's
hooks and a state with one more field, chosen by :func:`h2cache.apply.apply_h2_cache` when the option is on;
nothing here runs otherwise.
"""

from __future__ import annotations

import torch

from .block_io import Streams, block_inputs, block_outputs, skipped_outputs, sub
from .config import H2CacheConfig
from .hooks import H2BlockHook, H2CacheState, H2ProbeHook


class WholeStageResidual:
    """What the whole detail stage added the last time its probe ran (its input to its last block's output)."""

    def __init__(self) -> None:
        self.probe_input: Streams | None = None  # during a miss
        self.added: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def ready(self) -> bool:
        return self.added is not None

    def apply(self, hidden_in: torch.Tensor, encoder_in: torch.Tensor | None) -> Streams:
        hidden, encoder = self.added
        return hidden_in + hidden, None if encoder is None or encoder_in is None else encoder_in + encoder

    def remember(self, inputs: Streams, outputs: Streams) -> None:
        """The stage ran from `inputs` to `outputs` (its probe with a hit, or a one-block stage)."""
        self.added = (outputs[0] - inputs[0], sub(outputs[1], inputs[1]))

    def finish(self, outputs: Streams) -> None:
        """The stage's last block ran on a miss: the whole stage added `outputs` minus the probe's input."""
        if self.probe_input is not None:
            self.remember(self.probe_input, outputs)
            self.probe_input = None


class OneProbeState(H2CacheState):
    def __init__(self, config: H2CacheConfig | None = None) -> None:
        super().__init__(config)
        self.whole_detail = WholeStageResidual()


class OneProbeDetailProbe(H2ProbeHook):
    """The detail stage's probe: skipped on a structure hit, adding the whole stage's last residual instead."""

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        inputs = block_inputs(self._meta, args, kwargs)
        state = self.state_manager.get_state()
        stage = state.stages[self.spec.index]
        if state.record is not None and state.stages[0].hit and state.whole_detail.ready():
            stage.hit = True
            self.spec.record(state.record, None, True, True)
            state.record.probe2_skipped = True
            return skipped_outputs(self._meta, stage.tuple_output, *state.whole_detail.apply(*inputs))
        output = super().new_forward(module, *args, **kwargs)
        if state.record is None:
            return output
        if stage.hit or self.is_tail:
            state.whole_detail.remember(inputs, block_outputs(output, self._meta))
        else:
            state.whole_detail.probe_input = inputs
        return output


class OneProbeDetailTail(H2BlockHook):
    """The detail stage's last block: after a miss, also what the whole stage added."""

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        state = self.state_manager.get_state()
        ran = state.record is not None and not state.stages[self.spec.index].hit
        output = super().new_forward(module, *args, **kwargs)
        if ran:
            state.whole_detail.finish(block_outputs(output, self._meta))
        return output
