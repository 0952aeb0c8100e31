"""Decision by decision: the hooks against an independent re-computation of the published algorithm.

The algorithm as the paper (Sung et al., arXiv 2510.27171) describes it, and as docs/ARCHITECTURE.md
section 3 spells out for this code: per stage, the probe's residual is pooled (PFS) and compared by
relative L1 with the reference from the stage's last miss; below the threshold the stage's cached
residual replaces its other blocks, and a stage-1 hit makes stage 2 hit too.

The test captures each probe block's inputs, recomputes the probe's raw output by calling the block
class's own forward (bypassing every hook), and replays the algorithm with its own state.
"""

from __future__ import annotations

import pytest
import torch

from h2cache import H2CacheConfig, apply_h2_cache, pfs_distance, pfs_thumbnail
from tiny_models import tiny_flux_pipeline

torch.set_num_threads(1)


def raw_residual(block, kwargs, both_streams: bool):
    enc_out, hid_out = type(block).forward(block, **kwargs)
    hid_res = hid_out - kwargs["hidden_states"]
    if not both_streams:
        return hid_res, (hid_out, enc_out)
    return torch.cat([enc_out - kwargs["encoder_hidden_states"], hid_res], dim=1), (hid_out, enc_out)


class Replay:
    """The published algorithm, written out once more with its own per-context state."""

    def __init__(self, cfg: H2CacheConfig):
        self.cfg = cfg
        self.state: dict[str, dict] = {}

    def decide(self, context: str, stage: int, signal: torch.Tensor | None, forced: bool):
        st = self.state.setdefault(context, {0: None, 1: None})
        if forced:
            return None, True
        pool = self.cfg.pool_size_stage1 if stage == 0 else self.cfg.pool_size_stage2
        tau = self.cfg.tau1 if stage == 0 else self.cfg.tau2
        thumb = pfs_thumbnail(signal, pool)
        d = None if st[stage] is None else float(pfs_distance(st[stage], thumb))
        hit = d is not None and d < tau
        if not hit:
            st[stage] = thumb
        return d, hit


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0], ids=["no-cfg", "true-cfg"])
def test_decisions_and_reused_residuals_follow_the_design(cfg_scale):
    pipe = tiny_flux_pipeline(double=3, single=4)
    t = pipe.transformer
    s1_probe, s1_tail = t.transformer_blocks[0], t.transformer_blocks[-1]
    s2_probe = t.single_transformer_blocks[0]
    kwargs = dict(prompt="a small blue square at the left", height=32, width=32, num_inference_steps=10,
                  max_sequence_length=16, output_type="pt", negative_prompt="", true_cfg_scale=cfg_scale)

    # Thresholds at the median distance of an all-miss run give a mix of hits and misses.
    probe = apply_h2_cache(pipe, H2CacheConfig(tau1=0, tau2=0))
    pipe(**kwargs, generator=torch.Generator().manual_seed(0))
    d1s = sorted(r.d1 for r in probe.trace if r.d1 is not None)
    d2s = sorted(r.d2 for r in probe.trace if r.d2 is not None)
    probe.remove()
    cfg = H2CacheConfig(tau1=d1s[len(d1s) // 2] * 1.5, tau2=d2s[len(d2s) // 2] * 1.5)

    calls = []  # per transformer call: captured block inputs/outputs
    t.register_forward_pre_hook(lambda m, a, kw: calls.append({}), with_kwargs=True)
    s1_probe.register_forward_pre_hook(lambda m, a, kw: calls[-1].__setitem__("p1", raw_residual(m, kw, False)), with_kwargs=True)
    s1_tail.register_forward_hook(lambda m, a, kw, out: calls[-1].__setitem__("t1", out), with_kwargs=True)
    s2_probe.register_forward_pre_hook(lambda m, a, kw: calls[-1].__setitem__("p2", (kw, raw_residual(m, kw, True))), with_kwargs=True)

    handle = apply_h2_cache(pipe, cfg)
    pipe(**kwargs, generator=torch.Generator().manual_seed(0))
    trace = list(handle.trace)
    assert len(trace) == len(calls) == 10 * (2 if cfg_scale > 1 else 1)

    replay = Replay(cfg)
    last_tail_residual = {}
    n1, n2 = len(t.transformer_blocks), len(t.single_transformer_blocks)
    for record, call in zip(trace, calls):
        signal1, (probe_hid, probe_enc) = call["p1"]
        d1, hit1 = replay.decide(record.context, 0, signal1, forced=False)
        assert (record.d1 is None) == (d1 is None) and record.hit1 == hit1
        if d1 is not None:
            assert record.d1 == pytest.approx(d1, rel=1e-6)
        p2_kwargs, (signal2, _) = call["p2"]
        if hit1:
            # Stage 2 receives the probe output plus the residual cached at the last stage-1 miss.
            res_hid, res_enc = last_tail_residual[record.context]
            torch.testing.assert_close(p2_kwargs["hidden_states"], probe_hid + res_hid)
            torch.testing.assert_close(p2_kwargs["encoder_hidden_states"], probe_enc + res_enc)
        else:
            tail_enc, tail_hid = call["t1"]
            last_tail_residual[record.context] = (tail_hid - probe_hid, tail_enc - probe_enc)
        d2, hit2 = replay.decide(record.context, 1, signal2, forced=hit1)
        assert record.hit2 == hit2 and record.forced2 == hit1 and (record.d2 is None) == (d2 is None)
        if d2 is not None:
            assert record.d2 == pytest.approx(d2, rel=1e-6)
        expected_blocks = 2 if hit1 else (n1 + 1 if hit2 else n1 + n2)
        assert record.blocks_run == expected_blocks

    assert any(r.hit1 for r in trace) and any(not r.hit1 for r in trace[2:])
    assert any(r.hit2 and not r.forced2 for r in trace) or any(not r.hit2 for r in trace[2:])
