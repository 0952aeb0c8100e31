"""H2CacheConfig's fields are declared once (h2cache.config): validation, the benchmark's method settings, the
app's inputs, widgets, checks and API signature all follow that declaration."""

from __future__ import annotations

import dataclasses
import re

import pytest

from h2cache import H2CacheConfig, config_fields
from h2cache.methods import get_method
from ui.callbacks import GENERATE_SIGNATURE
from ui.settings import load_settings
from ui.validation import CONFIG_INPUTS, INPUT_FIELDS, RUN_FIELDS, find_problems

SETTINGS = load_settings()


def test_the_declaration_covers_every_field_in_order_with_the_dataclass_defaults():
    assert [f.name for f in config_fields()] == [f.name for f in dataclasses.fields(H2CacheConfig)]
    defaults = H2CacheConfig()
    for f in config_fields():
        assert getattr(defaults, f.name) == f.default and f.label and f.help, f.name
    with pytest.raises(ValueError, match="role must be one of"):
        config_fields("published algorithm")


@pytest.mark.parametrize("f", config_fields(), ids=lambda f: f.name)
def test_validation_follows_the_declared_range(f):
    if f.kind is bool:
        bad, good = 1, True
    else:
        bad, good = f.low - 1, f.low
    setattr(H2CacheConfig(), f.name, good)
    with pytest.raises(ValueError, match=re.escape(f"H2CacheConfig.{f.name} must be {f.allowed()}, got")):
        setattr(H2CacheConfig(), f.name, bad)


def test_the_benchmarks_h2cache_settings_are_the_declared_ones():
    offered = {s.name: s for s in get_method("h2cache").settings}
    declared = [f for f in config_fields() if f.role in ("published", "ablation", "option", "experimental")]
    assert list(offered) == [f.name for f in declared]
    for f in declared:
        s = offered[f.name]
        assert (s.kind, s.default, s.low) == (f.kind, f.default, f.low) and f.help in s.help, f.name


def test_the_app_offers_the_published_knobs_then_the_options_with_their_declared_defaults():
    assert INPUT_FIELDS == (*RUN_FIELDS, *(f.name for f in config_fields("published") + config_fields("option")),
                            "reuse_baseline", "peer")
    params = list(GENERATE_SIGNATURE.parameters.values())
    assert [p.name for p in params] == [*INPUT_FIELDS, "progress"]
    assert GENERATE_SIGNATURE.parameters["reuse_baseline"].default is True
    assert GENERATE_SIGNATURE.parameters["peer"].default == "none"
    for f in CONFIG_INPUTS:
        p = GENERATE_SIGNATURE.parameters[f.name]
        assert (p.default == f.default) if f.role == "option" else p.default is p.empty, f.name


def test_the_apps_checks_name_each_declared_field_and_its_range():
    values = {"prompt": "a red circle", "model": "embedded", "seed": 0, "steps": 10, "width": 64, "height": 64,
              **{f.name: f.default for f in CONFIG_INPUTS}}
    problems, clean = find_problems(SETTINGS, ["embedded"], values)
    assert not problems and set(clean) == set(INPUT_FIELDS)
    limits = SETTINGS.limits
    too_big = {"tau1": limits.tau_max + 1, "pool_size_stage2": limits.pool_size_max + 1, "warmup_steps": 11,
               "max_consecutive_hits": limits.max_consecutive_hits_max + 1, "skip_stage2_probe_on_hit": "yes"}
    problems, _ = find_problems(SETTINGS, ["embedded"], {**values, **too_big})
    assert set(problems) == set(too_big)
    assert problems["warmup_steps"] == "warmup_steps must be a whole number from 0 to 10, got 11"
    assert problems["tau1"].startswith(f"tau1 must be a number from 0 to {limits.tau_max:g}")
    assert problems["skip_stage2_probe_on_hit"] == "skip_stage2_probe_on_hit must be true or false, got 'yes'"
