"""H2CacheConfig's options (off by default): the guards that force full calls, and one probe per stage-1 hit.

Real FluxPipeline calls on a tiny random model; real block executions are counted inside the blocks.
"""

from __future__ import annotations

import pytest
import torch

from h2cache import H2CacheConfig, apply_h2_cache
from test_h2cache_core import BlockCounter, run
from tiny_models import tiny_flux_pipeline

torch.set_num_threads(1)

HUGE = 1e6  # every distance is below it: every call that may reuse does


def test_defaults_leave_the_published_algorithm_alone():
    cfg = H2CacheConfig()
    assert (cfg.warmup_steps, cfg.max_consecutive_hits, cfg.final_full_steps, cfg.num_inference_steps,
            cfg.skip_stage2_probe_on_hit) == (0, 0, 0, None, False)


@pytest.mark.parametrize("field,value,message", [
    ("warmup_steps", -1, "warmup_steps must be an integer >= 0"),
    ("max_consecutive_hits", 1.5, "max_consecutive_hits must be an integer >= 0"),
    ("final_full_steps", True, "final_full_steps must be an integer >= 0"),
    ("num_inference_steps", 0, "num_inference_steps must be None or an integer >= 1"),
    ("skip_stage2_probe_on_hit", 1, "skip_stage2_probe_on_hit must be True or False"),
])
def test_each_option_is_validated(field, value, message):
    with pytest.raises(ValueError, match=message):
        H2CacheConfig(**{field: value})


def test_contradictory_options_are_refused_before_anything_is_attached():
    pipe = tiny_flux_pipeline()
    with pytest.raises(ValueError, match="final_full_steps = 2 needs H2CacheConfig.num_inference_steps"):
        apply_h2_cache(pipe, H2CacheConfig(final_full_steps=2))
    with pytest.raises(ValueError, match="skip_stage2_probe_on_hit and H2CacheConfig.independent_stage2"):
        apply_h2_cache(pipe, H2CacheConfig(skip_stage2_probe_on_hit=True, independent_stage2=True))
    handle = apply_h2_cache(pipe, H2CacheConfig())  # nothing was left attached by the refusals
    # An edit made after apply is checked when the next pipeline call starts.
    handle.config.final_full_steps = 1
    with pytest.raises(ValueError, match="num_inference_steps"):
        run(pipe)
    handle.remove()


def _counted_pipeline():
    """A tiny FLUX pipeline (3 + 4 blocks) and the list its transformer fills with the blocks run per call."""
    pipe = tiny_flux_pipeline(double=3, single=4)
    counter = BlockCounter(pipe.transformer)
    per_call: list[int] = []
    pipe.transformer.register_forward_hook(lambda *a: per_call.append(counter.take()))
    return pipe, per_call


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0], ids=["no-cfg", "true-cfg"])
def test_guards_force_exactly_the_calls_they_promise(cfg_scale):
    pipe, per_call = _counted_pipeline()
    total = 7
    steps = 10
    cfg = H2CacheConfig(tau1=HUGE, tau2=HUGE, warmup_steps=3, max_consecutive_hits=2, final_full_steps=1,
                        num_inference_steps=steps)
    handle = apply_h2_cache(pipe, cfg)
    run(pipe, num_inference_steps=steps, negative_prompt="", true_cfg_scale=cfg_scale)
    # Per context: warm-up 0-2, then two hits, a forced call, two hits, a forced call, and the final step.
    expected_forced = [True, True, True, False, False, True, False, False, True, True]
    contexts = handle.trace.contexts
    assert len(contexts) == (2 if cfg_scale > 1 else 1)
    for context in contexts:
        records = handle.trace.for_context(context)
        assert [r.forced_full for r in records] == expected_forced
        assert [r.hit1 for r in records] == [not f for f in expected_forced]
        # Distances are still measured on forced calls (for the plots), except where no reference exists yet.
        assert all(r.d1 is not None for r in records[1:])
        assert [r.blocks_run for r in records] == [total if f else 2 for f in expected_forced]
    assert per_call == [r.blocks_run for r in handle.trace]
    handle.remove()


def test_one_probe_per_hit_is_exact_at_zero_and_runs_one_block_per_hit():
    pipe = tiny_flux_pipeline(double=3, single=4)
    baseline = run(pipe)
    handle = apply_h2_cache(pipe, H2CacheConfig(tau1=0, tau2=0, skip_stage2_probe_on_hit=True))
    assert torch.equal(run(pipe), baseline)
    handle.remove()

    counter = BlockCounter(pipe.transformer)
    per_call: list[int] = []
    pipe.transformer.register_forward_hook(lambda *a: per_call.append(counter.take()))
    handle = apply_h2_cache(pipe, H2CacheConfig(tau1=HUGE, tau2=HUGE, skip_stage2_probe_on_hit=True))
    run(pipe)
    assert per_call == [7] + [1] * (len(per_call) - 1)
    assert [r.blocks_run for r in handle.trace] == per_call
    assert all(r.hit1 and r.hit2 and r.forced2 and r.probe2_skipped and r.d2 is None for r in handle.trace[1:])
    assert not handle.trace[0].probe2_skipped
    handle.remove()


def test_one_probe_per_hit_adds_what_the_whole_detail_stage_added_last_time():
    """On a stage-1 hit, stage 2's output is its input plus (output - input) of the last call that ran
    stage 2's probe, whether that call computed stage 2 or reused its tail."""
    pipe = tiny_flux_pipeline(double=3, single=4)
    singles = pipe.transformer.single_transformer_blocks
    probe = apply_h2_cache(pipe, H2CacheConfig(tau1=0, tau2=0))
    run(pipe, num_inference_steps=10)
    d1s = sorted(r.d1 for r in probe.trace if r.d1 is not None)
    d2s = sorted(r.d2 for r in probe.trace if r.d2 is not None)
    probe.remove()

    calls: list[dict] = []
    pipe.transformer.register_forward_pre_hook(lambda *a: calls.append({}))
    singles[0].register_forward_pre_hook(
        lambda m, a, kw: calls[-1].update(inp=(kw["hidden_states"], kw["encoder_hidden_states"])), with_kwargs=True)
    singles[-1].register_forward_hook(lambda m, a, out: calls[-1].update(out=(out[1], out[0])))
    cfg = H2CacheConfig(tau1=d1s[len(d1s) // 2] * 1.5, tau2=d2s[len(d2s) // 2] * 1.5, skip_stage2_probe_on_hit=True)
    handle = apply_h2_cache(pipe, cfg)
    run(pipe, num_inference_steps=10)
    records = list(handle.trace)
    assert len(records) == len(calls) == 10

    through = None
    kinds = set()
    for record, call in zip(records, calls):
        (in_h, in_e), (out_h, out_e) = call["inp"], call["out"]
        if record.hit1:
            kinds.add("skipped")
            assert record.blocks_run == 1 and record.forced2
            torch.testing.assert_close(out_h, in_h + through[0])
            torch.testing.assert_close(out_e, in_e + through[1])
        else:
            kinds.add("stage-2 reused" if record.hit2 else "computed")
            through = (out_h - in_h, out_e - in_e)
    assert "skipped" in kinds and len(kinds) >= 2, kinds


class BlockLog:
    """Which blocks really ran in each transformer call, by index (stage 1's blocks first)."""

    def __init__(self, transformer):
        blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
        self.calls: list[list[bool]] = []
        self._current = [False] * len(blocks)
        for index, block in enumerate(blocks):
            block.attn.register_forward_pre_hook(lambda *_, i=index: self._current.__setitem__(i, True))
        transformer.register_forward_hook(lambda *_: self._end_call())

    def _end_call(self):
        self.calls.append(self._current)
        self._current = [False] * len(self._current)


@pytest.mark.parametrize("options", [
    {"tau1": 0.3, "tau2": 0.5},
    {"tau1": 0.3, "tau2": 0.5, "independent_stage2": True},
    {"tau1": HUGE, "tau2": HUGE, "skip_stage2_probe_on_hit": True},
    {"tau1": 0.0, "tau2": HUGE},
    {"tau1": HUGE, "tau2": HUGE, "warmup_steps": 2, "max_consecutive_hits": 2, "final_full_steps": 1,
     "num_inference_steps": 8},
], ids=["published", "independent-stage2", "one-probe", "stage2-only", "guards"])
def test_each_record_says_which_blocks_ran(options):
    """StepRecord.computed names exactly the blocks that executed, for every kind of decision."""
    pipe = tiny_flux_pipeline(double=3, single=4)
    log = BlockLog(pipe.transformer)
    handle = apply_h2_cache(pipe, H2CacheConfig(**options))
    run(pipe, num_inference_steps=8, negative_prompt="", true_cfg_scale=2.0)
    assert [r.computed(3, 4) for r in handle.trace] == log.calls
    assert all(r.stage1_blocks_run + r.stage2_blocks_run == r.blocks_run for r in handle.trace)
    kinds = {tuple(r.computed(3, 4)) for r in handle.trace}
    assert len(kinds) > 1, "each configuration must mix computed and reused calls to test anything"
    handle.remove()


def test_forecast_residual_is_exact_at_zero_and_extrapolates_from_the_last_two_misses(monkeypatch):
    """Experimental `forecast_residual`: with every call forced to a miss nothing changes; with misses every third
    call (a cap of 2 hits in a row), each hit adds r + (s - t) / (t - t0) x (r - r0) of its stage, the last two
    misses' residuals, and replays r until a stage has two misses."""
    from h2cache.forecast import ResidualForecast

    pipe = tiny_flux_pipeline(double=3, single=4)
    baseline = run(pipe, num_inference_steps=8)
    handle = apply_h2_cache(pipe, H2CacheConfig(tau1=0, tau2=0, forecast_residual=True))
    assert torch.equal(run(pipe, num_inference_steps=8), baseline)
    handle.remove()

    remembered: list[tuple[int, tuple]] = []  # (step, residual) per miss, both stages in call order
    added: list[tuple[int, tuple, tuple]] = []  # (step, cached residual, what the hit added)
    real_remember, real_extrapolate = ResidualForecast.remember, ResidualForecast.extrapolate

    def remember(self, residual, step, thumb=None):
        remembered.append((id(self), step, residual))
        real_remember(self, residual, step, thumb)

    def extrapolate(self, residual, step, thumb=None):
        assert thumb is None  # the factor is counted in steps unless forecast_probe_factor is on
        out = real_extrapolate(self, residual, step, thumb)
        added.append((id(self), step, residual, out))
        return out

    monkeypatch.setattr(ResidualForecast, "remember", remember)
    monkeypatch.setattr(ResidualForecast, "extrapolate", extrapolate)
    handle = apply_h2_cache(pipe, H2CacheConfig(tau1=HUGE, tau2=HUGE, max_consecutive_hits=2,
                                                forecast_residual=True))
    forecast = run(pipe, num_inference_steps=8)
    assert [r.hit1 for r in handle.trace] == [False, True, True, False, True, True, False, True]
    for stage in {owner for owner, *_ in remembered}:  # one ResidualForecast per stage
        misses = [(step, r) for owner, step, r in remembered if owner == stage]
        assert [step for step, _ in misses] == [0, 3, 6]
        hits = [(step, r, out) for owner, step, r, out in added if owner == stage]
        assert [step for step, *_ in hits] == [1, 2, 4, 5, 7]
        for step, residual, out in hits:
            earlier = [(t, r) for t, r in misses if t < step][-2:]
            assert residual is earlier[-1][1]  # the stage's cached residual is the last miss's
            if len(earlier) == 1:
                assert out is residual  # one miss so far: replayed, as in the paper
                continue
            (t0, r0), (t, r) = earlier
            for got, last, before in zip(out, r, r0):
                if last is not None:
                    torch.testing.assert_close(got, last + (step - t) / (t - t0) * (last - before))
    handle.remove()
    handle = apply_h2_cache(pipe, H2CacheConfig(tau1=HUGE, tau2=HUGE, max_consecutive_hits=2))
    replayed = run(pipe, num_inference_steps=8)
    handle.remove()
    assert not torch.equal(forecast, replayed)  # same decisions, other residuals added


def test_forecast_probe_factor_moves_the_residual_as_far_as_the_probe_moved(monkeypatch):
    """Experimental `forecast_probe_factor`: each hit's factor is the projection of its PFS thumbnail's change
    since the last miss onto the change between the last two misses' thumbnails, for both stages (stage 2's
    forced hits included); the images differ from the step-counted forecast under the same decisions."""
    from h2cache.forecast import ResidualForecast

    remembered: list[tuple[int, int, tuple, torch.Tensor]] = []
    added: list[tuple[int, int, tuple, torch.Tensor, tuple]] = []
    real_remember, real_extrapolate = ResidualForecast.remember, ResidualForecast.extrapolate

    def remember(self, residual, step, thumb=None):
        remembered.append((id(self), step, residual, thumb))
        real_remember(self, residual, step, thumb)

    def extrapolate(self, residual, step, thumb=None):
        out = real_extrapolate(self, residual, step, thumb)
        added.append((id(self), step, thumb, out))
        return out

    monkeypatch.setattr(ResidualForecast, "remember", remember)
    monkeypatch.setattr(ResidualForecast, "extrapolate", extrapolate)
    pipe = tiny_flux_pipeline(double=3, single=4)
    settings = dict(tau1=HUGE, tau2=HUGE, max_consecutive_hits=2, forecast_residual=True)
    handle = apply_h2_cache(pipe, H2CacheConfig(**settings, forecast_probe_factor=True))
    measured = run(pipe, num_inference_steps=8)
    assert [r.hit1 for r in handle.trace] == [False, True, True, False, True, True, False, True]
    handle.remove()
    stages = {owner for owner, *_ in remembered}
    assert len(stages) == 2
    factors = []
    for stage in stages:
        misses = [(t, r, th) for owner, t, r, th in remembered if owner == stage]
        assert [t for t, *_ in misses] == [0, 3, 6] and all(th is not None for *_, th in misses)
        for owner, step, thumb, out in (a for a in added if a[0] == stage):
            assert thumb is not None  # stage 2's hits here are all forced by stage 1: it still measured
            earlier = [m for m in misses if m[0] < step][-2:]
            if len(earlier) < 2:
                continue
            (_, r0, th0), (_, r, th) = earlier
            line = th - th0
            factor = float(((thumb - th) * line).sum() / (line * line).sum())
            factors.append(factor)
            for got, last, before in zip(out, r, r0):
                if last is not None:
                    torch.testing.assert_close(got, last + factor * (last - before))
    assert len(factors) == 6 and len({round(f, 4) for f in factors}) > 1
    handle = apply_h2_cache(pipe, H2CacheConfig(**settings))
    counted = run(pipe, num_inference_steps=8)
    handle.remove()
    assert not torch.equal(measured, counted)
    with pytest.raises(ValueError, match="forecast_probe_factor = True needs H2CacheConfig.forecast_residual"):
        H2CacheConfig(forecast_probe_factor=True).validate()
