"""`plantid export RUN --format web` in headless Chromium: opened from the folder (file://) and from
a loopback static server, the app answers as `plantid predict --backend onnx` does (same top-1,
probabilities within 1e-4, same unknown), and its file input takes several photos of one plant.

Screenshots of the app at 390 and 1280 px go to test-artifacts/web/ at the repo root.
"""

from __future__ import annotations

import base64
import os
import functools
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plantid.data.split import read_manifest
from plantid.infer.answers import answer_for
from plantid.infer.export import export_run
from plantid.infer.group import combine
from plantid.infer.predictor import Predictor
from plantid.infer.web_export import RUNTIME_ENV, check_runtime
from plantid.errors import PlantidError
from tests.support.browser import NEEDS_CHROMIUM, wait_until
from tests.support.cli import PLANTID, one_line_error

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "web"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def web_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's tiny run with trust files fitted (so answers can be unknown), exported for the web."""
    from plantid.trustfit.fit import fit_trust

    try:
        check_runtime()
    except PlantidError as exc:
        pytest.skip(str(exc))
    run = Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("web") / "run", symlinks=True))
    fit_trust(run)
    export_run(run, "web", quantize=False)
    return run


@pytest.fixture(scope="module")
def photos(web_run: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The run's test photos, plus two that need the preprocessing: a large one and one turned by EXIF."""
    rows = read_manifest(web_run / "split.csv").rows_for("test")
    extra = tmp_path_factory.mktemp("web-photos")
    first = Image.open(rows[0].path).convert("RGB")
    big = first.resize((90, 130), Image.Resampling.BICUBIC)
    big.save(extra / "big.jpg", quality=92)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed turned by 90 degrees
    big.save(extra / "turned.jpg", quality=92, exif=exif)
    return [Path(r.path) for r in rows] + [extra / "big.jpg", extra / "turned.jpg"]


@pytest.fixture(scope="module")
def server(web_run: Path) -> Iterator[str]:
    """The export folder on a loopback static server (any static host would do)."""
    handler = functools.partial(_QuietHandler, directory=str(web_run / "web"))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def _open(browser, url: str, width: int = 1280, height: int = 800):
    context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(60_000)
    origin = url.rsplit("/", 1)[0]
    outside: list[str] = []
    page.on("request", lambda req: outside.append(req.url)
            if not req.url.startswith((origin, "data:", "blob:")) else None)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_selector("#card-button[data-state='ready']")
    return context, page, outside, errors


def _browser_answers(page, paths: list[Path]) -> list[dict]:
    payload = [base64.b64encode(p.read_bytes()).decode("ascii") for p in paths]
    return page.evaluate("""async (photos) => {
        const blobs = photos.map((b64) => new Blob([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))]));
        const out = [];
        for (const blob of blobs) out.push((await plantidApp.classifyBlobs([blob]))[0]);
        return out;
    }""", payload)


def _assert_parity(answers: list[dict], expected: list, classes: list[str]) -> None:
    assert len(answers) == len(expected)
    for got, want in zip(answers, expected):
        probs = np.asarray(got["probabilities"])
        assert classes[int(probs.argmax())] == want.top[0][0], want.source
        assert float(np.abs(probs - want.probabilities).max()) <= TOLERANCE, want.source
        assert got["unknown"] == want.unknown and want.unknown is not None
        assert got["ood_score"] == pytest.approx(want.ood_score, rel=1e-3, abs=1e-4)


def test_folder_holds_the_app_and_nothing_large_in_git(web_run: Path) -> None:
    folder = web_run / "web"
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"index.html", "app.js", "preprocess.js", "bars.js", "style.css", "sw.js", "manifest.webmanifest", "model.onnx.js",
            "model-info.js", "labels.json", "preprocessing.json", "runtime/ort.wasm.min.js",
            "runtime/ort-wasm-simd-threaded.wasm.js"} <= names
    html = (folder / "index.html").read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html  # nothing from another origin
    sw = (folder / "sw.js").read_text(encoding="utf-8")
    assert "__FILES__" not in sw and '"model.onnx.js"' in sw
    manifest = json.loads((folder / "manifest.webmanifest").read_text(encoding="utf-8"))
    assert manifest["display"] == "standalone" and manifest["start_url"] == "./index.html"
    meta = json.loads((folder / "preprocessing.json").read_text(encoding="utf-8"))
    assert meta["web"]["weights"] == "fp32" and meta["trust"]["threshold"] > 0
    tracked = subprocess.run(["git", "ls-files", "-s"], cwd=REPO_ROOT, capture_output=True, text=True).stdout
    assert "ort-wasm" not in tracked  # the runtime is fetched by `make web-runtime`, never committed


@NEEDS_CHROMIUM
@pytest.mark.browser
def test_file_url_answers_equal_predict_onnx(web_run: Path, photos: list[Path], browser) -> None:
    predictor = Predictor.from_run(web_run, backend="onnx")
    expected = predictor.predict([str(p) for p in photos], top_k=len(predictor.classes))
    context, page, outside, errors = _open(browser, (web_run / "web" / "index.html").as_uri())
    try:
        _assert_parity(_browser_answers(page, photos), expected, predictor.classes)
        assert outside == [] and errors == []
    finally:
        context.close()


@NEEDS_CHROMIUM
@pytest.mark.browser
def test_app_answers_unsure_below_the_run_answer_level(web_run: Path, photos: list[Path], browser,
                                                        tmp_path: Path) -> None:
    """With the answer level at 1.0 no species is named: the app says "unsure between A and B" as
    predict does, and the export is made again because the run's trust changed."""
    run = Path(shutil.copytree(web_run, tmp_path / "run", symlinks=True))
    trust = json.loads((run / "trust.json").read_text(encoding="utf-8"))
    trust["answer_level"] = 1.0
    (run / "trust.json").write_text(json.dumps(trust), encoding="utf-8")
    export_run(run, "web", quantize=False)
    assert json.loads((run / "web" / "preprocessing.json").read_text(encoding="utf-8"))["trust"]["answer_level"] == 1.0
    predictor = Predictor.from_run(run, backend="onnx")
    answered = predictor.predict([str(p) for p in photos], top_k=2)
    photo, prediction = next((p, a) for p, a in zip(photos, answered) if a.answer.kind == "unsure")
    context, page, outside, errors = _open(browser, (run / "web" / "index.html").as_uri(), 390, 844)
    try:
        page.set_input_files("#file-input", [str(photo)])
        page.wait_for_selector("#result:not([hidden])")
        assert page.text_content("#best-eyebrow").strip() == "Unsure between two species"
        assert page.inner_text("#best-label").strip() == " or ".join(prediction.answer.species)
        assert outside == [] and errors == []
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "answer-unsure-390.png"), full_page=True)
    finally:
        context.close()


def _foreign_photos(folder: Path) -> list[Path]:
    """Pictures of none of the tiny run's species, smooth (as photos are, so that the app's resize
    and Pillow's agree to 1e-4): colour gradients and a flat grey."""
    yy, xx = np.mgrid[0:96, 0:96] / 95.0
    pictures = {"dusk": np.stack([200 * xx + 40, 30 + 0 * xx, 220 * yy + 30], axis=2),
                "sunset": np.stack([250 + 0 * xx, 120 * yy + 100, 40 * xx], axis=2),
                "grey": np.full((96, 96, 3), 128.0)}
    paths = []
    for name, pixels in pictures.items():
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{name}.png")
        paths.append(folder / f"{name}.png")
    return paths


@NEEDS_CHROMIUM
@pytest.mark.browser
def test_app_names_a_species_and_says_not_one_of_them_for_a_foreign_picture(web_run: Path, photos: list[Path],
                                                                            browser, tmp_path: Path) -> None:
    """Two of the three answers as the app words them, each for the photo predict gives it to (the
    third, unsure, is above); a screenshot of each goes to test-artifacts/web/."""
    predictor = Predictor.from_run(web_run, backend="onnx")
    candidates = photos + _foreign_photos(tmp_path)
    answers = predictor.predict([str(p) for p in candidates], top_k=2)
    chosen = {}
    for path, prediction in zip(candidates, answers):
        chosen.setdefault(prediction.answer.kind, (path, prediction))
    assert {"species", "unknown"} <= set(chosen), "the run named no species, or flagged no foreign picture"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for kind in ("species", "unknown"):
        path, prediction = chosen[kind]
        context, page, outside, errors = _open(browser, (web_run / "web" / "index.html").as_uri(), 390, 844)
        try:
            page.set_input_files("#file-input", [str(path)])
            page.wait_for_selector("#result:not([hidden])")
            best = page.inner_text("#best-label").strip()
            if kind == "species":
                assert best == prediction.answer.species[0]
                assert page.text_content("#best-eyebrow").strip() == "Best match"
            else:
                assert "does not look like any" in best and f"{len(predictor.classes)} species" in best
                assert page.inner_text("#result-note").startswith("Closest species, shown only for reference, from one photo.")
            page.screenshot(path=str(ARTIFACTS / f"answer-{kind}-390.png"), full_page=True)
            assert outside == [] and errors == []
        finally:
            context.close()


@NEEDS_CHROMIUM
@pytest.mark.browser
def test_served_app_several_photos_card_and_screenshots(web_run: Path, photos: list[Path], server: str, browser,
                                                        tmp_path: Path) -> None:
    predictor = Predictor.from_run(web_run, backend="onnx")
    chosen = photos[:3]
    singles = predictor.predict([str(p) for p in chosen], top_k=len(predictor.classes))
    group = combine("plant", singles, predictor.classes, predictor.threshold, top_k=5)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for width, height in ((390, 844), (1280, 800)):
        context, page, outside, errors = _open(browser, server + "/index.html", width, height)
        try:
            _assert_parity(_browser_answers(page, photos[-2:]), predictor.predict([str(p) for p in photos[-2:]],
                                                                                  top_k=3), predictor.classes)
            assert page.get_attribute("#camera-input", "capture") == "environment"
            page.set_input_files("#file-input", [str(p) for p in chosen[:1]])
            page.wait_for_selector("#result:not([hidden])")
            assert "from one photo" in page.inner_text("#result-note")
            page.set_input_files("#file-input", [str(p) for p in chosen[1:]])
            wait_until(page, "document.querySelectorAll('#thumbs .thumb').length === 3")
            wait_until(page, "document.querySelector('#result-note').textContent.includes('3 photos')")
            best = page.inner_text("#best-label").strip()
            # the same one of the three answers as predict gives the group (plantid.infer.answers)
            answer = answer_for(group.top, group.unknown, predictor.answer_level, len(predictor.classes))
            if answer.kind == "unknown":
                assert "does not look like any" in best or "do not look like any" in best
                assert f"{len(predictor.classes)} species" in best
            elif answer.kind == "unsure":
                assert best == f"{answer.species[0]} or {answer.species[1]}"
                assert "Unsure between" in page.inner_text("#result")
            else:
                assert best == group.top[0][0]
            rows = page.locator("#bars .bar-row")
            assert rows.count() == min(5, len(predictor.classes))
            assert rows.first.locator(".bar-label").inner_text().strip() == group.top[0][0]
            assert page.evaluate("document.documentElement.scrollWidth") <= width, "horizontal scrolling"
            button = page.locator("#camera-button").bounding_box()
            assert button and button["height"] >= 44  # thumb-sized
            page.screenshot(path=str(ARTIFACTS / f"app-{width}.png"), full_page=True)
            page.click("#card-button")  # the model card, one tap away
            page.wait_for_selector("#model-card[open]")
            assert page.locator("#card-classes li").count() == len(predictor.classes)
            assert page.inner_text("#card-date").strip() not in ("", "–")
            page.screenshot(path=str(ARTIFACTS / f"card-{width}.png"))
            page.keyboard.press("Escape")
            page.click("#thumbs .thumb:first-child .remove")
            wait_until(page, "document.querySelectorAll('#thumbs .thumb').length === 2")
            assert outside == [] and errors == []
        finally:
            context.close()


def test_export_web_refusals(copy_run: Path, tmp_path: Path) -> None:
    env_missing = {RUNTIME_ENV: str(tmp_path / "no-runtime")}
    proc = subprocess.run([*PLANTID, "export", str(copy_run), "--format", "web"], capture_output=True, text=True,
                          env={**os.environ, **env_missing}, timeout=300)
    assert "make web-runtime" in one_line_error(proc)
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    try:
        check_runtime()
    except PlantidError:
        return
    proc = subprocess.run([*PLANTID, "export", str(copy_run), "--format", "web", "--out", str(keep)],
                          capture_output=True, text=True, timeout=300)
    assert "not a plantid web export" in one_line_error(proc)
    assert (keep / "notes.txt").read_text() == "mine"
