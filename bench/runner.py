"""Runs the benchmark: prompt split, FLOP table, calibration, grid choice, warm-up, then every
(steps, prompt, seed, variant), timed. Calibration and grid choice see only the calibration prompts
(:mod:`h2cache.prompt_split`).

Work is split by (prompt, seed) across the processes ``accelerate launch`` starts;
each process writes its rows to ``<out>/shards/``, and the main process merges
them once all are done. Without ``accelerate launch`` it is one process.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from h2cache.compare import generate
from h2cache.metrics import compare_images
from h2cache.methods import (
    CalibrationStore, FlopTable, MethodTrace, apply_method, calibrate_magcache, calibrate_teacache, get_method,
    measure_flop_table, model_fingerprint, model_key,
)
from h2cache.methods.calibration import teacache_fit
from h2cache.pipelines import EMBEDDED, generation_defaults, load_pipeline
from .machine import describe_machine
from h2cache.prompt_split import PromptSplit, calibration_leaks, split_prompts
from .spec import BenchConfig, Variant, expand_variants, read_prompts

TIME_FIELDS = ("denoise_s", "total_s", "denoise_s_runs", "total_s_runs", "baseline_denoise_s",
               "baseline_total_s", "speedup_denoise", "speedup_total")


@dataclass
class TimedRun:
    image: np.ndarray
    total_s: float
    denoise_s: float
    trace: MethodTrace


def timed_run(pipe: Any, handle: Any, prompt: str, seed: int, call_args: dict[str, Any]) -> TimedRun:
    """One pipeline call: end-to-end seconds (``compare.generate``) and the denoising loop's seconds
    (first transformer call to the end of the last scheduler step)."""
    device = pipe._execution_device
    marks: dict[str, float] = {}

    def on_step(name: str, done: int, total: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        marks["last_step_end"] = time.perf_counter()

    result = generate(pipe, prompt, seed=seed, previews=False, progress=on_step, **call_args)
    denoise = marks["last_step_end"] - handle.run_started_at
    return TimedRun(result.image, result.seconds, denoise, MethodTrace(handle.trace))


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def _call_args(pipe: Any, config: BenchConfig, steps: int) -> dict[str, Any]:
    args = {**generation_defaults(pipe), **config.call_overrides, "num_inference_steps": steps}
    missing = [k for k in ("height", "width") if k not in args]
    if missing:
        raise ValueError(f"no default {' and '.join(missing)} for model {config.model!r}; pass --height and --width")
    return args


def prompt_split(config: BenchConfig) -> PromptSplit:
    """Benchmark and calibration prompts of this run (:func:`~h2cache.prompt_split.split_prompts`)."""
    calibration = read_prompts(config.calibration_prompts_file) if config.calibration_prompts_file else None
    return split_prompts(config.model, read_prompts(config.prompts_file), config.num_prompts,
                         config.calibration_prompts, calibration)


def _stale(entry: dict[str, Any] | None, split: PromptSplit, config: BenchConfig, what: str, log) -> bool:
    """Whether a stored calibration must be made again: missing, forced, or not provably made on prompts
    disjoint from the benchmark's. With ``--calibrate never`` a leak is an error, an unknown origin a warning."""
    if entry is None:
        return config.calibrate != "never"
    leaks = calibration_leaks(entry, split.benchmark)
    if config.calibrate == "never":
        if leaks:
            raise ValueError(f"the stored {what} calibration was made on benchmark prompts; run with "
                             "--calibrate auto or force to redo it on the calibration prompts")
        if leaks is None:
            log(f"WARNING: the stored {what} calibration does not record its prompts (--calibrate never keeps it)")
        return False
    if config.calibrate == "force" or leaks:
        return True
    if leaks is None:
        log(f"the stored {what} calibration does not record its prompts: calibrating again")
        return True
    return False


def ensure_calibration(pipe: Any, config: BenchConfig, store: CalibrationStore, split: PromptSplit,
                       log=print) -> dict[str, Any]:
    """Calibrate TeaCache and MagCache for this model on ``split.calibration`` where needed (``config.calibrate``,
    and never keeping numbers made on benchmark prompts); returns what was done."""
    done: dict[str, Any] = {}
    needed = {get_method(m).calibration for m in config.methods} - {None}
    if not needed:
        return done
    key, fingerprint = model_key(pipe), model_fingerprint(pipe.transformer)
    prompts = split.calibration
    if "teacache" in needed:
        for steps in config.steps:
            fit = teacache_fit(store.get(key, fingerprint, "teacache"), steps)
            if _stale(fit, split, config, f"teacache ({steps} steps)", log):
                log(f"calibrating teacache for {key} on {len(prompts)} calibration prompts at {steps} steps")
                cal = calibrate_teacache(pipe, prompts, (0,), **_call_args(pipe, config, steps))
                store.put_teacache(key, fingerprint, steps, cal)
                done.setdefault("teacache", {})[str(steps)] = cal
    if "magcache" in needed:
        ratios = dict(store.get(key, fingerprint, "magcache") or {})
        per_context = any(get_method(m).fixed.get("per_context_ratios") for m in config.methods)
        for steps in config.steps:
            entry = ratios.get(str(steps))
            missing_contexts = per_context and entry is not None and not entry.get("by_context")
            if _stale(entry, split, config, f"magcache ({steps} steps)", log) or (
                    missing_contexts and config.calibrate != "never"):
                log(f"calibrating magcache for {key} on {len(prompts)} calibration prompts at {steps} steps")
                ratios[str(steps)] = calibrate_magcache(pipe, prompts, (0,), **_call_args(pipe, config, steps))
                done.setdefault("magcache", {})[str(steps)] = ratios[str(steps)]
        if "magcache" in done:
            store.put(key, fingerprint, "magcache", ratios)
    return done


def _row(variant: Variant, steps: int, prompt_index: int, prompt: str, seed: int, runs: list[TimedRun],
         base: list[TimedRun] | None, description: str, lpips: bool) -> dict[str, Any]:
    first = runs[0]
    trace = first.trace
    deterministic = all(np.array_equal(r.image, first.image) for r in runs) and all(
        [x.blocks_run for x in r.trace] == [x.blocks_run for x in trace] for r in runs)
    row: dict[str, Any] = {
        "steps": steps, "prompt_index": prompt_index, "prompt": prompt, "seed": seed,
        "method": variant.method, "variant": variant.label, "settings": variant.kwargs,
        "description": description,
        "denoise_s": statistics.median(r.denoise_s for r in runs),
        "total_s": statistics.median(r.total_s for r in runs),
        "denoise_s_runs": [r.denoise_s for r in runs], "total_s_runs": [r.total_s for r in runs],
        "calls": len(trace), "hits": trace.hit_count(),
        "blocks_run": sum(x.blocks_run for x in trace), "blocks_total": sum(x.blocks_total for x in trace),
        "blocks_share": trace.blocks_share(), "attn_share": trace.attn_share(), "flops_share": trace.flops_share(),
        "blocks_per_call": [x.blocks_run for x in trace],
        "deterministic": deterministic,
    }
    reference = (base or runs)[0].image
    quality = compare_images(reference, first.image, lpips=lpips)
    identical = bool(np.array_equal(reference, first.image))
    row.update(mse=_mse(reference, first.image), identical=identical,
               psnr=None if identical else quality["psnr"], ssim=quality["ssim"],
               lpips=quality["lpips"], lpips_reason=quality["lpips_reason"])
    if base is not None:
        row["baseline_denoise_s"] = statistics.median(r.denoise_s for r in base)
        row["baseline_total_s"] = statistics.median(r.total_s for r in base)
    return row


def measure(pipe: Any, variant: Variant, prompt: str, seed: int, call_args: dict[str, Any], flops: FlopTable | None,
            store: CalibrationStore, repeats: int, tick=lambda: None) -> tuple[list[TimedRun], str]:
    handle = apply_method(pipe, variant.method, num_inference_steps=int(call_args["num_inference_steps"]),
                          flops=flops, calibration=store, **variant.kwargs)
    try:
        runs = []
        for _ in range(repeats):
            runs.append(timed_run(pipe, handle, prompt, seed, call_args))
            tick()
        return runs, handle.attachment.description
    finally:
        handle.remove()


def _decision_cost(pipe: Any, flops: FlopTable, device: str, repeats: int = 10,
                   fixed: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """H2-Cache's per-stage decision time with PFS on and off (``bench.overhead.decision_seconds``, which times
    the real probe hook), at this model's shapes (with the pool sizes ``--fix`` held, if any) and at FLUX.1's at
    1024x1024 (published pool sizes)."""
    from h2cache.config import H2CacheConfig
    from .overhead import FLUX_DIM, FLUX_IMAGE_TOKENS, FLUX_TEXT_TOKENS, decision_seconds
    from h2cache.pfs import pfs_kernel

    config = pipe.transformer.config
    torch_device = torch.device(device)
    shapes = [("this model", flops.image_tokens, flops.text_tokens,
               int(config.num_attention_heads * config.attention_head_dim), pipe.transformer.dtype),
              ("FLUX.1 1024px", FLUX_IMAGE_TOKENS, FLUX_TEXT_TOKENS, FLUX_DIM,
               torch.bfloat16 if torch_device.type == "cuda" else torch.float32)]
    rows = []
    pools = {k: v for k, v in (fixed or {}).items() if k in ("pool_size_stage1", "pool_size_stage2")}
    for name, image, text, dim, dtype in shapes:
        pfs = H2CacheConfig(**pools) if name == "this model" else H2CacheConfig()
        full = H2CacheConfig(full_residual_distance=True)
        on = decision_seconds(image, text, dim, torch_device, dtype, pfs, repeats)
        off = decision_seconds(image, text, dim, torch_device, dtype, full, repeats)
        rows.append({"shape": name, "image_tokens": image, "text_tokens": text, "channels": dim,
                     "dtype": str(dtype).replace("torch.", ""),
                     "kernel_stage1": pfs_kernel(image, dim, pfs.pool_size_stage1),
                     "kernel_stage2": pfs_kernel(image + text, dim, pfs.pool_size_stage2),
                     "stage1_pfs_s": on[0], "stage2_pfs_s": on[1], "stage1_full_s": off[0], "stage2_full_s": off[1]})
    return rows


def _grids_by_steps(pipe: Any, config: BenchConfig, state: Any, store: CalibrationStore, prompts: list[str],
                    flop_tables: dict[tuple, FlopTable], out: Path,
                    log) -> tuple[dict[int, dict[str, Any]], dict[str, Any] | None]:
    """Explicit grids, completed by --auto-grid's selection on `prompts` (made once on the main process,
    read by all)."""
    grids: dict[int, dict[str, Any]] = {steps: dict(config.grids) for steps in config.steps}
    if not config.auto_grid:
        return grids, None
    from .autogrid import holding, pipeline_measure, select_grids

    path = out / "auto_grid.json"
    if state.is_main_process and not _reusable_auto_grid(path, config, prompts, log):
        chosen = {}
        for steps in config.steps:
            args = _call_args(pipe, config, steps)
            measure = holding(pipeline_measure(pipe, prompts, args, store, flop_tables[_shape_key(args)]),
                              config.fixed)
            selected, record = select_grids(config.methods, config.grids, tuple(config.auto_grid), measure, log)
            chosen[str(steps)] = {"grids": selected, "methods": record}
        path.write_text(json.dumps({"targets": list(config.auto_grid), "prompts": prompts,
                                    "cost": "share of block FLOPs run",
                                    "quality": "PSNR against each calibration prompt's uncached image, seed 0",
                                    "by_steps": chosen}, indent=1))
    state.wait_for_everyone()
    auto = json.loads(path.read_text())
    for steps in config.steps:
        for method, points in auto["by_steps"][str(steps)]["grids"].items():
            grids[steps][method] = points
    return grids, auto


def _reusable_auto_grid(path: Path, config: BenchConfig, prompts: list[str], log) -> bool:
    """Under --resume, an auto grid chosen earlier for the same targets, prompts, methods and step counts is
    kept: choosing it again would cost minutes and, on a busier machine, could pick other points."""
    if not (config.resume and path.exists()):
        return False
    earlier = json.loads(path.read_text())
    wanted = {str(s) for s in config.steps}
    methods = set(config.methods) - {"none"}
    same = (earlier.get("targets") == list(config.auto_grid) and earlier.get("prompts") == prompts
            and wanted <= set(earlier.get("by_steps", {}))
            and all(methods <= set(earlier["by_steps"][s]["methods"]) | set(config.grids) for s in wanted))
    if not same:
        raise ResumeRefused(f"--resume: {path} was chosen for other targets, prompts, methods or step counts; "
                         "remove it (or --out elsewhere) to choose again")
    log(f"auto grid: kept {path} (--resume)")
    return True


def _grid_rule(config: BenchConfig, auto: dict[str, Any] | None) -> dict[str, str]:
    """Where each method's grid came from, for the report."""
    chosen = set().union(*(set(v["grids"]) for v in auto["by_steps"].values())) if auto else set()
    rules = {}
    for method in config.methods:
        if method == "none":
            continue
        if method in chosen:
            rules[method] = (f"auto: per target share {list(config.auto_grid)}, the best calibration PSNR within "
                             "5 points under it (bench/autogrid.py), + its default")
        elif method in config.grids:
            rules[method] = "explicit --grid (outside the one grid rule)"
        else:
            rules[method] = "the method's default grid (no --auto-grid)"
    return rules


def _shape_key(args: dict[str, Any]) -> tuple:
    return (args["height"], args["width"], args.get("max_sequence_length"))


@dataclass
class _Setup:
    pipe: Any
    prompts: list[str]
    store: CalibrationStore
    variants_by_steps: dict[int, list[Variant]]
    flop_tables: dict[tuple, FlopTable]
    calibrated: dict[str, Any]
    auto_grid: dict[str, Any] | None
    split: PromptSplit

    def flops_for(self, args: dict[str, Any]) -> FlopTable:
        return self.flop_tables[_shape_key(args)]


def _prepare(config: BenchConfig, state: Any, device: str, out: Path) -> _Setup:
    """Split the prompts; load the model; measure the FLOP tables; calibrate and choose grids on the main
    process, on the calibration prompts only."""
    split = prompt_split(config)
    prompts = split.benchmark
    if "none" not in config.methods:
        config.methods = ("none", *config.methods)
    pipe = load_pipeline(None if config.model == EMBEDDED else config.model, device=device)
    pipe.set_progress_bar_config(disable=True)
    store = CalibrationStore(config.calibration_file)
    log = (lambda msg: tqdm.write(f"[bench] {msg}")) if state.is_main_process else (lambda msg: None)
    flop_tables: dict[tuple, FlopTable] = {}
    for steps in config.steps:
        args = _call_args(pipe, config, steps)
        if _shape_key(args) not in flop_tables:
            shape_args = {k: v for k, v in args.items() if k != "num_inference_steps"}
            flop_tables[_shape_key(args)] = measure_flop_table(pipe, split.calibration[0], **shape_args)
    calibrated: dict[str, Any] = {}
    if state.is_main_process:
        calibrated = ensure_calibration(pipe, config, store, split, log)
    state.wait_for_everyone()
    grids_by_steps, auto_grid = _grids_by_steps(pipe, config, state, store, split.calibration[: config.auto_grid_prompts],
                                                flop_tables, out, log)
    variants_by_steps = {}
    for steps in config.steps:
        variants = expand_variants(config.methods, grids_by_steps[steps], config.fixed)
        # the uncached reference first: every other variant is scored against it
        variants_by_steps[steps] = [v for v in variants if v.method == "none"][:1] + [
            v for v in variants if v.method != "none"]
    return _Setup(pipe, prompts, store, variants_by_steps, flop_tables, calibrated, auto_grid, split)


class ResumeRefused(ValueError):
    """--resume found a stored auto grid or checkpoint made with other settings."""


class _Checkpoint:
    """This process's finished (steps, prompt, seed) items, one JSON line each, appended as each ends, so a run
    that stops (a session's end, a crash) loses at most the item it was in. The first line records what the
    rows depend on; --resume refuses a file made with other settings."""

    def __init__(self, path: Path, config: BenchConfig, setup: _Setup, world: int) -> None:
        self.path = path
        self.key = {"world": world, "variants": {str(s): [v.label for v in vs] for s, vs in setup.variants_by_steps.items()},
                    "prompts": setup.prompts, "seeds": list(config.seeds), "repeats": config.repeats,
                    "lpips": config.lpips, "call_overrides": config.call_overrides, "model": config.model}
        self.done: dict[tuple[int, int, int], list[dict[str, Any]]] = {}
        if config.resume and path.exists():
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if lines and lines[0].get("key") != self.key:
                raise ResumeRefused(f"--resume: {path} was made with other variants, prompts, seeds or repeats; "
                                 "remove it (or --out elsewhere) to start again")
            for line in lines[1:]:
                self.done[(line["steps"], line["prompt_index"], line["seed"])] = line["rows"]
        else:
            path.write_text(json.dumps({"key": self.key}) + "\n")

    def add(self, steps: int, prompt_index: int, seed: int, rows: list[dict[str, Any]]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"steps": steps, "prompt_index": prompt_index, "seed": seed, "rows": rows}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _run_items(config: BenchConfig, setup: _Setup, items: list[tuple[int, int]], rank: int,
               world: int, checkpoint: _Checkpoint) -> list[dict[str, Any]]:
    """Every (steps, prompt, seed, variant) of this process's share not already in `checkpoint`, timed
    `config.repeats` times."""
    pipe, prompts, store = setup.pipe, setup.prompts, setup.store
    todo = {s: [it for it in items if (s, *it) not in checkpoint.done] for s in config.steps}
    total = sum((config.warmup if todo[s] else 0) + len(todo[s]) * len(setup.variants_by_steps[s]) * config.repeats
                for s in config.steps)
    bar = tqdm(total=total, desc=f"bench {rank + 1}/{world}", position=rank, dynamic_ncols=True,
               disable=not config.progress)
    rows: list[dict[str, Any]] = []
    for steps in config.steps:
        args = _call_args(pipe, config, steps)
        flops = setup.flops_for(args)
        reference, *variants = setup.variants_by_steps[steps]
        if config.warmup and todo[steps]:
            measure(pipe, reference, prompts[0], config.seeds[0], args, flops, store, config.warmup, bar.update)
        for prompt_index, seed in items:
            if (steps, prompt_index, seed) in checkpoint.done:
                rows.extend(checkpoint.done[(steps, prompt_index, seed)])
                continue
            prompt = prompts[prompt_index]
            base, _ = measure(pipe, reference, prompt, seed, args, flops, store, config.repeats, bar.update)
            item = [_row(reference, steps, prompt_index, prompt, seed, base, base, "uncached", config.lpips)]
            for variant in variants:
                bar.set_postfix_str(f"{steps} steps, prompt {prompt_index}, {variant.label}", refresh=False)
                runs, description = measure(pipe, variant, prompt, seed, args, flops, store, config.repeats,
                                            bar.update)
                item.append(_row(variant, steps, prompt_index, prompt, seed, runs, base, description, config.lpips))
            checkpoint.add(steps, prompt_index, seed, item)
            rows.extend(item)
    bar.close()
    return rows


def _merge(shards: Path, world: int, setup: _Setup) -> list[dict[str, Any]]:
    merged: list[dict[str, Any]] = []
    for path in sorted(shards.glob("rank*.json")):
        with open(path) as f:
            merged.extend(json.load(f)["rows"])
    order = {(s, v.label): i for s, vs in setup.variants_by_steps.items() for i, v in enumerate(vs)}
    merged.sort(key=lambda r: (r["steps"], r["prompt_index"], r["seed"], order[(r["steps"], r["variant"])]))
    for row in merged:
        base_denoise, base_total = row.get("baseline_denoise_s"), row.get("baseline_total_s")
        row["speedup_denoise"] = base_denoise / row["denoise_s"] if base_denoise else None
        row["speedup_total"] = base_total / row["total_s"] if base_total else None
    return merged


def run_benchmark(config: BenchConfig) -> dict[str, Any] | None:
    """Run the benchmark in this process (one of several under ``accelerate launch``).

    Returns the merged results on the main process (also written to ``config.out``), ``None`` on the others.
    """
    from accelerate import PartialState

    from .report import write_outputs

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    state = PartialState(cpu=device == "cpu")
    if device != "cpu":
        device = str(state.device)
    rank, world = state.process_index, state.num_processes
    out = Path(config.out)
    shards = out / "shards"
    if state.is_main_process:
        shards.mkdir(parents=True, exist_ok=True)
        for old in [*shards.glob("rank*.json"), *([] if config.resume else shards.glob("rank*.partial.jsonl"))]:
            old.unlink()
    state.wait_for_everyone()

    setup = _prepare(config, state, device, out)
    decision_cost = None
    if state.is_main_process and config.decision_cost and any(m.startswith("h2cache") for m in config.methods):
        # Before the long part: whatever goes wrong here should not cost the hour of timed runs.
        decision_cost = _decision_cost(setup.pipe, next(iter(setup.flop_tables.values())), device,
                                       fixed=config.fixed)
    items = [(i, seed) for i in range(len(setup.prompts)) for seed in config.seeds]
    checkpoint = _Checkpoint(shards / f"rank{rank}.partial.jsonl", config, setup, world)
    with state.split_between_processes(items) as mine:
        rows = _run_items(config, setup, list(mine), rank, world, checkpoint)
    with open(shards / f"rank{rank}.json", "w") as f:
        json.dump({"rank": rank, "world": world, "rows": rows}, f)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None

    merged = _merge(shards, world, setup)
    pipe = setup.pipe
    meta = {
        "command": config.command if world == 1 else f"accelerate launch ... ({world} processes) {config.command}",
        "processes": world, "config": asdict(config), "machine": describe_machine(device),
        "model_key": model_key(pipe), "model_fingerprint": model_fingerprint(pipe.transformer),
        "call_args": {str(s): _call_args(pipe, config, s) for s in config.steps},
        "flop_tables": {f"{h}x{w}/{t}": table.as_dict() for (h, w, t), table in setup.flop_tables.items()},
        "calibration_file": str(setup.store.path), "calibrated_now": sorted(setup.calibrated),
        "variants": {str(s): [v.label for v in vs] for s, vs in setup.variants_by_steps.items()},
        "prompts": setup.prompts, "auto_grid": setup.auto_grid,
        "prompt_split": {"rule": setup.split.rule, "calibration": setup.split.calibration},
        "grid_rule": _grid_rule(config, setup.auto_grid),
    }
    if decision_cost is not None:
        meta["decision_cost"] = decision_cost
    results = write_outputs(out, meta, merged, config)
    if world == 1:  # one shard is the merged result; a sharded run keeps its shards as the record
        shutil.rmtree(shards)
    return results
