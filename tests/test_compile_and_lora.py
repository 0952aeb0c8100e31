"""H2-Cache with regional torch.compile and with a LoRA adapter, on a tiny random FLUX transformer."""

from __future__ import annotations

import pytest
import torch

from h2cache import H2CacheConfig, apply_h2_cache
from tiny_models import tiny_flux_transformer

torch.set_num_threads(1)
STEPS = 6


def flux_inputs(step: int) -> dict:
    """Inputs of one denoising step: the latents drift and the timestep falls, as in a sampler."""
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 64, generator=g)
    ids = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij"), -1).reshape(16, 2)
    return dict(
        hidden_states=latents * (1 - 0.04 * step) + 0.04 * step * torch.randn(1, 16, 64, generator=g),
        encoder_hidden_states=torch.randn(1, 8, 64, generator=g), pooled_projections=torch.randn(1, 64, generator=g),
        timestep=torch.tensor([1.0 - step / STEPS]), img_ids=torch.cat([torch.zeros(16, 1), ids.float()], 1),
        txt_ids=torch.zeros(8, 3), return_dict=False,
    )


def run(model: torch.nn.Module) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(**flux_inputs(step))[0] for step in range(STEPS)]


def decisions(handle) -> list[tuple]:
    return [(r.hit1, r.hit2, r.blocks_run) for r in handle.trace]


CONFIG = dict(tau1=0.33, tau2=0.4)


def test_regional_compilation_with_fullgraph_false_makes_the_same_decisions():
    eager = tiny_flux_transformer()
    eager_handle = apply_h2_cache(eager, H2CacheConfig(**CONFIG))
    expected = run(eager)
    assert {hit for hit, _, _ in decisions(eager_handle)} == {True, False}, "need hits and misses to compare"
    compiled = tiny_flux_transformer()
    handle = apply_h2_cache(compiled, H2CacheConfig(**CONFIG))
    torch._dynamo.reset()
    # The decision needs one host value per stage (a graph break), so regional compilation must allow breaks.
    compiled.compile_repeated_blocks(fullgraph=False, backend="eager")
    outputs = run(compiled)
    assert decisions(handle) == decisions(eager_handle)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(outputs, expected))


def test_regional_compilation_with_fullgraph_true_fails_at_the_decision():
    model = tiny_flux_transformer()
    apply_h2_cache(model, H2CacheConfig(**CONFIG))
    torch._dynamo.reset()
    model.compile_repeated_blocks(fullgraph=True, backend="eager")
    with pytest.raises(Exception, match="(?i)graph break|torch.compiler.disable|skip"):
        run(model)
    torch._dynamo.reset()


def test_a_lora_adapter_is_cached_and_removed_correctly():
    peft = pytest.importorskip("peft")
    model = tiny_flux_transformer()
    base = run(model)
    torch.manual_seed(1)
    model.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                      init_lora_weights=False))  # random adapter weights: the output changes
    with_lora = run(model)
    assert not torch.allclose(with_lora[0], base[0]), "the adapter must change the output"
    handle = apply_h2_cache(model, H2CacheConfig(tau1=0, tau2=0))
    assert all(torch.equal(a, b) for a, b in zip(run(model), with_lora))
    handle.remove()
    handle = apply_h2_cache(model, H2CacheConfig(tau1=1e9, tau2=1e9))
    run(model)
    assert [r.blocks_run for r in handle.trace] == [7] + [2] * (STEPS - 1)  # 3 double + 4 single blocks
    handle.remove()
    assert all(torch.equal(a, b) for a, b in zip(run(model), with_lora))
