"""H2-Cache on a context-parallel transformer (issue 29): every rank decides as one process does.

Two CPU processes (gloo) run diffusers' Ulysses attention, degree 2, on a tiny FLUX transformer and on the
embedded pipeline; a third runs the same without parallelism. Their traces, PFS views and outputs are compared:
identical across the ranks, equal to the one process up to float rounding. A run with the reduction taken
out shows the ranks would otherwise measure other distances. Ring attention is not run: it needs the
attention's log-sum-exp, which diffusers' native (CPU) attention does not return.

The workers are this file run as a script (``python tests/test_context_parallel.py --worker OUT``); the
launch has a timeout, so a hang fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 300
PROMPT = "a large red circle at the top left on a striped blue background"
# The embedded model as the app runs it (space.yaml's pool sizes).
EMBEDDED = {"tau1": 0.12, "tau2": 0.12, "pool_size_stage1": 128, "pool_size_stage2": 22}
# The tiny transformer: 16 image and 8 text tokens, 8 and 4 per rank, 32 channels. "aligned" pools whole shards
# (k = 4 at both stages); "straddling" has windows across shards (stage 1: k = 3 over 8 tokens a rank; stage 2:
# k = 8 over the two ranks' 4 text tokens).
TINY = {"aligned": {"pool_size_stage1": 4, "pool_size_stage2": 6},
        "straddling": {"pool_size_stage1": 5, "pool_size_stage2": 3}}
TINY_TAUS = {"tau1": 0.2, "tau2": 0.2}
TINY_STEPS = 8
# Peers whose decisions do not read a rank's shard (h2cache.parallel says why); FirstBlockCache and TeaCache
# do, so their ranks may skip apart and leave the attention all-to-alls unmatched: they are not run here.
PEERS = {"magcache": {}, "taylorseer": {}, "seacache": {"threshold": 0.1}}


# ----------------------------------------------------------------------------------------------- the workers


@contextlib.contextmanager
def _cpu_device_lookup():
    """diffusers' ``ModelMixin._resolve_parallel_config`` picks ``rank % torch.accelerator.device_count()``, which
    divides by zero on a machine without accelerators; one device keeps every rank on the CPU."""
    count = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = count


def _parallel(transformer, world: int, **options) -> None:
    if world > 1:
        from diffusers import ContextParallelConfig

        with _cpu_device_lookup():
            transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world, **options))


def _records(trace) -> list[tuple]:
    return [(r.step, r.context, r.d1, r.hit1, r.d2, r.hit2, r.forced2, r.blocks_run, r.blocks_total) for r in trace]


def _views(views) -> list[dict]:
    return [{"meta": (v.step, v.context, v.stage, v.num_tokens, v.num_channels, v.image_tokens, v.pool_size, v.kernel,
                      v.thumbnail_shape, v.distance, v.reference_step, v.hit),
             "thumbnail": torch.from_numpy(v.thumbnail.copy()), "magnitude": torch.from_numpy(v.image_magnitude.copy())}
            for v in views]


def _tiny_inputs(step: int) -> dict:
    """A hand-driven trajectory: inputs drifting smoothly, so that some calls reuse and some do not."""
    g = torch.Generator().manual_seed(0)
    hidden, drift = torch.randn(1, 16, 64, generator=g), torch.randn(1, 16, 64, generator=g)
    text = torch.randn(1, 8, 64, generator=g)
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    return {"hidden_states": hidden + 0.03 * step * drift, "encoder_hidden_states": text,
            "pooled_projections": torch.ones(1, 64), "timestep": torch.tensor([1.0 - 0.02 * step]),
            "img_ids": torch.stack([torch.zeros(16), rows.flatten(), cols.flatten()], dim=1),
            "txt_ids": torch.zeros(8, 3), "return_dict": False}


def _without_reduction(transformer) -> None:
    """Put the published reducer, less its refusal of a context-parallel transformer, in the hooks: H2-Cache as
    it would be with the reduction taken out."""
    from h2cache.hooks import H2ProbeHook, H2RootHook
    from h2cache.seams import LocalPFS

    class Unreduced(LocalPFS):
        def check(self, transformer, config) -> None:
            pass

    unreduced = Unreduced()
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        for hook in (registry.hooks.values() if registry is not None else ()):
            if isinstance(hook, (H2ProbeHook, H2RootHook)):
                hook.reducer = unreduced


def _tiny_runs(world: int) -> dict:
    from tiny_models import tiny_flux_transformer

    import h2cache

    transformer = tiny_flux_transformer(double=3, single=4).eval()
    _parallel(transformer, world)
    out = {}
    cases = {name: {**TINY_TAUS, **pools} for name, pools in TINY.items()}
    # tau = 0: no call reuses anything (so the ranks never skip apart), every call from the second measures
    cases["never-reuse"] = {"tau1": 0.0, "tau2": 0.0, **TINY["aligned"]}
    cases["never-reuse-unreduced"] = cases["never-reuse"]
    for name, settings in cases.items():
        if name.endswith("unreduced") and world == 1:
            continue
        with h2cache.apply_h2_cache(transformer, h2cache.H2CacheConfig(**settings)) as handle:
            if name.endswith("unreduced"):
                _without_reduction(transformer)
            handle.pfs.enable()
            outputs = []
            with torch.no_grad():
                for step in range(TINY_STEPS):
                    outputs.append(transformer(**_tiny_inputs(step))[0])
            out[name] = {"trace": _records(handle.trace), "views": _views(handle.pfs), "output": torch.cat(outputs)}
    return out


def _embedded_runs(world: int) -> dict:
    import h2cache
    from h2cache.methods import apply_method

    pipe = h2cache.load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    # The embedded model has 3 attention heads: Ulysses degree 2 needs diffusers' "anything" mode, which also
    # shards with tensor_split, so the reducer gathers the ranks' token counts.
    _parallel(pipe.transformer, world, ulysses_anything=True)

    def generate():
        return pipe(PROMPT, **h2cache.generation_defaults(pipe), output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images

    with h2cache.apply_h2_cache(pipe, h2cache.H2CacheConfig(**EMBEDDED)) as handle:
        handle.pfs.enable()
        image = generate()
        out = {"h2cache": {"trace": _records(handle.trace), "views": _views(handle.pfs), "output": image}}
    for name, settings in PEERS.items():
        with apply_method(pipe, name, num_inference_steps=28, **settings) as handle:
            image = generate()
            out[name] = {"calls": [(r.blocks_run, r.attn_run) for r in handle.trace], "output": image}
    return out


def worker(out: Path) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)  # two cores shared with others
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    if world > 1:
        # "cpu:gloo": diffusers gathers the anything-mode sizes on the CPU only when the backend names it.
        dist.init_process_group("cpu:gloo", rank=rank, world_size=world)
    try:
        results = {"tiny": _tiny_runs(world), "embedded": _embedded_runs(world)}
    finally:
        if world > 1:
            dist.destroy_process_group()
    torch.save(results, out / f"world{world}-rank{rank}.pt")


# ----------------------------------------------------------------------------------------------- the launch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """One process and a context-parallel pair, launched together; ``{(world, rank): results}``."""
    out = tmp_path_factory.mktemp("context_parallel")
    port = _free_port()
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    launched = {}
    for world, rank in ((1, 0), (2, 0), (2, 1)):
        log = open(out / f"world{world}-rank{rank}.log", "w")
        launched[(world, rank)] = (subprocess.Popen(
            [sys.executable, __file__, "--worker", str(out)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**env, "WORLD_SIZE": str(world), "RANK": str(rank)}), log)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        # A rank that fails leaves its peer waiting in a collective: stop waiting as soon as any fails.
        while time.monotonic() < deadline and any(p.poll() is None for p, _ in launched.values()):
            if any(p.poll() not in (None, 0) for p, _ in launched.values()):
                break
            time.sleep(0.2)
    finally:
        for process, log in launched.values():
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
    failed = {key: (out / f"world{key[0]}-rank{key[1]}.log").read_text()[-3000:]
              for key, (process, _) in launched.items() if process.returncode != 0}
    if failed:
        pytest.fail(f"context-parallel workers failed, or hung and were killed (limit {TIMEOUT_S} s):\n"
                    + "\n".join(f"--- world {w} rank {r}:\n{log}" for (w, r), log in failed.items()))
    return {key: torch.load(out / f"world{key[0]}-rank{key[1]}.pt", weights_only=False) for key in launched}


# ----------------------------------------------------------------------------------------------- the checks


def _decisions(records: list[tuple]) -> list[tuple]:
    return [tuple(v for i, v in enumerate(r) if i not in (2, 4)) for r in records]


def _relative_gap(a: float | None, b: float | None) -> float:
    assert (a is None) == (b is None)
    return 0.0 if a is None else abs(a - b) / max(abs(a), 1e-12)


def _assert_like_one_process(one: dict, ranks: list[dict]) -> dict:
    """Ranks identical to each other; decisions as one process's, distances to 1e-5, outputs to 1e-4."""
    for other in ranks[1:]:
        assert other["trace"] == ranks[0]["trace"]  # floats included: the reduced distance is the same number
        assert [v["meta"] for v in other["views"]] == [v["meta"] for v in ranks[0]["views"]]
        for mine, theirs in zip(other["views"], ranks[0]["views"]):
            assert torch.equal(mine["thumbnail"], theirs["thumbnail"])
            assert torch.equal(mine["magnitude"], theirs["magnitude"])
        assert torch.equal(other["output"], ranks[0]["output"])
    cp = ranks[0]
    assert _decisions(cp["trace"]) == _decisions(one["trace"])
    gaps = [_relative_gap(a[i], b[i]) for a, b in zip(one["trace"], cp["trace"]) for i in (2, 4)]
    assert max(gaps) < 1e-5
    assert [v["meta"][:9] for v in cp["views"]] == [v["meta"][:9] for v in one["views"]]
    view_gap = max(max((a["thumbnail"] - b["thumbnail"]).abs().max().item(),
                       (a["magnitude"] - b["magnitude"]).abs().max().item())
                   for a, b in zip(one["views"], cp["views"]))
    assert view_gap < 1e-5
    output_gap = (one["output"] - cp["output"]).abs().max().item()
    assert output_gap < 1e-4
    return {"distance": max(gaps), "view": view_gap, "output": output_gap}


@pytest.mark.parametrize("case", sorted(TINY))
def test_tiny_flux_ranks_decide_as_one_process(runs, case):
    one, cp = runs[(1, 0)]["tiny"][case], [runs[(2, r)]["tiny"][case] for r in (0, 1)]
    gaps = _assert_like_one_process(one, cp)
    print(f"tiny {case}, 1 vs 2 processes: distances {gaps['distance']:.1e} relative, views {gaps['view']:.1e}, "
          f"output {gaps['output']:.1e}")
    # structure hits, detail hits of its own, and misses: the ranks skipped blocks in step on every path
    assert any(r[3] for r in one["trace"]) and any(not r[3] and r[5] for r in one["trace"])
    assert not all(r[3] for r in one["trace"][1:])


def test_the_cases_are_aligned_and_straddling_as_named():
    from h2cache.parallel import shard_layout

    def shared(pools: dict, stage: int) -> tuple:
        streams = (((8, 8), True),) if stage == 1 else (((4, 4), True), ((8, 8), True))
        return shard_layout(streams, 0, 32, pools[f"pool_size_stage{stage}"]).shared

    assert not shared(TINY["aligned"], 1) and not shared(TINY["aligned"], 2)
    assert shared(TINY["straddling"], 1) and shared(TINY["straddling"], 2)


def test_embedded_pipeline_ranks_decide_as_one_process(runs):
    one, cp = runs[(1, 0)]["embedded"]["h2cache"], [runs[(2, r)]["embedded"]["h2cache"] for r in (0, 1)]
    gaps = _assert_like_one_process(one, cp)
    assert len(one["trace"]) == 28 and any(r[3] for r in one["trace"]) and any(r[5] is False for r in one["trace"])
    print(f"embedded, 1 vs 2 processes: distances {gaps['distance']:.1e} relative, views {gaps['view']:.1e}, "
          f"image {gaps['output']:.1e}")


@pytest.mark.parametrize("peer", sorted(PEERS))
def test_peers_that_decide_by_schedule_or_input_agree_across_ranks(runs, peer):
    one, cp = runs[(1, 0)]["embedded"][peer], [runs[(2, r)]["embedded"][peer] for r in (0, 1)]
    assert cp[0]["calls"] == cp[1]["calls"] == one["calls"]
    assert any(blocks < 24 or attention < 24 for blocks, attention in one["calls"])  # it did reuse something
    assert torch.equal(cp[0]["output"], cp[1]["output"])
    assert (cp[0]["output"] - one["output"]).abs().max().item() < 1e-4


def test_without_the_reduction_ranks_measure_their_own_shards(runs):
    """What the reduction is for: the same run with the published (local) reducer on each rank."""
    one = runs[(1, 0)]["tiny"]["never-reuse"]
    reduced = [runs[(2, r)]["tiny"]["never-reuse"] for r in (0, 1)]
    unreduced = [runs[(2, r)]["tiny"]["never-reuse-unreduced"] for r in (0, 1)]
    _assert_like_one_process(one, reduced)

    def distances(run: dict) -> list[float]:
        return [r[i] for r in run["trace"] for i in (2, 4) if r[i] is not None]

    assert len(distances(one)) == 2 * (TINY_STEPS - 1)
    off = [max(_relative_gap(a, b) for a, b in zip(distances(one), distances(rank))) for rank in unreduced]
    assert min(off) > 1e-2
    assert distances(unreduced[0]) != distances(unreduced[1])
    print(f"without the reduction, ranks' distances off one process's by up to {off[0]:.0%} and {off[1]:.0%}")


# ----------------------------------------------------------------------------------------------- one process


def test_shard_layouts_reassemble_the_global_thumbnail():
    """Over random shardings (even and uneven, split and whole streams, windows across shards), the rows the
    ranks count, with straddling rows summed, are one process's thumbnail, each row counted once."""
    from h2cache.parallel import pool_shard, shard_layout
    from h2cache.pfs import pfs_thumbnail

    rng = random.Random(0)
    torch.manual_seed(0)
    for _ in range(200):
        world, even = rng.choice([2, 3, 4]), rng.random() < 0.5
        # even: chunk (diffusers' default sharder); uneven: tensor_split (the "anything" modes)
        text_tokens = rng.choice([0, 1, 3, 8]) * world if even else rng.choice([0, world, 5, 9])
        image_tokens = rng.randint(1, 12) * world if even else rng.randint(world, 40)
        channels, pool = rng.randint(1, 20), rng.choice([None, 1, 2, 3, 5, 7, 22])
        splits = (rng.random() < 0.8, rng.random() < 0.9)
        chunks, streams = [], []
        for tokens, split in zip((text_tokens, image_tokens), splits):
            if tokens:
                tensor = torch.randn(2, tokens, channels)
                parts = list(tensor.tensor_split(world, dim=1)) if split else [tensor] * world
                chunks.append(parts)
                streams.append((tuple(p.shape[1] for p in parts), split))
        whole = torch.cat([torch.cat(parts, 1) if s[1] else parts[0] for parts, s in zip(chunks, streams)], 1)
        layouts = [shard_layout(tuple(streams), rank, channels, pool) for rank in range(world)]
        buffers = [pool_shard(torch.cat([parts[rank] for parts in chunks], 1), layout)
                   for rank, layout in enumerate(layouts)]
        summed = sum(b[:, list(layout.shared)] for b, layout in zip(buffers, layouts))
        rows = torch.zeros(2, layouts[0].rows, layouts[0].columns)
        for b, layout, owned in zip(buffers, layouts, layouts[0].owned):
            b[:, list(layout.shared)] = summed
            rows[:, list(owned)] = b[:, list(layout.kept)]
        assert sorted(r for owned in layouts[0].owned for r in owned) == list(range(layouts[0].rows))
        expected = whole.float() if pool is None else pfs_thumbnail(whole, pool)[:, 0]
        torch.testing.assert_close(rows, expected, rtol=1e-5, atol=1e-6)


def _fake_context_parallel(transformer) -> None:
    """What ``enable_parallelism`` records, as far as H2-Cache reads it, without a process group."""
    mesh = SimpleNamespace(size=lambda: 2)
    transformer._parallel_config = SimpleNamespace(context_parallel_config=SimpleNamespace(_flattened_mesh=mesh))


def test_one_process_keeps_the_published_reducer():
    from tiny_models import tiny_flux_transformer

    import h2cache
    from h2cache.hooks import H2ProbeHook
    from h2cache.seams import LocalPFS

    transformer = tiny_flux_transformer(double=2, single=2)
    with h2cache.apply_h2_cache(transformer):
        probes = [h for m in transformer.modules() for h in getattr(getattr(m, "_diffusers_hook", None), "hooks",
                                                                    {}).values() if isinstance(h, H2ProbeHook)]
        assert len(probes) == 2 and all(type(p.reducer) is LocalPFS for p in probes)


def test_parallelism_enabled_after_apply_is_refused_not_left_to_hang():
    from tiny_models import tiny_flux_transformer

    import h2cache

    transformer = tiny_flux_transformer(double=2, single=2)
    with h2cache.apply_h2_cache(transformer):
        _fake_context_parallel(transformer)
        with pytest.raises(ValueError, match="apply_h2_cache after enable_parallelism"):
            with torch.no_grad():
                transformer(**_tiny_inputs(0))


def test_an_option_that_needs_the_whole_thumbnail_is_refused_under_context_parallelism():
    from tiny_models import tiny_flux_transformer

    import h2cache

    transformer = tiny_flux_transformer(double=2, single=2)
    _fake_context_parallel(transformer)
    config = h2cache.H2CacheConfig(forecast_residual=True, forecast_probe_factor=True)
    with pytest.raises(ValueError, match="forecast_probe_factor=False"):
        h2cache.apply_h2_cache(transformer, config)
    assert not h2cache.is_h2_cache_applied(transformer)


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    worker(Path(sys.argv[2]))
