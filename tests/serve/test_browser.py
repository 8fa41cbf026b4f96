"""The page in a real browser: `plantid serve` in a subprocess, driven by headless Chromium.

Uploads a real JPEG through the file input, checks the species and the probability bars, adds
a second photo of the same plant (one combined answer),
turns on Grad-CAM and checks the heat-map overlay, shows an error for a bad file, and saves
desktop (1280x800) and phone (390x844) screenshots to test-artifacts/serve/ at the repo root.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.browser import NEEDS_CHROMIUM, wait_until
from tests.support.launch import ServerStartError, running_server

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "serve"
STARTUP_TIMEOUT_S = 90

pytestmark = [pytest.mark.browser, NEEDS_CHROMIUM]


def _leaf_jpeg(path: Path, size: int = 96, seed: int = 0) -> Path:
    """A real JPEG that looks vaguely like a leaf on soil: green ellipse, brown background, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    leaf = ((xx - 0.5) / 0.32) ** 2 + ((yy - 0.5) / 0.42) ** 2 < 1.0
    img = np.where(leaf[..., None], [60, 150, 70], [120, 95, 70]).astype(np.float32)
    img += rng.normal(0, 12, size=img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)
    return path


@pytest.fixture(scope="module")
def run_dir(trained_run: Path) -> Path:
    """The session's tiny run (tests/conftest.py); its labels include HTML characters the page must escape."""
    return trained_run


@pytest.fixture(scope="module")
def server(run_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """`plantid serve RUN` on a free loopback port; always terminated."""
    log_path = tmp_path_factory.mktemp("serve_log") / "serve.log"
    try:
        with running_server(run_dir, timeout=STARTUP_TIMEOUT_S, log_path=log_path) as base:
            yield base
    except ServerStartError as exc:
        pytest.fail(str(exc))


def _save(page, tmp_path: Path, name: str) -> None:
    shot = tmp_path / f"{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / shot.name)


def _open(browser, base: str, width: int, height: int):
    context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(30_000)
    outside: list[str] = []
    page.on("request", lambda req: outside.append(req.url)
            if not req.url.startswith((base, "data:", "blob:")) else None)
    page.goto(base + "/")
    page.wait_for_selector("#model-chip[data-state='ready']")
    return context, page, outside


def test_desktop_predict_gradcam_and_errors(server: str, browser, run_dir: Path, tmp_path: Path) -> None:
    classes = json.loads((run_dir / "labels.json").read_text(encoding="utf-8"))
    image_size = json.loads((run_dir / "train_summary.json").read_text(encoding="utf-8"))["image_size"]
    photo = _leaf_jpeg(tmp_path / "leaf.jpg")
    context, page, outside = _open(browser, server, 1280, 800)
    try:
        assert page.title().startswith("plantid")
        assert page.locator("#stat-backbone").inner_text().strip() not in ("", "–")
        _save(page, tmp_path, "desktop-empty")

        # keyboard: the file picker is reachable with Tab (the real input, visually hidden)
        page.keyboard.press("Tab")
        for _ in range(6):
            if page.evaluate("document.activeElement && document.activeElement.id") == "file-input":
                break
            page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "file-input"

        page.set_input_files("#file-input", str(photo))
        page.wait_for_selector("#result:not([hidden])")
        best = page.locator("#best-label").inner_text().strip()
        assert best in classes
        rows = page.locator("#bars .bar-row")
        assert rows.count() == min(5, len(classes))
        assert rows.first.get_attribute("class").split() == ["bar-row", "top"]
        assert rows.first.locator(".bar-label").inner_text().strip() == best
        wait_until(page, "document.querySelector('#bars .bar-row.top .bar-fill').getBoundingClientRect().width > 0")
        assert "%" in rows.first.locator(".bar-value").inner_text()
        assert page.locator("#preview-img").get_attribute("alt").startswith("Your photo")
        page.wait_for_timeout(700)  # let the bars finish their animation for the screenshot
        _save(page, tmp_path, "desktop-result")

        # Grad-CAM with the keyboard: focus the switch and press Space
        toggle = page.locator("#cam-toggle")
        assert toggle.is_enabled()
        toggle.focus()
        page.keyboard.press("Space")
        assert toggle.is_checked()
        page.wait_for_selector("#overlay-img.visible")
        overlay = page.locator("#overlay-img")
        assert overlay.get_attribute("src").startswith("data:image/png;base64,")
        assert page.evaluate("document.querySelector('#overlay-img').naturalWidth") == image_size
        assert "heat-map" in overlay.get_attribute("alt").lower()
        box_photo = page.locator("#preview-img").bounding_box()
        box_overlay = overlay.bounding_box()
        assert box_overlay and box_photo and abs(box_overlay["width"] - box_photo["width"]) < 1.5
        page.wait_for_timeout(500)
        _save(page, tmp_path, "desktop-gradcam")

        # a bad file: a clear message in the page, then a good photo works again
        page.set_input_files("#file-input", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a photo"}])
        page.wait_for_selector("#error:not([hidden])")
        message = page.locator("#error").inner_text().lower()
        assert "not an image" in message or "text/plain" in message
        assert page.locator("#result").is_hidden()
        _save(page, tmp_path, "desktop-error")
        page.set_input_files("#file-input", str(photo))
        page.wait_for_selector("#result:not([hidden])")
        assert page.locator("#error").is_hidden()
        assert outside == [], f"the page fetched outside resources: {outside}"
    finally:
        context.close()


def test_phone_layout(server: str, browser, run_dir: Path, tmp_path: Path) -> None:
    classes = json.loads((run_dir / "labels.json").read_text(encoding="utf-8"))
    photo = _leaf_jpeg(tmp_path / "leaf.jpg", size=120, seed=3)
    context, page, outside = _open(browser, server, 390, 844)
    try:
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        _save(page, tmp_path, "phone-empty")
        page.set_input_files("#file-input", str(photo))
        page.wait_for_selector("#result:not([hidden])")
        assert page.locator("#best-label").inner_text().strip() in classes
        # a second photo of the same plant: one combined answer from /api/identify
        second = _leaf_jpeg(tmp_path / "leaf2.jpg", size=100, seed=4)
        page.set_input_files("#add-input", str(second))
        page.wait_for_selector("#result-note:has-text('2 photos of one plant')")  # the page's CSP forbids eval
        assert page.locator("#thumbs .thumb").count() == 2
        assert page.locator("#best-label").inner_text().strip() in classes
        page.locator("label.switch").click()
        page.wait_for_selector("#overlay-img.visible")
        page.wait_for_timeout(700)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, "horizontal scrolling on a phone"
        # the photo fits the screen
        box = page.locator("#preview-img").bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390
        _save(page, tmp_path, "phone-result")
        assert outside == []
    finally:
        context.close()
