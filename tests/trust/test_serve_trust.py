"""The JSON API and the page say "unknown" for a photo of none of the run's species, and still show
the closest species; a run without trust files answers as before, with unknown = null."""

from __future__ import annotations

import io
import json
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


def _edit_trust(run: Path, **values: float) -> None:
    """Change numbers in the run's trust.json only (the detector and checkpoint stay as fitted)."""
    meta = json.loads((run / "trust.json").read_text())
    meta.update(values)
    (run / "trust.json").write_text(json.dumps(meta))


def _clear_and_doubtful(run: Path) -> tuple[bytes, bytes, float]:
    """(a photo named with confidence, a known-looking photo less sure, an answer level between them).

    The tiny model gives every photo of its species ~100%; a higher temperature spreads its
    probabilities so that photos of different classes differ (the unknown score does not read it).
    """
    from plantid.infer.predictor import Predictor

    _edit_trust(run, temperature=2.0)
    predictor = Predictor.from_run(run)
    photos = [jpeg_bytes(class_pixels(c, 32, 32, np.random.default_rng(20 + s))) for c in range(3) for s in range(3)]
    known = [(p.top[0][1], photo) for p, photo in zip(predictor.predict(photos), photos) if not p.unknown]
    (low, doubtful), (high, clear) = min(known), max(known)
    assert high - low > 0.02, "the blends should differ in confidence"
    return clear, doubtful, (low + high) / 2


def test_api_names_unsure_between_two_below_the_answer_level(trust_run_copy: Path) -> None:
    clear, doubtful, level = _clear_and_doubtful(trust_run_copy)
    _edit_trust(trust_run_copy, answer_level=level)
    with TestClient(create_app(trust_run_copy)) as client:
        named = client.post("/api/predict", files={"file": ("a.jpg", clear, "image/jpeg")}).json()
        unsure = client.post("/api/predict", files={"file": ("ab.jpg", doubtful, "image/jpeg")}).json()
        odd = client.post("/api/predict", files={"file": ("noise.png", NOISE, "image/png")}).json()
    assert named["answer"]["kind"] == "species" and named["answer"]["species"] == [named["top_k"][0]["label"]]
    assert unsure["answer"]["kind"] == "unsure" and unsure["answer_level"] == pytest.approx(level)
    assert unsure["answer"]["species"] == [t["label"] for t in unsure["top_k"][:2]]
    assert unsure["answer"]["text"].startswith("Unsure between ")
    assert odd["answer"]["kind"] == "unknown" and odd["answer"]["text"].startswith("Not one of the 3 species")


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium")
def test_page_gives_each_of_the_three_answers(trust_run_copy: Path, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    from tests.support.launch import running_server

    clear, doubtful, level = _clear_and_doubtful(trust_run_copy)
    _edit_trust(trust_run_copy, answer_level=level)
    photos = {"noise.png": NOISE, "clear.jpg": clear, "doubtful.jpg": doubtful}
    for name, data in photos.items():
        (tmp_path / name).write_bytes(data)
    with running_server(trust_run_copy, timeout=180, log_path=tmp_path / "serve.log") as base, \
            sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(base + "/")
            page.wait_for_selector("#model-chip[data-state='ready']")
            page.set_input_files("#file-input", str(tmp_path / "noise.png"))
            page.wait_for_selector("#result:not([hidden]).unknown")
            text = page.locator("#best").inner_text()
            assert "does not look like any of the 3 species" in text and "Closest:" in text
            assert page.locator("#bars .bar-row").count() >= 1  # the closest ones, greyed
            grey = page.eval_on_selector("#bars .bar-row.top .bar-fill", "e => getComputedStyle(e).backgroundColor")
            page.screenshot(path=str(tmp_path / "unknown.png"), full_page=True)
            page.set_input_files("#file-input", str(tmp_path / "doubtful.jpg"))
            page.wait_for_selector("#best.unsure")
            assert page.locator("#best-eyebrow").inner_text().strip().lower() == "unsure between two species"
            assert " or " in page.locator("#best-label").inner_text()
            page.screenshot(path=str(tmp_path / "unsure.png"), full_page=True)
            page.set_input_files("#file-input", str(tmp_path / "clear.jpg"))
            page.wait_for_selector("#result:not([hidden]):not(.unknown) #best:not(.unsure)")
            assert page.locator("#best-label").inner_text().strip() in ("a", "b", "c")
            green = page.eval_on_selector("#bars .bar-row.top .bar-fill", "e => getComputedStyle(e).backgroundColor")
            assert grey != green
            page.screenshot(path=str(tmp_path / "species.png"), full_page=True)
        finally:
            browser.close()
    artifacts = Path(__file__).resolve().parents[2] / "test-artifacts" / "serve"
    artifacts.mkdir(parents=True, exist_ok=True)
    for name in ("unknown.png", "unsure.png", "species.png"):
        shutil.copy(tmp_path / name, artifacts / name)


def test_several_files_to_predict_are_a_400_naming_the_endpoint_for_several(trust_run: Path) -> None:
    photo = jpeg_bytes(class_pixels(1, 32, 32, np.random.default_rng(7)))
    with TestClient(create_app(trust_run)) as client:
        two = client.post("/api/predict", files=[("file", ("a.jpg", photo, "image/jpeg")),
                                                 ("file", ("b.jpg", photo, "image/jpeg"))])
        five = client.post("/api/predict", files=[("file", (f"{i}.jpg", photo, "image/jpeg")) for i in range(5)])
        one = client.post("/api/predict", files={"file": ("a.jpg", photo, "image/jpeg")})
    assert two.status_code == 400 and "/api/identify" in two.json()["detail"]
    assert five.status_code == 400 and "/api/identify" in five.json()["detail"]
    assert one.status_code == 200


def test_gradcam_gives_the_calibrated_probability_predict_gives(trust_run: Path) -> None:
    photo = jpeg_bytes(class_pixels(0, 32, 32, np.random.default_rng(5)))
    with TestClient(create_app(trust_run)) as client:
        predicted = client.post("/api/predict", files={"file": ("a.jpg", photo, "image/jpeg")}).json()
        cam = client.post("/api/gradcam", files={"file": ("a.jpg", photo, "image/jpeg")})
    if cam.status_code == 409:
        pytest.skip("this run's model has no Grad-CAM layer")
    body = cam.json()
    assert predicted["calibrated"] is True
    assert body["label"] == predicted["top_k"][0]["label"]
    assert body["probability"] == pytest.approx(predicted["top_k"][0]["probability"], abs=1e-5)
