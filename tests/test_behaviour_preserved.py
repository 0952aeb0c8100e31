"""The published method and every kept variant decide and draw exactly as recorded (tests/behaviour_record.py).

The record was written before the hooks were reorganised (issue 31); a change to the library that alters any
decision, distance or image bit makes this fail. Each case is one pipeline call on the embedded model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import behaviour_record as br


@pytest.fixture(scope="module")
def recorded():
    return json.loads(br.RECORD.read_text())


@pytest.fixture(scope="module")
def pipe(recorded):
    import torch

    import h2cache

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as recorded
    from h2cache.methods.calibration import model_fingerprint

    torch.manual_seed(0)
    pipe = h2cache.load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    if model_fingerprint(pipe.transformer) != recorded["fingerprint"]:
        pytest.fail("the embedded weights changed since the behaviour record: rerun tests/behaviour_record.py "
                    "on the commit before the change to the method, then compare")
    yield pipe
    torch.set_num_threads(threads)


def test_the_record_covers_every_variant_at_28_50_and_100_steps(recorded):
    assert set(recorded["cases"]) == set(br.cases())
    # The record is only evidence if the variants decide differently and reuse something.
    for name, case in recorded["cases"].items():
        assert 0 < case["hits"] < case["steps"], name
    assert len({c["image_sha256"] for c in recorded["cases"].values()}) == len(recorded["cases"])


@pytest.mark.parametrize("name", sorted(br.cases()))
def test_decisions_and_image_are_bit_for_bit_as_recorded(pipe, recorded, name):
    case = recorded["cases"][name]
    steps, settings = br.cases()[name]
    got = br.run_case(pipe, steps, settings)
    if recorded["machine"] == br.machine():
        assert got["decisions"] == case["decisions"]
        assert got["image_sha256"] == case["image_sha256"]
        return
    # Another CPU or torch rounds differently: the same decisions, distances and image up to rounding.
    flags = [[v for i, v in enumerate(d) if i not in (2, 4)] for d in got["decisions"]]
    assert flags == [[v for i, v in enumerate(d) if i not in (2, 4)] for d in case["decisions"]]
    for mine, theirs in zip(got["decisions"], case["decisions"]):
        for i in (2, 4):
            assert (mine[i] == "None") == (theirs[i] == "None")
            if mine[i] != "None":
                assert float(mine[i]) == pytest.approx(float(theirs[i]), rel=1e-5, abs=1e-7)
    stored = np.load(br.IMAGES)[name]
    assert np.abs(br.to_uint8(got["image"]).astype(int) - stored.astype(int)).max() <= 1
