"""The JSON API and the page say "unknown" for a photo of none of the run's species, and still show
the closest species; a run without trust files answers as before, with unknown = null."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from plantid.serve.app import create_app
from tests.support.images import class_pixels, jpeg_bytes

CHROMIUM = Path("/usr/bin/chromium")


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


NOISE = _png(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8))


def test_api_answers_unknown_with_scores(trust_run: Path) -> None:
    with TestClient(create_app(trust_run)) as client:
        card = client.get("/api/model").json()
        assert card["trust"]["threshold"] > 0 and card["trust"]["detector"]
        odd = client.post("/api/predict", files={"file": ("noise.png", NOISE, "image/png")}).json()
        own = client.post("/api/predict", files={
            "file": ("leaf.jpg", jpeg_bytes(class_pixels(1, 32, 32, np.random.default_rng(7))), "image/jpeg")}).json()
    assert odd["unknown"] is True and odd["ood_score"] > odd["ood_threshold"] == card["trust"]["threshold"]
    assert len(odd["top_k"]) >= 1 and odd["top_k"][0]["label"] in card["classes"]  # the closest, still given
    assert own["unknown"] is False and own["ood_score"] <= own["ood_threshold"]
    assert own["top_k"][0]["label"] == "b" and own["calibrated"] is True


def test_api_without_trust_files_is_unchanged(trust_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(trust_run, tmp_path / "run"))
    (run / "trust.json").unlink()
    with TestClient(create_app(run)) as client:
        body = client.post("/api/predict", files={"file": ("noise.png", NOISE, "image/png")}).json()
        assert client.get("/api/model").json()["trust"] is None
    assert body["unknown"] is None and body["ood_score"] is None and body["calibrated"] is False
    assert abs(sum(p["probability"] for p in body["top_k"]) - 1.0) < 1e-4


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium")
def test_page_says_the_photo_is_none_of_the_species(trust_run: Path, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    from tests.support.launch import running_server

    noise = tmp_path / "noise.png"
    noise.write_bytes(NOISE)
    leaf = tmp_path / "leaf.jpg"
    leaf.write_bytes(jpeg_bytes(class_pixels(0, 32, 32, np.random.default_rng(8))))
    with running_server(trust_run, timeout=90, log_path=tmp_path / "serve.log") as base, \
            sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(base + "/")
            page.wait_for_selector("#model-chip[data-state='ready']")
            page.set_input_files("#file-input", str(noise))
            page.wait_for_selector("#result:not([hidden]).unknown")
            text = page.locator("#best").inner_text()
            assert "does not look like any of the 3 species" in text and "Closest:" in text
            assert page.locator("#bars .bar-row").count() >= 1  # the closest ones, greyed
            grey = page.eval_on_selector("#bars .bar-row.top .bar-fill", "e => getComputedStyle(e).backgroundColor")
            page.screenshot(path=str(tmp_path / "unknown.png"), full_page=True)
            page.set_input_files("#file-input", str(leaf))
            page.wait_for_selector("#result:not([hidden]):not(.unknown)")
            assert page.locator("#best-label").inner_text().strip() == "a"
            green = page.eval_on_selector("#bars .bar-row.top .bar-fill", "e => getComputedStyle(e).backgroundColor")
            assert grey != green
        finally:
            browser.close()
    artifacts = Path(__file__).resolve().parents[2] / "test-artifacts" / "serve"
    artifacts.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "unknown.png", artifacts / "unknown.png")
