"""What PFS compared (h2cache.pfs_views): the recorded thumbnails are the ones the decisions used."""

from __future__ import annotations

import pytest
import torch

from h2cache import H2CacheConfig, apply_h2_cache, pfs_distance
from tiny_models import tiny_flux_pipeline, tiny_sd3_pipeline

torch.set_num_threads(1)

KW = dict(prompt="a red circle at the top", height=32, width=32, num_inference_steps=8, max_sequence_length=16,
          output_type="pt")


def run(pipe, **kw):
    return pipe(**{**KW, **kw}, generator=torch.Generator().manual_seed(0)).images


@pytest.fixture(scope="module")
def recorded():
    pipe = tiny_flux_pipeline()
    handle = apply_h2_cache(pipe, H2CacheConfig(tau1=0.3, tau2=0.3, pool_size_stage1=4, pool_size_stage2=4))
    handle.pfs.enable()
    image = run(pipe)
    return pipe, handle, image


def test_off_unless_enabled():
    pipe = tiny_flux_pipeline()
    handle = apply_h2_cache(pipe, H2CacheConfig(tau1=0.3, tau2=0.3))
    run(pipe)
    assert len(handle.trace) == 8 and len(handle.pfs) == 0


def test_every_measured_distance_is_recorded_and_reproduced_from_the_stored_thumbnails(recorded):
    _, handle, _ = recorded
    views = handle.pfs
    assert any(r.hit1 for r in handle.trace) and any(not r.hit1 for r in handle.trace[1:]), "need hits and misses"
    for record in handle.trace:
        for stage, distance, hit in ((1, record.d1, record.hit1), (2, record.d2, record.hit2)):
            view = views.find(record.step, record.context, stage)
            if stage == 2 and record.forced2:
                assert view is None  # stage 2 was not compared
                continue
            assert view is not None and view.distance == distance and view.hit == hit
            reference = views.reference_of(view)
            if distance is None:
                assert reference is None
                continue
            # The stored thumbnails are the compared ones: the distance follows from them alone.
            recomputed = float(pfs_distance(torch.from_numpy(reference.thumbnail), torch.from_numpy(view.thumbnail)))
            assert recomputed == pytest.approx(distance, rel=1e-5)


def test_the_reference_is_the_stages_last_miss(recorded):
    _, handle, _ = recorded
    last_miss = {1: None, 2: None}
    for view in handle.pfs:
        assert view.reference_step == (last_miss[view.stage] if view.distance is not None else None)
        if not view.hit:
            last_miss[view.stage] = view.step


def test_kernel_shapes_and_token_counts(recorded):
    pipe, handle, _ = recorded
    view1, view2 = handle.pfs.find(1, "cond", 1), handle.pfs.find(1, "cond", 2)
    image_tokens = (32 // pipe.vae_scale_factor // 2) ** 2
    assert view1.num_tokens == view1.image_tokens == image_tokens == 64
    assert view2.num_tokens == 64 + 16 and view2.image_tokens == 64  # stage 2 compares [text; image]
    assert (view1.kernel, view1.thumbnail_shape) == (16, (4, 2))  # k = 64 // 4, on 64 tokens x 32 channels
    assert (view2.kernel, view2.thumbnail_shape) == (20, (4, 1))  # k = 80 // 4 = 20, capped to 32 channels
    assert view1.image_magnitude.shape == (64,) and (view1.image_magnitude >= 0).all()


def test_recording_changes_neither_the_decisions_nor_the_image(recorded):
    pipe, handle, image = recorded
    with_views = [r.as_dict() for r in handle.trace]
    handle.pfs.disable()
    again = run(pipe)
    assert torch.equal(image, again) and [r.as_dict() for r in handle.trace] == with_views and len(handle.pfs) == 0
    handle.pfs.enable()


def test_large_thumbnails_are_kept_shrunk_by_one_factor():
    pipe = tiny_sd3_pipeline()
    handle = apply_h2_cache(pipe, H2CacheConfig(tau1=0.3, tau2=0.3, pool_size_stage1=10**6))  # k = 1
    handle.pfs.enable(max_side=10)
    run(pipe, num_inference_steps=3)
    view = handle.pfs.find(1, "default", 1)
    rows, cols = view.thumbnail_shape
    factor = -(-max(rows, cols) // 10)
    assert view.kernel == 1 and max(rows, cols) > 10
    assert view.thumbnail.shape == (-(-rows // factor), -(-cols // factor))
    with pytest.raises(ValueError, match="max_side"):
        handle.pfs.enable(max_side=0)
