"""The PFS panel's data and pictures (ui/pfs_panel.py), from a real cached run of a tiny FLUX pipeline."""

from __future__ import annotations

import numpy as np
import torch

from h2cache import H2CacheConfig, apply_h2_cache
from tiny_models import tiny_flux_pipeline
from ui.pfs_panel import compact_views, stage_picture, token_grid, views_nbytes

torch.set_num_threads(1)


def test_steps_share_their_references_thumbnail_and_bytes_count_it_once():
    pipe = tiny_flux_pipeline()
    handle = apply_h2_cache(pipe, H2CacheConfig(tau1=0.3, tau2=0.3, pool_size_stage1=4, pool_size_stage2=4))
    views = handle.pfs.enable()
    pipe("a red circle at the top", height=32, width=32, num_inference_steps=8, max_sequence_length=16,
         output_type="pt", generator=torch.Generator().manual_seed(0))
    per_step = compact_views(views, "cond", 8)
    pointing = [(i, s, v) for i, step in enumerate(per_step) for s, v in step.items() if v["reference"] is not None]
    assert pointing, "some step must have a reference"
    for _, stage, view in pointing:
        assert view["reference"] is per_step[view["reference_step"]][stage]["thumbnail"]
        assert view["thumbnail"].dtype == np.float16
    unique = {id(v[k]): v[k] for step in per_step for v in step.values() for k in ("thumbnail", "magnitude")}
    assert views_nbytes(per_step) == sum(a.nbytes for a in unique.values())
    picture = stage_picture(pointing[0][2], 32, 32)
    assert picture.dtype == np.uint8 and picture.shape[2] == 3 and picture.shape[0] >= 160


def test_token_grid_follows_the_aspect_ratio_and_falls_back_to_a_row():
    assert token_grid(4096, 1024, 1024) == (64, 64)
    assert token_grid(512, 512, 1024) == (16, 32)
    assert token_grid(7, 64, 64) == (1, 7)
