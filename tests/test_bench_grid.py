"""One grid rule for every method and variant (bench.autogrid), on synthetic share curves."""

from __future__ import annotations

import pytest

from bench.autogrid import OFF_TARGET, Score, knob_for, select_grids
from h2cache.budget_search import QUALITY_TIE
from h2cache.calibrate import RATIOS
from bench.spec import expand_variants
from h2cache.methods import METHODS, get_method

TARGETS = (0.85, 0.65, 0.45, 0.3)
GUARDED = {"h2cache-guarded", "h2cache-guarded-one-probe", "fbcache-guarded", "teacache-guarded"}


def fake_measure(calls):
    """Share of FLOPs run falling with the knob; guarded methods level off at 42% (their guards cap reuse),
    TaylorSeer at 70% (it still runs every MLP). PSNR rises with the share; on H2-Cache's lines it is best
    where tau2 is largest relative to tau1, so the search has a line to prefer."""
    def measure(method, settings):
        calls.append((method, dict(settings)))
        if method == "taylorseer":
            share = 0.7 + 0.3 / settings["cache_interval"]
            return Score(share, (20 + 30 * share,))
        value = settings.get("threshold", settings.get("tau1"))
        floor = 0.42 if method in GUARDED else 0.05
        share = max(floor, 1.0 / (1.0 + 8.0 * value))
        bonus = settings["tau2"] / settings["tau1"] if "tau2" in settings else 0.0
        return Score(share, (20 + 30 * share + bonus, 20 + 30 * share + bonus - 2))
    return measure


@pytest.fixture(scope="module")
def chosen():
    calls = []
    methods = tuple(m for m in METHODS if m != "none")
    grids, record = select_grids(methods, {}, TARGETS, fake_measure(calls), log=lambda msg: None)
    return grids, record, calls


def test_every_registered_method_has_a_knob():
    for name, method in METHODS.items():
        assert (knob_for(method) is None) == (name == "none"), name


def test_every_method_and_variant_gets_the_same_number_of_points_per_target(chosen):
    grids, record, calls = chosen
    assert set(grids) == set(METHODS) - {"none"}  # the one-probe variants included: no followers
    for method, found in record.items():
        assert [p["target"] for p in found["targets"]] == list(TARGETS), method
        assert found["default"] in grids[method], method  # plus the default, for every method
        assert len(grids[method]) <= len(TARGETS) + 1
    # each variant was scanned on its own, not handed another method's values
    scanned = {method for method, _ in calls}
    assert {"h2cache-one-probe", "h2cache-guarded-one-probe", "fbcache-guarded", "teacache-guarded"} <= scanned


def test_h2cache_points_come_from_calibrates_search_lines(chosen):
    grids, record, calls = chosen
    searched = [s for m, s in calls if m == "h2cache"]
    assert {round(s["tau2"] / s["tau1"], 2) for s in searched} == set(RATIOS)  # every line searched
    for point in record["h2cache"]["targets"]:
        # the measure favours the widest ratio at equal share: the pick is made on quality, not share alone
        assert point["settings"]["tau2"] == pytest.approx(point["settings"]["tau1"] * RATIOS[-1], rel=5e-3)
    assert {"tau1": 0.15, "tau2": 0.22} in grids["h2cache"]  # the published default, as one more point
    variants = expand_variants(["h2cache"], {"h2cache": grids["h2cache"]})
    assert len(variants) == len(grids["h2cache"])  # points, not a tau1 x tau2 product


def test_each_reachable_point_is_the_best_psnr_within_five_points_under_its_target_ties_to_the_larger_share(chosen):
    _, record, _ = chosen
    for method, found in record.items():
        for point in found["targets"]:
            if point["off_target"]:
                continue
            target = point["target"]
            assert target - OFF_TARGET - 1e-9 <= point["share"] <= target + 1e-9, (method, point)
            window = [c for c in found["curve"] if target - OFF_TARGET - 1e-9 <= c["share"] <= target + 1e-9]
            best = max(c["median_psnr"] for c in window)
            tied = [c for c in window if c["median_psnr"] >= best - QUALITY_TIE]
            assert point["share"] == max(c["share"] for c in tied), (method, target)


def test_unreachable_targets_get_the_saturation_point_and_are_flagged(chosen):
    _, record, _ = chosen
    guarded = record["fbcache-guarded"]
    low = next(p for p in guarded["targets"] if p["target"] == 0.3)
    assert low["off_target"] and low["share"] == pytest.approx(0.42)
    # the scan stopped on the plateau, and the point chosen is where the plateau starts, not a looser value
    assert guarded["saturated_at"] == [low["value"]]
    assert max(c["value"] for c in guarded["curve"]) > low["value"]
    reachable = record["fbcache"]
    assert not any(p["off_target"] for p in reachable["targets"])
    assert all(abs(p["share"] - p["target"]) <= OFF_TARGET for p in reachable["targets"])


def test_explicit_grids_are_left_alone():
    calls = []
    grids, record = select_grids(("h2cache", "fbcache"), {"fbcache": {"threshold": (0.1,)}}, TARGETS,
                                 fake_measure(calls), log=lambda msg: None)
    assert set(grids) == {"h2cache"} and {m for m, _ in calls} == {"h2cache"}


def test_scans_hold_every_other_setting_at_its_default(chosen):
    _, _, calls = chosen
    for method, settings in calls:
        knob = knob_for(get_method(method))
        assert set(settings) == set(knob.keys), method
