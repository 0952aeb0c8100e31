"""The serving limits (ui/serving.py): the running app under hostile or careless clients (raw HTTP, bursts,
cancelled jobs, uploads), where it listens, and the heap settings.

The server tests talk to `python app.py` over HTTP, as an API user or an attacker would.
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from devtools.local_server import LocalApp
from ui.serving import limit_heap_arenas, server_address

gradio_client = pytest.importorskip("gradio_client")

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a large red circle at the center on a striped blue background"
TEN = [PROMPT, "embedded", 0, 4, 64, 64, 0.1, 0.1, 2048, 384]  # the ten inputs API callers have always sent


def post(app, path: str, body: dict, timeout: float = 30) -> httpx.Response:
    return httpx.post(app.url + "gradio_api/" + path, content=json.dumps(body),
                      headers={"content-type": "application/json"}, timeout=timeout)


def fn_index(app, api_name: str) -> int:
    deps = httpx.get(app.url + "config", timeout=30).json()["dependencies"]
    return next(d["id"] for d in deps if d.get("api_name") == api_name)


def join(app, data: list, api_name: str = "generate", session: str | None = None) -> httpx.Response:
    return post(app, "queue/join", {"data": data, "fn_index": fn_index(app, api_name),
                                    "session_hash": session or uuid.uuid4().hex})


def test_only_generate_and_the_pages_own_handlers_are_callable(app_server):
    assert join(app_server, TEN).status_code == 200  # ten values: the options are filled in, off
    for path, body in [
        ("queue/join", {"data": [1, None], "fn_index": fn_index(app_server, "show_step"), "session_hash": "x"}),
        ("call/show_step", {"data": [1, None]}),
        ("call/on_model_change", {"data": ["embedded"]}),
        ("run/generate", {"data": TEN}),  # around the queue, its validator and its limits
        ("run/predict", {"data": TEN, "fn_index": fn_index(app_server, "generate")}),
    ]:
        response = post(app_server, path, body)
        assert response.status_code == 404, (path, response.text)
        assert "The API is /generate" in response.json()["detail"]
    # The scrubber the page uses still answers, and a wrong value count gets a short message.
    ok = post(app_server, "run/predict", {"data": [1, None], "fn_index": fn_index(app_server, "show_step")})
    assert ok.status_code == 200 and "Run a comparison" in ok.json()["data"][2]
    short = post(app_server, "run/predict", {"data": [1], "fn_index": fn_index(app_server, "show_step")})
    assert short.status_code == 400 and short.json()["detail"] == "Expected 2 values."


@pytest.mark.parametrize("count", [0, 3, 9, 17])
def test_a_wrong_number_of_values_gets_a_short_message(app_server, count):
    data = (TEN + [0, 0, 0, False, True, "none", 1])[:count]
    for response in (join(app_server, data), post(app_server, "call/generate", {"data": data})):
        assert response.status_code == 400
        detail = response.json()["detail"]
        assert detail == f"/generate takes 10 to 16 values, got {count}"
        assert "object at 0x" not in response.text
    # the sweep takes the same inputs and its point count
    sweep = data + [3] if count == 17 else data  # 17 values are a whole sweep request
    response = post(app_server, "call/sweep", {"data": sweep})
    assert response.status_code == 400
    assert response.json()["detail"] == f"/sweep takes 10 to 17 values, got {len(sweep)}"


def test_uploads_are_refused(app_server):
    response = httpx.post(app_server.url + "gradio_api/upload", files={"files": ("a.bin", b"x" * 20_000)}, timeout=30)
    assert response.status_code == 403 and "no file uploads" in response.json()["detail"]
    empty = httpx.post(app_server.url + "gradio_api/upload", files={"files": ("a.bin", b"")}, timeout=30)
    assert empty.status_code == 403


def test_huge_numbers_name_their_field_over_raw_http(app_server):
    for field, index in (("seed", 2), ("steps", 3), ("tau1", 6), ("pool_size_stage1", 8)):
        data = list(TEN)
        data[index] = 10**400
        response = join(app_server, data)
        assert response.status_code == 422, response.text
        messages = [v["message"] for v in response.json()["detail"] if not v["is_valid"]]
        assert len(messages) == 1 and messages[0].startswith(f"{field} must be"), messages


@pytest.fixture(scope="module")
def small_queue_app(tmp_path_factory, embedded_model_dir):
    """The app with a queue of 4, so that a burst overflows it quickly."""
    settings = yaml.safe_load((ROOT / "space.yaml").read_text())
    settings["queue"]["max_size"] = 4
    path = tmp_path_factory.mktemp("settings") / "space.yaml"
    path.write_text(yaml.safe_dump(settings))
    with LocalApp(env={"H2CACHE_SETTINGS": str(path), "H2CACHE_EMBEDDED_MODEL": str(embedded_model_dir),
                       "OMP_NUM_THREADS": "1"}) as app:
        yield app


def test_a_burst_beyond_the_queue_size_is_refused_with_a_clear_message(small_queue_app):
    index = fn_index(small_queue_app, "generate")

    def one(seed: int) -> httpx.Response:
        data = list(TEN)
        data[2] = seed
        return post(small_queue_app, "queue/join", {"data": data, "fn_index": index, "session_hash": uuid.uuid4().hex})

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(one, range(16)))
    accepted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert 1 <= len(accepted) <= 4, [r.text for r in responses]
    assert len(refused) == 16 - len(accepted)
    for r in refused:
        assert r.status_code == 503 and "Queue is full (4 requests waiting or running)" in r.json()["detail"]


def test_a_cancelled_request_stops_and_the_next_gets_clean_results(small_queue_app):
    client = gradio_client.Client(small_queue_app.url, verbose=False)
    alone = predict_when_accepted(client, PROMPT, "embedded", 5, 6, 64, 64, 0.0, 0.0, 2048, 384)
    # 100 steps take several seconds on a CPU; cancel it once it has started.
    long_job = client.submit(PROMPT, "embedded", 1, 100, 128, 128, 0.0, 0.0, 2048, 384, api_name="/generate")
    deadline = time.monotonic() + 60
    while "run: step" not in str(long_job.status().progress_data) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not long_job.done(), "the long request finished before it could be cancelled"
    long_job.cancel()
    deadline = time.monotonic() + 60
    while "comparison stopped: the request was cancelled" not in small_queue_app.log_tail(20_000):
        assert time.monotonic() < deadline, small_queue_app.log_tail()
        time.sleep(0.2)
    again = client.predict(PROMPT, "embedded", 5, 6, 64, 64, 0.0, 0.0, 2048, 384, api_name="/generate")
    for before, after in zip(alone[1:3], again[1:3]):  # baseline and cached image files
        assert np.array_equal(np.asarray(_png(before)), np.asarray(_png(after)))


def predict_when_accepted(client, *args, wait: float = 120):
    """Call /generate, retrying while the queue is still full from an earlier test's burst."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return client.predict(*args, api_name="/generate")
        except gradio_client.utils.QueueError:
            assert time.monotonic() < deadline, "the queue never drained"
            time.sleep(0.5)


def _png(path: str):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB").copy()


def test_server_address_follows_local_space_and_env_rules():
    assert server_address("127.0.0.1", 7860, {}) == ("127.0.0.1", 7860)
    assert server_address("127.0.0.1", 7860, {"SPACE_ID": "user/h2cache"}) == ("0.0.0.0", 7860)
    env = {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "8123"}
    assert server_address("127.0.0.1", 7860, env) == ("0.0.0.0", 8123)
    with pytest.raises(ValueError, match="GRADIO_SERVER_PORT"):
        server_address("127.0.0.1", 7860, {"GRADIO_SERVER_PORT": "http"})


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_heap_arena_limit_is_accepted_by_glibc():
    assert limit_heap_arenas() is True
