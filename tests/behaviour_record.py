"""The recorded behaviour of H2-Cache on the embedded model: decisions and images, per variant and step count.

Recorded before the library's refactor (issue 31) so that a later change to the hooks can be shown to keep
every decision, every distance and every image bit for bit. ``tests/test_behaviour_preserved.py`` reruns
the cases and compares; ``python tests/behaviour_record.py`` writes the record again (only do that for a
change that is meant to change behaviour, and say so in the commit).

Each case is one pipeline call: a prompt, a seed, a step count and an :class:`H2CacheConfig`. The record
keeps each trace record's decision fields (distances as ``repr`` strings, so equality is exact) and the
SHA-256 of the float32 image the pipeline returns, made with one thread. Bits depend on the CPU and torch,
so the test compares bits on the recording machine (``machine()``); elsewhere, decisions exactly, distances
to 1e-5 and the 8-bit image to one level.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

RECORD = Path(__file__).resolve().parent / "data" / "behaviour_record.json"
IMAGES = RECORD.with_name("behaviour_images.npz")  # 8-bit copies, for machines whose float bits differ
PROMPT = "a large red circle at the top left on a striped blue background"
SEED = 3
# The embedded model's pool sizes (space.yaml): stage 1 pools 256 image tokens with k = 2.
POOLS = {"pool_size_stage1": 128, "pool_size_stage2": 22}
GUARDS = {"warmup_steps": 3, "max_consecutive_hits": 3, "final_full_steps": 1}
# Thresholds that give a mix of hits and misses at each step count on the shipped weights.
TAUS = {28: 0.12, 50: 0.1, 100: 0.08}


def cases() -> dict[str, tuple[int, dict[str, Any]]]:
    """name -> (steps, H2CacheConfig keyword arguments)."""
    out: dict[str, tuple[int, dict[str, Any]]] = {}
    for steps, tau in TAUS.items():
        taus = {"tau1": tau, "tau2": tau}
        variants = {
            "published": {**taus, **POOLS},
            "guarded": {**taus, **POOLS, **GUARDS, "num_inference_steps": steps},
            "one-probe": {**taus, **POOLS, "skip_stage2_probe_on_hit": True},
            "forecast": {**taus, **POOLS, "forecast_residual": True},
            "guarded-forecast-probe": {**taus, **POOLS, **GUARDS, "num_inference_steps": steps,
                                       "forecast_residual": True, "forecast_probe_factor": True},
            # With FLUX.1's pool sizes this model's 256 tokens pool with k = 1: the same as no PFS.
            "no-pfs": {**taus, **POOLS, "full_residual_distance": True},
            "independent-stage2": {**taus, **POOLS, "independent_stage2": True},
        }
        for name, settings in variants.items():
            out[f"{name}@{steps}"] = (steps, settings)
    return out


_FIELDS = ("step", "context", "d1", "hit1", "d2", "hit2", "forced2", "blocks_run", "blocks_total",
           "forced_full", "probe2_skipped")


def _decisions(trace) -> list[list]:
    return [[repr(getattr(r, f)) if f in ("d1", "d2") else getattr(r, f) for f in _FIELDS] for r in trace]


def run_case(pipe, steps: int, settings: dict[str, Any]) -> dict[str, Any]:
    """One pipeline call under H2-Cache with `settings`: its decisions and its image's hash."""
    import h2cache

    defaults = {**h2cache.generation_defaults(pipe), "num_inference_steps": steps}
    with h2cache.apply_h2_cache(pipe, h2cache.H2CacheConfig(**settings)) as handle:
        image = pipe(PROMPT, **defaults, output_type="np", generator=torch.Generator().manual_seed(SEED)).images
        decisions = _decisions(handle.trace)
    image = np.ascontiguousarray(np.asarray(image, dtype=np.float32))
    return {"decisions": decisions, "image_sha256": hashlib.sha256(image.tobytes()).hexdigest(),
            "hits": sum(1 for d in decisions if d[3]), "image": image}


def machine() -> str:
    """What the bits depend on: the CPU, torch, and one thread (set by the record and the test alike)."""
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return f"{cpu} | {platform.machine()} | torch {torch.__version__}"


def main() -> None:
    import h2cache

    torch.set_num_threads(1)  # reductions split over threads round differently; many tests pin one thread
    torch.manual_seed(0)
    pipe = h2cache.load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    record = {"prompt": PROMPT, "seed": SEED, "fingerprint": _fingerprint(pipe), "machine": machine(), "cases": {}}
    images = {}
    for name, (steps, settings) in cases().items():
        result = run_case(pipe, steps, settings)
        images[name] = result.pop("image")
        record["cases"][name] = {"steps": steps, "settings": settings, **result}
        print(name, record["cases"][name]["hits"], "stage-1 hits", file=sys.stderr)
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps(record, indent=1) + "\n")
    np.savez_compressed(IMAGES, **{name: to_uint8(image) for name, image in images.items()})


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _fingerprint(pipe) -> str:
    from h2cache.methods.calibration import model_fingerprint

    return model_fingerprint(pipe.transformer)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
