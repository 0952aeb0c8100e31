"""Plots: a distinct colour and marker per method, deterministic axes first, no 1 - SSIM stand-in for LPIPS."""

from __future__ import annotations

from bench.plots import _ssim_tick, write_plots
from bench.styles import method_style
from h2cache.methods import METHODS


def test_every_method_and_variant_has_its_own_colour_and_marker():
    styles = {name: method_style(name) for name in METHODS}
    colours = [c for c, _ in styles.values()]
    markers = [m for _, m in styles.values()]
    assert len(set(colours)) == len(colours) and len(set(markers)) == len(markers)
    # the one-probe variants were once drawn in FirstBlockCache's blue
    for variant in ("h2cache-one-probe", "h2cache-guarded-one-probe", "fbcache-guarded"):
        assert styles[variant][0] != styles["fbcache"][0]


def summary_rows(lpips):
    rows = []
    for method, shift in (("h2cache", 0.0), ("fbcache", 1.0), ("h2cache-one-probe", 0.5)):
        for share, psnr, ssim in ((0.4, 30.0, 0.98), (0.6, 38.0, 0.995), (0.8, 45.0, 0.999)):
            rows.append({"steps": 28, "method": method, "variant": f"{method}({share})", "settings": {},
                         "blocks_share": share, "flops_share": share, "psnr": psnr + shift, "identical": False,
                         "ssim": ssim, "lpips": (1 - ssim) if lpips else None, "lpips_reason": None,
                         "speedup_denoise": 1 / share, "degenerate": share == 0.4 and method == "h2cache"})
    return rows


def test_plots_put_the_flops_axes_first_and_plot_lpips_only_when_measured(tmp_path):
    written = write_plots(tmp_path, summary_rows(lpips=False))
    assert written[:2] == ["psnr_vs_flops.png", "ssim_vs_flops.png"]
    assert "speedup_vs_lpips.png" not in written and not (tmp_path / "speedup_vs_lpips.png").exists()
    assert all((tmp_path / name).stat().st_size > 0 for name in written)
    (tmp_path / "with").mkdir()
    assert "speedup_vs_lpips.png" in write_plots(tmp_path / "with", summary_rows(lpips=True))


def test_ssim_ticks_read_as_numbers():
    assert [_ssim_tick(v) for v in (0.9, 0.99, 0.999, 0.2)] == ["0.9", "0.99", "0.999", "0.2"]
