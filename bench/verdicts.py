"""Equal-compute verdicts: each point of a method under test against each peer's Pareto front.

The rule, for one point of a subject (e.g. ``h2cache``) and one peer (e.g. ``fbcache``) at one step count:

1. **Cost** is the share of block FLOPs run (the share of blocks where no FLOP table was measured).
2. **The peer's quality at that cost** is the value of its Pareto front there (:mod:`.fronts`): interpolated
   only between non-dominated peer points, never through a dominated raw grid point; flat beyond its
   dearest point; undefined below its cheapest (no verdict: the peer reaches nothing that cheap). Each
   metric has its own front.
3. **Verdict** from the differences subject minus peer-front: LPIPS where every point has it (mean basis),
   else PSNR *and* SSIM. A difference under the display precision (:data:`TIE`) counts as zero; all zero is
   a tie, all >= 0 better, all <= 0 worse, else mixed.
4. **Counted** are the distinct, non-dominated, non-degenerate points of the subject only: identical points
   (same cost and quality) count once, a subject point another of its own points dominates is not counted,
   nor is a degenerate one (:func:`flag_degenerate`). Degenerate peer points are left out of the peer's front.

Quality can be read on three bases (:data:`~bench.quality.BASES`): the PSNR of the mean MSE with the
mean SSIM, the median sample, or the worst sample. Verdicts need at least :data:`MIN_VERDICT_PROMPTS` prompts
x :data:`MIN_VERDICT_SEEDS` seeds; with fewer, :func:`sample_sufficiency` returns a warning the report prints.

Example:
    >>> def point(method, cost, psnr, ssim):
    ...     return {"steps": 28, "method": method, "variant": f"{method}({psnr:g} dB)", "blocks_share": cost,
    ...             "flops_share": cost, "mse": 65025 / 10 ** (psnr / 10), "ssim": ssim, "lpips": None}
    >>> summary = [point("fbcache", 0.3, 20.0, 0.90), point("fbcache", 0.5, 40.0, 0.99),
    ...            point("h2cache", 0.4, 31.0, 0.96), point("h2cache", 0.4, 29.0, 0.95)]
    >>> rows = compare_with_fronts(summary, subjects=("h2cache",), peers=("fbcache",))
    >>> [(r["subject"], round(r["peer_front_psnr"], 2), r["verdict"], r["status"]) for r in rows]
    [('h2cache(31 dB)', 30.0, 'better', 'counted'), ('h2cache(29 dB)', 30.0, 'mixed', 'dominated by h2cache(31 dB)')]
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from h2cache.methods.registry import FAMILIES

from .fronts import EPS, best_reached, dominates, front_value, pareto_front
from .quality import PSNR_IDENTICAL, metric_value

# Differences below these are ties: smaller than the tables show, and within floating-point reordering
# (two methods that make the same decisions differ by ~1e-4 dB when they add residuals in another order).
TIE = {"psnr": 0.05, "ssim": 5e-4, "lpips": 1e-3}
# A point is degenerate when its PSNR lies this far below every other method's front at its cost.
DEGENERATE_DB = 10.0
MIN_VERDICT_PROMPTS, MIN_VERDICT_SEEDS = 8, 2
# The default and the proposed H2-Cache variants; ablations are compared in their own runs.
SUBJECTS = ("h2cache", "h2cache-guarded", "h2cache-one-probe", "h2cache-guarded-one-probe")
# Every preset of every other family: a peer left out of the default would silently drop from the verdicts.
PEERS = tuple(name for family, presets in FAMILIES.items() if family not in ("none", "h2cache")
              for name in presets.values())
RAN_EVERYTHING = 0.999  # a point at this cost or more cached nothing: no verdict


def cost(summary: dict[str, Any]) -> float:
    """Share of block FLOPs run; the share of blocks run where no FLOP table was measured."""
    flops = summary.get("flops_share")
    return summary["blocks_share"] if flops is None else flops


def verdict_metrics(summary: list[dict[str, Any]], basis: str = "mean") -> tuple[str, ...]:
    """LPIPS where every cached point has it (mean basis only), else PSNR and SSIM."""
    cached = [s for s in summary if s["method"] != "none"]
    if basis == "mean" and cached and all(s.get("lpips") is not None for s in cached):
        return ("lpips",)
    return ("psnr", "ssim")


def verdict(differences: dict[str, float]) -> str:
    """'better', 'worse', 'tie' or 'mixed' from subject-minus-peer differences (higher is better).

    Example:
        >>> verdict({"psnr": 0.5, "ssim": 0.0001}), verdict({"psnr": -0.5, "ssim": 0.002})
        ('better', 'mixed')
    """
    signs = [0 if abs(d) < TIE[m] else (1 if d > 0 else -1) for m, d in differences.items()]
    if all(s == 0 for s in signs):
        return "tie"
    if all(s >= 0 for s in signs):
        return "better"
    if all(s <= 0 for s in signs):
        return "worse"
    return "mixed"


def _psnr_front(points: list[dict[str, Any]], basis: str = "mean") -> list[tuple[float, float]]:
    return pareto_front((cost(s), metric_value(s, "psnr", basis)) for s in points)


def flag_degenerate(summary: list[dict[str, Any]]) -> None:
    """Mark (in place: ``degenerate``, ``degenerate_reason``) each point whose mean-MSE PSNR lies more than
    :data:`DEGENERATE_DB` below the PSNR front of *every* other method that reaches its cost.

    Such a point has collapsed (e.g. a detail threshold so loose that one early residual is replayed for the
    whole run); counting it would say more about the grid than about the method. A point no other method
    can be compared with at its cost is never degenerate.
    """
    for s in summary:
        s["degenerate"], s["degenerate_reason"] = False, None
    by_steps: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for s in summary:
        if s["method"] != "none":
            by_steps[s["steps"]][s["method"]].append(s)
    for methods in by_steps.values():
        fronts = {m: _psnr_front(points) for m, points in methods.items()}
        for method, points in methods.items():
            for s in points:
                others = [front_value(f, cost(s)) for m, f in fronts.items() if m != method]
                others = [v for v in others if v is not None]
                own = metric_value(s, "psnr")
                if others and own < min(others) - DEGENERATE_DB:
                    s["degenerate"] = True
                    s["degenerate_reason"] = (f"PSNR {own:.1f} dB, more than {DEGENERATE_DB:g} dB below every other "
                                              f"method at {cost(s):.1%} FLOPs (lowest front: {min(others):.1f} dB)")


def _status(point: dict[str, Any], own: list[dict[str, Any]], metrics: tuple[str, ...], basis: str) -> str:
    """'counted', or why the point is not: a duplicate, dominated by another point of its method, degenerate."""
    def vector(s):
        return (cost(s), *(metric_value(s, m, basis) for m in metrics))

    mine = vector(point)
    for other in own:
        if other is point:
            break
        theirs = vector(other)
        if all(abs(a - b) <= EPS for a, b in zip(mine, theirs)):
            return f"duplicate of {other['variant']}"
    for other in own:
        if other is not point and dominates(vector(other), mine):
            return f"dominated by {other['variant']}"
    if point.get("degenerate"):
        return "degenerate"
    return "counted"


def _display_psnr(value: float | None) -> float | None:
    return None if value is None or value >= PSNR_IDENTICAL - 1e-6 else value


def compare_with_fronts(summary: list[dict[str, Any]], subjects: tuple[str, ...] = SUBJECTS,
                        peers: tuple[str, ...] = PEERS, basis: str = "mean") -> list[dict[str, Any]]:
    """One row per (subject point, peer) at the same step count: the peer's front there and the verdict.

    ``status`` says whether the row is counted (see the module docstring); ``counted`` is True only for
    counted points with a verdict.
    """
    metrics = verdict_metrics(summary, basis)
    rows = []
    for steps in sorted({s["steps"] for s in summary}):
        here = [s for s in summary if s["steps"] == steps]
        for subject in (m for m in dict.fromkeys(s["method"] for s in here) if m in subjects):
            own = [s for s in here if s["method"] == subject and cost(s) < RAN_EVERYTHING]
            for peer in (p for p in peers if p != subject):
                peer_points = [s for s in here if s["method"] == peer and not s.get("degenerate")]
                if not peer_points:
                    continue
                fronts = {m: pareto_front((cost(s), metric_value(s, m, basis)) for s in peer_points)
                          for m in metrics}
                reached_front = pareto_front(peer_points, key=lambda s: (cost(s), metric_value(s, metrics[0], basis)))
                for point in own:
                    rows.append(_row(point, peer, own, fronts, reached_front, metrics, basis))
    return rows


def _row(point: dict[str, Any], peer: str, own: list[dict[str, Any]], fronts: dict[str, list],
         reached_front: list[dict[str, Any]], metrics: tuple[str, ...], basis: str) -> dict[str, Any]:
    at = cost(point)
    values = {m: front_value(fronts[m], at) for m in metrics}
    reached = [s for s in reached_front if cost(s) <= at + EPS]
    best = reached[-1] if reached else None
    status = _status(point, own, metrics, basis)
    if any(v is None for v in values.values()):
        result = None
        if status == "counted":
            status = "peer reaches nothing this cheap"
    else:
        result = verdict({m: metric_value(point, m, basis) - values[m] for m in metrics})
    psnr_front = fronts.get("psnr")
    ssim_front = fronts.get("ssim")
    front_psnr = front_value(psnr_front, at) if psnr_front else None
    return {
        "steps": point["steps"], "basis": basis, "metrics": list(metrics),
        "subject_method": point["method"], "subject": point["variant"], "cost": at,
        "blocks_share": point["blocks_share"], "flops_share": point.get("flops_share"),
        "psnr": _display_psnr(metric_value(point, "psnr", basis)), "ssim": metric_value(point, "ssim", basis),
        "lpips": point.get("lpips"), "peer_method": peer,
        "peer_front_psnr": _display_psnr(front_psnr),
        "peer_front_identical": front_psnr is not None and _display_psnr(front_psnr) is None,
        "peer_front_ssim": front_value(ssim_front, at) if ssim_front else None,
        "peer_front_lpips": -values["lpips"] if values.get("lpips") is not None else None,
        "peer_best_reached": best["variant"] if best else None,
        "peer_best_reached_cost": cost(best) if best else None,
        "peer_best_reached_psnr": (_display_psnr(best_reached(psnr_front, at)) if psnr_front and best else None),
        "verdict": result, "status": status, "counted": status == "counted" and result is not None,
    }


def verdict_counts(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per 'subject vs peer @ N steps': how many counted points are better, worse, mixed or tied."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        if r["counted"]:
            counts[f"{r['subject_method']} vs {r['peer_method']} @ {r['steps']} steps"][r["verdict"]] += 1
    return {k: dict(v) for k, v in counts.items()}


def exclusion_counts(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per 'subject vs peer @ N steps': why the points not counted were left out."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        if not r["counted"]:
            reason = r["status"].split(" by ")[0].split(" of ")[0]  # 'dominated', 'duplicate', 'degenerate', ...
            counts[f"{r['subject_method']} vs {r['peer_method']} @ {r['steps']} steps"][reason] += 1
    return {k: dict(v) for k, v in counts.items()}


def sample_sufficiency(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Prompts and seeds behind the verdicts, and a warning when there are fewer than 8 prompts x 2 seeds."""
    prompts = len({r["prompt_index"] for r in rows})
    seeds = len({r["seed"] for r in rows})
    enough = prompts >= MIN_VERDICT_PROMPTS and seeds >= MIN_VERDICT_SEEDS
    warning = None if enough else (
        f"only {prompts} prompt(s) x {seeds} seed(s): verdicts need at least {MIN_VERDICT_PROMPTS} prompts x "
        f"{MIN_VERDICT_SEEDS} seeds; the counts below are not evidence either way")
    return {"prompts": prompts, "seeds": seeds, "enough": enough, "warning": warning}
