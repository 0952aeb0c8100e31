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
    assert [_ssim_tick(v) for v in (0.9, 0.99, 0.999, 0.2, 1.0)] == ["0.9", "0.99", "0.999", "0.2", "1"]


def test_a_run_whose_ssim_spans_0_93_to_0_994_is_plotted(tmp_path):
    """A real 28-step run's SSIM values (one method, eight points) once made the logit axis ask for a tick
    label at 1.0, which raised a math domain error and lost the run's report."""
    ssims = (0.9688, 0.9894, 0.9326, 0.9877, 0.9931, 0.9935, 0.9760, 0.9872)
    shares = (0.345, 0.400, 0.271, 0.389, 0.411, 0.449, 0.365, 0.405)
    rows = [{"steps": 28, "method": "h2cache-guarded-forecast", "variant": f"v{i}", "settings": {},
             "blocks_share": share, "flops_share": share, "psnr": 30.0 + 30 * share, "identical": False,
             "ssim": ssim, "lpips": None, "lpips_reason": None, "speedup_denoise": 1 / share, "degenerate": False}
            for i, (ssim, share) in enumerate(zip(ssims, shares))]
    written = write_plots(tmp_path, rows)
    assert "ssim_vs_flops.png" in written and (tmp_path / "ssim_vs_flops.png").stat().st_size > 0
