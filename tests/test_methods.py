"""The method registry on tiny random pipelines: validation, traces, calibration, and clean removal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from h2cache.compare import generate
from h2cache.methods import (
    CalibrationStore, TeaCacheConfig, apply_method, apply_teacache, calibrate_magcache, calibrate_teacache,
    fit_rescale_polynomial, get_method, list_methods, measure_flop_table, model_fingerprint, model_key,
)
from tiny_models import tiny_flux_pipeline, tiny_sd3_pipeline

STEPS = 6
CALL = {"height": 16, "width": 16, "num_inference_steps": STEPS, "max_sequence_length": 16}
PROMPT = "a large red circle at the center on a striped blue background"


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux_pipeline()


@pytest.fixture(scope="module")
def flops(pipe):
    return measure_flop_table(pipe, PROMPT, **{k: v for k, v in CALL.items() if k != "num_inference_steps"})


@pytest.fixture(scope="module")
def store(pipe, tmp_path_factory):
    store = CalibrationStore(tmp_path_factory.mktemp("cal") / "calibration.json")
    key, fp = model_key(pipe), model_fingerprint(pipe.transformer)
    store.put_teacache(key, fp, STEPS, calibrate_teacache(pipe, [PROMPT, "a small blue square at the top"], **CALL))
    store.put(key, fp, "magcache", {str(STEPS): calibrate_magcache(pipe, [PROMPT], **CALL)})
    return store


@pytest.fixture(scope="module")
def baseline(pipe):
    return generate(pipe, PROMPT, seed=0, previews=False, **CALL).image


def run(pipe, **kwargs):
    return generate(pipe, PROMPT, seed=0, previews=False, **{**CALL, **kwargs}).image


def test_registry_has_the_issue_names():
    assert list_methods()[:6] == ["none", "h2cache", "fbcache", "teacache", "magcache", "taylorseer"]
    with pytest.raises(ValueError, match="unknown method 'blockcache'.*choose from"):
        get_method("blockcache")


@pytest.mark.parametrize("name, settings, message", [
    ("fbcache", {"threshold": -0.1}, r"fbcache\.threshold must be a number in \[0\.0, inf\], got -0\.1"),
    ("fbcache", {"treshold": 0.1}, r"fbcache has no setting 'treshold'; its settings are: threshold"),
    ("h2cache", {"tau1": float("nan")}, r"h2cache\.tau1 must be a number"),
    ("taylorseer", {"cache_interval": 0}, r"taylorseer\.cache_interval must be an integer in \[1, inf\]"),
    ("taylorseer", {"cache_interval": 2.5}, r"taylorseer\.cache_interval must be an integer"),
    ("taylorseer", {"lite": "yes"}, r"taylorseer\.lite must be true or false"),
    ("magcache", {"retention_ratio": 1.5}, r"magcache\.retention_ratio must be a number in \[0\.0, 1\.0\]"),
    ("h2cache-no-pfs", {"full_residual_distance": False}, r"has no setting 'full_residual_distance'"),
])
def test_settings_are_validated_before_touching_the_model(pipe, name, settings, message):
    with pytest.raises(ValueError, match=message):
        apply_method(pipe, name, **settings)
    assert not hasattr(pipe.transformer, "_diffusers_hook") or not pipe.transformer._diffusers_hook.hooks


def test_uncached_trace_counts_every_block(pipe, flops, baseline):
    with apply_method(pipe, "none", flops=flops) as handle:
        image = run(pipe)
        trace = handle.trace
    assert np.array_equal(image, baseline)
    assert [r.step for r in trace] == list(range(STEPS))
    assert all(r.blocks_run == r.blocks_total == 7 and r.attn_run == 7 and not r.hit for r in trace)
    assert trace.blocks_share() == 1.0 and trace.flops_share() == pytest.approx(1.0)


def test_flop_table_is_measured_per_block(flops):
    assert len(flops.blocks) == 7 and flops.image_tokens == 16 and flops.text_tokens == 16
    for block in flops.blocks:
        assert 0 < block.attn < block.total


@pytest.mark.parametrize("name, settings", [
    ("none", {}), ("h2cache", {"tau1": 10.0, "tau2": 10.0}), ("fbcache", {"threshold": 10.0}),
    ("teacache", {"threshold": 10.0}), ("magcache", {"threshold": 10.0}), ("taylorseer", {"cache_interval": 2}),
    ("taylorseer", {"lite": True, "disable_cache_before_step": 1}), ("h2cache-no-pfs", {"tau1": 10.0}),
    ("h2cache-independent-stage2", {"tau1": 0.0, "tau2": 10.0}), ("fbcache-guarded", {"threshold": 10.0}),
    ("teacache-guarded", {"threshold": 10.0}), ("magcache-per-context", {"threshold": 10.0}),
])
def test_every_method_traces_and_removes_cleanly(pipe, flops, store, baseline, name, settings):
    handle = apply_method(pipe, name, num_inference_steps=STEPS, flops=flops, calibration=store, **settings)
    try:
        cached = run(pipe)
        trace = handle.trace
        assert len(trace) == STEPS and trace.contexts == ["cond"]
        for record in trace:
            assert 0 <= record.blocks_run <= record.blocks_total == 7
            assert record.hit == (record.blocks_run < 7 or record.attn_run < 7)
            assert 0 <= record.flops_run <= record.flops_total
        if name != "none":
            assert trace.hit_count() > 0, "settings this loose must reuse something"
            assert not np.array_equal(cached, baseline)
        assert not trace[0].hit  # nothing to reuse at the first step
    finally:
        handle.remove()
    handle.remove()  # twice is fine
    assert np.array_equal(run(pipe), baseline)
    assert getattr(pipe.transformer, "_cache_config", None) is None


def test_meter_agrees_with_h2cache_own_trace(pipe, flops):
    with apply_method(pipe, "h2cache", tau1=0.3, tau2=0.5, flops=flops) as handle:
        run(pipe)
        trace = handle.trace
        own = handle.inner.trace
    assert [r.blocks_run for r in trace] == [r.blocks_run for r in own]
    assert [r.detail["hit1"] for r in trace] == [r.hit1 for r in own]
    assert all(r.signal == r.detail["d1"] for r in trace)


def test_fbcache_hit_runs_only_the_first_block(pipe, flops):
    with apply_method(pipe, "fbcache", threshold=10.0, flops=flops) as handle:
        run(pipe)
        trace = handle.trace
    assert trace[0].blocks_run == 7
    assert [r.blocks_run for r in trace[1:]] == [1] * (STEPS - 1)
    assert trace[1].flops_run == pytest.approx(flops.blocks[0].total)


def run_teacache(pipe, threshold: float):
    """One pipeline call under TeaCache with the identity polynomial: (image, per-call decisions)."""
    handle = apply_teacache(pipe.transformer, TeaCacheConfig(threshold=threshold, coefficients=(1.0, 0.0),
                                                             num_inference_steps=STEPS))
    try:
        return run(pipe), list(handle.decisions)
    finally:
        handle.remove()


def test_teacache_always_computes_first_and_last_step(pipe):
    _, decisions = run_teacache(pipe, 1e9)
    assert [d.computed for d in decisions] == [True] + [False] * (STEPS - 2) + [True]


def test_teacache_accumulates_until_the_threshold(pipe, baseline):
    image, decisions = run_teacache(pipe, 0.0)
    assert np.array_equal(image, baseline)  # identity polynomial, threshold 0: never skips
    assert all(d.computed for d in decisions)
    assert all(d.change is not None and d.change > 0 for d in decisions[1:-1])
    # a threshold between one and two steps' change: skip, then compute once the sum crosses it
    _, decisions = run_teacache(pipe, decisions[1].change * 1.5)
    pattern = [d.computed for d in decisions]
    assert pattern[0] and pattern[-1] and not all(pattern)


def test_teacache_config_and_fit_are_validated():
    with pytest.raises(ValueError, match="TeaCacheConfig.coefficients"):
        TeaCacheConfig(threshold=0.4)
    with pytest.raises(ValueError, match="num_inference_steps must be an integer >= 2"):
        TeaCacheConfig(coefficients=(1.0,), num_inference_steps=1)
    assert fit_rescale_polynomial([0.1, 0.2, 0.3], [0.3, 0.5, 0.7], degree=1) == pytest.approx((2.0, 0.1))
    with pytest.raises(ValueError, match="need more than 4"):
        fit_rescale_polynomial([0.1, 0.2], [0.1, 0.2])


def test_calibrations_are_stored_per_model(pipe, store):
    key, fp = model_key(pipe), model_fingerprint(pipe.transformer)
    teacache = store.get(key, fp, "teacache")[str(STEPS)]
    assert len(teacache["coefficients"]) == 5 and teacache["pairs"] == 2 * (STEPS - 1)
    assert teacache["num_inference_steps"] == STEPS
    ratios = store.get(key, fp, "magcache")[str(STEPS)]["ratios"]
    assert len(ratios) == STEPS and ratios[0] == 1.0
    assert store.get(key, "another-fingerprint", "teacache") is None


def test_teacache_fits_are_kept_per_step_count(pipe, tmp_path):
    """A polynomial fitted at one step count is not used at another: the per-step input changes differ."""
    key, fp = model_key(pipe), model_fingerprint(pipe.transformer)
    store = CalibrationStore(tmp_path / "cal.json")
    legacy = {"coefficients": [1.0, 0.0], "num_inference_steps": STEPS}
    store.put(key, fp, "teacache", legacy)  # a file written before fits were per step count
    with apply_method(pipe, "teacache", num_inference_steps=STEPS, calibration=store) as handle:
        assert f"calibrated at {STEPS} steps" in handle.attachment.description
    with pytest.raises(ValueError, match=f"teacache needs .* at {STEPS + 1} steps"):
        apply_method(pipe, "teacache", num_inference_steps=STEPS + 1, calibration=store)
    store.put_teacache(key, fp, STEPS + 1, {"coefficients": [2.0, 0.0], "num_inference_steps": STEPS + 1})
    assert set(store.get(key, fp, "teacache")) == {str(STEPS), str(STEPS + 1)}
    with apply_method(pipe, "teacache", num_inference_steps=STEPS + 1, calibration=store) as handle:
        assert handle.inner.config.coefficients == (2.0, 0.0)
    with apply_method(pipe, "teacache", num_inference_steps=STEPS, calibration=store) as handle:
        assert handle.inner.config.coefficients == (1.0, 0.0)


def test_missing_calibration_says_how_to_get_it(pipe, tmp_path):
    empty = CalibrationStore(tmp_path / "none.json")
    for name in ("teacache", "magcache"):
        with pytest.raises(ValueError, match=f"{name} needs .* --calibrate force"):
            apply_method(pipe, name, calibration=empty)
    assert not pipe.transformer._diffusers_hook.hooks


def test_magcache_respects_max_skip_steps(pipe, store):
    with apply_method(pipe, "magcache", threshold=10.0, max_skip_steps=2, retention_ratio=0.0,
                      num_inference_steps=STEPS, calibration=store) as handle:
        run(pipe)
        hits = [r.hit for r in handle.trace]
    assert any(hits)
    longest = max(len(run_) for run_ in "".join("H" if h else "." for h in hits).split("."))
    assert longest <= 2


def test_taylorseer_predicts_attention_but_runs_the_rest(pipe, flops):
    with apply_method(pipe, "taylorseer", cache_interval=2, disable_cache_before_step=2, flops=flops) as handle:
        run(pipe)
        trace = handle.trace
    predicted = [r for r in trace if r.attn_run < 7]
    assert predicted and all(r.blocks_run == 7 and r.attn_run == 0 for r in predicted)
    assert trace.blocks_share() == 1.0 and trace.flops_share() < 1.0


def test_true_cfg_contexts_are_traced_separately(pipe, flops, store):
    with apply_method(pipe, "teacache", threshold=10.0, num_inference_steps=STEPS, calibration=store) as handle:
        run(pipe, true_cfg_scale=2.0, negative_prompt="")
        trace = handle.trace
    assert trace.contexts == ["cond", "uncond"]
    for context in ("cond", "uncond"):
        records = trace.for_context(context)
        assert [r.step for r in records] == list(range(STEPS))
        assert not records[0].hit and not records[-1].hit and records[1].hit


def test_caches_do_not_stack(pipe):
    with apply_method(pipe, "fbcache"):
        with pytest.raises(ValueError, match="already (applied|has a diffusers cache)"):
            apply_method(pipe, "h2cache")
        with pytest.raises(ValueError, match="already (applied|has a diffusers cache)"):
            apply_method(pipe, "teacache", calibration=CalibrationStore("/nonexistent/x.json"))
    with apply_method(pipe, "h2cache"):
        with pytest.raises(ValueError, match="already (applied|has a diffusers cache)"):
            apply_method(pipe, "fbcache")
    # applied outside the registry, the other cache is still detected
    pipe.transformer.enable_cache(__import__("diffusers").FirstBlockCacheConfig(threshold=0.1))
    try:
        with pytest.raises(ValueError, match="already has a diffusers cache"):
            apply_method(pipe, "h2cache")
        with pytest.raises(ValueError, match="already has a diffusers cache"):
            apply_method(pipe, "teacache", calibration=CalibrationStore("/nonexistent/x.json"))
    finally:
        pipe.transformer.disable_cache()
    assert not pipe.transformer._diffusers_hook.hooks


def test_single_list_model_gets_the_methods_it_supports():
    pipe = tiny_sd3_pipeline()

    def sd3_image():
        # called directly: compare.generate fills in the embedded FLUX model's defaults (true_cfg_scale...)
        out = pipe(PROMPT, height=32, width=32, num_inference_steps=4, output_type="np",
                   generator=torch.Generator().manual_seed(0))
        return out.images[0]

    base = sd3_image()
    for name, settings in (("none", {}), ("h2cache", {"tau1": 10.0, "tau2": 10.0})):
        with apply_method(pipe, name, num_inference_steps=4, **settings) as handle:
            for _ in range(2):  # a second call starts a fresh trace even though SD3 has no CacheMixin
                sd3_image()
                trace = handle.trace
                # SD3 batches cond and uncond into one call per step, under no cache context
                assert [r.step for r in trace] == list(range(4)) and trace.contexts == ["default"]
                assert all(r.blocks_total == 6 for r in trace)
            if name == "h2cache":
                assert [r.blocks_run for r in trace] == [r.blocks_run for r in handle.inner.trace]
        assert np.array_equal(sd3_image(), base)
    with pytest.raises(TypeError, match="enable_cache"):
        apply_method(pipe, "fbcache")
    with pytest.raises(TypeError, match="FluxTransformer2DModel"):
        apply_method(pipe, "teacache", calibration=CalibrationStore("/nonexistent/x.json"))


def test_guarded_h2cache_proposal_forces_full_calls(pipe, flops, baseline):
    with apply_method(pipe, "h2cache-guarded", tau1=10.0, tau2=10.0, max_consecutive_hits=2, retention_ratio=0.2,
                      num_inference_steps=STEPS, flops=flops) as handle:
        for _ in range(2):  # counters restart with every pipeline call
            run(pipe)
            hits = [r.hit for r in handle.trace]
            assert hits == [False, False, True, True, False, False]  # 2 retained, cap 2, last step full
    assert np.array_equal(run(pipe), baseline)


# -- guards on the peers ------------------------------------------------------------------------------------

LOOSE = {"h2cache-guarded": {"tau1": 10.0, "tau2": 10.0}, "fbcache-guarded": {"threshold": 10.0},
         "teacache-guarded": {"threshold": 10.0}}


@pytest.mark.parametrize("name, guards, cond_blocks", [
    # 2 warm-up steps (ceil(0.2 x 6)), at most 2 reusing calls in a row, the last step computed
    ("h2cache-guarded", {"retention_ratio": 0.2, "max_consecutive_hits": 2, "final_full_steps": 1}, [7, 7, 2, 2, 7, 7]),
    ("fbcache-guarded", {"retention_ratio": 0.2, "max_consecutive_hits": 2, "final_full_steps": 1}, [7, 7, 1, 1, 7, 7]),
    ("teacache-guarded", {"retention_ratio": 0.2, "max_consecutive_hits": 2, "final_full_steps": 1}, [7, 7, 0, 0, 7, 7]),
    # no warm-up, no final step, one reusing call at a time (TeaCache computes its last step anyway)
    ("h2cache-guarded", {"retention_ratio": 0.0, "max_consecutive_hits": 1, "final_full_steps": 0}, [7, 2, 7, 2, 7, 2]),
    ("fbcache-guarded", {"retention_ratio": 0.0, "max_consecutive_hits": 1, "final_full_steps": 0}, [7, 1, 7, 1, 7, 1]),
    ("teacache-guarded", {"retention_ratio": 0.0, "max_consecutive_hits": 1, "final_full_steps": 0}, [7, 0, 7, 0, 7, 7]),
    # three final steps
    ("fbcache-guarded", {"retention_ratio": 0.0, "max_consecutive_hits": 9, "final_full_steps": 3}, [7, 1, 1, 7, 7, 7]),
])
def test_guards_force_the_calls_they_promise(pipe, flops, store, name, guards, cond_blocks):
    with apply_method(pipe, name, num_inference_steps=STEPS, flops=flops, calibration=store,
                      **LOOSE[name], **guards) as handle:
        for _ in range(2):  # counters restart with every pipeline call
            run(pipe, true_cfg_scale=2.0, negative_prompt="")
            for context in ("cond", "uncond"):  # each context counts its own steps and streak
                assert [r.blocks_run for r in handle.trace.for_context(context)] == cond_blocks, context


def test_guards_that_never_bind_leave_the_peer_as_it_was(pipe, flops, store):
    for name, base in (("fbcache-guarded", "fbcache"), ("teacache-guarded", "teacache")):
        traces, images = [], []
        for method, extra in ((base, {}), (name, {"retention_ratio": 0.0, "max_consecutive_hits": 99,
                                                   "final_full_steps": 0})):
            with apply_method(pipe, method, threshold=10.0, num_inference_steps=STEPS, flops=flops,
                              calibration=store, **extra) as handle:
                images.append(run(pipe))
                traces.append([r.blocks_run for r in handle.trace])
        assert traces[0] == traces[1] and np.array_equal(images[0], images[1]), name
        assert any(b < 7 for b in traces[0]), f"{base} must reuse something for this test to mean anything"


@pytest.mark.parametrize("name, threshold", [("h2cache-guarded", {"tau1": 10.0, "tau2": 10.0}),
                                             ("fbcache-guarded", {"threshold": 10.0}),
                                             ("teacache-guarded", {"threshold": 100.0})])
def test_every_guarded_method_reads_the_one_guard_rule(pipe, store, monkeypatch, name, threshold):
    """One guard rule, h2cache.guards.Guards: replaced by one that forces steps 2 and 4 only, it is what
    H2-Cache and each guarded peer follow (thresholds this loose reuse wherever no guard forces a call)."""
    from h2cache.guards import Guards

    forced_steps = {0, 2, 4}  # step 0 computes anyway: no method has anything to reuse yet
    monkeypatch.setattr(Guards, "forced_by", lambda self, step, streak: "cap" if step in forced_steps else None)
    with apply_method(pipe, name, num_inference_steps=STEPS, calibration=store, final_full_steps=0,
                      **threshold) as handle:
        run(pipe)
        full = {r.step for r in handle.trace if r.blocks_run == r.blocks_total}
    # TeaCache computes its last step by itself, as published.
    assert full - ({STEPS - 1} if name.startswith("teacache") else set()) == forced_steps, full


# -- MagCache per cache context -------------------------------------------------------------------------

def test_magcache_calibrates_each_context(pipe):
    cal = calibrate_magcache(pipe, [PROMPT], true_cfg_scale=2.0, negative_prompt="", **CALL)
    assert set(cal["by_context"]) == {"cond", "uncond"} and cal["runs"] == 2
    for ratios in cal["by_context"].values():
        assert len(ratios) == STEPS and ratios[0] == 1.0
    assert cal["by_context"]["cond"] != cal["by_context"]["uncond"]
    mean = [(a + b) / 2 for a, b in zip(cal["by_context"]["cond"], cal["by_context"]["uncond"])]
    assert cal["ratios"] == pytest.approx(mean, abs=2e-6)
    assert cal["prompt_hashes"] and len(cal["prompt_hashes"]) == 1


def test_magcache_per_context_uses_each_context_ratios(pipe, tmp_path):
    store = CalibrationStore(tmp_path / "cal.json")
    key, fp = model_key(pipe), model_fingerprint(pipe.transformer)
    steady, drifting = [1.0] * STEPS, [1.0] + [3.0] * (STEPS - 1)  # error 0 per step, and 2 per step
    store.put(key, fp, "magcache", {str(STEPS): {"ratios": [1.0] + [2.0] * (STEPS - 1),
                                                 "by_context": {"cond": steady, "uncond": drifting}}})
    settings = {"threshold": 0.5, "retention_ratio": 0.0, "max_skip_steps": 10}
    hits = {}
    for name in ("magcache", "magcache-per-context"):
        with apply_method(pipe, name, num_inference_steps=STEPS, calibration=store, **settings) as handle:
            run(pipe, true_cfg_scale=2.0, negative_prompt="")
            hits[name] = {c: [r.hit for r in handle.trace.for_context(c)] for c in ("cond", "uncond")}
    assert hits["magcache"] == {"cond": [False] * STEPS, "uncond": [False] * STEPS}  # averaged: error 1 per step
    assert hits["magcache-per-context"] == {"cond": [False] + [True] * (STEPS - 1), "uncond": [False] * STEPS}
    store.put(key, fp, "magcache", {str(STEPS): {"ratios": steady}})  # an older entry: no per-context ratios
    with pytest.raises(ValueError, match="per-context magnitude ratios"):
        apply_method(pipe, "magcache-per-context", num_inference_steps=STEPS, calibration=store)
    assert getattr(pipe.transformer, "_cache_config", None) is None


def test_every_method_is_one_preset_of_one_family_and_the_old_names_stay():
    from h2cache.methods import FAMILIES, list_families

    presets = [name for family in FAMILIES.values() for name in family.values()]
    assert sorted(presets) == sorted(list_methods())  # each registered method, once
    assert list(list_families())[:7] == ["none", "h2cache", "fbcache", "teacache", "magcache", "taylorseer",
                                         "seacache"]
    for family, named in FAMILIES.items():
        for preset, name in named.items():
            assert get_method(f"{family}/{preset}") is get_method(name)
    with pytest.raises(ValueError, match=r"unknown method 'fbcache/fast'.*family/preset: .*fbcache/guarded"):
        get_method("fbcache/fast")


def test_the_bench_takes_family_preset_names():
    from bench.cli import build_parser

    args = build_parser().parse_args(["--methods", "none", "teacache/guarded", "h2cache"])
    assert args.methods == ["none", "teacache-guarded", "h2cache"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--methods", "fbcache/fast"])
