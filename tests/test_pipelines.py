"""load_pipeline / generation_defaults: the embedded model, local directories with and without defaults."""

from __future__ import annotations

import json
import shutil

import pytest

from h2cache.pipelines import (
    DEFAULTS_FILE, EMBEDDED, EMBEDDED_MODEL_DIR, GENERATION_DEFAULTS, generation_defaults, load_pipeline,
    write_generation_defaults,
)


def test_shipped_model_carries_its_defaults():
    on_disk = json.loads((EMBEDDED_MODEL_DIR / DEFAULTS_FILE).read_text())
    assert on_disk == GENERATION_DEFAULTS[EMBEDDED]


def test_a_copied_model_directory_loads_with_the_defaults_it_ships(tmp_path):
    copy = tmp_path / "my-copy"
    shutil.copytree(EMBEDDED_MODEL_DIR, copy)
    pipe = load_pipeline(str(copy), device="cpu")
    assert generation_defaults(pipe) == GENERATION_DEFAULTS[EMBEDDED]
    assert generation_defaults(copy) == GENERATION_DEFAULTS[EMBEDDED]
    # The returned dict is a copy: callers may edit it without changing the pipeline's defaults.
    generation_defaults(pipe)["height"] = 1
    assert generation_defaults(pipe)["height"] == GENERATION_DEFAULTS[EMBEDDED]["height"]

    (copy / DEFAULTS_FILE).unlink()
    assert generation_defaults(load_pipeline(str(copy), device="cpu")) == {}
    assert generation_defaults(copy) == {}

    write_generation_defaults(copy, {"height": 32, "width": 32})
    assert generation_defaults(load_pipeline(str(copy), device="cpu")) == {"height": 32, "width": 32}


def test_the_embedded_directory_by_path_is_the_embedded_model():
    pipe = load_pipeline(str(EMBEDDED_MODEL_DIR), device="cpu")
    assert pipe._h2cache_model == EMBEDDED
    assert pipe.default_sample_size * pipe.vae_scale_factor == GENERATION_DEFAULTS[EMBEDDED]["height"]


def test_a_broken_defaults_file_names_itself(tmp_path):
    (tmp_path / DEFAULTS_FILE).write_text("[1, 2")
    with pytest.raises(ValueError, match=DEFAULTS_FILE):
        generation_defaults(tmp_path)
    (tmp_path / DEFAULTS_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        generation_defaults(tmp_path)
