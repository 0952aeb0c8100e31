"""Calibration never sees benchmark prompts, on every model / prompt-source path (h2cache.prompt_split)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import parse_config
from h2cache.prompt_split import calibration_leaks, split_prompts
from bench.runner import prompt_split
from bench.spec import DEFAULT_PROMPTS, TEXT_PROMPTS, read_prompts
from h2cache.methods.calibration import prompt_hashes
from h2cache.pipelines import EMBEDDED_MODEL_DIR

ROOT = Path(__file__).resolve().parent.parent


def assert_disjoint(split):
    assert split.benchmark and split.calibration
    assert not set(prompt_hashes(split.benchmark)) & set(prompt_hashes(split.calibration))


@pytest.mark.parametrize("argv, rule", [
    # embedded model, shipped held-out scenes: training-split scenes
    (["--model", "embedded"], "training split"),
    (["--model", str(EMBEDDED_MODEL_DIR), "--num-prompts", "0"], "training split"),
    # FLUX.1-dev with the text prompts, every prompt scored: the file's last 8 are held out
    (["--model", "black-forest-labs/FLUX.1-dev", "--prompts", str(TEXT_PROMPTS), "--num-prompts", "0"], "last 8"),
    (["--model", "black-forest-labs/FLUX.1-dev", "--prompts", str(TEXT_PROMPTS), "--num-prompts", "8"], "last 8"),
    # another model on the scene prompts file: a held-out split of the file too
    (["--model", "some/other-model", "--prompts", str(DEFAULT_PROMPTS), "--calibration-prompts", "4"], "last 4"),
    # an explicit calibration file
    (["--model", "black-forest-labs/FLUX.1-dev", "--prompts", str(TEXT_PROMPTS),
      "--calibration-prompts-file", str(DEFAULT_PROMPTS)], "calibration file"),
])
def test_calibration_and_benchmark_prompts_are_disjoint(argv, rule):
    split = prompt_split(parse_config(argv))
    assert rule in split.rule
    assert_disjoint(split)


def test_a_prompt_file_never_lends_its_first_prompts_to_calibration():
    prompts = read_prompts(TEXT_PROMPTS)
    split = prompt_split(parse_config(["--model", "black-forest-labs/FLUX.1-dev", "--prompts", str(TEXT_PROMPTS),
                                       "--num-prompts", "0"]))
    assert split.calibration == prompts[-8:] and split.benchmark == prompts[:-8]
    assert prompts[0] in split.benchmark and prompts[0] not in split.calibration


def test_embedded_calibration_keeps_the_shipped_draw_and_avoids_benchmark_scenes():
    from embedded_model.scenes import sample_specs

    shipped = [s.prompt() for s in sample_specs(8, seed=2024, held_out=False)]
    assert split_prompts("embedded", read_prompts(DEFAULT_PROMPTS), 8, 8).calibration == shipped
    # a benchmark file that contains a training-split scene: it is dropped from calibration
    split = split_prompts("embedded", [shipped[0], "a large red circle at the center on a plain blue background"],
                          None, 8)
    assert len(split.calibration) == 8 and shipped[0] not in split.calibration
    assert_disjoint(split)


def test_overlapping_or_too_short_sources_are_refused():
    with pytest.raises(ValueError, match="also benchmark prompts"):
        split_prompts("org/model", ["a", "b", "c"], None, 2, calibration=["x", "B"])
    with pytest.raises(ValueError, match="leaves none to score"):
        split_prompts("org/model", ["a", "b"], None, 2)


def test_stored_calibrations_made_on_benchmark_prompts_are_detected():
    bench = ["a red circle", "a blue square"]
    assert calibration_leaks({"prompt_hashes": prompt_hashes(["A red circle"])}, bench) is True
    assert calibration_leaks({"prompt_hashes": prompt_hashes(["a green star"])}, bench) is False
    assert calibration_leaks({"ratios": [1.0]}, bench) is None  # older entries record no prompts


def test_the_shipped_calibration_draw_is_the_scene_grammars():
    """The embedded model's calibration_prompts.txt is exactly what its export draws from the scene grammar, so
    the installed library calibrates on the same prompts a checkout would."""
    from embedded_model.training.export import calibration_draw
    from h2cache.prompt_split import embedded_calibration_prompts

    assert embedded_calibration_prompts() == calibration_draw()
