"""The cache lab (h2cache.lab) on the real embedded pipeline, and the app's peer column and sweep handlers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import gradio as gr
import pytest

import h2cache
import h2cache.pipelines
from h2cache.compare import generate, run_comparison
from h2cache.lab import PEERS, lab_flops, run_at_share, sweep, sweep_settings
from h2cache.methods import apply_method

from ui.callbacks import OUTPUT_FIELDS, SWEEP_OUTPUTS, make_generate, make_sweep, sweep_plan
from ui.job import job_runs
from ui.models import ModelRegistry
from ui.settings import load_settings
from ui.validation import INPUT_FIELDS

PROMPT = "a large red circle at the center on a striped blue background"
STEPS = 12


@pytest.fixture(scope="module")
def pipe():
    pipe = h2cache.load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def call(pipe):
    return {**h2cache.generation_defaults(pipe), "num_inference_steps": STEPS}


@pytest.fixture(scope="module")
def comparison(pipe, call):
    flops = lab_flops(pipe, call)
    return run_comparison(pipe, PROMPT, seed=0, config=h2cache.H2CacheConfig(tau1=0.1, tau2=0.15), previews=False,
                          flops=flops, **call), flops


def test_h2caches_flops_share_is_counted_beside_its_own_trace(comparison):
    c, flops = comparison
    assert flops is not None and 0 < c.cached.flops_share < 1
    # FLOPs and blocks differ (a probe block is not an average block) but move together
    assert abs(c.cached.flops_share - c.cached.trace.blocks_share()) < 0.1


def test_a_peer_is_searched_to_h2caches_share_and_leaves_the_transformer_clean(pipe, call, comparison):
    c, flops = comparison
    target = c.cached.flops_share
    match = run_at_share(pipe, "fbcache", target, prompt=PROMPT, seed=0, baseline=c.baseline.image, flops=flops,
                         call=call)
    assert match.matched and abs(match.share - target) <= 0.05, [t.share for t in match.tries]
    assert 1 <= len(match.tries) <= 5 and match.best in match.tries
    assert match.best.trace.flops_share() == match.share and 20 < match.best.psnr < 100
    # the tries leave nothing attached: another cache goes on, and the model is the uncached one again
    handle = h2cache.apply_h2_cache(pipe)
    handle.remove()
    again = generate(pipe, PROMPT, seed=0, previews=False, **call)
    assert (again.image == c.baseline.image).all()


def test_a_floor_above_the_target_is_reported_not_hidden(pipe, call, comparison):
    c, flops = comparison
    # warm-up, final steps and the cap on reuse in a row keep the guarded FirstBlockCache well above 5%
    match = run_at_share(pipe, "fbcache-guarded", 0.05, prompt=PROMPT, seed=0, baseline=c.baseline.image,
                         flops=flops, call=call)
    assert not match.matched and "least compute" in match.note and "above the target" in match.note
    assert len(match.tries) < 5  # the share stopped moving: the search stopped with it


def test_sweep_settings_span_the_default_grid_and_refuse_bad_counts():
    assert [s["threshold"] for s in sweep_settings("fbcache", 3)] == [0.02, 0.0775, 0.3]
    # H2-Cache keeps your tau2 / tau1 ratio along the sweep
    assert all(abs(s["tau2"] / s["tau1"] - 1.5) < 1e-6 for s in sweep_settings("h2cache", 4, {"tau1": 0.1, "tau2": 0.15}))
    assert [s["cache_interval"] for s in sweep_settings("taylorseer", 3)] == [2, 3, 6]
    with pytest.raises(ValueError, match="points must be an integer from 2 to 8, got 9"):
        sweep_settings("fbcache", 9)
    with pytest.raises(ValueError, match="method 'none' has no knob"):
        sweep_settings("none", 3)


def test_every_peer_has_a_knob_and_runs_in_a_sweep_point(pipe):
    # 28 steps: TeaCache's and MagCache's shipped calibrations cover 28, 50 and 100
    call = {**h2cache.generation_defaults(pipe), "num_inference_steps": 28}
    baseline = generate(pipe, PROMPT, seed=0, previews=False, **call).image
    flops = lab_flops(pipe, call)
    for name in PEERS:
        point, = sweep(pipe, name, sweep_settings(name, 2)[-1:], prompt=PROMPT, seed=0, baseline=baseline,
                       flops=flops, call=call)
        assert 0 < point.share < 1 and len(point.trace) == 28, name  # the cheap end of the grid reuses something
    apply_method(pipe, "none").remove()  # nothing was left attached


# --- the app's handlers --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app(embedded_model_dir: Path):
    settings = load_settings()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(h2cache.pipelines, "EMBEDDED_MODEL_DIR", embedded_model_dir)
        registry = ModelRegistry(settings, cuda_available=False)
        registry.get("embedded")
    return settings, registry


def values(**overrides):
    options = {f.name: f.default for f in h2cache.config_fields("option")}
    v = dict(prompt=PROMPT, model="embedded", seed=1, steps=STEPS, width=128, height=128, tau1=0.1, tau2=0.15,
             pool_size_stage1=128, pool_size_stage2=22, reuse_baseline=True, peer="fbcache", **options)
    v.update(overrides)
    return [v[name] for name in INPUT_FIELDS]


def test_the_peer_column_shows_the_peers_image_metrics_and_decisions(app):
    generate = make_generate(*app)
    out = dict(zip(OUTPUT_FIELDS, generate(*values())))
    rows = {r[0]: r[1] for r in out["peer_metrics"]}
    assert rows["Method"] == "FirstBlockCache" and rows["Setting found"].startswith("threshold=")
    peer = out["details"]["peer"]
    assert peer["matched"] == (abs(peer["share"] - peer["target_share"]) <= 0.05)
    assert ("within 5%" if peer["matched"] else "not within 5%, because") in rows["Compute matched to H2-Cache"]
    assert out["peer_image"].shape == out["baseline_image"].shape and out["peer_difference"] is not None
    assert "Peer: FirstBlockCache" in out["summary"]
    assert len(peer["trace"]) == STEPS and out["decisions_plot"] is not None
    # without a peer the column says so and nothing extra runs
    plain = dict(zip(OUTPUT_FIELDS, generate(*values(peer="none"))))
    assert plain["peer_image"] is None and plain["details"]["peer"] is None
    assert plain["peer_metrics"] == [["Peer", "none chosen (pick one under Peer)"]]


def test_a_peer_that_cannot_run_says_why_and_h2caches_result_stands(app):
    generate = make_generate(*app)
    # TeaCache's polynomial is calibrated for 28, 50 and 100 steps on the embedded model, not 12
    out = dict(zip(OUTPUT_FIELDS, generate(*values(peer="teacache"))))
    rows = {r[0]: r[1] for r in out["peer_metrics"]}
    assert rows["Method"] == "TeaCache" and "needs a rescaling polynomial" in rows["Not run"]
    assert "calibration.json" not in rows["Not run"] and "<path>" in rows["Not run"]  # no server paths
    assert "TeaCache could not run" in out["summary"] and out["peer_image"] is None
    assert out["metrics"] and out["details"]["peer"]["error"] == rows["Not run"]


def test_a_bad_peer_or_point_count_is_refused_naming_the_field(app):
    generate, run_sweep = make_generate(*app), make_sweep(*app)
    with pytest.raises(gr.Error, match=r"peer must be one of \['none', 'fbcache'"):
        generate(*values(peer="dbcache"))
    with pytest.raises(gr.Error, match="sweep_points must be a whole number from 2 to 8, got 1"):
        run_sweep(*values(), 1)
    assert "sweep_points must be" in sweep_plan("fbcache", 12)


def test_a_sweep_of_three_points_gives_three_per_method_and_downloads(app):
    run_sweep = make_sweep(*app)
    plan = sweep_plan("fbcache", 3)
    assert "7 pipeline runs" in plan and job_runs(validated(app), 3) == 8  # the bound counts the baseline too
    out = dict(zip(SWEEP_OUTPUTS, run_sweep(*values(), 3)))
    labels = [row[0] for row in out["sweep_table"]]
    assert labels.count("H2-Cache") == 3 and labels.count("FirstBlockCache") == 3
    assert labels[0] == "H2-Cache (your setting)" and "Sweep done" in out["sweep_status"]
    csv_path, json_path = out["sweep_files"]
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 7 and sum(r["current"] == "True" for r in rows) == 1
    payload = json.loads(Path(json_path).read_text())
    assert [p["method"] for p in payload["points"]].count("fbcache") == 3
    assert all(0 < p["share"] <= 1 for p in payload["points"])


def validated(app):
    from ui.validation import validate_request

    settings, registry = app
    return validate_request(settings, registry.keys, dict(zip(INPUT_FIELDS, values())))
