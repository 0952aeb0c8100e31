"""python -m bench: CLI, outputs, reproducibility, and sharding over 2 CPU processes with accelerate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import BenchConfig, expand_variants, parse_config, parse_grid, read_prompts
from bench.runner import TIME_FIELDS
from h2cache.methods.calibration import prompt_hashes
from h2cache.pipelines import EMBEDDED_MODEL_DIR

from embedded_facts import EMBEDDED

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from tiny_models import tiny_flux_pipeline

    path = tmp_path_factory.mktemp("tiny-flux")
    tiny_flux_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    # two prompts to score; the last two are held out for calibration (--calibration-prompts 2)
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("# four prompts\na large red circle at the center on a striped blue background\n\n"
                    "a small green square at the top on a noisy black background\n"
                    "a small white triangle at the left on a plain purple background\n"
                    "a large orange diamond at the right on a gradient gray background\n")
    return path


def tiny_args(model_dir, prompts, out, calibration, *extra):
    return ["--model", str(model_dir), "--prompts", str(prompts), "--steps", "5", "--seeds", "0", "1",
            "--height", "16", "--width", "16", "--max-sequence-length", "16", "--repeats", "2", "--warmup", "1",
            "--methods", "none", "h2cache", "fbcache", "teacache", "h2cache-no-pfs",
            "--grid", "h2cache:tau1=0.05,0.5:tau2=0.1,0.5", "--grid", "fbcache:threshold=0.05,0.5",
            "--grid", "teacache:threshold=0.1,1.0", "--grid", "h2cache-no-pfs:tau1=0.5:tau2=0.5",
            "--calibration", str(calibration), "--calibration-prompts", "2", "--no-lpips", "--no-progress",
            "--out", str(out), *extra]


def without_times(rows):
    return [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in rows]


def test_help_lists_methods_and_grids():
    out = subprocess.run([sys.executable, "-m", "bench", "--help"], capture_output=True, text=True,
                         env=ENV, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    for text in ("--prompts", "--steps", "--seeds", "--methods", "--grid", "--warmup", "--repeats",
                 "h2cache:tau1=", "fbcache", "teacache", "magcache", "taylorseer", "accelerate launch"):
        assert text in out.stdout


def test_grid_parsing_checks_names_and_ranges():
    assert parse_grid("fbcache:threshold=0.1,0.2") == ("fbcache", {"threshold": (0.1, 0.2)})
    assert parse_grid("taylorseer:cache_interval=2:lite=true") == (
        "taylorseer", {"cache_interval": (2,), "lite": (True,)})
    with pytest.raises(ValueError, match="fbcache.threshold must be a number in"):
        parse_grid("fbcache:threshold=-1")
    with pytest.raises(ValueError, match="has no setting 'tau'"):
        parse_grid("h2cache:tau=0.1")
    with pytest.raises(ValueError, match="unknown method"):
        parse_grid("blockcache:threshold=0.1")
    with pytest.raises(SystemExit):
        parse_config(["--grid", "fbcache:threshold=abc"])
    labels = [v.label for v in expand_variants(["none", "h2cache"], {"h2cache": {"tau1": (0.1, 0.2), "tau2": (0.3,)}})]
    assert labels == ["none", "h2cache(tau1=0.1,tau2=0.3)", "h2cache(tau1=0.2,tau2=0.3)"]
    # Naming a method twice adds points (pairs that are not a product) rather than replacing the first grid.
    config = parse_config(["--methods", "none", "h2cache", "--grid", "h2cache:tau1=0.1:tau2=0.1",
                           "--grid", "h2cache:tau1=0.3:tau2=0.3,0.4"])
    labels = [v.label for v in expand_variants(config.methods, config.grids)]
    assert labels == ["none", "h2cache(tau1=0.1,tau2=0.1)", "h2cache(tau1=0.3,tau2=0.3)", "h2cache(tau1=0.3,tau2=0.4)"]


def test_fixed_settings_are_checked_and_reach_only_the_methods_that_declare_them(capsys):
    config = parse_config(["--methods", "none", "h2cache", "fbcache", "--fix", "pool_size_stage1=128",
                           "pool_size_stage2=22"])
    assert config.fixed == {"pool_size_stage1": 128, "pool_size_stage2": 22}
    labels = [v.label for v in expand_variants(config.methods, {"h2cache": {"tau1": (0.1,), "pool_size_stage2": (7,)},
                                                                  "fbcache": {"threshold": (0.1,)}}, config.fixed)]
    # a grid's own value wins over --fix; a method without the setting is left alone
    assert labels == ["none", "h2cache(pool_size_stage1=128,pool_size_stage2=7,tau1=0.1)", "fbcache(threshold=0.1)"]
    for argv, message in ((["--methods", "none", "fbcache", "--fix", "pool_size_stage1=128"], "no method in --methods"),
                          (["--methods", "none", "h2cache", "--fix", "pool_size_stage1=0"], "pool_size_stage1"),
                          (["--fix", "tau1"], "KEY=VALUE")):
        with pytest.raises(SystemExit):
            parse_config(argv)
        assert message in capsys.readouterr().err


def test_shipped_prompt_sets():
    embedded = read_prompts(ROOT / "bench/prompts/embedded.txt")
    assert len(embedded) >= 16
    from embedded_model.scenes import parse_prompt

    assert all(parse_prompt(p).is_held_out() for p in embedded)  # never seen in training
    recheck = read_prompts(ROOT / "bench/prompts/embedded_recheck.txt")
    assert recheck == embedded[8:] and len(recheck) >= 16  # the second held-out set: none of the first 8
    third = read_prompts(ROOT / "bench/prompts/embedded_third.txt")
    assert third == embedded[16:] and len(third) >= 8  # the third: none of the first two sets' 16
    text = read_prompts(ROOT / "bench/prompts/cute_text.txt")
    assert 70 <= len(text) <= 90 and all('"' in p for p in text)


def test_tiny_benchmark_writes_everything_and_reproduces(tiny_model_dir, prompts_file, tmp_path):
    from bench import main

    calibration = tmp_path / "calibration.json"
    first = main(tiny_args(tiny_model_dir, prompts_file, tmp_path / "a", calibration))
    out = tmp_path / "a"
    for name in ("results.json", "results.md", "summary.csv", "samples.csv", "comparisons.csv", "psnr_vs_flops.png",
                 "ssim_vs_flops.png", "speedup_vs_psnr.png", "speedup_vs_ssim.png", "h2cache_heatmap.png"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "speedup_vs_lpips.png").exists()  # no LPIPS, no stand-in
    results = json.loads((out / "results.json").read_text())
    stored = json.loads(calibration.read_text())["models"][str(tiny_model_dir)]
    assert set(stored) >= {"fingerprint", "teacache"}
    # calibration ran on the held-out prompts only, and says so
    benchmark, held_out = results["meta"]["prompts"], results["meta"]["prompt_split"]["calibration"]
    assert benchmark == read_prompts(prompts_file)[:2] and held_out == read_prompts(prompts_file)[2:]
    assert set(stored["teacache"]["5"]["prompt_hashes"]) == set(prompt_hashes(held_out))
    rows = results["rows"]
    variants = 1 + 4 + 2 + 2 + 1
    assert len(rows) == 2 * 2 * variants  # prompts x seeds x variants
    assert all(r["deterministic"] for r in rows)
    for r in rows:
        assert 0 < r["blocks_share"] <= 1 and r["calls"] == 5 and len(r["denoise_s_runs"]) == 2
        assert r["lpips"] is None and r["lpips_reason"] == "not requested"
        assert r["denoise_s"] < r["total_s"]
    none = [r for r in rows if r["method"] == "none"]
    assert all(r["identical"] and r["blocks_share"] == 1.0 for r in none)
    assert any(r["hits"] > 0 for r in rows if r["method"] == "h2cache")
    md = (out / "results.md").read_text()
    assert "Equal compute" in md and "Decision cost" in md and "h2cache(tau1=0.5,tau2=0.5)" in md
    assert "PSNR worst" in md and "SSIM median" in md
    # 2 prompts x 2 seeds: too few for a verdict, and the report says so loudly
    assert results["samples"]["enough"] is False and "WARNING" in md and "8 prompts x 2 seeds" in md
    summary = {s["variant"]: s for s in results["summary"]}
    assert all({"psnr_median", "psnr_worst", "ssim_median", "ssim_worst"} <= set(s) for s in summary.values())
    assert {r["subject_method"] for r in results["comparisons"]} == {"h2cache"}
    assert {r["peer_method"] for r in results["comparisons"]} == {"fbcache", "teacache"}

    # same seed, same numbers (wall time aside); calibration is reused, not redone
    second = main(tiny_args(tiny_model_dir, prompts_file, tmp_path / "b", calibration))
    assert second["meta"]["calibrated_now"] == [] and first["meta"]["calibrated_now"] == ["teacache"]
    assert without_times(second["rows"]) == without_times(rows)


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not installed")
def test_accelerate_shards_over_two_cpu_processes(tiny_model_dir, prompts_file, tmp_path):
    calibration = tmp_path / "calibration.json"
    args = tiny_args(tiny_model_dir, prompts_file, tmp_path / "sharded", calibration, "--device", "cpu",
                     "--no-plots", "--no-decision-cost")
    # On a machine without GPUs, --multi_gpu is what makes accelerate start torchrun-style processes.
    command = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "bench", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    sharded = json.loads((tmp_path / "sharded" / "results.json").read_text())
    assert sharded["meta"]["processes"] == 2
    shards = sorted((tmp_path / "sharded" / "shards").glob("rank*.json"))
    assert [json.loads(p.read_text())["rank"] for p in shards] == [0, 1]
    assert all(json.loads(p.read_text())["rows"] for p in shards)

    from bench import main

    single = main(tiny_args(tiny_model_dir, prompts_file, tmp_path / "single", calibration, "--no-plots",
                            "--no-decision-cost"))
    assert without_times(sharded["rows"]) == without_times(single["rows"])


def test_embedded_model_smoke(tmp_path):
    from bench import main

    model = EMBEDDED_MODEL_DIR  # ships with the project: a missing model fails here
    assert (model / "model_index.json").exists(), f"embedded model missing at {model}"
    results = main(["--model", str(model), "--num-prompts", "1", "--steps", "6", "--repeats", "1", "--warmup", "0",
                    "--height", "64", "--width", "64", "--max-sequence-length", "16",
                    "--methods", "none", "h2cache", "fbcache", "taylorseer",
                    "--grid", "h2cache:tau1=0.3:tau2=0.5", "--grid", "fbcache:threshold=0.3",
                    "--grid", "taylorseer:cache_interval=2", "--no-lpips", "--no-progress", "--no-plots",
                    "--no-decision-cost", "--calibration", str(tmp_path / "cal.json"), "--out", str(tmp_path / "e")])
    summary = {s["method"]: s for s in results["summary"]}
    assert summary["none"]["blocks_share"] == 1.0
    assert summary["taylorseer"]["flops_share"] < 1.0
    table = next(iter(results["meta"]["flop_tables"].values()))
    assert len(table["blocks"]) == EMBEDDED.blocks and table["image_tokens"] == EMBEDDED.image_tokens(64)


def test_auto_grid_gives_every_method_one_point_per_target(tiny_model_dir, prompts_file, tmp_path):
    from bench import main

    targets = (0.8, 0.5)
    results = main(["--model", str(tiny_model_dir), "--prompts", str(prompts_file), "--num-prompts", "1",
                    "--steps", "5", "--height", "16", "--width", "16", "--max-sequence-length", "16",
                    "--repeats", "1", "--warmup", "0", "--methods", "none", "h2cache", "fbcache",
                    "h2cache-one-probe", "--grid", "fbcache:threshold=0.3", "--auto-grid", *map(str, targets),
                    "--fix", "pool_size_stage2=4",
                    "--calibration-prompts", "2", "--auto-grid-prompts", "1", "--calibration", str(tmp_path / "cal.json"),
                    "--no-lpips", "--no-progress", "--no-plots", "--no-decision-cost", "--out", str(tmp_path / "auto")])
    auto = results["meta"]["auto_grid"]
    chosen = auto["by_steps"]["5"]
    assert set(chosen["grids"]) == {"h2cache", "h2cache-one-probe"}  # fbcache's grid was given
    # the scan saw one calibration prompt, held out from the benchmark
    assert auto["prompts"] == read_prompts(prompts_file)[-2:-1] and not set(auto["prompts"]) & set(results["meta"]["prompts"])
    for method in ("h2cache", "h2cache-one-probe"):  # the one-probe variant has its own scan, not a copy
        found = chosen["methods"][method]
        assert [p["target"] for p in found["targets"]] == list(targets)
        assert {"tau1": 0.15, "tau2": 0.22} in chosen["grids"][method]  # the default is always on the curve
        curve = found["curve"]  # every point scored on the calibration prompt, by line and value
        assert curve[0]["share"] == 1.0 and curve[0]["median_psnr"] > 30
        assert {c["line"] for c in curve} == {0, 1, 2}
        assert [(c["line"], c["value"]) for c in curve] == sorted((c["line"], c["value"]) for c in curve)
        for point in found["targets"]:  # the one rule: in the window under the target, or flagged
            assert point["off_target"] or point["target"] - 0.05 - 1e-9 <= point["share"] <= point["target"]
    rules = results["meta"]["grid_rule"]
    assert rules["fbcache"].startswith("explicit") and rules["h2cache"].startswith("auto")
    labels = results["meta"]["variants"]["5"]
    assert "fbcache(threshold=0.3)" in labels
    # --fix holds a setting for the methods that declare it, and only for them
    assert all("pool_size_stage2=4" in label for label in labels if label.startswith("h2cache"))
    assert results["meta"]["config"]["fixed"] == {"pool_size_stage2": 4}
    assert len(labels) == 1 + 1 + len(chosen["grids"]["h2cache"]) + len(chosen["grids"]["h2cache-one-probe"])


def test_flux_scale_check_pins_block_patterns_and_exactness(tmp_path):
    """The FLUX-shaped timing check (tiny layout on the CPU): threshold 0 gives the uncached latents bit for
    bit, and the extreme thresholds give exactly the block counts the algorithm's cost rules predict (a hit
    runs the two probes, a miss every block)."""
    import json

    from bench import flux_scale

    steps = 5
    assert flux_scale.main(["--config", "tiny", "--device", "cpu", "--steps", str(steps), "--repeats", "1",
                            "--warmup", "0", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    rows = {r["label"]: r for r in result["rows"]}
    double, single = flux_scale.CONFIGS["tiny"]["num_layers"], flux_scale.CONFIGS["tiny"]["num_single_layers"]
    blocks = double + single
    assert result["arguments"]["blocks"] == blocks

    def share(per_later_call: int) -> float:  # the first call always runs every block
        return (blocks + (steps - 1) * per_later_call) / (blocks * steps)

    assert rows["no cache"]["blocks_share"] == 1.0
    for label in ("h2cache, tau1 = tau2 = 0 (hooks only)", "fbcache, threshold 0 (hooks only)"):
        assert rows[label]["blocks_share"] == 1.0
        assert rows[label]["matches_uncached"] is True
    assert rows["h2cache, stage-2 reuse only"]["blocks_share"] == pytest.approx(share(double + 1))
    assert rows["h2cache, full reuse"]["blocks_share"] == pytest.approx(share(2))
    assert rows["fbcache, full reuse"]["blocks_share"] == pytest.approx(share(1))
    assert rows["h2cache one probe (option), full reuse"]["blocks_share"] == pytest.approx(share(1))
    # Guards at 5 steps: call 0 computes (ceil(0.2 * 5) = 1 warm-up step), 1-3 reuse (cap 3), 4 is the last.
    guarded = (2 * blocks + 3 * 2) / (blocks * steps)
    assert rows["h2cache guarded (options), full reuse"]["blocks_share"] == pytest.approx(guarded)
    assert "| h2cache, full reuse |" in (tmp_path / "result.md").read_text()


def test_union_judges_subjects_against_fronts_over_every_run(tiny_model_dir, prompts_file, tmp_path):
    """`python -m bench.union`: two runs of one image set that measured other guard settings give one front per
    peer; a variant both runs measured counts once; runs on other seeds, or with other numbers for the same
    variant, are refused with the reason."""
    import contextlib
    import csv
    import io

    from bench import main
    from bench.union import main as union_main
    from bench.union import unite

    calibration = tmp_path / "calibration.json"

    def run(out, *extra, seeds=("0", "1")):
        main(["--model", str(tiny_model_dir), "--prompts", str(prompts_file), "--steps", "5", "--seeds", *seeds,
              "--height", "16", "--width", "16", "--max-sequence-length", "16", "--repeats", "1", "--warmup", "0",
              "--methods", "none", "h2cache-forecast", "fbcache-guarded",
              "--grid", "h2cache-forecast:tau1=0.05,0.5:tau2=0.5",
              "--grid", "fbcache-guarded:threshold=0.05,0.5", "--calibration", str(calibration),
              "--calibration-prompts", "2", "--no-lpips", "--no-progress", "--no-plots", "--no-decision-cost",
              "--out", str(tmp_path / out), *extra])
        return tmp_path / out

    default = run("default")
    light = run("light", "--fix", "max_consecutive_hits=1", "retention_ratio=0.0")
    summary = unite([default, light])
    variants = [s["variant"] for s in summary]
    assert len(variants) == len(set(variants))
    guarded = [s for s in summary if s["method"] == "fbcache-guarded"]
    assert len(guarded) == 4  # two thresholds under each guard setting
    assert sum(s["method"] == "h2cache-forecast" for s in summary) == 2  # measured in both runs, counted once

    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert union_main([str(default), str(light), "--subjects", "h2cache-forecast", "--peers", "fbcache-guarded"]) == 0
    text = printed.getvalue()
    assert "h2cache-forecast @ 5 steps, 30%-85% of FLOPs:" in text
    assert sum("| fbcache-guarded |" in line for line in text.splitlines()) == 2  # one row per subject point
    # --only judges one configuration: here the points with tau1 = 0.05 (the others are left out, peers kept).
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert union_main([str(default), str(light), "--subjects", "h2cache-forecast", "--peers", "fbcache-guarded",
                           "--only", "tau1=0.05"]) == 0
    rows = [line for line in printed.getvalue().splitlines() if "| fbcache-guarded |" in line]
    assert len(rows) == 1 and "tau1=0.05," in rows[0]
    with pytest.raises(SystemExit):
        union_main([str(default), "--subjects", "h2cache-forecast", "--only", "tau=0.05"])

    other_seeds = run("other-seeds", seeds=("2", "3"))
    with pytest.raises(ValueError, match="not run on the same model, prompts and seeds"):
        unite([default, other_seeds])
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    (tampered / "results.md").write_text((light / "results.md").read_text())
    rows = list(csv.DictReader((light / "summary.csv").open()))
    for row in rows:
        if row["method"] == "h2cache-forecast":
            row["mse"] = str(float(row["mse"] or 0) * 2 + 1)
    with (tampered / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(ValueError, match="did not score the same images"):
        unite([default, tampered])
    # Other weights (fingerprint) are refused; other timing settings (repeats) are not a different image set.
    import re

    other_model = tmp_path / "other-model"
    other_model.mkdir()
    (other_model / "summary.csv").write_text((light / "summary.csv").read_text())
    report = (light / "results.md").read_text()
    (other_model / "results.md").write_text(re.sub(r"fingerprint `\w+`", "fingerprint `0000`", report))
    with pytest.raises(ValueError, match="not run on the same model"):
        unite([default, other_model])
    (other_model / "results.md").write_text(report.replace("repeats 1", "repeats 3"))
    assert len(unite([default, other_model])) == len(summary)


def test_score_points_scores_settings_on_calibration_prompts_only(capsys):
    """`python -m bench.score_points` on the embedded model: one table row per point, with the --fix settings
    held where the method declares them; a point with a setting its method lacks, or settings that are not
    a JSON object, is refused with the reason."""
    from bench.score_points import main

    assert main(['h2cache|{"tau1": 0.3, "tau2": 0.3}', "fbcache", "--steps", "3", "--prompts", "1",
                 "--fix", "pool_size_stage1=128"]) == 0
    out = capsys.readouterr().out
    assert "1 calibration prompts, seed 0, 3 steps; fixed: {'pool_size_stage1': 128}" in out
    rows = [line for line in out.splitlines() if line.startswith(("| h2cache |", "| fbcache |"))]
    assert len(rows) == 2
    share = float(rows[0].split("|")[3].strip().rstrip("%"))
    assert 0 < share < 100  # tau 0.3 reuses something at 3 steps
    for bad, reason in (('h2cache|{"tau": 1}', "has no setting 'tau'"), ("h2cache|[1]", "must be a JSON object")):
        with pytest.raises(SystemExit):
            main([bad])
        assert reason in capsys.readouterr().err


def test_resume_runs_only_the_items_a_stopped_run_lacks(tiny_model_dir, prompts_file, tmp_path, monkeypatch,
                                                        capsys):
    import bench.runner as runner
    from bench import main

    def args(out, *extra):
        return ["--model", str(tiny_model_dir), "--prompts", str(prompts_file), "--steps", "5", "--seeds", "0", "1",
                "--height", "16", "--width", "16", "--max-sequence-length", "16", "--repeats", "1",
                "--warmup", "0", "--methods", "none", "h2cache", "fbcache", "--auto-grid", "0.6",
                "--auto-grid-prompts", "1", "--calibration-prompts", "2", "--calibration", str(tmp_path / "cal.json"),
                "--no-lpips", "--no-progress", "--no-plots", "--no-decision-cost", "--out", str(out), *extra]

    whole = main(args(tmp_path / "whole"))
    items = 2 * 2  # prompts x seeds
    per_item = len(whole["rows"]) // items
    real, calls = runner.measure, []

    def stopping(*a, **k):  # the session ends in the third item
        calls.append(a[1].label)
        if len(calls) == 2 * per_item + 1:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(runner, "measure", stopping)
    with pytest.raises(KeyboardInterrupt):
        main(args(tmp_path / "stopped"))
    partial = tmp_path / "stopped" / "shards" / "rank0.partial.jsonl"
    assert len(partial.read_text().splitlines()) == 1 + 2  # the key, then two finished items

    with pytest.raises(SystemExit):  # other settings: refused, not mixed
        main(args(tmp_path / "stopped", "--resume", "--seeds", "0", "1", "2"))
    assert "was made with other variants, prompts, seeds" in capsys.readouterr().err
    calls.clear()
    monkeypatch.setattr(runner, "measure", lambda *a, **k: (calls.append(a[1].label), real(*a, **k))[1])
    resumed = main(args(tmp_path / "stopped", "--resume"))
    assert len(calls) == 2 * per_item  # the two missing items, nothing else (the auto grid was kept too)
    assert without_times(resumed["rows"]) == without_times(whole["rows"])
    assert not (tmp_path / "stopped" / "shards").exists()
