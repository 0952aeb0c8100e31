"""H2-Cache core: exactness at tau=0, skipping at huge tau, removal, PFS, trace, contexts, validation."""

from __future__ import annotations

import math

import pytest
import torch

import h2cache
from h2cache import H2CacheConfig, apply_h2_cache, pfs_distance, pfs_thumbnail
from tiny_models import tiny_flux_pipeline, tiny_flux_transformer, tiny_sd3_pipeline

torch.set_num_threads(1)

FLUX_KW = dict(prompt="a red circle at the top", height=32, width=32, num_inference_steps=6,
               max_sequence_length=16, output_type="pt")
SD3_KW = dict(prompt="a red circle at the top", height=32, width=32, num_inference_steps=5,
              max_sequence_length=16, output_type="pt")


def run(pipe, **kw):
    args = {**(FLUX_KW if "Flux" in type(pipe).__name__ else SD3_KW), **kw}
    return pipe(**args, generator=torch.Generator().manual_seed(0)).images


class BlockCounter:
    """Counts real block executions: each block's attention module runs only when the block does."""

    def __init__(self, transformer):
        self.count = 0
        self.handles = []
        for name in ("transformer_blocks", "single_transformer_blocks"):
            for block in getattr(transformer, name, []):
                self.handles.append(block.attn.register_forward_pre_hook(self._hit))

    def _hit(self, *_):
        self.count += 1

    def take(self) -> int:
        n, self.count = self.count, 0
        return n


@pytest.mark.parametrize("make", [tiny_flux_pipeline, tiny_sd3_pipeline], ids=["flux", "sd3"])
def test_zero_thresholds_are_bitwise_identical(make):
    pipe = make()
    baseline = run(pipe)
    handle = apply_h2_cache(pipe, H2CacheConfig(tau1=0, tau2=0))
    cached = run(pipe)
    assert torch.equal(baseline, cached)
    assert all(not r.hit1 and not r.hit2 for r in handle.trace)
    assert all(r.blocks_run == r.blocks_total for r in handle.trace)


@pytest.mark.parametrize("make", [tiny_flux_pipeline, tiny_sd3_pipeline], ids=["flux", "sd3"])
def test_huge_thresholds_run_only_the_two_probes_after_the_first_call(make):
    pipe = make()
    counter = BlockCounter(pipe.transformer)
    per_call: list[int] = []
    pipe.transformer.register_forward_hook(lambda *_: per_call.append(counter.take()))
    handle = apply_h2_cache(pipe, H2CacheConfig(tau1=1e9, tau2=1e9))
    run(pipe)
    total = handle.split.blocks_total
    assert per_call[0] == total
    assert per_call[1:] == [2] * (len(per_call) - 1)
    assert [r.blocks_run for r in handle.trace] == per_call
    assert all(r.hit1 and r.hit2 and r.forced2 and r.d2 is None for r in handle.trace[1:])


@pytest.mark.parametrize("make", [tiny_flux_pipeline, tiny_sd3_pipeline], ids=["flux", "sd3"])
def test_remove_restores_exact_outputs(make):
    pristine = run(make())
    pipe = make()
    handle = apply_h2_cache(pipe, H2CacheConfig(tau1=1e9, tau2=1e9))
    assert not torch.equal(run(pipe), pristine)  # the cache really changed something
    handle.remove()
    assert torch.equal(run(pipe), pristine)
    assert not h2cache.is_h2_cache_applied(pipe)
    handle.remove()  # idempotent


def test_pfs_matches_hand_computation():
    # N=6 tokens, C=4 channels, pool_size 3 -> k = max(1, 6 // 3) = 2: 2x2 windows over (tokens, channels).
    x = torch.arange(24, dtype=torch.float32).reshape(1, 6, 4)
    thumb = pfs_thumbnail(x, pool_size=3)
    assert thumb.shape == (1, 1, 3, 2)
    # Window (tokens 0-1, channels 0-1) holds 0, 1, 4, 5.
    assert thumb[0, 0, 0, 0].item() == pytest.approx((0 + 1 + 4 + 5) / 4)
    assert thumb[0, 0, 2, 1].item() == pytest.approx((18 + 19 + 22 + 23) / 4)
    # N // pool_size == 0 -> k = 1: no pooling, the residual itself.
    assert torch.equal(pfs_thumbnail(x, pool_size=100), x.unsqueeze(1))
    # Relative L1: mean|ref - cur| / mean|ref|.
    ref = torch.tensor([[[[1.0, -2.0], [3.0, 4.0]]]])
    cur = torch.tensor([[[[1.5, -2.0], [2.0, 4.0]]]])
    expected = (0.5 + 0 + 1.0 + 0) / 4 / ((1 + 2 + 3 + 4) / 4)
    assert pfs_distance(ref, cur).item() == pytest.approx(expected)
    assert pfs_distance(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)).item() == 0.0
    assert math.isinf(pfs_distance(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)).item())


def test_pfs_kernel_rule_on_flux_sizes():
    # 1024x1024 FLUX.1: 4096 image tokens (+512 text in stage 2); published pools give k=2 and k=12.
    assert h2cache.pfs_kernel(4096, 3072, 2048) == 2
    assert h2cache.pfs_kernel(4096 + 512, 3072, 384) == 12
    assert h2cache.pfs_kernel(64, 128, 2048) == 1


def test_trace_resets_per_pipeline_call():
    pipe = tiny_flux_pipeline()
    handle = apply_h2_cache(pipe, H2CacheConfig(tau1=0.5, tau2=0.5))
    run(pipe)
    assert [r.step for r in handle.trace] == list(range(6))
    first = [r.as_dict() for r in handle.trace]
    run(pipe, num_inference_steps=4)
    assert [r.step for r in handle.trace] == list(range(4))
    assert handle.trace[0].d1 is None and not handle.trace[0].hit1  # no reference carried over
    run(pipe)
    assert [r.as_dict() for r in handle.trace] == first  # same call, same decisions


def test_cond_and_uncond_keep_separate_state():
    pipe = tiny_flux_pipeline()
    handle = apply_h2_cache(pipe, H2CacheConfig(tau1=1e9, tau2=1e9))
    run(pipe, negative_prompt="", true_cfg_scale=3.0)
    assert handle.trace.contexts == ["cond", "uncond"]
    for context in ("cond", "uncond"):
        records = handle.trace.for_context(context)
        assert [r.step for r in records] == list(range(6))
        # Each context starts without a reference; a shared state would let 'uncond' hit at step 0.
        assert records[0].d1 is None and not records[0].hit1 and records[0].blocks_run == records[0].blocks_total
        assert all(r.hit1 for r in records[1:])


def test_batch_gives_one_decision_per_call():
    pipe = tiny_flux_pipeline()
    handle = apply_h2_cache(pipe, H2CacheConfig(tau1=0.3, tau2=0.3))
    images = run(pipe, num_images_per_prompt=2)
    assert images.shape[0] == 2
    assert len(handle.trace) == 6
    assert all(isinstance(r.d1, float) for r in handle.trace[1:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes(dtype):
    transformer = tiny_flux_transformer().to(dtype)
    torch.manual_seed(1)
    inputs = dict(
        hidden_states=torch.randn(1, 16, 64, dtype=dtype), encoder_hidden_states=torch.randn(1, 16, 64, dtype=dtype),
        pooled_projections=torch.randn(1, 64, dtype=dtype), timestep=torch.tensor([0.5], dtype=dtype),
        img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(16, 3), return_dict=False,
    )
    with torch.no_grad():
        expected = transformer(**inputs)[0]
        handle = apply_h2_cache(transformer, H2CacheConfig(tau1=0, tau2=0))
        assert torch.equal(transformer(**inputs)[0], expected)
        handle.config.tau1 = handle.config.tau2 = 1e9
        transformer(**inputs)  # second call of the same run: reuses both stages
        out = transformer(**inputs)[0]
    assert out.dtype == dtype and torch.isfinite(out.float()).all()
    assert handle.trace[-1].hit1 and handle.trace[-1].blocks_run == 2
    assert isinstance(handle.trace[-1].d1, float)


@pytest.mark.parametrize(
    "field,value",
    [("tau1", -0.1), ("tau1", float("nan")), ("tau1", float("inf")), ("tau1", "0.1"), ("tau2", -1),
     ("tau2", float("inf")), ("tau2", True), ("pool_size_stage1", 0), ("pool_size_stage1", 2.5),
     ("pool_size_stage2", -3), ("pool_size_stage2", "384"), ("stage_split", 0), ("stage_split", 1.5),
     ("full_residual_distance", 1), ("independent_stage2", "yes")],
)
def test_invalid_config_fields_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        H2CacheConfig(**{field: value})
    cfg = H2CacheConfig()
    with pytest.raises(ValueError, match=field):
        setattr(cfg, field, value)


def test_bad_targets_leave_the_model_untouched():
    with pytest.raises(TypeError, match="pipeline"):
        apply_h2_cache("not a model")
    linear = torch.nn.Linear(4, 4)
    with pytest.raises(ValueError, match="does not know how to split Linear into two stages; supported: .*FluxTransformer2DModel"):
        apply_h2_cache(linear)
    assert not hasattr(linear, "_diffusers_hook")
    with pytest.raises(TypeError, match="H2CacheConfig"):
        apply_h2_cache(tiny_flux_transformer(), {"tau1": 0.1})
    with pytest.raises(ValueError, match="stage_split"):
        apply_h2_cache(tiny_flux_transformer(), H2CacheConfig(stage_split=2))
    with pytest.raises(ValueError, match="stage_split must be between 1 and 5"):
        apply_h2_cache(tiny_sd3_pipeline(), H2CacheConfig(stage_split=6))


def test_applying_twice_raises_and_changes_nothing():
    pipe = tiny_flux_pipeline()
    handle = apply_h2_cache(pipe, H2CacheConfig(tau1=0.3, tau2=0.3))
    expected = run(pipe)
    with pytest.raises(ValueError, match="already applied"):
        apply_h2_cache(pipe, H2CacheConfig(tau1=0, tau2=0))
    assert torch.equal(run(pipe), expected)
    handle.remove()
    apply_h2_cache(pipe).remove()  # and it can be applied again after removal


def test_sd3_split_defaults_to_half_and_follows_the_config():
    pipe = tiny_sd3_pipeline(layers=6)
    assert h2cache.resolve_stages(pipe.transformer).stage2_name == "transformer_blocks[3:6]"
    handle = apply_h2_cache(pipe, H2CacheConfig(tau1=0, tau2=0, stage_split=2))
    assert (len(handle.split.stage1), len(handle.split.stage2)) == (2, 4)
