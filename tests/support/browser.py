"""Headless Debian Chromium driven by Playwright, for the tests that look at pages (web page, report)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NEEDS_CHROMIUM = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at "
                                    "/usr/bin/chromium (apt-get install chromium, or `make browser-deps`)")


def launch_chromium() -> Iterator:
    """A Playwright Chromium browser with a fresh temporary profile, closed when the generator ends."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def wait_until(page, expression: str, timeout_s: float = 10.0) -> None:
    """Poll a JavaScript expression until it is truthy. Playwright's wait_for_function polls through
    eval inside the page, which a page served with `script-src 'self'` refuses once the first check
    is false (a bar still growing through its CSS transition); page.evaluate is not subject to it."""
    waited = 0.0
    while not page.evaluate(expression):
        if waited >= timeout_s:
            raise AssertionError(f"still false after {timeout_s:g} s: {expression}")
        page.wait_for_timeout(50)
        waited += 0.05
