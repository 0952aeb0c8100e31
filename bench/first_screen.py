"""The first screen of docs/BENCHMARKS.md: per step count one table of every measured point (method, setting,
FLOPs share, PSNR mean / median / worst sample, SSIM, CPU loop speedup, verdict against each peer's front) and
one quality-against-FLOPs plot, made from stored benchmark runs named in a spec file.

``python -m bench.first_screen docs/benchmarks/first_screen.json`` rewrites the markdown and the PNG the spec
names. The spec::

    {"subjects": [...], "peers": [...], "hide_settings": [...], "markdown": "...", "plot": "...",
     "runs": {"28": ["docs/benchmarks/v2b-28", ...], ...}}

Runs of one step count are united as :mod:`bench.union` unites them (same model, prompts and seeds, or an
error). The verdict of a subject's point lists the peers whose front it is above or tied with and those it is
below, on the mean basis; a point a peer's front does not reach is "n/a" for that peer.

Example:
    >>> shown_settings('{"tau1": 0.1, "pool_size_stage1": 128}', ["pool_size_stage1"])
    'tau1=0.1'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .plots import _psnr_or_cap, _quality_vs_cost
from .union import unite
from .verdicts import compare_with_fronts

ROOT = Path(__file__).resolve().parent.parent


def shown_settings(settings: Any, hide: list[str]) -> str:
    """A point's settings as ``k=v`` pairs, without the ones every point of the run holds (`hide`)."""
    values = json.loads(settings) if isinstance(settings, str) else dict(settings or {})
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
                    if k not in hide) or "default"


def _db(value: float | None) -> str:
    return "identical" if value is None else f"{value:.2f}"


def _verdicts(rows: list[dict[str, Any]], variant: str) -> str:
    mine = [r for r in rows if r["subject"] == variant]
    groups: dict[str, list[str]] = {"above": [], "tied": [], "below": [], "n/a": []}
    for r in mine:
        key = {"better": "above", "tie": "tied", "worse": "below"}.get(r["verdict"] if r["counted"] else None, "n/a")
        groups[key].append(r["peer_method"])
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in groups.items() if v)


def step_table(summary: list[dict[str, Any]], subjects: list[str], peers: list[str], hide: list[str]) -> list[str]:
    rows = compare_with_fronts(summary, tuple(subjects), tuple(peers), "mean")
    samples = {int(s["samples"]) for s in summary if s.get("samples")}
    lines = [f"Samples per point: {', '.join(map(str, sorted(samples)))} (prompts x seeds).", "",
             "| method | setting | FLOPs | PSNR mean | median | worst | SSIM | CPU loop speedup | verdict (mean basis) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    order = {m: i for i, m in enumerate([*subjects, *peers])}
    points = [s for s in summary if s["method"] in order]
    points.sort(key=lambda s: (order[s["method"]], -(s["flops_share"] or 0.0)))
    for s in points:
        verdict = _verdicts(rows, s["variant"]) if s["method"] in subjects else "peer"
        speed = f"{s['speedup_denoise']:.2f}x" if s.get("speedup_denoise") else "n/a"
        lines.append(f"| {s['method']} | {shown_settings(s['settings'], hide)} | {s['flops_share']:.1%} | "
                     f"{_db(s['psnr'])} | {_db(s['psnr_median'])} | {_db(s['psnr_worst'])} | {s['ssim']:.4f} | "
                     f"{speed} | {verdict} |")
    return lines


def build(spec_path: Path) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """(markdown, the united summaries of every step count, the spec)."""
    spec = json.loads(Path(spec_path).read_text())
    out = [f"<!-- python -m bench.first_screen {Path(spec_path).as_posix()} -->", ""]
    everything: list[dict[str, Any]] = []
    for steps, runs in sorted(spec["runs"].items(), key=lambda kv: int(kv[0])):
        summary = [s for s in unite([ROOT / r for r in runs]) if s["steps"] == int(steps)]
        everything.extend(summary)
        out += [f"### {steps} steps", "", "Runs: " + ", ".join(f"`{r}`" for r in runs) + ".", ""]
        out += step_table(summary, spec["subjects"], spec["peers"], spec.get("hide_settings", []))
        out.append("")
    return "\n".join(out), everything, spec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.first_screen", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", type=Path, help="the spec JSON (docs/benchmarks/first_screen.json)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if the stored markdown differs")
    args = p.parse_args(argv)
    markdown, summary, spec = build(args.spec)
    target = ROOT / spec["markdown"]
    if args.check:
        same = target.exists() and target.read_text() == markdown
        print("up to date" if same else f"{target} differs from what its runs give")
        return 0 if same else 1
    target.write_text(markdown)
    _quality_vs_cost(summary, ROOT / spec["plot"], _psnr_or_cap(summary), "PSNR dB vs uncached (mean MSE)")
    print(f"wrote {spec['markdown']} and {spec['plot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
