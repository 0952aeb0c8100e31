"""Drive the app in headless Chromium (Debian's /usr/bin/chromium through Playwright): tests and screenshots."""

from __future__ import annotations

import os
from typing import Any

CHROMIUM = os.environ.get("H2CACHE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def set_number(page: Any, elem_id: str, value: float) -> None:
    """Type into the number box of a slider or number component."""
    box = page.locator(f"#{elem_id} input[type=number]")
    # Right after the page loads, a component can still be wiring up its handlers and drop a value typed
    # into it; type again until the box keeps it.
    for _ in range(5):
        box.fill(str(value))
        box.press("Enter")
        page.wait_for_timeout(100)
        if float(box.input_value() or "nan") == float(value):
            return
    raise AssertionError(f"#{elem_id} did not keep the value {value}")


def run_comparison_in_page(page: Any, url: str, prompt: str, steps: int | None = None, timeout_ms: int = 180_000,
                           **numbers: float) -> None:
    """Open the app, type `prompt`, optionally set steps and other numbers (by elem_id, e.g. tau1=0.3),
    click Generate, and wait for the metrics table."""
    page.goto(url, wait_until="domcontentloaded")
    prompt_box = page.locator("#prompt textarea")
    prompt_box.wait_for(state="visible", timeout=timeout_ms)
    prompt_box.fill(prompt)
    if steps is not None:
        numbers["steps"] = steps
    for elem_id, value in numbers.items():
        set_number(page, elem_id, value)
    page.locator("#generate").click()
    # The table is filled only by a finished comparison; the images arrive in the same update.
    page.locator("#metrics").get_by_text("PSNR vs baseline").wait_for(timeout=timeout_ms)
    for elem_id in ("baseline-image", "cached-image"):
        page.locator(f"#{elem_id} img").wait_for(state="visible", timeout=timeout_ms)
