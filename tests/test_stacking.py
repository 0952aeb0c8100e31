"""No two caches on one transformer: every registered method, H2-Cache itself and diffusers' enable_cache refuse
to attach over any other, in either order, with an error that names both."""

from __future__ import annotations

import itertools

import pytest

import h2cache
from h2cache.methods import apply_method, list_methods

STEPS = 28  # the embedded model's stored TeaCache and MagCache calibrations are at 28 steps


@pytest.fixture(scope="module")
def pipe():
    pipe = h2cache.load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def attach(pipe, name):
    if name == "apply_h2_cache":
        return h2cache.apply_h2_cache(pipe)
    return apply_method(pipe, name, num_inference_steps=STEPS)


def label(name):
    return "H2-Cache" if name == "apply_h2_cache" else f"method '{name}'"


ATTACHERS = [*list_methods(), "apply_h2_cache"]


@pytest.mark.parametrize("first", ATTACHERS)
def test_nothing_attaches_over_anything(pipe, first):
    handle = attach(pipe, first)
    try:
        for second in ATTACHERS:
            with pytest.raises(ValueError) as refused:
                attach(pipe, second)
            message = str(refused.value)
            assert label(first) in message and ("H2-Cache" if second == "apply_h2_cache" else second) in message, \
                (first, second, message)
    finally:
        handle.remove()
    assert h2cache.hook_machinery.attached_cache(pipe.transformer) is None
    assert not any(getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks for m in pipe.transformer.modules())


def test_each_pair_in_turn_attaches_once_the_first_is_removed(pipe):
    """The refusals are about what is attached now: after remove(), any method attaches."""
    for first, second in itertools.islice(itertools.permutations(ATTACHERS, 2), 0, None, 7):
        attach(pipe, first).remove()
        attach(pipe, second).remove()


def test_diffusers_enable_cache_is_refused_over_every_method(pipe):
    from diffusers import FirstBlockCacheConfig

    for name in ATTACHERS:
        with attach(pipe, name):
            with pytest.raises(ValueError, match=rf"{label(name)} is applied to this transformer"):
                pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.1))
