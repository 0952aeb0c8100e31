"""The shipped model: loads with no network, generates at its default size, deterministically."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from h2cache.pipelines import EMBEDDED_MODEL_DIR

from embedded_facts import EMBEDDED

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import json, sys, numpy as np, torch
import h2cache
torch.set_num_threads(1)
pipe = h2cache.load_pipeline()
pipe.set_progress_bar_config(disable=True)
kw = h2cache.generation_defaults(pipe)
assert (kw["height"], kw["width"]) == (int(sys.argv[2]),) * 2
def gen(seed):
    return pipe("a large yellow square at the center on a checkered purple background", **kw,
                generator=torch.Generator().manual_seed(seed), output_type="np").images[0]
a, b, c = gen(0), gen(0), gen(1)
plain = pipe("a small red circle at the top left on a plain blue background", output_type="np",
             generator=torch.Generator().manual_seed(0), max_sequence_length=16).images[0]
np.save(sys.argv[1], np.stack([a, b, c]))
print(json.dumps({"device": str(pipe.device), "plain_shape": list(plain.shape),
                  "model": pipe._h2cache_model, "dtype": str(pipe.transformer.dtype)}))
"""


def test_loads_offline_and_is_deterministic(tmp_path):
    assert (EMBEDDED_MODEL_DIR / "model_index.json").exists(), f"embedded model missing at {EMBEDDED_MODEL_DIR}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = tmp_path / "images.npy"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out), str(EMBEDDED.size)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    # A call without a size gets the model's trained size too.
    shape = [EMBEDDED.size, EMBEDDED.size, 3]
    assert info == {"device": "cpu", "plain_shape": shape, "model": "embedded", "dtype": "torch.float32"}
    a, b, c = np.load(out)
    assert list(a.shape) == shape
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_shipped_size_is_within_budget():
    total = sum(p.stat().st_size for p in EMBEDDED_MODEL_DIR.rglob("*") if p.is_file())
    assert total <= 30 * 1024 * 1024, f"{total / 2**20:.1f} MB"
