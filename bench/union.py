"""Verdicts over the union of several benchmark runs: each method's front from every point any run measured.

Runs made with different ``--fix`` settings (for example lighter guards for every guarded method) measure
other points of the same methods. A fair verdict then compares a subject with each peer's best over *all* of
them. Runs are united only when their ``results.md`` name the same model fingerprint, prompts and seeds, and a
variant that two runs both measured must have the same mean MSE in both (the images are deterministic), so
points from different image sets cannot be mixed by mistake.

``python -m bench.union RUN_DIR [RUN_DIR ...] --subjects METHOD [METHOD ...] [--basis mean|median|worst]``
prints, per subject point, each peer's front at its cost and the verdict, then the counts, then whether each
subject is on or above every peer's front over a budget range (``--budget 0.3 0.85``, the goal of the issue
"Beyond the paper"): every counted point in the range better or tied against every peer, and counted points
within :data:`REACH` of both ends of the range.

``--only KEY=VALUE ...`` keeps only the subjects' points whose settings have those values (a setting a point
does not name has its method's default), so that one configuration is judged, not the best of several chosen
after the fact; e.g. ``--only forecast_probe_factor=true`` when runs of both forecast factors are united.

Example:
    >>> parse_value("0.5"), parse_value(""), parse_value("True"), parse_value("fbcache")
    (0.5, None, True, 'fbcache')
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from h2cache.methods import get_method

from .quality import BASES
from .report import count_lines, verdict_table
from .verdicts import PEERS, compare_with_fronts, flag_degenerate, verdict_counts

IDENTITY_LINES = ("- Model:", "- Prompts:")  # lines of results.md that two united runs must share
SAME_MSE = 1e-6  # relative: two measurements of one variant on one image set agree to rounding
REACH = 0.05  # a subject covers a budget range when it has counted points this close to both of its ends


def parse_value(text: str) -> Any:
    """A summary.csv cell as the harness wrote it: a number, None (empty), a bool, or the text."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return float(text)
    except ValueError:
        return text


def read_run(run: Path) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    """The identity lines of a run's results.md and its summary rows, typed."""
    run = Path(run)
    for name in ("results.md", "summary.csv"):
        if not (run / name).exists():
            raise FileNotFoundError(f"{run / name} is missing: not a benchmark output directory")
    lines = (run / "results.md").read_text().splitlines()
    # The model line names the weights' fingerprint; the prompts line names the prompt file, the count and the
    # seeds, then timing settings (warm-up, repeats) that do not change the images, so those are left out.
    identity = tuple(next((line.split("; warm-up")[0] for line in lines if line.startswith(key)), "")
                     for key in IDENTITY_LINES)
    rows = []
    with (run / "summary.csv").open() as f:
        for row in csv.DictReader(f):
            typed = {k: parse_value(v) for k, v in row.items()}
            typed["steps"] = int(typed["steps"])
            rows.append(typed)
    return identity, rows


def unite(runs: list[Path]) -> list[dict[str, Any]]:
    """Every distinct point of `runs`, checked to come from one model, prompt set and seed set."""
    summary: list[dict[str, Any]] = []
    seen: dict[tuple[int, str], dict[str, Any]] = {}
    first: tuple[str, ...] | None = None
    for run in runs:
        identity, rows = read_run(run)
        if first is None:
            first = identity
        elif identity != first:
            raise ValueError(f"{run} was not run on the same model, prompts and seeds as {runs[0]}: "
                             f"{identity} against {first}")
        for row in rows:
            key = (row["steps"], row["variant"])
            if key in seen:
                a, b = seen[key]["mse"] or 0.0, row["mse"] or 0.0
                if abs(a - b) > SAME_MSE * max(abs(a), abs(b), 1e-12):
                    raise ValueError(f"{row['variant']} at {row['steps']} steps has mean MSE {b} in {run} but {a} "
                                     "in an earlier run: the runs did not score the same images")
                continue
            seen[key] = row
            summary.append(row)
    flag_degenerate(summary)  # it depends on which methods are present, so it is redone on the union
    return summary


def keep_only(summary: list[dict[str, Any]], subjects: tuple[str, ...], only: list[str]) -> list[dict[str, Any]]:
    """`summary` without the subjects' points whose settings differ from any ``KEY=VALUE`` of `only` (values
    parsed and checked as the subject method's setting; an unnamed setting has the method's default)."""
    wanted: dict[str, dict[str, Any]] = {}
    for name in subjects:
        method = get_method(name)
        pairs = {}
        for text in only:
            key, sep, value = text.partition("=")
            if not sep:
                raise ValueError(f"--only {text!r} is not KEY=VALUE")
            pairs[key.strip()] = method.setting(key.strip()).parse(name, value)
        wanted[name] = pairs

    def keep(row: dict[str, Any]) -> bool:
        if row["method"] not in wanted:
            return True
        settings = json.loads(row["settings"]) if isinstance(row["settings"], str) else row["settings"]
        method = get_method(row["method"])
        return all(settings.get(k, method.setting(k).default) == v for k, v in wanted[row["method"]].items())

    return [row for row in summary if keep(row)]


def budget_goal(rows: list[dict[str, Any]], low: float, high: float) -> dict[str, list[str]]:
    """Per 'subject @ N steps': what keeps it from being on or above every peer's front over [low, high]
    (an empty list: the goal is met)."""
    found: dict[str, list[str]] = {}
    for key in dict.fromkeys((r["subject_method"], r["steps"]) for r in rows):
        mine = [r for r in rows if (r["subject_method"], r["steps"]) == key and r["counted"]]
        inside = [r for r in mine if low - REACH <= r["cost"] <= high + REACH]
        misses = [f"{r['cost']:.1%} {r['verdict']} against {r['peer_method']}" for r in inside
                  if r["verdict"] not in ("better", "tie")]
        costs = [r["cost"] for r in inside]
        if not costs:
            misses.append("no counted point in the range")
        else:
            if min(costs) > low + REACH:
                misses.append(f"no counted point within {REACH:.0%} of {low:.0%} (cheapest: {min(costs):.1%})")
            if max(costs) < high - REACH:
                misses.append(f"no counted point within {REACH:.0%} of {high:.0%} (dearest: {max(costs):.1%})")
        found[f"{key[0]} @ {key[1]} steps"] = misses
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.union", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="benchmark output directories (results.md, summary.csv)")
    p.add_argument("--subjects", nargs="+", required=True, help="methods under test")
    p.add_argument("--peers", nargs="+", default=list(PEERS), help="methods whose fronts they are judged against")
    p.add_argument("--basis", choices=BASES, default="mean", help="quality basis of the verdicts (default: mean)")
    p.add_argument("--only", nargs="+", default=[], metavar="KEY=VALUE",
                   help="judge only the subjects' points with these settings (default: every point)")
    p.add_argument("--budget", nargs=2, type=float, default=(0.3, 0.85), metavar=("LOW", "HIGH"),
                   help="share of FLOPs range of the goal check (default: 0.3 0.85)")
    args = p.parse_args(argv)
    summary = unite(args.runs)
    if args.only:
        try:
            summary = keep_only(summary, tuple(args.subjects), args.only)
        except ValueError as exc:
            p.error(str(exc))
    rows = compare_with_fronts(summary, tuple(args.subjects), tuple(args.peers), args.basis)
    print(f"Quality on the {args.basis} basis.\n")
    print("\n".join(verdict_table(rows)))
    print()
    print("\n".join(count_lines(verdict_counts(rows)) or ["- none counted"]))
    print()
    low, high = args.budget
    for key, misses in budget_goal(rows, low, high).items():
        verdict = "on or above every peer's front" if not misses else "not met: " + "; ".join(misses)
        print(f"{key}, {low:.0%}-{high:.0%} of FLOPs: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
