"""End to end: `python app.py` in a subprocess, called through gradio_client like any API user."""

from __future__ import annotations

import base64
import io
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from h2cache.config import H2CacheConfig, config_fields
from h2cache.metrics import psnr as psnr_of

from ui.callbacks import OUTPUT_FIELDS
from ui.validation import APP_OPTIONS

from embedded_facts import EMBEDDED

gradio_client = pytest.importorskip("gradio_client")

# State outputs stay on the server; the client receives every other output.
CLIENT_FIELDS = [f for f in OUTPUT_FIELDS if f != "scrub_state"]
PROMPT = "a small yellow triangle at the top left on a checkered purple background"
OPTIONS = tuple(f.name for f in config_fields("option"))  # as the library declares them


@pytest.fixture(scope="module")
def client(app_server):
    return gradio_client.Client(app_server.url, verbose=False)


def call(client, prompt=PROMPT, model="embedded", seed=0, steps=8, width=64, height=64, tau1=0.0, tau2=0.0,
         pool1=2048, pool2=384, options=(), job=False):
    """The ten inputs the endpoint has always had, then `options` (values of OPTIONS, in order) if given."""
    args = (prompt, model, seed, steps, width, height, tau1, tau2, pool1, pool2, *options)
    if job:
        return client.submit(*args, api_name="/generate")
    return dict(zip(CLIENT_FIELDS, client.predict(*args, api_name="/generate")))


def png(path: str) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG", f"{path} is {image.format}, not lossless PNG"
        return np.asarray(image.convert("RGB"))


def plot_png(plot: dict) -> Image.Image:
    assert plot["type"] == "matplotlib"
    header, data = plot["plot"].split(",", 1)
    assert header == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(data)))


def rows(out: dict) -> dict[str, list[str]]:
    return {row[0]: row[1:] for row in out["metrics"]["data"]}


def test_generate_is_a_named_endpoint(client):
    assert "/generate" in client.view_api(return_format="dict")["named_endpoints"]


def test_thresholds_zero_give_identical_png_images_and_metrics_that_say_so(client):
    out = call(client, tau1=0.0, tau2=0.0)
    baseline, cached = png(out["baseline_image"]), png(out["cached_image"])
    assert baseline.shape == (64, 64, 3)
    assert np.array_equal(baseline, cached)
    assert [png(p).shape for p in out["before_after"]] == [(64, 64, 3)] * 2
    assert not png(out["difference"]).any()
    table = rows(out)
    assert table["PSNR vs baseline"][1] == "∞ (identical)"
    assert table["SSIM vs baseline"][1] == "1.0000"
    assert out["details"]["quality"]["psnr"] == "inf" and out["details"]["quality"]["ssim"] == 1.0
    for key in ("stage1_plot", "stage2_plot", "compute_map"):
        assert plot_png(out[key]).size[0] > 300
    assert out["scrub_step"]["value"] == 8 and out["scrub_step"]["maximum"] == 8


def test_cached_run_images_plots_and_metrics_agree(client):
    out = call(client, tau1=1.0, tau2=1.0, seed=5)
    details, table = out["details"], rows(out)
    trace = details["trace"]
    assert {r["context"] for r in trace} == set(EMBEDDED.contexts)  # 'uncond' too only under true CFG
    assert len(trace) == 8 * len(EMBEDDED.contexts) and details["request"]["tau1"] == 1.0
    hits1, hits2 = sum(r["hit1"] for r in trace), sum(r["hit2"] for r in trace)
    assert hits1 + hits2 > 0
    assert table["Stage-1 hits (structure)"][1] == f"{hits1}/{len(trace)}"
    assert table["Stage-2 hits (detail)"][1].startswith(f"{hits2}/{len(trace)}")
    # PNG is lossless, so the PSNR of the received files equals the one computed on the raw arrays.
    baseline, cached = png(out["baseline_image"]), png(out["cached_image"])
    received = psnr_of(baseline, cached)
    if np.isinf(received):
        assert details["quality"]["psnr"] == "inf"
    else:
        assert details["quality"]["psnr"] == pytest.approx(received, rel=1e-9)
        assert table["PSNR vs baseline"][1] == f"{received:.2f} dB"
        assert png(out["difference"]).any()
    assert details["blocks_share"] < 1.0


def test_the_readme_ten_argument_call_still_works_with_the_options_off(client):
    # Exactly the README's example: existing callers send only the first ten inputs.
    out = dict(zip(CLIENT_FIELDS, client.predict(
        "a large red circle at the center on a striped blue background", "embedded", 0, 28, 64, 64,
        0.15, 0.22, 2048, 384, api_name="/generate")))
    details, off = out["details"], H2CacheConfig()
    for name in OPTIONS:
        assert details["request"][name] == details["config"][name] == getattr(off, name)
    assert details["config"]["num_inference_steps"] == 28
    assert details["hits"]["forced_full"] == 0 and rows(out)["Calls forced full by a guard"][1] == f"0/{len(details['trace'])}"


def test_the_options_are_api_parameters_with_the_librarys_defaults(client):
    parameters = client.view_api(return_format="dict")["named_endpoints"]["/generate"]["parameters"]
    # The app's own options come after the cache's, each with the app's default.
    cache, app = parameters[:-len(APP_OPTIONS)], parameters[-len(APP_OPTIONS):]
    assert [p["parameter_name"] for p in cache][-len(OPTIONS):] == list(OPTIONS)
    for p in cache[-len(OPTIONS):]:
        assert p["parameter_has_default"] and p["parameter_default"] == getattr(H2CacheConfig(), p["parameter_name"])
    assert {p["parameter_name"]: p["parameter_default"] for p in app} == APP_OPTIONS


def test_the_options_reach_the_cache(client):
    # By name, as the README documents: warm-up 2, a cap of 2 reusing calls, the last step full, one probe per hit.
    out = dict(zip(CLIENT_FIELDS, client.predict(
        PROMPT, "embedded", 5, 8, 64, 64, 1.0, 1.0, 2048, 384, warmup_steps=2, max_consecutive_hits=2,
        final_full_steps=1, skip_stage2_probe_on_hit=True, api_name="/generate")))
    details = out["details"]
    assert [details["request"][name] for name in OPTIONS] == [2, 2, 1, True]
    assert details["config"]["num_inference_steps"] == 8
    trace = details["trace"]
    for context in {r["context"] for r in trace}:
        forced = [r["forced_full"] for r in trace if r["context"] == context]
        assert forced[:2] == [True, True] and forced[-1]
    assert all(r["blocks_run"] == r["blocks_total"] for r in trace if r["forced_full"])
    hits = [r for r in trace if r["hit1"]]
    assert hits and all(r["blocks_run"] == 1 for r in hits), "one probe per stage-1 hit"
    count = sum(r["forced_full"] for r in trace)
    assert details["hits"]["forced_full"] == count and rows(out)["Calls forced full by a guard"][1] == f"{count}/{len(trace)}"


@pytest.mark.parametrize("overrides, field", [
    ({"prompt": ""}, "prompt"),
    ({"model": "/etc"}, "model"),
    ({"steps": 1000}, "steps"),
    ({"width": 72}, "width"),
    ({"height": 512}, "height"),
    ({"tau1": -1.0}, "tau1"),
    ({"tau2": 7.0}, "tau2"),
    ({"pool1": 0}, "pool_size_stage1"),
    ({"options": (9, 0, 0, False)}, "warmup_steps"),
    ({"options": (0, 101, 0, False)}, "max_consecutive_hits"),
    ({"options": (0, 0, -1, False)}, "final_full_steps"),
    ({"options": (0, 0, 0, "yes")}, "skip_stage2_probe_on_hit"),
])
def test_bad_inputs_return_errors_and_the_server_keeps_answering(client, app_server, overrides, field):
    with pytest.raises(Exception) as error:
        call(client, **overrides)
    assert f"{field} must" in str(error.value)
    with urllib.request.urlopen(app_server.url + "gradio_api/info", timeout=10) as response:
        assert response.status == 200
    assert app_server.process.poll() is None


def test_server_answers_after_errors(client):
    for _ in range(2):
        with pytest.raises(Exception):
            call(client, prompt="x" * 5000)
    out = call(client, steps=4)
    assert png(out["baseline_image"]).shape == (64, 64, 3)


def test_requests_sent_together_match_each_sent_alone(client):
    settings = [dict(seed=11, tau1=0.5, tau2=0.5), dict(seed=12, tau1=1.0, tau2=1.0, prompt="a large white diamond at the bottom right on a gradient green background")]
    alone = [call(client, **s) for s in settings]
    with ThreadPoolExecutor(2) as pool:
        jobs = list(pool.map(lambda s: call(client, job=True, **s), settings))
        together = [dict(zip(CLIENT_FIELDS, job.result(timeout=300))) for job in jobs]
    for a, t in zip(alone, together):
        assert np.array_equal(png(a["baseline_image"]), png(t["baseline_image"]))
        assert np.array_equal(png(a["cached_image"]), png(t["cached_image"]))
        decisions = lambda out: [(r["step"], r["hit1"], r["hit2"], r["forced2"], r["blocks_run"]) for r in out["details"]["trace"]]
        assert decisions(a) == decisions(t)
        assert [r["d1"] for r in a["details"]["trace"]] == pytest.approx([r["d1"] for r in t["details"]["trace"]])
