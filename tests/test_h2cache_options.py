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
    from h2cache.hooks import ResidualForecast

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

    def extrapolate(self, residual, step, max_factor=None, thumb=None):
        assert thumb is None  # the factor is counted in steps unless forecast_probe_factor is on
        out = real_extrapolate(self, residual, step, max_factor, thumb)
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


def test_forecast_max_factor_caps_the_extrapolation_and_zero_replays():
    """`forecast_max_factor` bounds (s - t) / (t - t0): with misses at 0, 3, 6 the hits at 4 and 5 have factors
    1/3 and 2/3, so a cap of 0.5 changes only step 5's image path; a cap of 0 gives the replayed images; a cap
    needs the forecast on, and a negative one names the field and its range."""
    from h2cache.hooks import ResidualForecast

    f = ResidualForecast()
    f.remember((torch.tensor([1.0]), None), step=0)
    f.remember((torch.tensor([4.0]), None), step=3)
    assert f.extrapolate(f.last, step=5)[0].item() == pytest.approx(4.0 + 2 / 3 * 3.0)
    assert f.extrapolate(f.last, step=5, max_factor=0.5)[0].item() == pytest.approx(4.0 + 0.5 * 3.0)
    assert f.extrapolate(f.last, step=4, max_factor=0.5)[0].item() == pytest.approx(4.0 + 1 / 3 * 3.0)

    pipe = tiny_flux_pipeline(double=3, single=4)
    guards = dict(tau1=HUGE, tau2=HUGE, max_consecutive_hits=2)
    images = {}
    for name, options in {"replay": {}, "cap0": {"forecast_residual": True, "forecast_max_factor": 0.0},
                          "free": {"forecast_residual": True}, "big": {"forecast_residual": True,
                                                                        "forecast_max_factor": 5.0}}.items():
        handle = apply_h2_cache(pipe, H2CacheConfig(**guards, **options))
        images[name] = run(pipe, num_inference_steps=8)
        handle.remove()
    assert torch.equal(images["cap0"], images["replay"])
    assert torch.equal(images["big"], images["free"])  # every factor here is below 5: the cap never binds
    assert not torch.equal(images["free"], images["replay"])

    with pytest.raises(ValueError, match="forecast_max_factor = 1.0 needs H2CacheConfig.forecast_residual"):
        H2CacheConfig(forecast_max_factor=1.0).validate()
    with pytest.raises(ValueError, match=r"H2CacheConfig.forecast_max_factor must be None \(unbounded\) or a "
                                         r"finite number >= 0, got -1"):
        H2CacheConfig(forecast_residual=True, forecast_max_factor=-1)


def test_forecast_probe_factor_moves_the_residual_as_far_as_the_probe_moved(monkeypatch):
    """Experimental `forecast_probe_factor`: each hit's factor is the projection of its PFS thumbnail's change
    since the last miss onto the change between the last two misses' thumbnails, for both stages (stage 2's
    forced hits included); the images differ from the step-counted forecast under the same decisions."""
    from h2cache.hooks import ResidualForecast

    remembered: list[tuple[int, int, tuple, torch.Tensor]] = []
    added: list[tuple[int, int, tuple, torch.Tensor, tuple]] = []
    real_remember, real_extrapolate = ResidualForecast.remember, ResidualForecast.extrapolate

    def remember(self, residual, step, thumb=None):
        remembered.append((id(self), step, residual, thumb))
        real_remember(self, residual, step, thumb)

    def extrapolate(self, residual, step, max_factor=None, thumb=None):
        out = real_extrapolate(self, residual, step, max_factor, thumb)
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


def _stage_of(errors, owner) -> int:
    return 0 if owner is errors[0] else 1


def test_forecast_fallback_judges_each_miss_and_replays_where_replay_came_closer(monkeypatch):
    """Experimental `forecast_fallback`: at each miss a stage measures, against the residual just computed, the
    relative L1 error of the forecast and of plain replay (both recomputed here from the remembered residuals);
    until its next miss a stage's hits forecast where the forecast was the closer one and replay otherwise."""
    from h2cache.forecast_error import ForecastError, relative_l1
    from h2cache.hooks import ResidualForecast

    measured: list[tuple] = []  # (errors, forecast, step, residual, last, before, forecast error, replay error)
    real_measure = ForecastError.measure

    def measure(self, forecast, residual, step, max_factor=None, thumb=None):
        last, before = forecast.last, forecast.before
        real_measure(self, forecast, residual, step, max_factor, thumb)
        measured.append((self, forecast, step, residual, last, before, self.forecast, self.replay))

    extrapolated: list[tuple[ResidualForecast, int]] = []
    real_extrapolate = ResidualForecast.extrapolate

    def extrapolate(self, residual, step, max_factor=None, thumb=None):
        extrapolated.append((self, step))
        return real_extrapolate(self, residual, step, max_factor, thumb)

    monkeypatch.setattr(ForecastError, "measure", measure)
    monkeypatch.setattr(ResidualForecast, "extrapolate", extrapolate)
    pipe = tiny_flux_pipeline(double=3, single=4)
    steps = 11
    handle = apply_h2_cache(pipe, H2CacheConfig(tau1=HUGE, tau2=HUGE, max_consecutive_hits=2,
                                                forecast_residual=True, forecast_fallback=True))
    fallback = run(pipe, num_inference_steps=steps)
    assert [r.hit1 for r in handle.trace] == [False, True, True] * 3 + [False, True]
    handle.remove()
    owners = {(id(m[0]), id(m[1])): m[:2] for m in measured}
    assert len(owners) == 2  # one ForecastError per stage, beside its ResidualForecast
    choices = set()
    for errors, forecast in owners.values():
        misses = [m[2:] for m in measured if m[0] is errors]
        assert [step for step, *_ in misses] == [0, 3, 6, 9]
        for step, residual, last, before, got_forecast, got_replay in misses:
            if last is None:  # the first miss: nothing to judge yet
                assert got_forecast is None and got_replay is None
                continue
            assert got_replay == pytest.approx(relative_l1(last, residual))
            expected = last if before is None else tuple(
                None if r is None else r + (step - t) / (t - t0) * (r - b)
                for r, b, t, t0 in zip(last, before, (step - 3,) * 2, (step - 6,) * 2))
            assert got_forecast == pytest.approx(relative_l1(expected, residual))
        hits = (1, 2, 4, 5, 7, 8, 10)
        # (measure() extrapolates at the misses too: only the hits' calls tell what a hit added)
        hits_forecast = sorted(step for owner, step in extrapolated if owner is forecast and step in hits)
        expected_hits = []
        for hit in hits:
            *_, err_f, err_r = [m for m in misses if m[0] < hit][-1]
            replays = err_f is not None and err_r < err_f
            choices.add(replays)
            if not replays:
                expected_hits.append(hit)
        assert hits_forecast == expected_hits
    assert choices == {True, False}, "this model and seed should exercise both choices"
    # The trace shows each miss's errors (stage 1's, as measured), and nothing at hits.
    stage1 = measured[0][0]  # stage 1's tail block runs before stage 2's in every call
    recorded = [(r.step, r.forecast_error1, r.replay_error1) for r in handle.trace]
    expected = {step: (f, r) for e, _, step, *_, f, r in measured if e is stage1}
    assert recorded == [(step, *expected.get(step, (None, None))) for step in range(steps)]
    assert all(r.forecast_error2 is not None for r in handle.trace if r.step in (3, 6, 9))

    handle = apply_h2_cache(pipe, H2CacheConfig(tau1=HUGE, tau2=HUGE, max_consecutive_hits=2, forecast_residual=True))
    assert not torch.equal(run(pipe, num_inference_steps=steps), fallback)
    handle.remove()
    with pytest.raises(ValueError, match="forecast_fallback = True needs H2CacheConfig.forecast_residual"):
        H2CacheConfig(forecast_fallback=True).validate()


def test_forecast_error_limit_tightens_the_thresholds_and_a_detail_error_tightens_both_stages(monkeypatch):
    """Experimental `forecast_error_limit`: a stage's threshold is scaled by min(1, limit / error) after each miss.
    A limit of 0 turns every call after the first judged miss into a miss; a limit no error reaches changes
    nothing; since a structure hit reuses the detail stage too, a detail-stage error tightens tau1 as well,
    unless independent_stage2 decouples the stages."""
    from h2cache.forecast_error import ForecastError

    pipe = tiny_flux_pipeline(double=3, single=4)
    settings = dict(tau1=HUGE, tau2=HUGE, max_consecutive_hits=2, forecast_residual=True)
    images, patterns = {}, {}
    for name, limit in {"off": None, "zero": 0.0, "loose": 1e9}.items():
        handle = apply_h2_cache(pipe, H2CacheConfig(**settings, forecast_error_limit=limit))
        images[name] = run(pipe, num_inference_steps=8)
        patterns[name] = [(r.hit1, r.hit2) for r in handle.trace]
        handle.remove()
    assert [h1 for h1, _ in patterns["off"]] == [False, True, True, False, True, True, False, True]
    # Step 3's miss is the first with an earlier residual to judge; from then on the threshold is 0.
    assert patterns["zero"] == [(False, False), (True, True), (True, True)] + [(False, False)] * 5
    assert torch.equal(images["loose"], images["off"])
    assert not torch.equal(images["zero"], images["off"])

    def detail_only(self, limit, fallback):  # only the detail stage reports an error over the limit
        return 0.0 if self is detail[0] else 1.0

    monkeypatch.setattr(ForecastError, "threshold_scale", detail_only)
    for independent, expected in ((False, [(False, False)] * 8),
                                  (True, [(False, False)] + [(True, False)] * 2 + [(False, False)]
                                   + [(True, False)] * 2 + [(False, False), (True, False)])):
        from h2cache.hooks import H2CacheState
        detail = []
        real_init = H2CacheState.__init__

        def init(self, real_init=real_init):
            real_init(self)
            detail[:] = [self.forecast_errors[1]]

        monkeypatch.setattr(H2CacheState, "__init__", init)
        handle = apply_h2_cache(pipe, H2CacheConfig(**settings, forecast_error_limit=0.5,
                                                    independent_stage2=independent))
        run(pipe, num_inference_steps=8)
        assert [(r.hit1, r.hit2) for r in handle.trace] == expected
        handle.remove()
        monkeypatch.setattr(H2CacheState, "__init__", real_init)
    with pytest.raises(ValueError, match="forecast_error_limit = 0.1 needs H2CacheConfig.forecast_residual"):
        H2CacheConfig(forecast_error_limit=0.1).validate()
    with pytest.raises(ValueError, match=r"forecast_error_limit must be None \(off\) or a finite number >= 0"):
        H2CacheConfig(forecast_residual=True, forecast_error_limit=float("nan"))


def test_guards_structure_only_force_stage_1_and_let_stage_2_decide():
    """Experimental `guards_structure_only`: on warm-up and capped calls only the structure stage is forced to
    run; the detail stage hits by its own distance (it runs its probe only, counted in real block executions);
    the cap counts structure reuse; the final step still computes every block."""
    pipe, per_call = _counted_pipeline()
    stage1, total = 3, 7
    steps = 10
    settings = dict(tau1=HUGE, tau2=HUGE, warmup_steps=3, max_consecutive_hits=2, final_full_steps=1,
                    num_inference_steps=steps)
    handle = apply_h2_cache(pipe, H2CacheConfig(**settings, guards_structure_only=True))
    run(pipe, num_inference_steps=steps)
    records = list(handle.trace)
    forced = [True, True, True, False, False, True, False, False, True, True]
    assert [r.forced_full for r in records] == forced
    assert [r.hit1 for r in records] == [not f for f in forced]
    # Step 0 has nothing to reuse; the final step (9) is forced whole; every other forced call reuses stage 2.
    assert [r.hit2 for r in records] == [False] + [True] * 8 + [False]
    assert [r.forced2 for r in records] == [False, False, False, True, True, False, True, True, False, False]
    assert [r.blocks_run for r in records] == [total, stage1 + 1, stage1 + 1, 2, 2, stage1 + 1, 2, 2, stage1 + 1, total]
    assert per_call == [r.blocks_run for r in records]
    handle.remove()

    handle = apply_h2_cache(pipe, H2CacheConfig(**settings))  # off: the same calls are forced whole
    run(pipe, num_inference_steps=steps)
    assert [r.hit2 for r in handle.trace] == [not f for f in forced]
    handle.remove()
