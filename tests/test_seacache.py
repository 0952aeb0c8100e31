"""SeaCache (diffusers' ``SeaCacheConfig``) as a benchmark method, on the embedded FLUX pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import h2cache
from h2cache.compare import generate
from h2cache.methods.base import ApplyContext, Method
from h2cache.methods.calibration import CalibrationStore
from h2cache.methods.seacache import (
    SEACACHE_GRID, SEACACHE_SETTINGS, SEACACHE_SUMMARY, attach_seacache, flux_raw_vision,
)

STEPS = 10
PROMPT = "a large red circle at the center on a plain blue background"
SEACACHE = Method("seacache", SEACACHE_SUMMARY, SEACACHE_SETTINGS, SEACACHE_GRID, attach_seacache)


@pytest.fixture(scope="module")
def pipe():
    pipe = h2cache.load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe) -> np.ndarray:
    return generate(pipe, PROMPT, seed=0, previews=False, num_inference_steps=STEPS).image


@pytest.fixture(scope="module")
def uncached(pipe) -> np.ndarray:
    return run(pipe)


def _no_cache_left(transformer) -> bool:
    registry = getattr(transformer, "_diffusers_hook", None)
    return transformer._cache_config is None and (registry is None or not registry.hooks)


def test_threshold_zero_is_the_uncached_image(pipe, uncached):
    with SEACACHE.apply(pipe, num_inference_steps=STEPS, threshold=0.0) as handle:
        image = run(pipe)
        trace = handle.trace
    assert [r.blocks_run for r in trace] == [24] * STEPS
    assert np.array_equal(image, uncached)


def test_large_threshold_skips_blocks_and_changes_the_image(pipe, uncached):
    with SEACACHE.apply(pipe, num_inference_steps=STEPS, threshold=100.0) as handle:
        first = run(pipe)
        first_trace = [r.blocks_run for r in handle.trace]
        second = run(pipe)  # the pipeline's reset between calls: the second call starts over at step 0
        second_trace = [r.blocks_run for r in handle.trace]
        share = handle.trace.blocks_share()
    assert share < 1
    # first and last step full (retention_steps=1, cache_end_steps=1), at most 2 skips in a row
    assert first_trace == [24, 0, 0, 24, 0, 0, 24, 0, 0, 24]
    assert second_trace == first_trace and np.array_equal(second, first)
    assert not np.array_equal(first, uncached)


def test_threshold_between_the_step_changes_skips_some_steps(pipe):
    # early steps change the filtered latent far more than middle ones: a mid threshold skips only in the middle
    with SEACACHE.apply(pipe, num_inference_steps=STEPS, threshold=0.3, max_consecutive_cached=0) as handle:
        run(pipe)
        ran = [r.blocks_run for r in handle.trace]
    assert ran[:3] == [24, 24, 24] and ran[-1] == 24
    assert 0 < ran.count(0) < STEPS - 4


def test_remove_gives_the_uncached_image_back(pipe, uncached):
    handle = SEACACHE.apply(pipe, num_inference_steps=STEPS, threshold=100.0)
    cached = run(pipe)
    handle.remove()
    assert not np.array_equal(cached, uncached)  # the cache was really on
    assert _no_cache_left(pipe.transformer)
    assert np.array_equal(run(pipe), uncached)


@pytest.mark.parametrize("settings, message", [
    ({"threshold": -0.1}, r"seacache\.threshold must be a number in \[0\.0, inf\], got -0\.1"),
    ({"residual_order": 2}, r"seacache\.residual_order must be an integer in \[0, 1\], got 2"),
    ({"max_consecutive_cached": 1.5}, r"seacache\.max_consecutive_cached must be an integer"),
    ({"power_exp": 0.0}, r"seacache\.power_exp must be a number in \[0\.5, 8\.0\], got 0\.0"),
    ({"treshold": 0.1}, r"seacache has no setting 'treshold'; its settings are: threshold, residual_order"),
])
def test_bad_settings_are_refused_before_touching_the_model(pipe, settings, message):
    with pytest.raises(ValueError, match=message):
        SEACACHE.apply(pipe, num_inference_steps=STEPS, **settings)
    assert _no_cache_left(pipe.transformer)


def test_settings_defaults_are_diffusers_own():
    from diffusers import SeaCacheConfig

    defaults = SeaCacheConfig()
    assert {s.name: s.default for s in SEACACHE_SETTINGS} == {
        s.name: getattr(defaults, s.name) for s in SEACACHE_SETTINGS}
    (knob, values), = SEACACHE_GRID.items()
    assert 5 <= len(values) <= 6 and list(values) == sorted(values)
    assert all(SEACACHE.setting(knob).check("seacache", v) == v for v in values)


def test_raw_vision_unpacks_the_flux_latent(pipe):
    latent = torch.randn(2, 16, 8, 12, generator=torch.Generator().manual_seed(0))
    packed = pipe._pack_latents(latent, 2, 16, 8, 12)
    ids = pipe._prepare_latent_image_ids(2, 4, 6, "cpu", torch.float32)
    # Kontext-style reference tokens (first id axis 1) are not part of the generated image
    reference = ids.clone()
    reference[:, 0] = 1
    hidden = torch.cat([packed, torch.randn_like(packed)], dim=1)
    raw = flux_raw_vision(pipe.transformer, (), {"hidden_states": hidden, "img_ids": torch.cat([ids, reference])})
    assert len(raw) == 2
    for sample, expected in zip(raw, latent):
        assert sample.shape == (16, 1, 8, 12)
        assert torch.equal(sample[:, 0], expected)


def test_other_transformers_are_refused_by_name():
    from diffusers import WanTransformer3DModel

    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=16, num_layers=1, rope_max_seq_len=32)
    context = ApplyContext(transformer, transformer, STEPS, CalibrationStore())
    with pytest.raises(TypeError, match=r"FluxTransformer2DModel only.*not for WanTransformer3DModel"):
        attach_seacache(SEACACHE.validate(), context)
    assert _no_cache_left(transformer)
