"""Save a full-page screenshot of the app after a real comparison.

    python -m devtools.screenshot [--out docs/screenshot.png] [--url http://127.0.0.1:7860/]

Without --url it starts app.py on a free port (H2CACHE_EMBEDDED_MODEL is passed through).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .browser import launch_chromium, run_comparison_in_page
from .local_server import ROOT, LocalApp
from ui.settings import load_settings


def take_screenshot(url: str, out: Path, prompt: str, steps: int | None = None, **numbers: float) -> Path:
    from playwright.sync_api import sync_playwright

    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            run_comparison_in_page(page, url, prompt, steps, **numbers)
            page.locator("#compute-map img").wait_for(state="visible")
            page.wait_for_timeout(500)  # let images and plots finish painting
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()
    return out


def main() -> None:
    settings = load_settings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    parser.add_argument("--url", help="an app that is already running; default: start app.py")
    parser.add_argument("--prompt", default=settings.defaults.prompt)
    parser.add_argument("--steps", type=int, default=None, help="default: the model's default")
    parser.add_argument("--tau1", type=float, default=None, help="default: space.yaml's")
    parser.add_argument("--tau2", type=float, default=None, help="default: space.yaml's")
    args = parser.parse_args()
    numbers = {k: v for k, v in (("tau1", args.tau1), ("tau2", args.tau2)) if v is not None}
    if args.url:
        path = take_screenshot(args.url, args.out, args.prompt, args.steps, **numbers)
    else:
        with LocalApp() as app:
            path = take_screenshot(app.url, args.out, args.prompt, args.steps, **numbers)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
