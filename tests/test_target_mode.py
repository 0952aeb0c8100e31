"""The app's target mode (ui/target_mode.py): a compute budget in, stored-calibration thresholds out."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

import h2cache.pipelines
from h2cache import H2CacheConfig
from h2cache.calibrate import SearchPoint, SearchStore
from h2cache.methods.calibration import CalibrationStore
from ui.callbacks import make_apply_target
from ui.models import ModelRegistry
from ui.settings import load_settings
from ui.target_mode import MANUAL_TEXT, MODES, calibrated_thresholds, target_report

from embedded_facts import EMBEDDED

POINTS = [SearchPoint(0.05, 0.075, 0.8, [38.0, 36.0], [0.99, 0.98]), SearchPoint(0.1, 0.15, 0.55, [33.0, 31.0], [0.97, 0.96]),
          SearchPoint(0.2, 0.3, 0.4, [28.0, 25.0], [0.9, 0.88])]


@pytest.fixture(scope="module")
def registry(embedded_model_dir: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(h2cache.pipelines, "EMBEDDED_MODEL_DIR", embedded_model_dir)
        reg = ModelRegistry(load_settings(), cuda_available=False)
        reg.get("embedded")
    return reg


@pytest.fixture()
def store(registry, tmp_path):
    searches = SearchStore(CalibrationStore(tmp_path / "calibration.json"))
    searches.save(registry.get("embedded"), 28, 64, 64, POINTS, ["a prompt"], (0,), H2CacheConfig())
    return searches


def test_a_budget_picks_the_best_stored_point_within_it(registry, store):
    choice = calibrated_thresholds(registry.get("embedded"), 28, 64, 64, 0.6, store=store)
    assert (choice.tau1, choice.tau2) == (0.1, 0.15)  # 55% of blocks, the best PSNR at or under 60%
    assert "64x64, 28 steps" in choice.text and "55.0% of the blocks" in choice.text and "within the 60% target" in choice.text


def test_the_nearest_stored_step_count_is_used_and_named(registry, store):
    choice = calibrated_thresholds(registry.get("embedded"), 31, 64, 64, 0.9, store=store)
    assert (choice.tau1, choice.tau2) == (0.05, 0.075)
    assert "nearest to the 31 requested; stored: 28" in choice.text


def test_an_unreachable_budget_and_a_missing_size_say_so(registry, store):
    cheapest = calibrated_thresholds(registry.get("embedded"), 28, 64, 64, 0.3, store=store)
    assert (cheapest.tau1, cheapest.tau2) == (0.2, 0.3) and "**above**" in cheapest.text
    missing = calibrated_thresholds(registry.get("embedded"), 28, 128, 128, 0.5, store=store)
    assert missing.tau1 is None and "No calibration is stored for this model at 128x128" in missing.text
    for bad in ("lots", float("nan"), 5, None):
        assert calibrated_thresholds(registry.get("embedded"), 28, 64, 64, bad, store=store).tau1 is None


def test_the_handler_sets_the_sliders_only_in_target_mode(registry):
    apply_target = make_apply_target(registry)
    manual = apply_target(MODES[0], 0.5, "embedded", 28, 64, 64)
    assert manual[4] == MANUAL_TEXT and all(isinstance(v, type(gr.skip())) for v in manual[:4])
    size, steps = EMBEDDED.size, EMBEDDED.steps
    tau1, tau2, pool1, pool2, text = apply_target(MODES[1], 0.5, "embedded", steps, size, size)  # the shipped one
    if tau1 is None or isinstance(tau1, type(gr.skip())):
        pytest.fail(f"the embedded model ships a calibration for its default {size}x{size} at {steps} steps: {text}")
    assert 0 < tau1.value <= tau2.value and f"From the stored calibration at {size}x{size}, {steps} steps" in text
    stored = calibrated_thresholds(registry.get("embedded"), steps, size, size, 0.5)
    assert (pool1.value, pool2.value) == (stored.pool_size_stage1, stored.pool_size_stage2)  # searched with these
    assert f"pool sizes {pool1.value} and {pool2.value}" in text
    assert "not loaded yet" in apply_target(MODES[1], 0.5, "black-forest-labs/FLUX.1-dev", 28, 64, 64)[4]


def test_the_report_sets_the_achieved_share_against_the_target():
    assert target_report(MODES[1], 0.5, {"blocks_share": 0.532}) == (
        "This comparison ran 53.2% of the blocks against a 50% target: 3.2 points over it (prompts and seeds "
        "differ from the calibration's, so the share moves).")
    assert "points under it" in target_report(MODES[1], 0.5, {"blocks_share": 0.45})
    assert target_report(MODES[0], 0.5, {"blocks_share": 0.45}) == MANUAL_TEXT
    assert target_report(MODES[1], 0.5, None) == "Run a comparison to see the achieved share."
