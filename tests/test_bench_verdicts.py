"""Verdicts against each peer's Pareto front, on constructed points (no model runs)."""

from __future__ import annotations

import pytest

from bench.fronts import best_reached, front_value, pareto_front
from bench.quality import aggregate_quality
from bench.verdicts import (
    compare_with_fronts, exclusion_counts, flag_degenerate, sample_sufficiency, verdict, verdict_counts,
)


def point(method, share, psnr, ssim, steps=28, name=None, **extra):
    """A summary row: `share` of FLOPs (and blocks) run, mean-MSE PSNR `psnr` dB, SSIM `ssim`."""
    return {"steps": steps, "method": method, "variant": name or f"{method}({share:g},{psnr:g})",
            "blocks_share": share, "flops_share": share, "mse": 65025 / 10 ** (psnr / 10), "psnr": psnr,
            "ssim": ssim, "lpips": None, **extra}


# FirstBlockCache's front: (0.3, 22 dB) - (0.5, 40 dB) - (0.8, 50 dB); (0.4, 15 dB) is a dominated raw point
# between two front points, as FirstBlockCache's real grid had one.
FBC = [point("fbcache", 0.3, 22.0, 0.90), point("fbcache", 0.4, 15.0, 0.70), point("fbcache", 0.5, 40.0, 0.99),
       point("fbcache", 0.8, 50.0, 0.999)]


def compare(subject_points, peer_points=FBC, **kwargs):
    return compare_with_fronts(subject_points + peer_points, subjects=("h2cache",), peers=("fbcache",), **kwargs)


def test_point_below_the_front_loses_and_above_wins():
    # front at 0.4: 22 + (40 - 22) * 0.5 = 31 dB, SSIM 0.945
    [below] = compare([point("h2cache", 0.4, 29.9, 0.94)])
    [above] = compare([point("h2cache", 0.4, 32.0, 0.95)])
    assert below["peer_front_psnr"] == pytest.approx(31.0) and below["peer_front_ssim"] == pytest.approx(0.945)
    assert below["verdict"] == "worse" and below["counted"]
    assert above["verdict"] == "better" and above["counted"]
    # the best real peer point at no more than 40% of FLOPs is (0.3, 22 dB), not the dominated (0.4, 15 dB)
    assert below["peer_best_reached"] == "fbcache(0.3,22)" and below["peer_best_reached_psnr"] == pytest.approx(22.0)


def test_interpolation_runs_only_along_the_front():
    """The dominated raw point (0.4, 15 dB) must not pull the peer's value down: the published default's
    29.88 dB 'beat' FirstBlockCache only because raw grid points were interpolated."""
    with_dominated = compare([point("h2cache", 0.45, 30.0, 0.96)])
    without = compare([point("h2cache", 0.45, 30.0, 0.96)], [p for p in FBC if p["psnr"] != 15.0])
    assert with_dominated[0]["peer_front_psnr"] == pytest.approx(without[0]["peer_front_psnr"])
    assert with_dominated[0]["peer_front_psnr"] == pytest.approx(22.0 + 18.0 * 0.75)
    assert with_dominated[0]["verdict"] == without[0]["verdict"] == "worse"
    # Interpolating between raw grid points (0.4, 15 dB) and (0.5, 40 dB) would have given 27.5 dB: a 'win'.
    assert pareto_front([(0.3, 22.0), (0.4, 15.0), (0.5, 40.0)]) == [(0.3, 22.0), (0.5, 40.0)]


def test_front_is_flat_past_its_dearest_point_and_undefined_below_its_cheapest():
    rows = compare([point("h2cache", 0.9, 49.0, 0.9985), point("h2cache", 0.2, 20.0, 0.85)])
    dear, cheap = rows
    assert dear["peer_front_psnr"] == pytest.approx(50.0) and dear["verdict"] == "worse"
    assert cheap["verdict"] is None and not cheap["counted"] and cheap["status"] == "peer reaches nothing this cheap"
    front = pareto_front([(0.3, 22.0), (0.5, 40.0)])
    assert front_value(front, 0.29) is None and best_reached(front, 0.45) == 22.0


def test_duplicates_count_once_and_dominated_points_not_at_all():
    a = point("h2cache", 0.45, 38.0, 0.98, name="h2cache(a)")
    same = point("h2cache", 0.45, 38.0, 0.98, name="h2cache(same images)")
    worse = point("h2cache", 0.47, 36.0, 0.97, name="h2cache(dominated)")
    rows = {r["subject"]: r for r in compare([a, same, worse])}
    assert rows["h2cache(a)"]["counted"]
    assert rows["h2cache(same images)"]["status"] == "duplicate of h2cache(a)"
    assert rows["h2cache(dominated)"]["status"] == "dominated by h2cache(a)"
    assert verdict_counts(list(rows.values())) == {"h2cache vs fbcache @ 28 steps": {"better": 1}}
    assert exclusion_counts(list(rows.values()))["h2cache vs fbcache @ 28 steps"] == {"duplicate": 1, "dominated": 1}


def test_sub_display_differences_are_ties():
    assert verdict({"psnr": 0.0001, "ssim": -0.0001}) == "tie"
    assert verdict({"psnr": 0.1, "ssim": 0.001}) == "better"
    assert verdict({"psnr": 0.1, "ssim": -0.001}) == "mixed"
    assert verdict({"psnr": 0.3, "ssim": -0.0002}) == "better"  # the SSIM difference is below display precision
    hair = compare([point("h2cache", 0.5, 40.0001, 0.98999)])
    assert hair[0]["verdict"] == "tie"


def test_degenerate_points_are_flagged_and_left_out():
    collapsed = point("h2cache", 0.45, 14.5, 0.56, name="h2cache(collapsed)")
    fine = point("h2cache", 0.6, 41.0, 0.992, name="h2cache(fine)")
    cheap = point("h2cache", 0.27, 14.0, 0.50, name="h2cache(cheap)")
    tea = [point("teacache", 0.2, 24.0, 0.91), point("teacache", 0.6, 41.0, 0.995)]
    # a collapsed *peer* point must not extend the peer's front either: it is FirstBlockCache's cheapest
    peer_collapsed = point("fbcache", 0.25, 10.0, 0.4, name="fbcache(collapsed)")
    fbc = [dict(p) for p in FBC]  # flag_degenerate marks its points in place
    summary = [collapsed, fine, cheap, *fbc, peer_collapsed, *tea]
    flag_degenerate(summary)
    assert collapsed["degenerate"] and "below every other method" in collapsed["degenerate_reason"]
    assert peer_collapsed["degenerate"]
    assert not fine["degenerate"] and not any(p["degenerate"] for p in fbc + tea)
    rows = {r["subject"]: r for r in compare_with_fronts(summary, ("h2cache",), ("fbcache",))}
    assert rows["h2cache(collapsed)"]["status"] == "degenerate" and not rows["h2cache(collapsed)"]["counted"]
    assert rows["h2cache(fine)"]["counted"]
    assert not cheap["degenerate"] and rows["h2cache(cheap)"]["status"] == "peer reaches nothing this cheap"
    # Without other methods there is nothing to call it degenerate against.
    alone = [point("h2cache", 0.45, 14.5, 0.56)]
    flag_degenerate(alone)
    assert not alone[0]["degenerate"]


def test_verdicts_can_use_the_median_or_worst_sample():
    """One bad sample: the mean-MSE PSNR and the worst sample see it, the median does not."""
    good = [{"mse": 1.0, "ssim": 0.999}] * 15
    subject_samples = good + [{"mse": 40.0, "ssim": 0.95}]
    peer_samples = [{"mse": 5.0, "ssim": 0.997}] * 16

    def row(method, samples, share):
        return {"steps": 28, "method": method, "variant": method, "blocks_share": share, "flops_share": share,
                **aggregate_quality(samples)}

    summary = [row("h2cache", subject_samples, 0.5), row("fbcache", peer_samples, 0.5)]
    by_basis = {basis: compare_with_fronts(summary, ("h2cache",), ("fbcache",), basis)[0]["verdict"]
                for basis in ("mean", "median", "worst")}
    assert by_basis == {"mean": "mixed", "median": "better", "worst": "worse"}


def test_fewer_than_8_prompts_x_2_seeds_warns():
    rows = [{"prompt_index": p, "seed": s} for p in range(8) for s in (0, 1)]
    assert sample_sufficiency(rows) == {"prompts": 8, "seeds": 2, "enough": True, "warning": None}
    few = sample_sufficiency([r for r in rows if r["seed"] == 0])
    assert not few["enough"] and "8 prompts x 2 seeds" in few["warning"]
