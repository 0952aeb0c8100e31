"""The app's handlers called directly, on the embedded model (no server, no browser)."""

from __future__ import annotations

import inspect
import math
import pickle
import sys
import types
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
import yaml

import h2cache
import h2cache.pipelines
from h2cache.config import H2CacheConfig
from h2cache.metrics import compare_images, lpips_availability
from h2cache.trace import StepRecord

from ui.callbacks import OUTPUT_FIELDS, make_generate, make_model_change, show_step
from ui.views import difference_map
from ui.job import on_gpu
from ui.views import format_lpips, format_psnr, format_ssim
from ui.models import ModelRegistry
from ui.plots.distances import GUARD_LABEL
from ui.preview_store import PREVIEWS, PreviewStore, reduce_preview
from ui.scrubber import step_view
from ui.settings import SettingsError, load_settings
from ui.views import computed_mask, decision_text, guard_forced, shown_context
from ui.validation import INPUT_FIELDS, make_validator

from embedded_facts import EMBEDDED

PROMPT = "a large red circle at the center on a striped blue background"
STEPS = 10
OPTIONS = tuple(f.name for f in h2cache.config_fields("option"))  # as the library declares them


@pytest.fixture(scope="module")
def settings():
    return load_settings()


@pytest.fixture(scope="module")
def registry(settings, embedded_model_dir: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(h2cache.pipelines, "EMBEDDED_MODEL_DIR", embedded_model_dir)
        reg = ModelRegistry(settings, cuda_available=False)
        reg.get("embedded")
    return reg


@pytest.fixture(scope="module")
def generate(settings, registry):
    return make_generate(settings, registry)


def request(**overrides):
    options = {name: getattr(H2CacheConfig(), name) for name in OPTIONS}  # off, as in the library
    values = dict(prompt=PROMPT, model="embedded", seed=0, steps=STEPS, width=64, height=64, tau1=0.0, tau2=0.0,
                  pool_size_stage1=2048, pool_size_stage2=384, reuse_baseline=True, peer="none", **options)
    values.update(overrides)
    return [values[name] for name in INPUT_FIELDS]


def run(generate, **overrides) -> dict:
    return dict(zip(OUTPUT_FIELDS, generate(*request(**overrides))))


def table(out: dict) -> dict[str, list[str]]:
    return {row[0]: row[1:] for row in out["metrics"]}


@pytest.fixture(scope="module")
def exact(generate):
    return run(generate, tau1=0.0, tau2=0.0)


@pytest.fixture(scope="module")
def cached(generate):
    # Thresholds at the top of the allowed range: the embedded model reuses at most steps.
    return run(generate, tau1=1.0, tau2=1.0, seed=3)


def test_thresholds_zero_give_identical_images(exact):
    assert exact["baseline_image"].dtype == np.uint8 and exact["baseline_image"].shape == (64, 64, 3)
    assert np.array_equal(exact["baseline_image"], exact["cached_image"])
    rows = table(exact)
    assert rows["PSNR vs baseline"][1] == "∞ (identical)"
    assert rows["SSIM vs baseline"][1] == "1.0000"
    # One record per transformer call: 'cond' alone under distilled guidance, 'cond' and 'uncond' under true CFG.
    calls = exact["details"]["trace"]
    assert {r["context"] for r in calls} == set(EMBEDDED.contexts)
    assert len(calls) == STEPS * len(EMBEDDED.contexts)
    assert rows["Stage-1 hits (structure)"][1] == f"0/{len(calls)}"
    assert exact["details"]["quality"]["psnr"] == "inf"
    assert exact["details"]["blocks_share"] == 1.0
    assert not exact["difference"].any(), "identical images must give an all-black difference map"
    assert exact["before_after"][0] is exact["baseline_image"] and exact["before_after"][1] is exact["cached_image"]


def test_cached_run_outputs_agree_with_each_other(cached, registry):
    details, rows = cached["details"], table(cached)
    trace = [StepRecord(**r) for r in details["trace"]]
    hits1, hits2 = sum(r.hit1 for r in trace), sum(r.hit2 for r in trace)
    assert hits1 + hits2 > 0, "with thresholds at 1.0 some step must reuse a stage"
    assert rows["Stage-1 hits (structure)"][1] == f"{hits1}/{len(trace)}"
    assert rows["Stage-2 hits (detail)"][1] == f"{hits2}/{len(trace)} ({sum(r.forced2 for r in trace)} forced)"
    ran, total = sum(r.blocks_run for r in trace), sum(r.blocks_total for r in trace)
    assert rows["Blocks executed"][1] == f"{ran / total:.1%} ({ran}/{total})"
    # Metrics come from the raw arrays the handler returned.
    quality = compare_images(cached["baseline_image"], cached["cached_image"], lpips=False)
    psnr = quality["psnr"]
    assert rows["PSNR vs baseline"][1] == format_psnr(psnr)
    assert details["quality"]["ssim"] == pytest.approx(quality["ssim"])
    # The compute map (from the records' per-stage counts) matches the blocks the library counted.
    split = h2cache.resolve_stages(registry.get("embedded").transformer)
    mask = computed_mask(trace, len(split.stage1), len(split.stage2))
    assert mask.sum(axis=0).tolist() == [r.blocks_run for r in trace]
    if not np.array_equal(cached["baseline_image"], cached["cached_image"]):
        assert cached["difference"].any()


def test_both_runs_report_per_step_progress(generate):
    seen: list[tuple[float, str | None]] = []
    generate(*request(steps=4, reuse_baseline=False), progress=lambda fraction, desc=None: seen.append((fraction, desc)))
    steps = [desc for _, desc in seen if desc and "run: step" in desc]
    assert steps == [f"Baseline run: step {i}/4" for i in range(1, 5)] + [f"H2-Cache run: step {i}/4" for i in range(1, 5)]
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_a_threshold_change_reuses_the_baseline_and_the_cached_side_equals_a_full_rerun(generate):
    from ui.job import BASELINES

    BASELINES.clear()
    steps_seen: list[str] = []

    def progress(fraction, desc=None):
        steps_seen.append(desc or "")

    first = dict(zip(OUTPUT_FIELDS, generate(*request(seed=11, tau1=0.3, tau2=0.3), progress=progress)))
    assert first["details"]["baseline_reused"] is False and "reused" not in first["summary"]
    steps_seen.clear()
    second = dict(zip(OUTPUT_FIELDS, generate(*request(seed=11, tau1=0.6, tau2=0.6), progress=progress)))
    assert not any(d.startswith("Baseline run: step") for d in steps_seen)  # the uncached run did not run
    assert "Baseline reused from an earlier run" in steps_seen
    assert second["details"]["baseline_reused"] is True and "**reused**" in second["summary"]
    assert "reused" in table(second)["Wall time"][0]
    assert second["details"]["seconds"]["baseline"] == first["details"]["seconds"]["baseline"]  # the time it took then
    assert np.array_equal(second["baseline_image"], first["baseline_image"])
    # the cached side is what a comparison that runs everything gives
    fresh = dict(zip(OUTPUT_FIELDS, generate(*request(seed=11, tau1=0.6, tau2=0.6, reuse_baseline=False),
                                             progress=progress)))
    assert fresh["details"]["baseline_reused"] is False
    assert np.array_equal(fresh["cached_image"], second["cached_image"])
    assert np.array_equal(fresh["baseline_image"], second["baseline_image"])
    assert fresh["details"]["trace"] == second["details"]["trace"]
    # anything the uncached image depends on is in the key: another seed, size or step count runs it again
    for change in ({"seed": 12}, {"width": 32}, {"steps": STEPS - 1}, {"prompt": PROMPT + " again"}):
        out = dict(zip(OUTPUT_FIELDS, generate(*request(**{"seed": 11, "tau1": 0.6, "tau2": 0.6, **change}))))
        assert out["details"]["baseline_reused"] is False, change


def test_the_baseline_store_stays_within_its_bounds_over_many_prompts(generate):
    from ui.job import BASELINE_STORE_BYTES, BASELINE_STORE_ITEMS, BASELINES

    BASELINES.clear()
    sizes = []
    for i in range(50):
        generate(*request(prompt=f"{PROMPT} {i}", steps=2, width=32, height=32, tau1=0.5, tau2=0.5))
        sizes.append(BASELINES.nbytes)
        assert len(BASELINES) <= BASELINE_STORE_ITEMS and BASELINES.nbytes <= BASELINE_STORE_BYTES
    assert len(BASELINES) == BASELINE_STORE_ITEMS and sizes[-1] == sizes[BASELINE_STORE_ITEMS - 1]
    # the most recent prompt is kept, the first long gone
    last = dict(zip(OUTPUT_FIELDS, generate(*request(prompt=f"{PROMPT} 49", steps=2, width=32, height=32))))
    first = dict(zip(OUTPUT_FIELDS, generate(*request(prompt=f"{PROMPT} 0", steps=2, width=32, height=32))))
    assert last["details"]["baseline_reused"] is True and first["details"]["baseline_reused"] is False


def test_the_byte_bound_evicts_the_oldest_entries():
    from ui.preview_store import ByteLRU

    store = ByteLRU(max_bytes=100, max_items=3)
    for key in "abc":
        store.put(key, key.upper(), 40)
    assert len(store) == 2 and store.get("a") is None and store.get("b") == "B"  # 120 bytes > 100: "a" went
    store.put("d", "D", 10)
    store.put("e", "E", 10)
    assert store.get("c") is None and len(store) == 3 and store.nbytes == 60  # 4 items > 3: "c" (least used) went
    store.put("huge", "H", 1000)
    assert len(store) == 1 and store.get("huge") == "H"  # the newest stays even alone over the budget


def test_lpips_is_a_number_or_na_with_the_libraries_reason(exact):
    cell = table(exact)["LPIPS (AlexNet) vs baseline"][1]
    available, reason = lpips_availability()
    if available:
        assert float(cell) == pytest.approx(0.0, abs=1e-6)
    else:
        assert cell == f"n/a — {reason}" and reason
        # What clients see names no server path and no network error; the log has the details.
        assert "/" not in reason and "Error" not in reason and len(reason) < 60


def test_plots_show_thresholds_and_forced_hits(cached):
    trace = [StepRecord(**r) for r in cached["details"]["trace"]]
    for stage, key, tau in ((1, "stage1_plot", 1.0), (2, "stage2_plot", 1.0)):
        ax = cached[key].axes[0]
        assert f"Stage {stage}" in ax.get_title()
        assert any(list(line.get_ydata()) == [tau, tau] for line in ax.get_lines()), "threshold line missing"
    legend = " ".join(t.get_text() for t in cached["stage2_plot"].legends[0].get_texts())
    shown = trace[0].context  # the plots show one context ('cond' under true CFG)
    forced = sum(r.forced2 for r in trace if r.context == shown)
    assert (f"forced hit (stage 1 hit, not measured): {forced}" in legend) == (forced > 0)
    image = cached["compute_map"].axes[0].get_images()[0].get_array()
    assert image.shape == (EMBEDDED.blocks, STEPS)  # double + single blocks x steps


def test_scrubber_shows_each_runs_prediction_per_step(cached):
    state = cached["scrub_state"]
    key = state["previews"]
    assert PREVIEWS.steps(key) == state["steps"] == STEPS
    last_b, last_c = PREVIEWS.step(key, STEPS - 1)
    assert cached["scrub_step"].maximum == STEPS and cached["scrub_step"].value == STEPS
    assert np.array_equal(cached["preview_baseline"], last_b) and np.array_equal(cached["preview_cached"], last_c)
    first_b, first_c, caption = show_step(1, state)[:3]
    assert np.array_equal(first_b, PREVIEWS.step(key, 0)[0]) and np.array_equal(first_c, PREVIEWS.step(key, 0)[1])
    assert first_b.shape == (64, 64, 3) and first_b.dtype == np.uint8
    assert caption.startswith(f"**Step 1/{STEPS}**") and "no reference yet" in caption
    assert not np.array_equal(first_b, last_b), "previews must change over the steps"
    assert np.array_equal(show_step(99, state)[0], last_b)  # clamped
    assert show_step(1, None)[0] is None
    # Whatever a client sends as the step or the state, the handler answers without raising.
    for step in ("abc", float("nan"), 10**400, None):
        assert np.array_equal(show_step(step, state)[0], last_b)
    for bad_state in ({"steps": 3, "previews": "not-a-key"}, {"steps": 3, "previews": ["x"]}, "text", 7):
        assert show_step(1, bad_state)[0] is None


def pfs_rows(table: str) -> dict[int, list[str]]:
    """The PFS table's cells by stage (1, 2), from its Markdown."""
    rows = [line.strip("|").split("|") for line in table.splitlines() if line.startswith("| Stage")]
    return {int(cells[0].split()[1]): [c.strip() for c in cells[1:]] for cells in rows}


@pytest.fixture(scope="module")
def mixed(generate):
    # Thresholds at which the embedded model both reuses and recomputes within 10 steps.
    return run(generate, tau1=0.25, tau2=0.25)


def test_pfs_panel_matches_the_trace_at_every_step(mixed):
    cached = mixed
    state = cached["scrub_state"]
    records = [StepRecord(**r) for r in cached["details"]["trace"] if r["context"] == "cond"]
    assert any(r.forced2 for r in records) and any(r.d1 is not None and not r.hit1 for r in records)
    for step, record in enumerate(records, start=1):
        _, _, _, picture1, picture2, table = show_step(step, state)
        rows = pfs_rows(table)
        assert f"**Step {step}**, context 'cond'" in table
        assert rows[1][4] == ("—" if record.d1 is None else f"{record.d1:.4f}")
        assert picture1 is not None and picture1.dtype == np.uint8 and picture1.ndim == 3
        if record.forced2:  # stage 1 reused: stage 2 compared nothing, and the panel says so
            assert picture2 is None and rows[2][4] == "—" and "not compared (stage 1 reused)" in rows[2][7]
        else:
            assert picture2 is not None and rows[2][4] == ("—" if record.d2 is None else f"{record.d2:.4f}")
        assert ("reused" in rows[1][7]) == record.hit1
    # The generate call already shows the last step's panel.
    assert cached["pfs_table"] == show_step(len(records), state)[5]
    assert show_step(1, None)[3:5] == (None, None)


def test_pfs_panel_follows_the_pool_size(generate):
    coarse = run(generate, tau1=0.3, tau2=0.3, pool_size_stage1=16, steps=4)
    fine = run(generate, tau1=0.3, tau2=0.3, steps=4)
    # At 64x64, 64 image tokens: pool size 16 gives k = 4 and a thumbnail 4x smaller on both axes; 2048 gives k = 1.
    n, t, c = EMBEDDED.image_tokens(64), EMBEDDED.text_tokens, EMBEDDED.width
    assert n == 64
    assert pfs_rows(coarse["pfs_table"])[1][:4] == [f"{n} (image)", "16", "4", f"{n // 4} × {c // 4}"]
    assert pfs_rows(fine["pfs_table"])[1][:4] == [f"{n} (image)", "2048", "1", f"{n} × {c}"]
    assert pfs_rows(fine["pfs_table"])[2][:4] == [f"{n + t} ({t} text + {n} image)", "384", "1", f"{n + t} × {c}"]
    assert coarse["pfs_stage1"].shape != fine["pfs_stage1"].shape


def test_previews_are_stored_losslessly(registry):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    key = PREVIEWS.put(images, images[::-1])
    for i in range(3):
        b, c = PREVIEWS.step(key, i)
        assert np.array_equal(b, images[i]) and np.array_equal(c, images[2 - i])
    assert PREVIEWS.step(key, 3) is None


def test_session_state_holds_a_key_not_the_images(cached):
    state = cached["scrub_state"]
    assert isinstance(state["previews"], str)
    assert not any(isinstance(v, np.ndarray) for v in state.values())
    assert sum(len(repr(v)) for v in state.values()) < 5_000


def test_preview_store_keeps_its_byte_budget_and_says_when_a_comparison_expired():
    rng = np.random.default_rng(1)
    noise = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(10)]  # PNG cannot shrink noise
    probe = PreviewStore()
    probe.put(noise, noise)
    per_comparison = probe.nbytes
    store = PreviewStore(max_bytes=3 * per_comparison)
    keys = [store.put(noise, noise) for _ in range(10)]
    assert len(store) == 3 and store.nbytes <= 3 * per_comparison
    assert store.steps(keys[0]) is None and store.steps(keys[-1]) == 10
    state = {"previews": keys[0], "steps": 10, "sigmas": [], "decisions": []}
    assert step_view(state, 1, store)[:2] == (None, None)
    assert "no longer kept" in step_view(state, 1, store)[2]
    # FLUX.1-sized previews are kept at display size, not at 1024x1024.
    big = reduce_preview(np.full((1024, 1024, 3), 200, np.uint8))
    assert big.shape == (256, 256, 3) and (big == 200).all()


def test_one_step_runs_and_its_scrubber_is_valid(generate):
    out = run(generate, steps=1, tau1=0.5, tau2=0.5)
    assert out["baseline_image"].shape == (64, 64, 3)
    slider = out["scrub_step"]
    assert slider.value == 1 and slider.minimum < slider.maximum and not slider.interactive
    assert out["preview_caption"].startswith("**Step 1/1**")
    assert len(out["details"]["trace"]) >= 1


@pytest.mark.parametrize("field, value, expected", [
    ("prompt", "   ", "prompt must not be empty"),
    ("prompt", "x" * 201, "prompt must be at most 200 characters"),
    ("model", "/etc/passwd", "model must be one of ['embedded']"),
    ("model", "black-forest-labs/FLUX.1-dev", "model must be one of ['embedded']"),
    ("seed", -1, "seed must be a whole number from 0 to 4294967295"),
    ("steps", 0, "steps must be a whole number from 1 to 100"),
    ("steps", 101, "steps must be a whole number from 1 to 100"),
    ("steps", 2.5, "steps must be a whole number"),
    ("width", 72, "width must be a whole number from 32 to 128 in multiples of 16, got 72"),
    ("height", 256, "height must be a whole number from 32 to 128 in multiples of 16, got 256"),
    ("tau1", -0.1, "tau1 must be a number from 0 to 1"),
    ("tau2", float("nan"), "tau2 must be a number from 0 to 1"),
    ("tau2", "abc", "tau2 must be a number from 0 to 1"),
    ("tau1", 10**400, "tau1 must be a number from 0 to 1, got 1000"),
    ("seed", 10**400, "seed must be a whole number from 0 to 4294967295, got 1000"),
    ("steps", 10**400, "steps must be a whole number from 1 to 100, got 1000"),
    ("pool_size_stage2", -10**400, "pool_size_stage2 must be a whole number from 1 to 65536, got -1000"),
    pytest.param("seed", 10**5000, "seed must be a whole number from 0 to 4294967295, got a number with too many digits",
                 id="seed-past-the-digit-limit"),
    ("prompt", "a red circle \ud800", "prompt must be valid Unicode text"),
    ("pool_size_stage1", 0, "pool_size_stage1 must be a whole number from 1 to 65536"),
    ("pool_size_stage2", 1.5, "pool_size_stage2 must be a whole number from 1 to 65536"),
    ("warmup_steps", -1, f"warmup_steps must be a whole number from 0 to {STEPS}, got -1"),
    ("warmup_steps", STEPS + 1, f"warmup_steps must be a whole number from 0 to {STEPS}, got {STEPS + 1}"),
    ("final_full_steps", STEPS + 1, f"final_full_steps must be a whole number from 0 to {STEPS}, got {STEPS + 1}"),
    ("final_full_steps", 0.5, f"final_full_steps must be a whole number from 0 to {STEPS}, got 0.5"),
    ("max_consecutive_hits", -1, "max_consecutive_hits must be a whole number from 0 to 100, got -1"),
    ("max_consecutive_hits", 101, "max_consecutive_hits must be a whole number from 0 to 100, got 101"),
    ("max_consecutive_hits", "many", "max_consecutive_hits must be a whole number from 0 to 100, got 'many'"),
    ("skip_stage2_probe_on_hit", "false", "skip_stage2_probe_on_hit must be true or false, got 'false'"),
    ("skip_stage2_probe_on_hit", 1, "skip_stage2_probe_on_hit must be true or false, got 1"),
])
def test_bad_inputs_are_rejected_naming_field_and_range(generate, settings, field, value, expected):
    with pytest.raises(gr.Error) as error:
        generate(*request(**{field: value}))
    assert expected in error.value.message
    verdicts = make_validator(settings, ["embedded"])(*request(**{field: value}))
    failed = [name for name, v in zip(INPUT_FIELDS, verdicts) if not v["is_valid"]]
    assert failed == [field]


def test_step_bounded_options_follow_the_step_count(settings):
    validate = make_validator(settings, ["embedded"])

    def failed(**overrides):
        return {name: v["message"] for name, v in zip(INPUT_FIELDS, validate(*request(**overrides))) if not v["is_valid"]}

    assert failed(steps=4, warmup_steps=4, final_full_steps=4) == {}
    assert failed(steps=4, warmup_steps=5) == {"warmup_steps": "warmup_steps must be a whole number from 0 to 4, got 5"}
    # With a bad step count there is no range to check against: only the step count is reported.
    assert list(failed(steps=0, warmup_steps=5, final_full_steps=5)) == ["steps"]


def test_ten_positional_arguments_still_run_with_the_options_off(generate):
    out = dict(zip(OUTPUT_FIELDS, generate(*request(steps=3)[:10])))
    config = out["details"]["config"]
    for name in OPTIONS:
        assert out["details"]["request"][name] == config[name] == getattr(H2CacheConfig(), name)
    assert config["num_inference_steps"] == 3  # so that final full steps can count back from the end
    assert np.array_equal(out["baseline_image"], out["cached_image"])


def test_warm_up_over_every_step_computes_everything_and_matches_the_baseline(generate, cached):
    out = run(generate, tau1=1.0, tau2=1.0, seed=3, warmup_steps=STEPS)
    assert cached["details"]["blocks_share"] < 1.0, "the same request without warm-up must reuse something"
    assert np.array_equal(out["baseline_image"], out["cached_image"])
    calls = len(out["details"]["trace"])
    assert all(r["forced_full"] for r in out["details"]["trace"])
    assert out["details"]["blocks_share"] == 1.0 and out["details"]["hits"]["forced_full"] == calls
    rows = table(out)
    assert rows["Blocks executed"][1].startswith("100.0%")
    assert rows["Calls forced full by a guard"] == ["—", f"{calls}/{calls}"]
    assert table(cached)["Calls forced full by a guard"] == ["—", f"0/{calls}"]
    assert out["details"]["config"]["warmup_steps"] == STEPS
    for key in ("stage1_plot", "stage2_plot"):
        legend = " ".join(t.get_text() for t in out[key].legends[0].get_texts())
        assert f"{GUARD_LABEL}: {STEPS}" in legend and "miss" not in legend
    cells = out["compute_map"].axes[0].get_images()[0].get_array()
    assert (cells == 2).all(), "every cell is computed because a guard forced it"
    compute_legend = [t.get_text() for t in out["compute_map"].axes[0].get_legend().get_texts()]
    assert f"{GUARD_LABEL}: {STEPS} steps" in compute_legend
    assert set(out["scrub_state"]["decisions"]) == {"computed everything (forced by a guard)"}


def test_guards_force_the_calls_they_promise(generate):
    out = run(generate, tau1=1.0, tau2=1.0, seed=3, warmup_steps=2, max_consecutive_hits=2, final_full_steps=1)
    trace = [StepRecord(**r) for r in out["details"]["trace"]]
    for context in {r.context for r in trace}:
        records = [r for r in trace if r.context == context]
        assert [r.forced_full for r in records][:2] == [True, True] and records[-1].forced_full
        streak = 0
        for record in records:
            streak = streak + 1 if (record.hit1 or record.hit2) else 0
            assert streak <= 2, "never more than max_consecutive_hits reusing calls in a row"
    forced = [r for r in trace if r.forced_full]
    assert all(not (r.hit1 or r.hit2) and r.blocks_run == r.blocks_total for r in forced)
    assert any(r.hit1 or r.hit2 for r in trace), "between the guards, calls still reuse"
    assert table(out)["Calls forced full by a guard"][1] == f"{len(forced)}/{len(trace)}"
    shown = [r for r in trace if r.context == trace[0].context]
    cells = out["compute_map"].axes[0].get_images()[0].get_array()
    assert [bool((column == 2).all()) for column in cells.T] == [r.forced_full for r in shown]
    assert not (cells[:, ~guard_forced(shown)] == 2).any()


def test_one_probe_per_hit_runs_fewer_blocks(generate, cached, registry):
    out = run(generate, tau1=1.0, tau2=1.0, seed=3, skip_stage2_probe_on_hit=True)
    trace = [StepRecord(**r) for r in out["details"]["trace"]]
    ran = sum(r.blocks_run for r in trace)
    assert ran < sum(r["blocks_run"] for r in cached["details"]["trace"])
    hits = [r for r in trace if r.hit1]
    assert hits and all(r.blocks_run == 1 for r in hits)
    assert out["details"]["config"]["skip_stage2_probe_on_hit"] is True
    split = h2cache.resolve_stages(registry.get("embedded").transformer)
    mask = computed_mask(trace, len(split.stage1), len(split.stage2))
    assert mask.sum(axis=0).tolist() == [r.blocks_run for r in trace]
    assert "only the stage-1 probe block ran" in " ".join(out["scrub_state"]["decisions"])


def test_options_come_last_and_default_to_the_librarys(generate):
    # after the ten inputs existing API callers send; then the app's own choices
    assert INPUT_FIELDS[10:] == (*OPTIONS, "reuse_baseline", "peer")
    parameters = inspect.signature(generate).parameters
    assert {name: parameters[name].default for name in OPTIONS} == {name: getattr(H2CacheConfig(), name) for name in OPTIONS}


def test_a_failed_run_leaves_the_next_request_working(generate, registry):
    pipe = registry.get("embedded")

    def explode(module, args, kwargs):
        raise RuntimeError("simulated failure inside the transformer")

    hook = pipe.transformer.register_forward_pre_hook(explode, with_kwargs=True)
    try:
        with pytest.raises(gr.Error) as error:
            generate(*request(steps=4))
        assert "simulated failure" in error.value.message
    finally:
        hook.remove()
    assert not h2cache.is_h2_cache_applied(pipe), "the cache must be removed after a failed run"
    out = run(generate, steps=4)
    assert np.array_equal(out["baseline_image"], out["cached_image"])


def test_only_allowlisted_models_load(settings):
    loaded = []

    class FakePipe:
        def set_progress_bar_config(self, **kwargs):
            pass

    def loader(key):
        loaded.append(key)
        return FakePipe()

    cpu = ModelRegistry(settings, loader=loader, cuda_available=False)
    assert cpu.keys == ["embedded"]
    for key in ("/work", "../assets", "black-forest-labs/FLUX.1-dev", "someone/else"):
        with pytest.raises(ValueError, match="model must be one of"):
            cpu.get(key)
    assert loaded == []
    assert cpu.get("embedded") is cpu.get("embedded") and loaded == ["embedded"]  # loaded once
    gpu = ModelRegistry(settings, loader=loader, cuda_available=True)
    assert gpu.keys == ["embedded", "black-forest-labs/FLUX.1-schnell", "black-forest-labs/FLUX.1-dev"]


def test_zero_gpu_serves_one_flux_model_and_loads_everything_up_front(settings):
    loaded = []

    class FakePipe:
        def set_progress_bar_config(self, **kwargs):
            pass

    zero = ModelRegistry(settings, loader=lambda key: loaded.append(key) or FakePipe(), cuda_available=True,
                         zero_gpu=True)
    assert zero.keys == ["embedded", "black-forest-labs/FLUX.1-dev"]
    zero.preload()
    assert loaded == zero.keys


def test_startup_loading_goes_on_past_a_model_that_fails(settings, caplog):
    class FakePipe:
        def set_progress_bar_config(self, **kwargs):
            pass

    def loader(key):
        if key == "embedded":
            raise RuntimeError("gated repository, no HF_TOKEN")
        return FakePipe()

    zero = ModelRegistry(settings, loader=loader, cuda_available=True, zero_gpu=True)
    with caplog.at_level("INFO", logger="h2cache.app"):
        zero.preload()
    assert zero.loaded("embedded") is None and zero.loaded("black-forest-labs/FLUX.1-dev") is not None
    assert "could not load embedded at startup: gated repository" in caplog.text and "1 of 2 models loaded" in caplog.text


def test_a_dedicated_gpu_holds_one_gpu_model_at_a_time(settings, monkeypatch):
    moves = []

    class FakePipe:
        def __init__(self, key):
            self.key, self.device = key, torch.device("cuda")

        def set_progress_bar_config(self, **kwargs):
            pass

        def to(self, device):
            moves.append((self.key, device))
            self.device = torch.device(device)
            return self

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    registry = ModelRegistry(settings, loader=FakePipe, cuda_available=True)
    schnell, dev = "black-forest-labs/FLUX.1-schnell", "black-forest-labs/FLUX.1-dev"
    registry.get("embedded")
    registry.get(schnell)
    assert moves == []
    assert registry.get(dev).device.type == "cuda" and moves == [(schnell, "cpu")]
    assert registry.get(schnell).device.type == "cuda" and moves[1:] == [(dev, "cpu"), (schnell, "cuda")]


def test_zero_gpu_settings_are_checked(tmp_path):
    raw = yaml.safe_load((Path(__file__).resolve().parent.parent / "space.yaml").read_text())
    for model in raw["models"]:
        model["zero_gpu"] = True
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SettingsError, match="at most one GPU model may have zero_gpu: true"):
        load_settings(path)
    raw["models"][2]["zero_gpu"] = False
    raw["zero_gpu"] = {"min_duration": 60, "max_duration": 30}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SettingsError, match="min_duration <= max_duration"):
        load_settings(path)


def test_model_change_applies_that_models_ranges(settings):
    steps, width, height, tau1, tau2, pool1, pool2 = make_model_change(settings)("black-forest-labs/FLUX.1-schnell")
    assert (steps.maximum, width.maximum, width.value, tau1.value) == (8, 1024, 1024, 0.15)
    assert (pool1.value, pool2.value) == (2048, 384)  # FLUX.1 lists none of its own: the published ones
    embedded = settings.model("embedded")
    pools = make_model_change(settings)("embedded")[5:]
    assert tuple(p.value for p in pools) == (embedded.pool_size_stage1, embedded.pool_size_stage2)
    assert make_model_change(settings)("no-such-model") == (gr.skip(),) * 7


def test_space_yaml_is_read_and_checked(settings, tmp_path):
    assert settings.defaults.model == "embedded" and settings.queue_max_size >= 1
    embedded = settings.model("embedded")
    assert (embedded.min_size, embedded.max_size, embedded.size_multiple) == (32, 128, 16)
    # from h2cache.generation_defaults
    assert (embedded.default_size, embedded.default_steps) == (EMBEDDED.size, EMBEDDED.steps)
    assert settings.limits.max_consecutive_hits_max == 100
    broken = tmp_path / "space.yaml"
    broken.write_text("limits: {prompt_max_chars: 10}\ndefaults: {model: embedded, prompt: x}\n"
                      "models: [{key: embedded, sizes: {min: 32, max: 128}, steps: {max: 100}}]\n")
    with pytest.raises(SettingsError, match="tau_max"):
        load_settings(broken)
    assert settings.preview_store_mb == 16
    broken.write_text("preview_store_mb: 0\nlimits: {prompt_max_chars: 10, tau_max: 1, pool_size_max: 4096}\n"
                      "defaults: {model: embedded, prompt: x}\n"
                      "models: [{key: embedded, sizes: {min: 32, max: 128}, steps: {max: 100}}]\n")
    with pytest.raises(SettingsError, match="preview_store_mb must be >= 1, got 0"):
        load_settings(broken)
    broken.write_text("limits: {prompt_max_chars: 10, tau_max: 1, pool_size_max: 4096}\n"
                      "defaults: {model: embedded, prompt: x}\n"
                      "models: [{key: embedded, sizes: {min: 32, max: 128}, steps: {max: 100}, pool_size_stage2: 5000}]\n")
    with pytest.raises(SettingsError, match=r"model 'embedded': pool sizes must be from .*\(1\) to .*\(4096\), got 5000"):
        load_settings(broken)


def test_gpu_work_goes_through_spaces_gpu_when_available(monkeypatch):
    def work():
        return 42

    monkeypatch.setitem(sys.modules, "spaces", None)  # import fails, as off Spaces
    assert on_gpu(work, 60) is work
    calls = []
    fake = types.ModuleType("spaces")
    fake.GPU = lambda duration: (lambda fn: calls.append(duration) or (lambda *a, **k: ("on gpu", fn(*a, **k))))
    monkeypatch.setitem(sys.modules, "spaces", fake)
    assert on_gpu(work, 60)() == ("on gpu", 42) and calls == [60]


def test_gpu_call_works_across_a_process_boundary(settings, registry, monkeypatch):
    """ZeroGPU may pickle a GPU call's arguments and result: both must be small and picklable."""
    sizes = []

    def fake_gpu(duration):
        def wrap(fn):
            def call(*args):
                sent = pickle.dumps(args)
                sizes.append(len(sent))
                return pickle.loads(pickle.dumps(fn(*pickle.loads(sent))))
            return call
        return wrap

    fake = types.ModuleType("spaces")
    fake.GPU = fake_gpu
    monkeypatch.setitem(sys.modules, "spaces", fake)
    out = dict(zip(OUTPUT_FIELDS, make_generate(settings, registry)(*request(steps=4))))
    assert sizes and max(sizes) < 10_000, "the pipeline must not travel with the GPU call"
    assert np.array_equal(out["baseline_image"], out["cached_image"])


def test_formatting_and_difference_map():
    assert format_psnr(math.inf) == "∞ (identical)" and format_psnr(31.234) == "31.23 dB"
    assert format_ssim(1.0) == "1.0000" and format_ssim(0.999998) == "0.999998" and format_ssim(0.91234) == "0.9123"
    assert format_lpips(None, "no weights") == "n/a — no weights" and format_lpips(0.12345, None) == "0.1235"
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[2, 3] = 10
    diff = difference_map(a, b, gain=8)
    assert diff[2, 3].any() and diff.sum() == diff[2, 3].sum()


def test_computed_mask_draws_what_each_record_says_ran():
    records = [StepRecord(0, "cond", stage1_blocks_run=2, stage2_blocks_run=3),
               StepRecord(1, "cond", hit1=True, hit2=True, forced2=True, stage1_blocks_run=1, stage2_blocks_run=1),
               StepRecord(2, "cond", d1=0.3, hit2=True, stage1_blocks_run=2, stage2_blocks_run=1)]
    mask = computed_mask(records, 2, 3)
    assert mask[:, 0].all()
    assert mask[:, 1].tolist() == [True, False, True, False, False]
    assert mask[:, 2].tolist() == [True, True, True, False, False]
    # One probe per stage-1 hit: stage 2's probe is reused too; a guard-forced call computes everything.
    skipped = StepRecord(3, "cond", hit1=True, hit2=True, forced2=True, blocks_run=1, probe2_skipped=True,
                         stage1_blocks_run=1)
    forced = StepRecord(4, "cond", d1=0.01, d2=0.01, forced_full=True, blocks_run=5, stage1_blocks_run=2,
                        stage2_blocks_run=3)
    mask = computed_mask([skipped, forced], 2, 3)
    assert mask[:, 0].tolist() == [True, False, False, False, False] and mask[:, 1].all()
    assert guard_forced(records + [skipped, forced]).tolist() == [False, False, False, False, True]
    assert decision_text(forced) == "computed everything (forced by a guard)"
    two = h2cache.Trace([StepRecord(0, "cond"), StepRecord(0, "uncond")])
    assert shown_context(two) == ("cond", "context 'cond' ('uncond' not shown)")
