"""Procedural scenes: grammar round trip, deterministic rendering, parser agreement with the renderer."""

from __future__ import annotations

import numpy as np
import pytest

from embedded_model.scenes import SHAPES, SceneSpec, all_specs, check, parse_prompt, read_scene, render, sample_specs, vocabulary


def test_prompt_round_trip_and_vocabulary():
    specs = list(all_specs())
    assert len(specs) == 4 * 8 * 9 * 2 * 5 * 7
    words = set(vocabulary())
    for spec in specs[::97]:
        assert parse_prompt(spec.prompt()) == spec
        assert set(spec.prompt().split()) <= words


def test_held_out_split_is_disjoint_and_about_a_tenth():
    specs = list(all_specs())
    share = sum(s.is_held_out() for s in specs) / len(specs)
    assert 0.08 < share < 0.12
    train = {s.prompt() for s in sample_specs(500, seed=0, held_out=False)}
    held = {s.prompt() for s in sample_specs(500, seed=0, held_out=True)}
    assert not train & held


def test_rendering_is_deterministic_by_seed():
    spec = SceneSpec("triangle", "orange", "bottom left", "small", "noisy", "green")
    assert np.array_equal(render(spec, 64, seed=5), render(spec, 64, seed=5))
    assert not np.array_equal(render(spec, 64, seed=5), render(spec, 64, seed=6))


def test_parser_agrees_with_renderer():
    specs = sample_specs(300, seed=11, held_out=False) + sample_specs(300, seed=12, held_out=True)
    agree = sum(check(render(s, 64, seed=i), s).ok for i, s in enumerate(specs))
    assert agree / len(specs) >= 0.99
    # Every texture and colour is covered and read back.
    spec = SceneSpec("diamond", "white", "top right", "large", "checkered", "black")
    reading = read_scene(render(spec, 64, seed=0))
    assert (reading.color, reading.position, reading.texture, reading.background, reading.shape) == (
        "white", "top right", "checkered", "black", "diamond")


@pytest.mark.parametrize("size", [64, 128])
def test_parser_reads_the_shape_at_both_sizes(size):
    specs = sample_specs(200, seed=21, held_out=False) + sample_specs(200, seed=22, held_out=True)
    results = [check(render(s, size, seed=1000 + i), s) for i, s in enumerate(specs)]
    assert sum(r.shape_ok for r in results) / len(specs) >= 0.99
    assert sum(r.ok for r in results) / len(specs) >= 0.99
    # The sample covers every shape, so none is read back by default.
    assert {s.shape for s in specs} == set(SHAPES)


@pytest.mark.parametrize("shape", SHAPES)
def test_each_shape_is_read_back_small_and_large(shape):
    for size, scale in (("small", 64), ("large", 128), ("small", 128), ("large", 64)):
        spec = SceneSpec(shape, "green", "bottom left", size, "striped", "orange")
        assert read_scene(render(spec, scale, seed=4)).shape == shape, (size, scale)


def test_parser_rejects_the_wrong_prompt():
    image = render(SceneSpec("circle", "red", "top left", "large", "striped", "blue"), 64, seed=0)
    result = check(image, "a large green circle at the bottom right on a plain blue background")
    assert not result.color_ok and not result.position_ok and not result.texture_ok and not result.ok
    assert result.shape_ok  # the prompt's shape is right, so shape is reported separately
    wrong_shape = check(image, "a large red square at the top left on a striped blue background")
    assert wrong_shape.color_ok and wrong_shape.position_ok and wrong_shape.texture_ok
    assert not wrong_shape.shape_ok and not wrong_shape.ok


def test_no_shape_without_an_object_or_from_too_few_pixels():
    # A plain background alone: no object colour, so no shape to read.
    image = render(SceneSpec("circle", "red", "center", "small", "plain", "blue"), 64, seed=0)
    image[:] = image[0, 0]
    reading = read_scene(image)
    assert reading.color is None and reading.shape is None
    assert not check(image, "a small red circle at the center on a plain blue background").shape_ok
    # At 16 px a small circle still shows its colour but is too few pixels to tell its shape.
    reading = read_scene(render(SceneSpec("circle", "red", "center", "small", "plain", "blue"), 16, seed=0))
    assert reading.color == "red" and reading.shape is None


@pytest.mark.parametrize("kwargs,field", [
    (dict(shape="hexagon"), "shape"), (dict(color="teal"), "color"), (dict(position="middle"), "position"),
    (dict(texture="dotted"), "texture"), (dict(color="blue", background="blue"), "differ"),
])
def test_invalid_specs(kwargs, field):
    base = dict(shape="circle", color="red", position="center", size="small", texture="plain", background="blue")
    with pytest.raises(ValueError, match=field):
        SceneSpec(**{**base, **kwargs})
