"""Boot check of the ZeroGPU Space: `python app.py` started as a Space starts it, with a stand-in `spaces`.

A local FLUX.1-shaped pipeline with random weights (devtools.flux_check's tiny preset) stands in for the hub
id, on the CPU. The stand-in `spaces` (tests/space_standin) writes down every pipeline load and every
GPU call, so the test can check what ZeroGPU needs: all models loaded at startup in the main process,
none inside a GPU call, and a GPU call sized to the request.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from h2cache.pipelines import write_generation_defaults
from ui.callbacks import OUTPUT_FIELDS
from devtools.flux_check import PRESETS, build_pipeline
from devtools.local_server import ROOT, LocalApp
from ui.settings import load_settings

from embedded_facts import find_embedded_model

gradio_client = pytest.importorskip("gradio_client")
STANDIN = Path(__file__).resolve().parent / "space_standin"


@pytest.fixture(scope="module")
def space(tmp_path_factory, embedded_model_dir):
    work = tmp_path_factory.mktemp("space")
    flux_dir = work / "flux-shaped"
    torch.manual_seed(0)
    build_pipeline(PRESETS["tiny"]).save_pretrained(flux_dir)
    write_generation_defaults(flux_dir, {"height": 256, "width": 256, "num_inference_steps": 4,
                                         "guidance_scale": 3.5, "max_sequence_length": 32})
    raw = yaml.safe_load((ROOT / "space.yaml").read_text())
    flux = next(m for m in raw["models"] if m["key"].endswith("FLUX.1-dev"))
    flux.update(key=str(flux_dir), label="FLUX.1-shaped, random weights", sizes={"min": 64, "max": 256, "multiple": 16},
                steps={"min": 1, "max": 8})
    raw["models"] = [m for m in raw["models"] if m["key"] == "embedded"] + [flux]
    settings_path = work / "space.yaml"
    settings_path.write_text(yaml.safe_dump(raw))
    log = work / "spaces.jsonl"
    env = {"SPACE_ID": "h2cache/boot-check", "H2CACHE_SETTINGS": str(settings_path), "H2CACHE_DEVICE": "cpu",
           "H2CACHE_FAKE_SPACES_LOG": str(log), "H2CACHE_EMBEDDED_MODEL": str(embedded_model_dir),
           "PYTHONPATH": os.pathsep.join([str(STANDIN), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with LocalApp(env=env) as app:
        yield app, flux_dir, log, load_settings(settings_path)


def events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_every_model_loads_at_startup_in_the_main_process(space):
    _, flux_dir, log, _ = space
    seen = events(log)
    assert seen[0]["event"] == "imported", "app.py must import spaces before anything else touches CUDA"
    loads = [e for e in seen if e["event"] == "from_pretrained"]
    assert {Path(e["model"]).name for e in loads} == {find_embedded_model().name, flux_dir.name}
    assert not any(e["inside_gpu"] for e in loads)
    assert not any(e["event"] == "gpu_start" for e in seen), "the page serves before any GPU call"


def test_a_comparison_runs_in_one_gpu_call_sized_to_the_request_with_no_load_inside(space):
    app, flux_dir, log, settings = space
    before = len(events(log))
    client = gradio_client.Client(app.url, verbose=False)
    values = client.predict("a red fox in the snow", str(flux_dir), 0, 4, 256, 256, 0.15, 0.22, 2048, 384,
                            api_name="/generate")
    details = dict(zip([f for f in OUTPUT_FIELDS if f != "scrub_state"], values))["details"]
    assert details["request"]["model"] == str(flux_dir) and len(details["trace"]) == 4
    call = events(log)[before:]
    assert [e["event"] for e in call] == ["gpu_start", "gpu_end"], call  # nothing loaded in between
    assert call[0]["duration"] == settings.gpu_call_seconds(str(flux_dir), 4, 256, 256)
    # A 50-step FLUX.1-dev comparison at 1024x1024 asks for more than a 4-step one, within the bounds.
    dev = "black-forest-labs/FLUX.1-dev"
    shipped = load_settings()
    small, large = shipped.gpu_call_seconds(dev, 4, 512, 512), shipped.gpu_call_seconds(dev, 50, 1024, 1024)
    assert shipped.zero_gpu.min_duration <= small < large <= shipped.zero_gpu.max_duration
