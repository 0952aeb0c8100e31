"""Issue 34 on the embedded pipeline: a call that raised leaves nothing behind, diffusers' caches are refused
over H2-Cache, and numpy or 0-d torch numbers configure it as plain Python numbers do."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import h2cache
from h2cache import H2CacheConfig, apply_h2_cache

STEPS = 8
CONFIG = {"tau1": 0.3, "tau2": 0.3, "pool_size_stage1": 128, "pool_size_stage2": 22}


@pytest.fixture(scope="module")
def pipe():
    pipe = h2cache.load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call(pipe, prompt="a large red circle at the center on a striped blue background", seed=0, **kwargs):
    args = {**h2cache.generation_defaults(pipe), "num_inference_steps": STEPS, "output_type": "np", **kwargs}
    return pipe(prompt, **args, generator=torch.Generator().manual_seed(seed)).images


@pytest.fixture(scope="module")
def fresh(pipe):
    """What a call on a newly applied cache gives: the image and the trace's decisions."""
    with apply_h2_cache(pipe, H2CacheConfig(**CONFIG)) as handle:
        image = call(pipe, "a small green square at the top on a plain white background", seed=5)
        return image, [(r.step, r.hit1, r.hit2) for r in handle.trace]


class Boom(RuntimeError):
    pass


def interrupt_from_the_step_callback(pipe):
    def callback(pipe_, step, timestep, kwargs):
        if step == 4:
            raise KeyboardInterrupt
        return kwargs

    with pytest.raises(KeyboardInterrupt):
        call(pipe, callback_on_step_end=callback)


def raise_inside_a_block(pipe):
    block = pipe.transformer.single_transformer_blocks[5]
    calls = {"n": 0}

    def forward_hook(module, args, output):
        calls["n"] += 1
        if calls["n"] == 4:  # a block that runs on misses only: the 4th miss, mid-call
            raise Boom("an error inside a block")

    handle = block.register_forward_hook(forward_hook)
    try:
        with pytest.raises(Boom):
            call(pipe)
    finally:
        handle.remove()


@pytest.mark.parametrize("fail", [interrupt_from_the_step_callback, raise_inside_a_block])
def test_a_call_after_one_that_raised_equals_a_fresh_run(pipe, fresh, fail):
    image, decisions = fresh
    with apply_h2_cache(pipe, H2CacheConfig(**CONFIG)) as handle:
        fail(pipe)
        assert 0 < len(handle.trace) < STEPS or handle.trace == []  # the failed call got part of the way
        after = call(pipe, "a small green square at the top on a plain white background", seed=5)
        assert len(handle.trace) == STEPS
        assert [(r.step, r.hit1, r.hit2) for r in handle.trace] == decisions
    assert np.array_equal(after, image)
    assert any(hit for _, hit, _ in decisions)  # the comparison means something only if something was reused


def test_without_the_reset_the_failed_call_would_leak(pipe, fresh, monkeypatch):
    """The test above fails if the start of a call is not detected: the interrupted call's references leak."""
    from h2cache.hook_machinery import ScheduleWatch

    image, _ = fresh
    monkeypatch.setattr(ScheduleWatch, "new_schedule", lambda self: False)
    with apply_h2_cache(pipe, H2CacheConfig(**CONFIG)) as handle:
        interrupt_from_the_step_callback(pipe)
        after = call(pipe, "a small green square at the top on a plain white background", seed=5)
        assert len(handle.trace) != STEPS or not np.array_equal(after, image)


def test_diffusers_enable_cache_is_refused_over_h2cache(pipe):
    from diffusers import FirstBlockCacheConfig, MagCacheConfig

    baseline = call(pipe)
    with apply_h2_cache(pipe, H2CacheConfig(**CONFIG)):
        for config in (FirstBlockCacheConfig(threshold=0.2), MagCacheConfig(mag_ratios=[1.0] * STEPS,
                                                                           num_inference_steps=STEPS)):
            with pytest.raises(ValueError, match=r"H2-Cache is applied to this transformer; call its "
                                                 r"handle\.remove\(\) before transformer\.enable_cache"):
                pipe.transformer.enable_cache(config)
        assert pipe.transformer._cache_config is None
    # Removed, diffusers' own cache attaches as usual, and H2-Cache is refused over it.
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
    try:
        with pytest.raises(ValueError, match=r"already has a diffusers cache \(FirstBlockCacheConfig\).*"
                                             r"disable_cache\(\) before applying H2-Cache"):
            apply_h2_cache(pipe)
    finally:
        pipe.transformer.disable_cache()
    assert np.array_equal(call(pipe), baseline)


def test_a_diffusers_cache_attached_by_its_apply_function_is_refused_too(pipe):
    from diffusers.hooks import FirstBlockCacheConfig, HookRegistry, apply_first_block_cache

    apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=0.2))
    try:
        with pytest.raises(ValueError, match=r"diffusers cache \(FBC\w+ 'fbc_\w+'\).*before applying H2-Cache"):
            apply_h2_cache(pipe)
    finally:
        registry = HookRegistry.check_if_exists_or_initialize(pipe.transformer)
        for name in ("fbc_leader_block_hook", "fbc_block_hook"):
            registry.remove_hook(name, recurse=True)


def test_numpy_and_torch_numbers_configure_h2cache_as_python_numbers_do(pipe):
    plain = H2CacheConfig(**CONFIG, warmup_steps=2)
    numpy_config = H2CacheConfig(tau1=np.float32(0.3), tau2=np.float64(0.3), pool_size_stage1=np.int64(128),
                                 pool_size_stage2=np.int32(22), warmup_steps=torch.tensor(2))
    assert numpy_config == plain
    assert all(type(getattr(numpy_config, f)) is type(getattr(plain, f)) for f in ("tau1", "pool_size_stage1"))
    images = []
    for config in (plain, numpy_config):
        with apply_h2_cache(pipe, config):
            images.append(call(pipe))
    assert np.array_equal(*images)


@pytest.mark.parametrize("field, value, message", [
    ("tau1", "0.1", r"tau1 must be a finite number >= 0, got a str '0.1'"),
    ("pool_size_stage1", np.float64(4.0), r"pool_size_stage1 must be an integer >= 1, got a numpy.float64"),
    ("tau1", np.array([0.1, 0.2]), r"tau1 must be a finite number >= 0, got a numpy.ndarray"),
    ("tau2", np.float32(-1), r"tau2 must be a finite number >= 0, got np.float32\(-1.0\)"),
])
def test_a_wrong_type_is_named_and_a_wrong_number_gets_the_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        H2CacheConfig(**{field: value})


def test_the_method_settings_take_numpy_numbers_too(pipe):
    from h2cache.methods import get_method

    settings = get_method("h2cache").validate(tau1=np.float32(0.12), pool_size_stage1=np.int64(128))
    assert (settings["tau1"], settings["pool_size_stage1"]) == (0.12, 128)
    assert type(settings["pool_size_stage1"]) is int
    assert get_method("fbcache").validate(threshold=np.float32(0.05)) == {"threshold": 0.05}
