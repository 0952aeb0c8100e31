"""The page: inputs on the left, images and metrics on the right, plots, step scrubber, About."""

from __future__ import annotations

from typing import Any

import gradio as gr

from h2cache import ConfigField, config_fields
from h2cache.pipelines import EMBEDDED

from .callbacks import (OUTPUT_FIELDS, SCRUB_OUTPUTS, SWEEP_OUTPUTS, make_apply_target, make_generate,
                        make_model_change, make_sweep, show_step, sweep_plan)
from .pfs_panel import EMPTY_TABLE
from .target_mode import MANUAL_TEXT, MODES, target_report
from .models import ModelRegistry
from .settings import AppSettings, Limits
from .validation import APP_OPTIONS, OPTION_INPUTS, PEER_CHOICES, SWEEP_DEFAULT, SWEEP_POINTS, app_bounds, make_validator
from .views import HEADERS, PEER_HEADERS, SWEEP_HEADERS, peer_label

ABOUT = """
**What H2-Cache does.** A diffusion transformer runs all of its blocks at every denoising step,
although from one step to the next many blocks change their output only a little. H2-Cache
skips blocks whose work can be reused, in two stages: the early blocks that settle the layout
(stage 1, *structure*) and the later blocks that refine detail (stage 2, *detail*).

**How it decides.** Each stage first runs only its first block, the *probe*. The change this
block makes to the features is average-pooled into a small thumbnail (*pooled feature
summarization*, PFS) and compared with the thumbnail from the last step where the stage ran in
full. If the relative L1 distance is below the stage's threshold (τ1 or τ2), the rest of the
stage is skipped and the residual it added last time is added again. When stage 1 is reused,
stage 2 is reused as well without measuring (a *forced* hit), so such a step costs only the two
probe blocks.

**Options (under Advanced, off by default).** Three *guards* make a step compute every block
whatever the distances say: the first steps (warm-up), the last steps, and the step after a run
of reusing steps (a cap on consecutive hits). The plots mark these steps as forced by a guard.
*One probe per stage-1 hit* skips stage 2's probe as well, so a reused step costs one block.

**The trade-off.** Larger thresholds reuse more and run faster, but the image drifts further from
the uncached baseline. With both thresholds at 0 nothing is reused and the two images are
identical. The plots below show every decision; the step scrubber shows where the cached run
departs from the baseline.
"""


def about_markdown(model_label: str, stage_split: str) -> str:
    return f"{ABOUT}\n**Loaded model:** {model_label}  \n**Stage split:** {stage_split}\n"


IMAGE_HEIGHT = 256
STATE_TTL_SECONDS = 3600

INTRO = (
    "One click runs the same prompt, seed, size and step count twice: the uncached **baseline** and "
    "**H2-Cache**. Compare the images, see every caching decision per step and stage, and what reuse "
    "costs in quality. Open *About H2-Cache* at the bottom for how it works."
)


def _image(label: str, elem_id: str) -> gr.Image:
    # PNG, not Gradio's default WebP: what you see is what was generated, pixel for pixel.
    return gr.Image(label=label, type="numpy", format="png", interactive=False, elem_id=elem_id,
                    elem_classes=["pixelated", "upscaled"], height=IMAGE_HEIGHT, buttons=["download", "fullscreen"])


def config_input(f: ConfigField, limits: Limits, value: Any) -> gr.components.Component:
    """The widget of one H2CacheConfig field, from the library's declaration of it (label, help, range).

    Fields counted in steps get no maximum here: the step count can change, so Generate checks them
    (ui/validation.py).
    """
    common = dict(label=f.label, value=value, elem_id=f.name.replace("_", "-"), info=f.help)
    if f.kind is bool:
        return gr.Checkbox(**common)
    bounds = app_bounds(f, limits, steps=None)
    if f.unit == "threshold":
        return gr.Slider(minimum=bounds[0], maximum=bounds[1], step=0.001, **common)
    low, high = bounds if bounds else (f.low, None)
    return gr.Number(precision=0, minimum=low, maximum=high, **common)


def build_demo(settings: AppSettings, registry: ModelRegistry) -> gr.Blocks:
    spec = settings.model(registry.default_key)
    defaults, limits = settings.defaults, settings.limits
    c: dict[str, Any] = {}  # output components by GenerateOutputs field name

    # Output files (PNGs) older than an hour are deleted every ten minutes, so the disk does not fill.
    with gr.Blocks(title=settings.title, delete_cache=(600, 3600)) as demo:
        gr.Markdown(f"# {settings.title}\n{INTRO}")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=320):
                prompt = gr.Textbox(label="Prompt", value=defaults.prompt, lines=2, elem_id="prompt",
                                    info=f"At most {limits.prompt_max_chars} characters. The embedded model knows "
                                         "'a <size> <colour> <shape> at the <position> on a <texture> <colour> background'.")
                model = gr.Dropdown(label="Model", choices=[(s.label, s.key) for s in registry.specs],
                                    value=registry.default_key, elem_id="model")
                with gr.Row():
                    seed = gr.Number(label="Seed", value=defaults.seed, precision=0, minimum=0,
                                     maximum=limits.seed_max, elem_id="seed")
                    steps = gr.Slider(label="Steps", minimum=spec.min_steps, maximum=spec.max_steps, step=1,
                                      value=spec.default_steps, elem_id="steps")
                with gr.Row():
                    size = dict(minimum=spec.min_size, maximum=spec.max_size, step=spec.size_multiple, value=spec.default_size)
                    width = gr.Slider(label="Width", elem_id="width", **size)
                    height = gr.Slider(label="Height", elem_id="height", **size)
                published = {f.name: f for f in config_fields("published")}
                tau1 = config_input(published["tau1"], limits, spec.tau1)
                tau2 = config_input(published["tau2"], limits, spec.tau2)
                with gr.Group():
                    mode = gr.Radio(list(MODES), value=MODES[0], label="Thresholds", elem_id="threshold-mode",
                                    info="target compute: τ1 and τ2 from a stored calibration (h2cache.calibrate)")
                    budget = gr.Slider(label="Compute budget: share of blocks to run", minimum=0.3, maximum=0.9,
                                       step=0.05, value=0.5, elem_id="budget")
                    target_info = gr.Markdown(MANUAL_TEXT, elem_id="target-info")
                peer = gr.Dropdown(label="Peer at the same compute", elem_id="peer",
                                   choices=[("none", "none"), *((peer_label(p), p) for p in PEER_CHOICES[1:])],
                                   value=APP_OPTIONS["peer"],
                                   info="another cache, run after H2-Cache with its threshold searched (a few runs) "
                                        "until it spends H2-Cache's share of block FLOPs on this image")
                with gr.Accordion("Advanced", open=False):
                    pool1 = config_input(published["pool_size_stage1"], limits, spec.pool_size_stage1)
                    pool2 = config_input(published["pool_size_stage2"], limits, spec.pool_size_stage2)
                    gr.Markdown("Options beyond the published algorithm (off by default):")
                    counts = [f for f in OPTION_INPUTS if f.kind is not bool]
                    with gr.Row():  # the counts side by side, the switches below them
                        made = {f.name: config_input(f, limits, f.default) for f in counts}
                    made.update({f.name: config_input(f, limits, f.default) for f in OPTION_INPUTS if f not in counts})
                    options = [made[f.name] for f in OPTION_INPUTS]  # INPUT_FIELDS order
                    gr.Markdown("The app:")
                    reuse = gr.Checkbox(label="Reuse the baseline", value=APP_OPTIONS["reuse_baseline"],
                                        elem_id="reuse-baseline",
                                        info="a click that changes only H2-Cache's settings takes the uncached run "
                                             "from the last one with the same model, prompt, seed, size and steps "
                                             "(its time is the time it took then); off: run it again, for timing")
                generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2, min_width=480):
                c["summary"] = gr.Markdown("Press **Generate** to compare.", label="Summary", elem_id="summary")
                with gr.Row():
                    c["baseline_image"] = _image("Baseline (no cache)", "baseline-image")
                    c["cached_image"] = _image("H2-Cache", "cached-image")
                    c["before_after"] = gr.ImageSlider(label="Before / after (drag)", format="png", type="numpy",
                                                       interactive=False, elem_id="before-after",
                                                       elem_classes=["pixelated"], height=IMAGE_HEIGHT)
                with gr.Row():
                    c["difference"] = _image(f"|H2-Cache − baseline| × {settings.diff_gain:g}", "difference-image")
                    c["metrics"] = gr.Dataframe(headers=HEADERS, label="Metrics (cached image against the baseline)",
                                                interactive=False, elem_id="metrics", scale=2, wrap=True,
                                                column_widths=["28%", "22%", "50%"], max_height=1000, buttons=["copy"])
        with gr.Group(elem_id="peer-column"):
            gr.Markdown("### The peer, at H2-Cache's share of compute", elem_classes=["section-title"])
            with gr.Row():
                c["peer_image"] = _image("Peer", "peer-image")
                c["peer_difference"] = _image(f"|peer − baseline| × {settings.diff_gain:g}", "peer-difference")
                c["peer_metrics"] = gr.Dataframe(headers=PEER_HEADERS, label="Peer (against the baseline)",
                                                 interactive=False, elem_id="peer-metrics", scale=2, wrap=True,
                                                 column_widths=["35%", "65%"], max_height=1000)
        gr.Examples(
            label="Examples (embedded model, a few seconds each on a CPU)",
            examples=[[e.prompt, e.seed, e.steps, e.size, e.size, e.tau1, e.tau2] for e in settings.examples]
            if registry.default_key == EMBEDDED else [],
            inputs=[prompt, seed, steps, width, height, tau1, tau2], cache_examples=False,
        )
        with gr.Row():
            c["stage1_plot"] = gr.Plot(label="Stage 1 decisions", format="png", elem_id="stage1-plot")
            c["stage2_plot"] = gr.Plot(label="Stage 2 decisions", format="png", elem_id="stage2-plot")
        c["compute_map"] = gr.Plot(label="Compute map", format="png", elem_id="compute-map")
        c["decisions_plot"] = gr.Plot(label="Per-step decisions: H2-Cache and the peer", format="png",
                                      elem_id="decisions-plot")
        with gr.Group(elem_id="sweep"):
            gr.Markdown("### Sweep: quality against compute for this prompt", elem_classes=["section-title"])
            with gr.Row():
                sweep_points = gr.Slider(label="Settings per method", minimum=SWEEP_POINTS[0], maximum=SWEEP_POINTS[1],
                                         step=1, value=SWEEP_DEFAULT, elem_id="sweep-points", scale=2)
                sweep_button = gr.Button("Run the sweep", elem_id="sweep-run", scale=1)
                stop_button = gr.Button("Stop", variant="stop", elem_id="sweep-stop", scale=1)
            s: dict[str, Any] = {}
            s["sweep_status"] = gr.Markdown(sweep_plan(APP_OPTIONS["peer"], SWEEP_DEFAULT), label="Sweep status",
                                          elem_id="sweep-status")
            s["front_plot"] = gr.Plot(label="Quality against compute", format="png", elem_id="front-plot")
            s["sweep_table"] = gr.Dataframe(headers=SWEEP_HEADERS, label="Sweep points", interactive=False,
                                            elem_id="sweep-table", wrap=True, max_height=600)
            s["sweep_files"] = gr.File(label="Sweep results (CSV, JSON)", file_count="multiple", interactive=False,
                                       elem_id="sweep-files")
        with gr.Group():
            gr.Markdown("### Step scrubber: the predicted clean image after each step", elem_classes=["section-title"])
            c["scrub_step"] = gr.Slider(label="Step", minimum=1, maximum=spec.default_steps, step=1,
                                        value=spec.default_steps, elem_id="scrub-step")
            c["preview_caption"] = gr.Markdown("Run a comparison to scrub through its steps.", label="Step caption",
                                                elem_id="preview-caption")
            with gr.Row():
                c["preview_baseline"] = _image("Baseline at this step", "preview-baseline")
                c["preview_cached"] = _image("H2-Cache at this step", "preview-cached")
            gr.Markdown("#### What pooled feature summarization (PFS) compared at this step",
                        elem_classes=["section-title"])
            for stage, name in ((1, "Stage 1 (structure)"), (2, "Stage 2 (detail)")):
                c[f"pfs_stage{stage}"] = gr.Image(
                    label=f"{name}: |probe residual| per image token · PFS thumbnail · reference · |difference|",
                    type="numpy", format="png", interactive=False, elem_id=f"pfs-stage{stage}",
                    elem_classes=["pixelated"], height=180, buttons=["download", "fullscreen"])
            c["pfs_table"] = gr.Markdown(EMPTY_TABLE, label="PFS numbers", elem_id="pfs-table")
        with gr.Accordion("Details (JSON: request, timings, metrics, full trace)", open=False):
            c["details"] = gr.JSON(label="Details", elem_id="details")
        with gr.Accordion("About H2-Cache", open=False, elem_id="about"):
            gr.Markdown(about_markdown(spec.label, registry.stage_split(registry.default_key)))
        # A key into the server's bounded preview store plus a few numbers per step (ui/scrubber.py);
        # dropped after an hour, even for API sessions, which are never closed.
        c["scrub_state"] = gr.State(time_to_live=STATE_TTL_SECONDS)

        inputs = [prompt, model, seed, steps, width, height, tau1, tau2, pool1, pool2, *options, reuse, peer]  # INPUT_FIELDS order
        generated = gr.on(
            triggers=[generate_button.click, prompt.submit],
            fn=make_generate(settings, registry),
            inputs=inputs,
            outputs=[c[name] for name in OUTPUT_FIELDS],
            api_name="generate",
            validator=make_validator(settings, registry.keys),
            # Raw payloads reach our own checks, which name the field and its range
            # (component preprocessing would reject with generic messages first).
            preprocess=False,
            # One comparison at a time: another request's runs or post-processing (plots, PNG encoding)
            # beside a timed run would distort its wall-clock speedup.
            concurrency_limit=1,
            concurrency_id="model-runs",
        )
        swept = sweep_button.click(make_sweep(settings, registry), inputs=[*inputs, sweep_points],
                                   outputs=[s[name] for name in SWEEP_OUTPUTS], api_name="sweep", preprocess=False,
                                   concurrency_limit=1, concurrency_id="model-runs")
        # The handler stops at its next step once its event is gone from the queue (ui/serving.py).
        stop_button.click(None, cancels=[swept], api_visibility="private", queue=False)
        gr.on(triggers=[peer.change, sweep_points.change], fn=sweep_plan, inputs=[peer, sweep_points],
              outputs=[s["sweep_status"]], api_name="sweep_plan", api_visibility="private", queue=False,
              show_progress="hidden")
        c["scrub_step"].input(show_step, inputs=[c["scrub_step"], c["scrub_state"]],
                              outputs=[c[name] for name in SCRUB_OUTPUTS],
                              api_visibility="private", queue=False, show_progress="hidden")
        target = dict(fn=make_apply_target(registry), inputs=[mode, budget, model, steps, width, height],
                      outputs=[tau1, tau2, pool1, pool2, target_info], api_visibility="private", queue=False)
        model.change(make_model_change(settings), inputs=[model], outputs=[steps, width, height, tau1, tau2, pool1, pool2],
                     api_visibility="private", queue=False).then(**target, api_name="apply_target_for_model")
        gr.on(triggers=[mode.change, budget.release, steps.release, width.release, height.release], **target,
              api_name="apply_target")
        generated.success(target_report, inputs=[mode, budget, c["details"]], outputs=[target_info],
                          api_name="report_target", api_visibility="private", queue=False)
    return demo
