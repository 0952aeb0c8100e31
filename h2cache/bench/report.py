"""From per-sample rows to the summary, the equal-compute comparison, and the files the CLI writes.

Aggregation per (steps, variant): speedup is the ratio of summed per-sample median
times (baseline over method); PSNR is computed from the mean MSE over samples, so
that samples identical to the baseline (MSE 0) count instead of being infinite;
SSIM, LPIPS and the shares are means.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from .machine import machine_line
from .spec import BenchConfig

PEAK = 255.0 ** 2


def psnr_from_mse(mse: float) -> float | None:
    """``None`` for identical images (MSE 0)."""
    return None if mse <= 0 else 10.0 * math.log10(PEAK / mse)


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
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
        mse = _mean([r["mse"] for r in group])
        flops = [r["flops_share"] for r in group]
        base_d = sum(r.get("baseline_denoise_s") or 0 for r in group)
        base_t = sum(r.get("baseline_total_s") or 0 for r in group)
        lpips = [r["lpips"] for r in group]
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
            "mse": mse, "psnr": psnr_from_mse(mse), "identical": all(r["identical"] for r in group),
            "ssim": _mean([r["ssim"] for r in group]),
            "lpips": None if any(v is None for v in lpips) else _mean(lpips),
            "lpips_reason": next((r["lpips_reason"] for r in group if r["lpips_reason"]), None),
            "deterministic": all(r["deterministic"] for r in group),
            "description": first["description"],
        })
    return summary


def _interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation in sorted (x, y) points; ``None`` outside their range."""
    points = sorted(points)
    if not points or x < points[0][0] - 1e-12 or x > points[-1][0] + 1e-12:
        return None
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 - 1e-12 <= x <= x1 + 1e-12:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[0][1]


# Differences below these are ties: smaller than the tables show, and within floating-point reordering
# (two methods that make the same decisions differ by ~1e-4 dB when they add residuals in another order).
TIE_PSNR_DB, TIE_SSIM, TIE_LPIPS = 0.05, 5e-4, 1e-3


def _verdict(h2: dict[str, Any], peer: dict[str, Any]) -> str:
    if h2["lpips"] is not None and peer["lpips"] is not None:
        if abs(h2["lpips"] - peer["lpips"]) < TIE_LPIPS:
            return "tie"
        return "H2-Cache better" if h2["lpips"] < peer["lpips"] else "peer better"
    # Offline: PSNR (via MSE: lower is better) and SSIM must agree.
    d_psnr = _psnr_gain(h2["mse"], peer["mse"])
    d_ssim = h2["ssim"] - peer["ssim"]
    if abs(d_psnr) < TIE_PSNR_DB and abs(d_ssim) < TIE_SSIM:
        return "tie"
    if d_psnr >= 0 and d_ssim >= 0:
        return "H2-Cache better"
    if d_psnr <= 0 and d_ssim <= 0:
        return "peer better"
    return "mixed"


def _psnr_gain(mse: float, reference_mse: float) -> float:
    """PSNR of `mse` minus PSNR of `reference_mse`, in dB (MSE 0 counts as a tiny MSE, not infinity)."""
    floor = 1e-12
    return 10.0 * math.log10(max(reference_mse, floor) / max(mse, floor))


# The default and the proposed variants (H2CacheConfig options); ablations are compared in their own runs.
SUBJECTS = ("h2cache", "h2cache-guarded", "h2cache-one-probe", "h2cache-guarded-one-probe")


def matched_comparison(summary: list[dict[str, Any]], peers: tuple[str, ...], tolerance: float,
                       subjects: tuple[str, ...] = SUBJECTS) -> list[dict[str, Any]]:
    """Each H2-Cache point against each peer's point with the nearest share of blocks executed within
    ``tolerance`` (absolute), plus the peer's quality interpolated along its grid at H2-Cache's exact share.
    H2-Cache points that ran every block are left out (nothing was cached)."""
    out = []
    for h2 in (s for s in summary if s["method"] in subjects and s["blocks_share"] < 0.999):
        for peer_name in peers:
            candidates = [s for s in summary if s["method"] == peer_name and s["steps"] == h2["steps"]]
            if not candidates:
                continue
            curve_mse = [(s["blocks_share"], s["mse"]) for s in candidates]
            curve_ssim = [(s["blocks_share"], s["ssim"]) for s in candidates]
            interp_mse = _interpolate(curve_mse, h2["blocks_share"])
            interp_ssim = _interpolate(curve_ssim, h2["blocks_share"])
            near = [s for s in candidates if abs(s["blocks_share"] - h2["blocks_share"]) <= tolerance + 1e-12]
            best = min(near, key=lambda s: abs(s["blocks_share"] - h2["blocks_share"])) if near else None
            if best is None and interp_mse is None:
                continue
            out.append({
                "steps": h2["steps"], "h2_method": h2["method"], "h2": h2["variant"], "h2_blocks_share": h2["blocks_share"],
                "h2_flops_share": h2["flops_share"], "h2_psnr": h2["psnr"], "h2_ssim": h2["ssim"],
                "h2_lpips": h2["lpips"], "h2_speedup": h2["speedup_denoise"],
                "peer": best["variant"] if best else None, "peer_method": peer_name,
                "peer_blocks_share": best["blocks_share"] if best else None,
                "peer_flops_share": best["flops_share"] if best else None,
                "peer_psnr": best["psnr"] if best else None, "peer_ssim": best["ssim"] if best else None,
                "peer_lpips": best["lpips"] if best else None,
                "peer_speedup": best["speedup_denoise"] if best else None,
                "verdict": _verdict(h2, best) if best else "no peer point within tolerance",
                "peer_psnr_interpolated": psnr_from_mse(interp_mse) if interp_mse is not None else None,
                "peer_ssim_interpolated": interp_ssim,
                "verdict_interpolated": (None if interp_mse is None else _verdict(
                    h2, {"mse": interp_mse, "ssim": interp_ssim, "lpips": None})),
            })
    return out


BUDGETS = (0.8, 0.6, 0.45, 0.3)


def best_within_budget(summary: list[dict[str, Any]], budgets: tuple[float, ...] = BUDGETS) -> list[dict[str, Any]]:
    """Per step count, method and budget: the variant with the lowest MSE (highest PSNR) among those running
    at most that share of blocks; a Pareto view that needs no matching."""
    out = []
    for steps in sorted({s["steps"] for s in summary}):
        methods = list(dict.fromkeys(s["method"] for s in summary if s["steps"] == steps and s["method"] != "none"))
        for method in methods:
            for budget in budgets:
                fits = [s for s in summary if s["steps"] == steps and s["method"] == method
                        and s["blocks_share"] <= budget + 1e-9]
                best = min(fits, key=lambda s: s["mse"]) if fits else None
                out.append({"steps": steps, "method": method, "budget": budget,
                            "variant": best["variant"] if best else None,
                            "blocks_share": best["blocks_share"] if best else None,
                            "psnr": best["psnr"] if best else None, "ssim": best["ssim"] if best else None,
                            "lpips": best["lpips"] if best else None,
                            "speedup_denoise": best["speedup_denoise"] if best else None})
    return out


def verdict_counts(matched: list[dict[str, Any]], key: str = "verdict") -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for m in matched:
        if m[key] is not None:
            counts[f"{m['h2_method']} vs {m['peer_method']} @ {m['steps']} steps"][m[key]] += 1
    return {k: dict(v) for k, v in counts.items()}


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
    root = Path(__file__).resolve().parents[2]
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


def markdown_report(meta: dict[str, Any], summary: list[dict[str, Any]], matched: list[dict[str, Any]],
                    config: BenchConfig) -> str:
    lpips_reason = next((s["lpips_reason"] for s in summary if s["lpips"] is None and s["lpips_reason"]), None)
    lines = [
        "# h2cache benchmark results", "",
        f"- Command: `{meta['command']}` ({meta['processes']} process(es))",
        f"- Model: `{meta['model_key']}` (fingerprint `{meta['model_fingerprint']}`)",
        f"- Machine: {machine_line(meta['machine'])}",
        f"- Prompts: {len(meta['prompts'])} from `{_relative(config.prompts_file)}`; seeds {list(config.seeds)}; "
        f"warm-up {config.warmup}, repeats {config.repeats} (median)",
        f"- Speedup: baseline over method, summed per-sample median wall time of the denoising loop "
        f"(first transformer call to last scheduler step); end to end in its own column",
        f"- PSNR from the mean MSE against the uncached image of the same prompt and seed; SSIM mean; "
        f"LPIPS: {'mean (AlexNet)' if lpips_reason is None else 'n/a — ' + lpips_reason}",
        "",
    ]
    for steps in sorted({s["steps"] for s in summary}):
        lines += [f"## {steps} steps", "",
                  "| method | variant | blocks run | FLOPs run | hit rate | speedup (loop) | speedup (e2e) "
                  "| PSNR dB | SSIM | LPIPS | deterministic |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|:-:|"]
        for s in (s for s in summary if s["steps"] == steps):
            lines.append(
                f"| {s['method']} | `{s['variant']}` | {_num(s['blocks_share'], percent=True)} "
                f"| {_num(s['flops_share'], percent=True)} | {_num(s['hit_rate'], percent=True)} "
                f"| {_num(s['speedup_denoise'], 2)} | {_num(s['speedup_total'], 2)} "
                f"| {_psnr_text(s['psnr'], s['identical'])} | {_num(s['ssim'], 4)} | {_num(s['lpips'], 4)} "
                f"| {'yes' if s['deterministic'] else 'NO'} |")
        lines.append("")
    budget_rows = best_within_budget(summary)
    lines += ["## Best quality within a compute budget", "",
              "For each method, its best grid point (lowest MSE) among those running at most the given share of "
              "blocks: PSNR dB / SSIM (blocks run). TaylorSeer runs every block (it extrapolates attention "
              "only), so it shows in the FLOPs column of the tables above, not here.", ""]
    for steps in sorted({r["steps"] for r in budget_rows}):
        header = "| method (" + f"{steps} steps) | " + " | ".join(f"≤ {b:.0%} blocks" for b in BUDGETS) + " |"
        lines += [header, "|---|" + "---|" * len(BUDGETS)]
        for method in dict.fromkeys(r["method"] for r in budget_rows if r["steps"] == steps):
            cells = []
            for r in (r for r in budget_rows if r["steps"] == steps and r["method"] == method):
                cells.append("—" if r["variant"] is None else
                             f"{_psnr_text(r['psnr'])} / {_num(r['ssim'], 3)} ({_num(r['blocks_share'], percent=True)})")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"## Equal compute: H2-Cache against {', '.join(config.match_peers)}", "",
              "'H2-Cache better' means the H2 variant on the left (the default `h2cache`, or a proposed "
              "variant where it was run: `h2cache-guarded`, `h2cache-one-probe`, `h2cache-guarded-one-probe`).", "",
              f"Nearest peer point with a share of blocks executed within ±{config.match_tolerance:.0%} "
              "(absolute); 'interp.' is the peer's quality interpolated along its grid at H2-Cache's share. "
              "Verdict: lower LPIPS where available, else higher PSNR *and* SSIM.", "",
              "| steps | H2-Cache | blocks | PSNR | SSIM | peer | blocks | PSNR | SSIM | verdict "
              "| peer PSNR interp. | verdict interp. |",
              "|---:|---|---:|---:|---:|---|---:|---:|---:|---|---:|---|"]
    for m in matched:
        lines.append(
            f"| {m['steps']} | `{m['h2']}` | {_num(m['h2_blocks_share'], percent=True)} | {_psnr_text(m['h2_psnr'])} "
            f"| {_num(m['h2_ssim'], 4)} | {'`' + m['peer'] + '`' if m['peer'] else m['peer_method'] + ': —'} | {_num(m['peer_blocks_share'], percent=True)} "
            f"| {_psnr_text(m['peer_psnr'])} | {_num(m['peer_ssim'], 4)} | {m['verdict']} "
            f"| {_psnr_text(m['peer_psnr_interpolated'])} | {m['verdict_interpolated'] or '—'} |")
    lines += ["", "Counts (nearest point within tolerance):", ""]
    for peer, counts in verdict_counts(matched).items():
        lines.append(f"- {peer}: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    lines += ["", "Counts (interpolated along the peer's grid):", ""]
    for peer, counts in verdict_counts(matched, "verdict_interpolated").items():
        lines.append(f"- {peer}: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    if meta.get("decision_cost"):
        lines += ["", "## Decision cost: PFS on vs off", "",
                  "One decision on a miss with a reference (residual, summary, distance, host sync), timed on "
                  "H2-Cache's own probe hook by `h2cache.overhead.decision_seconds`.", "",
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
    lines += ["", "Files: `results.json`, `summary.csv`, `samples.csv`, `speedup_vs_psnr.png`, "
              "`speedup_vs_lpips.png`, `speedup_vs_ssim.png`, `quality_vs_blocks.png`, `h2cache_heatmap.png`.", ""]
    return "\n".join(lines)


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
    matched = matched_comparison(summary, tuple(config.match_peers), config.match_tolerance)
    results = _jsonable({"meta": meta, "summary": summary, "best_within_budget": best_within_budget(summary),
                         "matched": matched,
                         "verdicts": verdict_counts(matched),
                         "verdicts_interpolated": verdict_counts(matched, "verdict_interpolated"), "rows": rows})
    with open(out / "results.json", "w") as f:
        json.dump(results, f, indent=1, allow_nan=False)
    _write_csv(out / "summary.csv", summary)
    _write_csv(out / "samples.csv", [{k: v for k, v in r.items() if k != "blocks_per_call"} for r in rows])
    (out / "results.md").write_text(markdown_report(meta, summary, matched, config))
    if config.plots:
        from .plots import write_plots

        results["plots"] = write_plots(out, summary)
    return results
