"""Event handlers: generate (the API endpoint), the step scrubber, and the model picker."""

from __future__ import annotations

import csv
import html
import inspect
import json
import logging
import re
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, TypeVar

import gradio as gr
import numpy as np
import torch
from matplotlib.figure import Figure

import h2cache

from h2cache.lab import PeerMatch

from .job import JobResult, SweepResult, job_runs, on_gpu, register_models, run_job, run_sweep_job
from .models import ModelRegistry
from .plots.compute_map import compute_map_figure
from .plots.distances import distance_figure
from .scrubber import pfs_view, scrubber_slider, scrubber_state, step_view
from .serving import ClientGone, StoppableProgress, event_probe, exclusive_run, on_model_thread, release_free_memory
from .settings import AppSettings
from .target_mode import MANUAL_TEXT, MODES, calibrated_thresholds
from .plots.lab import decisions_figure, front_figure
from .views import (comparison_details, computed_mask, difference_map, guard_forced, metrics_rows, peer_details,
                    peer_label, peer_match_text, peer_rows, shown_context, summary_markdown, sweep_records, sweep_rows)
from .validation import (APP_OPTIONS, CONFIG_INPUTS, RUN_FIELDS, ComparisonRequest, validate_request,
                         validate_sweep_points, SWEEP_DEFAULT)

log = logging.getLogger("h2cache.app")
T = TypeVar("T")


@dataclass
class GenerateOutputs:
    """The generate endpoint's outputs, in the order of its output components (see ui/layout.py)."""

    summary: str
    baseline_image: np.ndarray
    cached_image: np.ndarray
    before_after: tuple[np.ndarray, np.ndarray]
    difference: np.ndarray
    metrics: list[list[str]]
    stage1_plot: Figure
    stage2_plot: Figure
    compute_map: Figure
    scrub_step: Any  # a gr.Slider update: range 1..steps, at the last step (ui/scrubber.py)
    preview_baseline: np.ndarray | None
    preview_cached: np.ndarray | None
    preview_caption: str
    pfs_stage1: np.ndarray | None
    pfs_stage2: np.ndarray | None
    pfs_table: str
    details: dict[str, Any]
    scrub_state: dict[str, Any]
    # The peer column and the decisions of every method (after the rest: API clients index by position).
    peer_image: np.ndarray | None
    peer_difference: np.ndarray | None
    peer_metrics: list[list[str]]
    decisions_plot: Figure

    def as_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))


OUTPUT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(GenerateOutputs))


def build_outputs(request: ComparisonRequest, result: JobResult, registry: ModelRegistry, diff_gain: float) -> GenerateOutputs:
    comparison, quality = result.comparison, result.quality
    baseline, cached = comparison.baseline.image, comparison.cached.image
    trace = comparison.cached.trace
    context, note = shown_context(trace)
    records = trace.for_context(context)
    split = _split_sizes(registry, request.model)
    state = scrubber_state(comparison)
    preview_b, preview_c, caption = step_view(state, request.steps)
    pfs1, pfs2, table = pfs_view(state, request.steps)
    peer = result.peer
    details = comparison_details(request, comparison, quality, result.baseline_reused)
    peer_error = client_message(Exception(result.peer_error), 400) if result.peer_error else None
    details["peer"] = peer_details(peer, result.peer_quality) or (
        {"method": request.peer, "error": peer_error} if peer_error else None)
    summary = summary_markdown(comparison, quality, result.baseline_reused)
    if peer is not None:
        summary += f"  \n**Peer: {peer_label(peer.best.method)}**, {peer_match_text(peer)}."
    elif peer_error:
        summary += f"  \n**Peer: {peer_label(request.peer)} could not run:** {peer_error}"
    return GenerateOutputs(
        summary=summary,
        baseline_image=baseline,
        cached_image=cached,
        before_after=(baseline, cached),
        difference=difference_map(baseline, cached, diff_gain),
        metrics=metrics_rows(comparison, quality, result.baseline_reused),
        stage1_plot=distance_figure(records, 1, comparison.config.tau1, note),
        stage2_plot=distance_figure(records, 2, comparison.config.tau2, note),
        compute_map=compute_map_figure(computed_mask(records, *split), split[0], note, guard_forced(records)),
        scrub_step=scrubber_slider(request.steps),
        preview_baseline=preview_b,
        preview_cached=preview_c,
        preview_caption=caption,
        pfs_stage1=pfs1,
        pfs_stage2=pfs2,
        pfs_table=table,
        details=details,
        scrub_state=state,
        peer_image=None if peer is None else peer.best.run.image,
        peer_difference=None if peer is None else difference_map(baseline, peer.best.run.image, diff_gain),
        peer_metrics=peer_rows(peer, result.peer_quality, comparison.baseline.seconds, request.peer, peer_error),
        decisions_plot=decisions_figure(records, _peer_decisions(peer, context), note),
    )


def _peer_decisions(peer: PeerMatch | None, context: str) -> tuple[str, list[bool]] | None:
    if peer is None:
        return None
    records = peer.best.trace.for_context(context) or list(peer.best.trace)
    return f"{peer_label(peer.best.method)} (peer)", [r.hit for r in records]


def _split_sizes(registry: ModelRegistry, key: str) -> tuple[int, int]:
    split = h2cache.resolve_stages(registry.get(key).transformer)
    return len(split.stage1), len(split.stage2)


# Absolute paths say how the server is laid out; clients get the message without them.
_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[\\/][^\s'\"]+")


def client_message(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, without file-system paths, at most `limit` characters."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else "no details"
    text = _PATH.sub("<path>", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def serve(request: Any, progress: Any, work: Callable[[StoppableProgress], T], what: str, failed: str) -> T:
    """Run `work` in the app's one run slot, polled for cancellation at every step; any failure becomes a
    message, and the server and the next request carry on."""
    # Gradio encodes the previous response (PNGs, JSON) after its handler returned, so the trim in
    # that handler's `finally` came too early for those buffers; this one returns them.
    release_free_memory()
    why = event_probe()
    per_step = StoppableProgress(progress, why)  # polled at every step: an abandoned request stops there
    try:
        # Plots are drawn inside the run slot too: a request cancelled while its plots are drawn must not
        # leave them running beside the next request's timed run.
        with exclusive_run(why):
            return work(per_step)
    except gr.Error:
        raise
    except ClientGone as exc:
        log.info("%s stopped: %s (%s)", what, exc, request)
        raise gr.Error(f"Stopped: {exc}.", title="Stopped", print_exception=False) from None
    except Exception as exc:
        log.exception("%s failed for %s", what, request)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise gr.Error(html.escape(f"{failed} ({type(exc).__name__}): {client_message(exc)}", quote=False),
                       title=failed) from exc
    finally:
        release_free_memory()


def make_generate(settings: AppSettings, registry: ModelRegistry) -> Callable[..., tuple[Any, ...]]:
    """The generate handler, bound to this app's settings and models."""
    def gpu_seconds(registry_id: int, request: ComparisonRequest, progress: Any = None) -> int:
        # spaces.GPU calls this with the GPU function's own arguments: the reservation follows the request.
        return settings.gpu_call_seconds(request.model, request.steps, request.width, request.height,
                                         job_runs(request))

    gpu_job = on_gpu(run_job, gpu_seconds)
    registry_id = register_models(registry)

    def generate(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Run the uncached baseline and H2-Cache with the same prompt and seed, and compare them.

        Parameters: see GENERATE_SIGNATURE. The H2CacheConfig options default to off (as in the library), so
        ten-argument calls still work.
        """
        values = GENERATE_SIGNATURE.bind(*args, **kwargs)
        values.apply_defaults()
        progress = values.arguments.pop("progress")
        request = validate_request(settings, registry.keys, values.arguments)

        def work(per_step: StoppableProgress) -> tuple[Any, ...]:
            progress(0.0, desc="Starting the baseline run")
            result = on_model_thread(gpu_job, registry_id, request, per_step)
            progress(1.0, desc="Drawing plots")
            return build_outputs(request, result, registry, settings.diff_gain).as_tuple()

        return serve(request, progress, work, "comparison", "Generation failed")

    generate.__signature__ = GENERATE_SIGNATURE  # what Gradio reads for the API's parameter names and defaults
    return generate


def _generate_signature() -> inspect.Signature:
    """The generate endpoint's parameters, from INPUT_FIELDS: H2CacheConfig's inputs as the library declares
    them (options with their defaults), the app's own switches, then Gradio's progress tracker."""
    arg = inspect.Parameter.POSITIONAL_OR_KEYWORD
    run = [inspect.Parameter(name, arg, annotation=str if name in ("prompt", "model") else float)
           for name in RUN_FIELDS]
    config = [inspect.Parameter(f.name, arg, annotation=bool if f.kind is bool else float,
                                **({"default": f.default} if f.role == "option" else {}))
              for f in CONFIG_INPUTS]
    app = [inspect.Parameter(name, arg, annotation=type(default), default=default)
           for name, default in APP_OPTIONS.items()]
    progress = inspect.Parameter("progress", arg, default=gr.Progress(), annotation=gr.Progress)
    return inspect.Signature([*run, *config, *app, progress], return_annotation=tuple)


GENERATE_SIGNATURE = _generate_signature()


SCRUB_OUTPUTS = ("preview_baseline", "preview_cached", "preview_caption", "pfs_stage1", "pfs_stage2", "pfs_table")


def show_step(step: float, state: dict[str, Any] | None) -> tuple[Any, ...]:
    """The scrubber's outputs (SCRUB_OUTPUTS) at 1-based `step`: both runs' previews and the PFS panel."""
    return (*step_view(state, step), *pfs_view(state, step))


def make_model_change(settings: AppSettings) -> Callable[[str], tuple[Any, ...]]:
    """Picking a model resets steps, size, thresholds and pool sizes to that model's defaults and ranges."""

    def on_model_change(model: str) -> tuple[Any, ...]:
        try:
            spec = settings.model(model)
        except KeyError:
            return (gr.skip(),) * 7
        size = dict(minimum=spec.min_size, maximum=spec.max_size, step=spec.size_multiple, value=spec.default_size)
        return (
            gr.Slider(minimum=spec.min_steps, maximum=spec.max_steps, value=spec.default_steps),
            gr.Slider(**size),
            gr.Slider(**size),
            gr.Slider(value=spec.tau1),
            gr.Slider(value=spec.tau2),
            gr.Number(value=spec.pool_size_stage1),
            gr.Number(value=spec.pool_size_stage2),
        )

    return on_model_change


def make_apply_target(registry: ModelRegistry) -> Callable[..., tuple[Any, Any, str]]:
    """In target mode, set tau1, tau2 and the pool sizes they were searched with from the stored calibration
    for the model, size and steps: (tau1, tau2, pool_size_stage1, pool_size_stage2, text)."""

    def apply_target(mode: str, budget: float, model: str, steps: float, width: float,
                     height: float) -> tuple[Any, Any, Any, Any, str]:
        unchanged = (gr.skip(),) * 4
        if mode != MODES[1]:
            return *unchanged, MANUAL_TEXT
        pipe = registry.loaded(model) if model in registry.keys else None
        if pipe is None:  # loading FLUX.1 here would block the page for minutes
            return *unchanged, "This model is not loaded yet: run one comparison with it first."
        choice = calibrated_thresholds(pipe, steps, width, height, budget)
        if choice.tau1 is None:
            return *unchanged, choice.text
        return (gr.Slider(value=choice.tau1), gr.Slider(value=choice.tau2), gr.Number(value=choice.pool_size_stage1),
                gr.Number(value=choice.pool_size_stage2), choice.text)

    return apply_target


SWEEP_OUTPUTS = ("sweep_status", "front_plot", "sweep_table", "sweep_files")


def sweep_plan(peer: str, points: float) -> str:
    """What a sweep will run, shown before it starts."""
    try:
        n = validate_sweep_points(points)
    except gr.Error as exc:
        return str(exc)
    methods = "H2-Cache" + (f" and {peer_label(peer)}" if peer != "none" else "")
    runs = 1 + n * (2 if peer != "none" else 1)
    return (f"The sweep runs {methods} at {n} settings each across its thresholds' range, plus H2-Cache at your "
            f"setting: **{runs} pipeline runs** (and the baseline, unless it is reused).")


def _write_sweep_files(result: SweepResult) -> list[str]:
    records = sweep_records(result.points, result.current)
    folder = Path(tempfile.mkdtemp(prefix="h2cache-sweep-"))
    keys = list(dict.fromkeys(k for r in records for k in r))
    with open(folder / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(records)
    payload = {"request": result.request.as_dict(), "baseline_reused": result.baseline_reused,
               "baseline_seconds": result.baseline.seconds, "points": records}
    (folder / "sweep.json").write_text(json.dumps(payload, indent=1, default=float))
    return [str(folder / "sweep.csv"), str(folder / "sweep.json")]


def make_sweep(settings: AppSettings, registry: ModelRegistry) -> Callable[..., tuple[Any, ...]]:
    """The sweep handler: the generate inputs, then the points per method; SWEEP_OUTPUTS."""

    def gpu_seconds(registry_id: int, request: ComparisonRequest, points: int, progress: Any = None) -> int:
        return settings.gpu_call_seconds(request.model, request.steps, request.width, request.height,
                                         job_runs(request, points))

    gpu_job = on_gpu(run_sweep_job, gpu_seconds)
    registry_id = register_models(registry)

    def run_sweep(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Sweep H2-Cache (and the chosen peer) over their thresholds for this prompt; see SWEEP_SIGNATURE."""
        values = SWEEP_SIGNATURE.bind(*args, **kwargs)
        values.apply_defaults()
        progress = values.arguments.pop("progress")
        points = validate_sweep_points(values.arguments.pop("sweep_points"))
        request = validate_request(settings, registry.keys, values.arguments)

        def work(per_step: StoppableProgress) -> tuple[Any, ...]:
            progress(0.0, desc="Starting the sweep")
            result = on_model_thread(gpu_job, registry_id, request, points, per_step)
            progress(1.0, desc="Drawing the front")
            labels = {m: peer_label(m) for m in result.points}
            title = (f"Quality against compute for this prompt, seed {request.seed}, {request.steps} steps"
                     + (" (baseline reused)" if result.baseline_reused else ""))
            counts = ", ".join(f"{labels[m]} {len(p)}" for m, p in result.points.items())
            status = (f"Sweep done: {counts} points, plus H2-Cache at your setting (starred): "
                      f"{result.current.share:.1%} of block FLOPs, {result.current.psnr:.2f} dB.")
            if result.peer_error:
                status += f" {peer_label(request.peer)} could not run: {client_message(Exception(result.peer_error), 400)}"
            return (status, front_figure(result.points, result.current, labels, title),
                    sweep_rows(result.points, result.current), _write_sweep_files(result))

        return serve(request, progress, work, "sweep", "Sweep failed")

    run_sweep.__signature__ = SWEEP_SIGNATURE
    return run_sweep


def _sweep_signature() -> inspect.Signature:
    *inputs, progress = GENERATE_SIGNATURE.parameters.values()
    points = inspect.Parameter("sweep_points", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=int,
                               default=SWEEP_DEFAULT)
    return inspect.Signature([*inputs, points, progress], return_annotation=tuple)


SWEEP_SIGNATURE = _sweep_signature()
