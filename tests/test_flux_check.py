"""The FLUX.1 check script's code path (python -m devtools.flux_check), at its tiny CPU preset."""

from __future__ import annotations

import json

import pytest
import torch

from devtools.flux_check import main, run_check

torch.set_num_threads(1)


def test_tiny_preset_runs_the_apps_flux_path_from_a_local_directory(tmp_path):
    result = run_check("tiny", tmp_path)
    assert (tmp_path / "flux-shaped-tiny" / "model_index.json").exists()
    assert result["steps"] == 4 and result["size"] == 256
    assert result["baseline_s"] > 0 and result["h2cache_s"] > 0 and result["gpu_call_s"] >= result["baseline_s"]
    # Both runs' PFS views (one per stage and step, or fewer where stage 2 was forced) reached the panel.
    assert 4 <= result["pfs_views"] <= 8 and result["pfs_panel_shown"]
    assert result["fits_requested_duration"] == (result["gpu_call_s"] <= result["requested_gpu_duration_s"])
    assert result["requested_gpu_duration_s"] >= 30  # space.yaml's zero_gpu.min_duration
    assert "peak_gpu_gib" not in result  # no GPU figures are made up on a CPU


def test_flux_dev_preset_says_it_needs_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        main(["--preset", "flux-dev", "--work", str(tmp_path)])


def test_writes_its_figures_as_json(tmp_path, capsys):
    out = tmp_path / "figures.json"
    assert main(["--preset", "tiny", "--steps", "2", "--work", str(tmp_path), "--out", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["preset"] == "tiny" and figures["steps"] == 2 and "gpu_call_s" in capsys.readouterr().out
