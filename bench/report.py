"""From per-sample rows to the summary, the verdicts against each peer's front, and the files the CLI writes.

Aggregation per (steps, variant): speedup is the ratio of summed per-sample median times (baseline over
method); quality is the PSNR of the mean MSE (samples identical to the baseline count as MSE 0 instead of an
infinite PSNR) with the median and worst sample's PSNR and SSIM beside it (:mod:`.quality`); SSIM, LPIPS and
the shares are means. Verdicts: :mod:`.verdicts`.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from .machine import machine_line
from .quality import BASES, aggregate_quality
from .spec import BenchConfig
from .verdicts import (
    compare_with_fronts, cost, exclusion_counts, flag_degenerate, sample_sufficiency, verdict_counts,
)

def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (steps, variant), in the order the variants ran."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    order: list[tuple[int, str]] = []
    for row in rows:
        key = (row["steps"], row["variant"])
        if key not in groups:
            order.append(key)
        groups[key].append(row)
    summary = []
    for key in sorted(order, key=lambda k: (k[0], order.index(k))):
        group = groups[key]
        first = group[0]
        flops = [r["flops_share"] for r in group]
        base_d = sum(r.get("baseline_denoise_s") or 0 for r in group)
        base_t = sum(r.get("baseline_total_s") or 0 for r in group)
        summary.append({
            "steps": key[0], "method": first["method"], "variant": key[1], "settings": first["settings"],
            "samples": len(group),
            "blocks_share": _mean([r["blocks_share"] for r in group]),
            "attn_share": _mean([r["attn_share"] for r in group]),
            "flops_share": None if any(f is None for f in flops) else _mean(flops),
            "hit_rate": sum(r["hits"] for r in group) / max(1, sum(r["calls"] for r in group)),
            "denoise_s": _mean([r["denoise_s"] for r in group]), "total_s": _mean([r["total_s"] for r in group]),
            "speedup_denoise": base_d / sum(r["denoise_s"] for r in group) if base_d else None,
            "speedup_total": base_t / sum(r["total_s"] for r in group) if base_t else None,
            **aggregate_quality(group),
            "identical": all(r["identical"] for r in group),
            "lpips_reason": next((r["lpips_reason"] for r in group if r["lpips_reason"]), None),
            "deterministic": all(r["deterministic"] for r in group),
            "description": first["description"],
        })
    return summary


BUDGETS = (0.8, 0.6, 0.45, 0.3)


def best_within_budget(summary: list[dict[str, Any]], budgets: tuple[float, ...] = BUDGETS) -> list[dict[str, Any]]:
    """Per step count, method and budget: the variant with the lowest MSE (highest PSNR) among the
    non-degenerate ones running at most that share of FLOPs; a Pareto view that needs no matching."""
    out = []
    for steps in sorted({s["steps"] for s in summary}):
        methods = list(dict.fromkeys(s["method"] for s in summary if s["steps"] == steps and s["method"] != "none"))
        for method in methods:
            for budget in budgets:
                fits = [s for s in summary if s["steps"] == steps and s["method"] == method
                        and cost(s) <= budget + 1e-9 and not s.get("degenerate")]
                best = min(fits, key=lambda s: s["mse"]) if fits else None
                out.append({"steps": steps, "method": method, "budget": budget,
                            "variant": best["variant"] if best else None,
                            "cost": cost(best) if best else None,
                            "blocks_share": best["blocks_share"] if best else None,
                            "psnr": best["psnr"] if best else None, "ssim": best["ssim"] if best else None,
                            "psnr_worst": best["psnr_worst"] if best else None,
                            "lpips": best["lpips"] if best else None,
                            "speedup_denoise": best["speedup_denoise"] if best else None})
    return out


# -- files ----------------------------------------------------------------------------------------------

def _num(value: Any, digits: int = 3, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    if percent:
        return f"{100 * value:.1f}%"
    return f"{value:.{digits}f}"


def _psnr_text(psnr: float | None, identical: bool = False) -> str:
    if psnr is None:
        return "∞ (identical)" if identical else "n/a"
    return f"{psnr:.2f}"


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    flat = {}
    for k, v in row.items():
        flat[k] = json.dumps(v) if isinstance(v, (dict, list)) else v
    return flat


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow(_flat(r))


def _relative(path: str) -> str:
    """Paths inside the repository as the commands write them (the report is read on other machines)."""
    root = Path(__file__).resolve().parents[1]
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


def _psnr_cell(psnr: float | None, identical: bool = False) -> str:
    return "∞" if psnr is None and identical else _psnr_text(psnr)


def _header(meta: dict[str, Any], summary: list[dict[str, Any]], config: BenchConfig,
            verdicts: dict[str, Any]) -> list[str]:
    lpips_reason = next((s["lpips_reason"] for s in summary if s["lpips"] is None and s["lpips_reason"]), None)
    lines = ["# h2cache benchmark results", ""]
    warning = verdicts["samples"]["warning"]
    if warning:
        lines += [f"> **WARNING: {warning}.**", ""]
    split = meta.get("prompt_split") or {}
    lines += [
        f"- Command: `{meta['command']}` ({meta['processes']} process(es))",
        f"- Model: `{meta['model_key']}` (fingerprint `{meta['model_fingerprint']}`)",
        f"- Machine: {machine_line(meta['machine'])}",
        f"- Prompts: {len(meta['prompts'])} from `{_relative(config.prompts_file)}`; seeds {list(config.seeds)}; "
        f"warm-up {config.warmup}, repeats {config.repeats} (median)",
    ]
    if split:
        lines.append(f"- Calibration prompts (TeaCache/MagCache calibration and the auto grid): "
                     f"{len(split.get('calibration', []))}, {split.get('rule', '')}; disjoint from the benchmark "
                     f"prompts (checked)")
    rules = meta.get("grid_rule") or {}
    if rules:
        lines.append("- Grids: " + "; ".join(f"`{m}` {r}" for m, r in rules.items()))
    lines += [
        "- Cost: share of block FLOPs run (blocks where no FLOP table was measured); blocks run beside it",
        "- Speedup: baseline over method, summed per-sample median wall time of the denoising loop "
        "(first transformer call to last scheduler step); end to end in its own column",
        "- Quality against the uncached image of the same prompt and seed: PSNR of the mean MSE, and the "
        "median and worst sample's PSNR; SSIM mean, median and worst; "
        f"LPIPS: {'mean (AlexNet)' if lpips_reason is None else 'n/a — ' + lpips_reason}",
        "",
    ]
    return lines


def _summary_tables(summary: list[dict[str, Any]]) -> list[str]:
    lines = []
    for steps in sorted({s["steps"] for s in summary}):
        lines += [f"## {steps} steps", "",
                  "| method | variant | FLOPs run | blocks run | hit rate | speedup (loop) | speedup (e2e) "
                  "| PSNR dB (mean MSE) | PSNR median | PSNR worst | SSIM | SSIM median | SSIM worst | LPIPS "
                  "| notes |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for s in (s for s in summary if s["steps"] == steps):
            notes = [n for n, on in (("degenerate", s.get("degenerate")), ("NOT deterministic", not s["deterministic"]))
                     if on]
            lines.append(
                f"| {s['method']} | `{s['variant']}` | {_num(s['flops_share'], percent=True)} "
                f"| {_num(s['blocks_share'], percent=True)} | {_num(s['hit_rate'], percent=True)} "
                f"| {_num(s['speedup_denoise'], 2)} | {_num(s['speedup_total'], 2)} "
                f"| {_psnr_text(s['psnr'], s['identical'])} | {_psnr_cell(s['psnr_median'], True)} "
                f"| {_psnr_cell(s['psnr_worst'], s['identical'])} | {_num(s['ssim'], 4)} "
                f"| {_num(s['ssim_median'], 4)} | {_num(s['ssim_worst'], 4)} | {_num(s['lpips'], 4)} "
                f"| {', '.join(notes)} |")
        lines.append("")
    degenerate = [s for s in summary if s.get("degenerate")]
    if degenerate:
        lines += ["Degenerate points (left out of fronts, budgets and verdicts):", ""]
        lines += [f"- {s['steps']} steps, `{s['variant']}`: {s['degenerate_reason']}" for s in degenerate]
        lines.append("")
    return lines


def _budget_tables(summary: list[dict[str, Any]]) -> list[str]:
    budget_rows = best_within_budget(summary)
    lines = ["## Best quality within a compute budget", "",
             "For each method, its best non-degenerate grid point (lowest MSE) among those running at most the "
             "given share of FLOPs: PSNR dB (mean MSE) / SSIM / worst-sample PSNR (FLOPs run).", ""]
    for steps in sorted({r["steps"] for r in budget_rows}):
        header = "| method (" + f"{steps} steps) | " + " | ".join(f"≤ {b:.0%} FLOPs" for b in BUDGETS) + " |"
        lines += [header, "|---|" + "---|" * len(BUDGETS)]
        for method in dict.fromkeys(r["method"] for r in budget_rows if r["steps"] == steps):
            cells = []
            for r in (r for r in budget_rows if r["steps"] == steps and r["method"] == method):
                cells.append("—" if r["variant"] is None else
                             f"{_psnr_text(r['psnr'])} / {_num(r['ssim'], 3)} / {_psnr_text(r['psnr_worst'])} "
                             f"({_num(r['cost'], percent=True)})")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _verdict_section(verdicts: dict[str, Any], config: BenchConfig) -> list[str]:
    basis = config.verdict_quality
    rows = verdicts["comparisons"]
    lines = [f"## Equal compute: {', '.join(config.subjects)} against each peer's front", ""]
    if verdicts["samples"]["warning"]:
        lines += [f"**WARNING: {verdicts['samples']['warning']}.**", ""]
    metrics = rows[0]["metrics"] if rows else ["psnr", "ssim"]
    lines += [
        f"Each point of a method under test against the peer's Pareto front at the same share of FLOPs, "
        f"quality on the **{basis}** basis ({' and '.join(m.upper() for m in metrics)}). The front is interpolated "
        "only between the peer's non-dominated points (never through a dominated raw point), is flat past its "
        "dearest point, and undefined below its cheapest. Differences under 0.05 dB PSNR, 0.0005 SSIM or 0.001 "
        "LPIPS count as zero; better / worse need every metric to agree. Counted: the distinct, non-dominated, "
        "non-degenerate points of the method under test. 'best reached' is the peer's best real point at no more "
        "than that cost.", ""] + verdict_table(rows)
    for name in BASES:
        lines += ["", f"Counts, {name} basis{' (the table above)' if name == basis else ''}:", ""]
        lines += count_lines(verdicts["verdicts"].get(name, {})) or ["- none counted"]
    if verdicts["not_counted"]:
        lines += ["", f"Not counted ({basis} basis):", ""] + count_lines(verdicts["not_counted"])
    return lines


def verdict_table(rows: list[dict[str, Any]]) -> list[str]:
    """The markdown table of :func:`bench.verdicts.compare_with_fronts` rows: each point against a peer's front."""
    lines = ["| steps | method under test | FLOPs | PSNR | SSIM | peer | front PSNR | front SSIM | best reached "
             "| verdict | counted |",
             "|---:|---|---:|---:|---:|---|---:|---:|---|---|---|"]
    for r in rows:
        reached = (f"`{r['peer_best_reached']}` ({_num(r['peer_best_reached_cost'], percent=True)}, "
                   f"{_psnr_cell(r['peer_best_reached_psnr'], True)} dB)" if r["peer_best_reached"] else "—")
        lines.append(
            f"| {r['steps']} | `{r['subject']}` | {_num(r['cost'], percent=True)} | {_psnr_cell(r['psnr'], True)} "
            f"| {_num(r['ssim'], 4)} | {r['peer_method']} | {_psnr_cell(r['peer_front_psnr'], r['peer_front_identical'])} "
            f"| {_num(r['peer_front_ssim'], 4)} | {reached} | {r['verdict'] or '—'} "
            f"| {'yes' if r['counted'] else 'no: ' + r['status']} |")
    return lines


def count_lines(counts: dict[str, dict[str, int]]) -> list[str]:
    """One markdown list item per 'subject vs peer @ N steps' of :func:`bench.verdicts.verdict_counts` (or the
    not-counted reasons): ``- pair: better: 2, worse: 1``."""
    return [f"- {pair}: " + ", ".join(f"{k}: {v}" for k, v in sorted(c.items())) for pair, c in counts.items()]


def _decision_cost_and_flops(meta: dict[str, Any]) -> list[str]:
    lines = []
    if meta.get("decision_cost"):
        lines += ["", "## Decision cost: PFS on vs off", "",
                  "One decision on a miss with a reference (residual, summary, distance, host sync), timed on "
                  "H2-Cache's own probe hook by `bench.overhead.decision_seconds`.", "",
                  "| residuals | tokens (image + text) x channels | PFS kernel (stage 1 / 2) | stage 1 PFS | stage 1 full "
                  "| stage 2 PFS | stage 2 full |", "|---|---|---|---:|---:|---:|---:|"]
        for d in meta["decision_cost"]:
            lines.append(
                f"| {d['shape']} ({d['dtype']}) | ({d['image_tokens']} + {d['text_tokens']}) x {d['channels']} "
                f"| {d['kernel_stage1']} / {d['kernel_stage2']} | {1e6 * d['stage1_pfs_s']:.0f} µs "
                f"| {1e6 * d['stage1_full_s']:.0f} µs | {1e6 * d['stage2_pfs_s']:.0f} µs "
                f"| {1e6 * d['stage2_full_s']:.0f} µs |")
    tables = meta.get("flop_tables", {})
    if tables:
        lines += ["", "## Measured block FLOPs (per sample, one call)", ""]
        for shape, table in tables.items():
            per = [b["attn"] + b["other"] for b in table["blocks"]]
            lines.append(f"- {shape}: {len(per)} blocks, {table['image_tokens']} image + {table['text_tokens']} "
                         f"text tokens; per block {', '.join(f'{p / 1e6:.1f}' for p in per)} MFLOP "
                         f"({table['source']})")
    return lines


def markdown_report(meta: dict[str, Any], summary: list[dict[str, Any]], verdicts: dict[str, Any],
                    config: BenchConfig, plots: list[str] | None = None) -> str:
    lines = _header(meta, summary, config, verdicts) + _summary_tables(summary) + _budget_tables(summary)
    lines += _verdict_section(verdicts, config) + _decision_cost_and_flops(meta)
    files = ["results.json", "summary.csv", "samples.csv", "comparisons.csv",
             *(["auto_grid.json"] if meta.get("auto_grid") else []), *(plots or [])]
    lines += ["", "Files: " + ", ".join(f"`{f}`" for f in files) + ".", ""]
    return "\n".join(lines)


def verdict_results(rows: list[dict[str, Any]], summary: list[dict[str, Any]],
                    config: BenchConfig) -> dict[str, Any]:
    """Degenerate points flagged (in `summary`), the comparisons on the configured basis, counts on every
    basis, and whether there are enough samples for a verdict."""
    flag_degenerate(summary)
    subjects, peers = tuple(config.subjects), tuple(config.match_peers)
    comparisons = compare_with_fronts(summary, subjects, peers, config.verdict_quality)
    counts = {basis: verdict_counts(comparisons if basis == config.verdict_quality
                                    else compare_with_fronts(summary, subjects, peers, basis)) for basis in BASES}
    return {"basis": config.verdict_quality, "comparisons": comparisons, "verdicts": counts,
            "not_counted": exclusion_counts(comparisons), "samples": sample_sufficiency(rows)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_outputs(out: Path, meta: dict[str, Any], rows: list[dict[str, Any]], config: BenchConfig) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    verdicts = verdict_results(rows, summary, config)
    results = _jsonable({"meta": meta, "summary": summary, "best_within_budget": best_within_budget(summary),
                         **verdicts, "rows": rows})
    with open(out / "results.json", "w") as f:
        json.dump(results, f, indent=1, allow_nan=False)
    _write_csv(out / "summary.csv", summary)
    _write_csv(out / "samples.csv", [{k: v for k, v in r.items() if k != "blocks_per_call"} for r in rows])
    _write_csv(out / "comparisons.csv", verdicts["comparisons"])
    plots: list[str] = []
    if config.plots:
        from .plots import write_plots

        plots = write_plots(out, summary)
        results["plots"] = plots
    (out / "results.md").write_text(markdown_report(meta, summary, verdicts, config, plots))
    if verdicts["samples"]["warning"]:
        print(f"[bench] WARNING: {verdicts['samples']['warning']}")
    return results
