"""H2-Cache on every transformer class of h2cache.stages.MODEL_TABLE, on tiny random instances (tests/model_zoo.py).

Block executions are counted inside the blocks: a block counts as run when any of its own submodules ran,
which a hook that replaced the block's forward cannot fake.
"""

from __future__ import annotations

import pytest
import torch

from h2cache import H2CacheConfig, apply_h2_cache, resolve_stages
from h2cache.stages import MODEL_TABLE
from model_zoo import ZOO

torch.set_num_threads(1)
HUGE = 1e9
CALLS = 4


def test_the_zoo_covers_the_table():
    assert set(ZOO) == set(MODEL_TABLE) and len(MODEL_TABLE) >= 12
    for name, layout in MODEL_TABLE.items():
        assert ZOO[name].block_lists == (layout.stage1,) + ((layout.stage2,) if layout.stage2 else ()), name
        assert ZOO[name].video == layout.video, name


class BlockCounter:
    """Per call, how many of the split's blocks ran (any of their submodules was entered)."""

    def __init__(self, blocks: list[torch.nn.Module]):
        self.ran: set[int] = set()
        self.handles = [child.register_forward_pre_hook(lambda *_, i=i: self.ran.add(i))
                        for i, block in enumerate(blocks) for child in block.children()]

    def take(self) -> int:
        n, self.ran = len(self.ran), set()
        return n

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def calls(model: torch.nn.Module, name: str, n: int = CALLS, counter: BlockCounter | None = None) -> tuple[list, list]:
    """`n` forwards with the same inputs (a step whose input did not change: the most reusable case)."""
    entry = ZOO[name]
    outputs, ran = [], []
    with torch.no_grad():
        for _ in range(n):
            outputs.append(entry.output(model(**entry.inputs(model))).clone())
            if counter is not None:
                ran.append(counter.take())
    return outputs, ran


@pytest.fixture(scope="module", params=sorted(MODEL_TABLE))
def family(request):
    name = request.param
    model = ZOO[name].build()
    split = resolve_stages(model)
    baseline, _ = calls(model, name, n=1)
    return name, model, split, baseline[0]


def test_zero_thresholds_are_bitwise_identical_and_run_every_block(family):
    name, model, split, baseline = family
    counter = BlockCounter(split.stage1 + split.stage2)
    handle = apply_h2_cache(model, H2CacheConfig(tau1=0, tau2=0))
    try:
        outputs, ran = calls(model, name, counter=counter)
    finally:
        handle.remove()
        counter.close()
    assert all(torch.equal(out, baseline) for out in outputs)
    assert ran == [split.blocks_total] * CALLS
    assert [r.blocks_run for r in handle.trace] == ran


def test_huge_thresholds_run_only_the_two_probes_after_the_first_call(family):
    name, model, split, baseline = family
    counter = BlockCounter(split.stage1 + split.stage2)
    handle = apply_h2_cache(model, H2CacheConfig(tau1=HUGE, tau2=HUGE))
    try:
        outputs, ran = calls(model, name, counter=counter)
    finally:
        handle.remove()
        counter.close()
    assert ran == [split.blocks_total] + [2] * (CALLS - 1)
    assert [r.blocks_run for r in handle.trace] == ran and all(r.hit1 for r in handle.trace[1:])
    # Same inputs every call: replaying the cached residuals gives the uncached output exactly.
    assert all(torch.allclose(out, baseline, rtol=1e-5, atol=1e-5) for out in outputs)


def test_exact_after_remove(family):
    name, model, _, baseline = family
    handle = apply_h2_cache(model, H2CacheConfig(tau1=HUGE, tau2=HUGE))
    calls(model, name, n=2)
    handle.remove()
    outputs, _ = calls(model, name, n=2)
    assert all(torch.equal(out, baseline) for out in outputs)
    left = [name for m in model.modules() for name in getattr(getattr(m, "_diffusers_hook", None), "hooks", {})
            if name.startswith("h2cache")]
    assert left == []


def test_cache_contexts_keep_separate_state(family):
    name, model, split, _ = family
    if not hasattr(model, "cache_context"):
        pytest.skip(f"{name} has no cache_context (diffusers' CacheMixin): one shared state, as its pipelines use")
    counter = BlockCounter(split.stage1 + split.stage2)
    handle = apply_h2_cache(model, H2CacheConfig(tau1=HUGE, tau2=HUGE))
    ran = []
    try:
        for context in ("cond", "uncond", "cond", "uncond"):
            with model.cache_context(context):
                ran += calls(model, name, n=1, counter=counter)[1]
    finally:
        handle.remove()
        counter.close()
    # Each context computes everything at its first call, then reuses on its own reference.
    assert ran == [split.blocks_total, split.blocks_total, 2, 2]
    assert handle.trace.contexts == ["cond", "uncond"]


def test_a_class_outside_the_table_is_refused_by_name():
    class Custom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer_blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(4)])

    with pytest.raises(ValueError, match="does not know how to split Custom into two stages; supported: .*WanTransformer3DModel"):
        apply_h2_cache(Custom())
