"""The web API on a real tiny run with real JPEGs: predictions, Grad-CAM, the model card and
every kind of bad request (each with its status code and a clear message, server still up)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from plantid.infer.predictor import Predictor
from plantid.serve.app import build_app, create_app
from plantid.serve.uploads import MULTIPART_OVERHEAD
from plantid.serve.gradcam import GradCam, colorize, encode_png, overlay_heatmap
from tests.support.images import class_pixels, jpeg_bytes, png_bomb


# --------------------------------------------------------------------------- fixtures


def _jpeg(pixels: np.ndarray, **save: object) -> bytes:
    return jpeg_bytes(pixels, **save)


def _photo(class_index: int, width: int = 32, height: int = 32, seed: int = 0) -> np.ndarray:
    """A photo of class `class_index` of the session's tiny data (tests/support/images.py)."""
    return class_pixels(class_index, width, height, np.random.default_rng([seed, class_index]))


@pytest.fixture(scope="module")
def run_dir(trained_run: Path) -> Path:
    """The session's tiny run (tests/conftest.py); the app only reads it."""
    return trained_run


@pytest.fixture(scope="module")
def labels(run_dir: Path) -> list[str]:
    return json.loads((run_dir / "labels.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def client(run_dir: Path) -> TestClient:
    with TestClient(create_app(run_dir)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def photo_jpeg() -> bytes:
    return _jpeg(_photo(1, 48, 40))


def _upload(data: bytes, name: str = "leaf.jpg", content_type: str = "image/jpeg") -> dict:
    return {"files": {"file": (name, data, content_type)}}


# --------------------------------------------------------------------------- happy paths


def test_health_names_the_model(client: TestClient) -> None:
    response = client.get("/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["model_id"] == client.app.state.predictor.model_id


def test_predict_returns_labels_from_the_run_and_probabilities(client: TestClient, labels: list[str],
                                                               photo_jpeg: bytes) -> None:
    response = client.post("/api/predict", params={"top_k": len(labels)}, **_upload(photo_jpeg))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {"model_id", "top_k", "elapsed_ms", "image"}
    assert body["model_id"] == client.app.state.predictor.model_id
    assert body["image"] == {"width": 48, "height": 40}
    assert body["elapsed_ms"] >= 0
    items = body["top_k"]
    assert [item["label"] for item in items] != [] and {item["label"] for item in items} == set(labels)
    probabilities = [item["probability"] for item in items]
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
    assert probabilities == sorted(probabilities, reverse=True)
    # the default top-k is the app's (5), capped by the number of classes
    response = client.post("/api/predict", **_upload(photo_jpeg))
    assert response.status_code == 200, response.text
    default = response.json()["top_k"]
    assert len(default) == min(5, len(labels))
    assert default[0] == items[0]


def test_predict_reads_png_and_reports_the_displayed_size(client: TestClient, labels: list[str]) -> None:
    rgba = np.dstack([_photo(0, 30, 20), np.full((20, 30), 200, np.uint8)])
    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG")
    response = client.post("/api/predict", **_upload(buffer.getvalue(), "leaf.png", "image/png"))
    assert response.status_code == 200, response.text
    assert response.json()["image"] == {"width": 30, "height": 20}
    # EXIF orientation 6 (rotate 90): the photo is displayed 20 wide, 30 high
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = _jpeg(_photo(2, 30, 20), exif=exif.tobytes())
    response = client.post("/api/predict", **_upload(rotated, content_type="application/octet-stream"))
    assert response.status_code == 200, response.text
    assert response.json()["image"] == {"width": 20, "height": 30}
    assert response.json()["top_k"][0]["label"] in labels


# --------------------------------------------------------------------------- bad requests


BAD_REQUESTS = [
    # (name, request kwargs, status, words in the message)
    ("no file field", {"files": {"photo": ("x.jpg", b"123", "image/jpeg")}}, 422, "no file"),
    ("file as text", {"files": {"file": (None, "just text")}}, 422, "file upload"),
    ("empty file", _upload(b""), 400, "empty"),
    ("not an image", _upload(b"this is not a photo at all", "leaf.jpg"), 415, "not an image"),
    ("text/plain upload", _upload(b"hello", "notes.txt", "text/plain"), 415, "text/plain"),
    ("json body", {"json": {"file": "leaf.jpg"}}, 415, "multipart/form-data"),
    ("raw image body", {"content": b"\xff\xd8\xff", "headers": {"content-type": "image/jpeg"}}, 415, "multipart/form-data"),
    ("no content type", {"content": b"abc"}, 415, "multipart/form-data"),
    ("broken multipart", {"content": b"--zzz\r\nnot a header\r\n", "headers": {"content-type": "multipart/form-data; boundary=zzz"}}, 400, "multipart"),
    ("decompression bomb", _upload(png_bomb(30_000), "bomb.png", "image/png"), 413, "too large"),
]


@pytest.mark.parametrize("name, kwargs, status, words", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_a_clear_4xx(client: TestClient, name: str, kwargs: dict, status: int, words: str) -> None:
    response = client.post("/api/predict", **kwargs)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and words in detail.lower()


def test_truncated_jpeg_is_a_400(client: TestClient, photo_jpeg: bytes) -> None:
    response = client.post("/api/predict", **_upload(photo_jpeg[: len(photo_jpeg) // 2]))
    assert response.status_code == 400
    assert "truncated" in response.json()["detail"]


def test_bad_query_parameter_is_a_422_sentence(client: TestClient, photo_jpeg: bytes) -> None:
    response = client.post("/api/predict", params={"top_k": "many"}, **_upload(photo_jpeg))
    assert response.status_code == 422
    assert "top_k" in response.json()["detail"]
    response = client.post("/api/predict", params={"top_k": 0}, **_upload(photo_jpeg))
    assert response.status_code == 422 and "top_k" in response.json()["detail"]


def test_unknown_paths_and_methods_are_json(client: TestClient) -> None:
    response = client.get("/api/nothing")
    assert response.status_code == 404 and response.json() == {"detail": "not found: /api/nothing"}
    response = client.get("/api/predict")
    assert response.status_code == 405 and "GET" in response.json()["detail"]


def test_size_limit_by_content_length_and_by_counting(run_dir: Path, photo_jpeg: bytes) -> None:
    limit = 4096
    app = create_app(run_dir, max_upload_bytes=limit)
    with TestClient(app) as small:
        assert len(photo_jpeg) < limit
        response = small.post("/api/predict", **_upload(photo_jpeg))  # a real photo under the limit is fine
        assert response.status_code == 200, response.text
        big = bytes(np.random.default_rng(0).integers(0, 256, limit + 1, dtype=np.uint8))
        response = small.post("/api/predict", **_upload(big))  # honest Content-Length, file just over
        assert response.status_code == 413
        assert "too large" in response.json()["detail"] and "4 KB" in response.json()["detail"]
        # no Content-Length (chunked): the body is counted while it streams in
        chunks = (bytes(8192) for _ in range(16))
        response = small.post("/api/predict", content=chunks,
                              headers={"content-type": "multipart/form-data; boundary=x"})
        assert response.status_code == 413 and "too large" in response.json()["detail"]
        assert small.post("/api/predict", **_upload(photo_jpeg)).status_code == 200  # still serving

    # At the ASGI level: a huge declared size is refused before reading; a lying client that
    # declares a small size is cut off after about `limit` bytes, not read to its end.
    def call(declared: int | None, total_chunks: int) -> tuple[int, dict, int]:
        pulled = 0
        messages: list[dict] = []

        async def receive() -> dict:
            nonlocal pulled
            pulled += 1
            more = pulled < total_chunks
            return {"type": "http.request", "body": bytes(65536), "more_body": more}

        async def send(message: dict) -> None:
            messages.append(message)

        headers = [(b"content-type", b"multipart/form-data; boundary=x")]
        if declared is not None:
            headers.append((b"content-length", str(declared).encode()))
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/api/predict", "raw_path": b"/api/predict", "query_string": b"",
                 "root_path": "", "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        asyncio.run(app(scope, receive, send))
        start = next(m for m in messages if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
        return start["status"], json.loads(body), pulled

    status, body, pulled = call(declared=10**9, total_chunks=10_000)
    assert status == 413 and "too large" in body["detail"] and pulled == 0
    status, body, pulled = call(declared=100, total_chunks=10_000)  # 655 MB behind a 100-byte claim
    assert status == 413 and "too large" in body["detail"]
    assert pulled * 65536 <= limit + MULTIPART_OVERHEAD + 65536


def test_server_keeps_serving_after_bad_requests(client: TestClient, labels: list[str], photo_jpeg: bytes) -> None:
    for kwargs, status in [(_upload(b""), 400), (_upload(b"nope"), 415), ({"json": {}}, 415)] * 3:
        response = client.post("/api/predict", **kwargs)
        assert response.status_code == status, response.text
    response = client.post("/api/predict", **_upload(photo_jpeg))
    assert response.status_code == 200
    assert len(response.json()["top_k"]) == min(5, len(labels))


def test_inference_runs_off_the_event_loop(labels: list[str], photo_jpeg: bytes, tmp_path: Path) -> None:
    """A slow prediction must not block /api/health (it runs in the thread pool)."""
    import httpx

    started = threading.Event()

    def slow(images: np.ndarray) -> np.ndarray:
        started.set()
        time.sleep(1.0)
        return np.full((len(images), len(labels)), 1.0 / len(labels))

    predictor = Predictor(labels, 32, slow, "slow:model", "onnx")
    app = build_app(predictor, tmp_path)

    async def scenario() -> tuple[float, float]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            t0 = time.perf_counter()
            slow_task = asyncio.create_task(http.post("/api/predict", files={"file": ("a.jpg", photo_jpeg, "image/jpeg")}))
            while not started.is_set():
                await asyncio.sleep(0.01)
            health = await http.get("/api/health")
            health_done = time.perf_counter() - t0
            assert health.status_code == 200
            response = await slow_task
            assert response.status_code == 200
            return health_done, time.perf_counter() - t0

    health_done, slow_done = asyncio.run(scenario())
    assert health_done < slow_done - 0.5


# --------------------------------------------------------------------------- model card


def test_model_card_without_evaluation(labels: list[str], copy_run: Path) -> None:
    """A run that was trained but never evaluated: the card shows train_summary's test accuracy."""
    (copy_run / "eval.json").unlink(missing_ok=True)
    with TestClient(create_app(copy_run)) as client:
        response = client.get("/api/model")
    assert response.status_code == 200, response.text
    body = response.json()
    expected = {"model_id", "backbone", "image_size", "classes", "backend", "test_accuracy", "per_class_f1",
                "balanced_accuracy", "macro_f1", "gradcam_available"}
    assert expected <= set(body)
    summary = json.loads((copy_run / "train_summary.json").read_text(encoding="utf-8"))
    assert body["classes"] == labels
    assert body["backbone"] == summary["model"]
    assert body["image_size"] == summary["image_size"] == client.app.state.predictor.image_size
    assert body["backend"] == "torch" and body["gradcam_available"] is True
    assert body["evaluated"] is False and body["per_class_f1"] == {}
    assert body["test_accuracy"] == pytest.approx(summary["test_acc"])
    assert body["balanced_accuracy"] is None and body["macro_f1"] is None


def test_model_card_reads_eval_json(client: TestClient, labels: list[str], run_dir: Path, tmp_path: Path) -> None:
    shutil.copy(run_dir / "train_summary.json", tmp_path / "train_summary.json")
    per_class = [{"class": c, "precision": 0.5, "recall": 0.5, "f1": 0.25 * (i + 1), "support": 3}
                 for i, c in enumerate(labels)]
    (tmp_path / "eval.json").write_text(json.dumps({
        "split": "test",
        "metrics": {"accuracy": 0.75, "balanced_accuracy": 0.7, "macro_f1": 0.65},
        "per_class": per_class, "tta": None,
    }))
    app = build_app(client.app.state.predictor, tmp_path)
    response = TestClient(app).get("/api/model")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["evaluated"] is True
    assert body["test_accuracy"] == 0.75 and body["balanced_accuracy"] == 0.7 and body["macro_f1"] == 0.65
    assert body["per_class_f1"] == {c: pytest.approx(0.25 * (i + 1)) for i, c in enumerate(labels)}


# --------------------------------------------------------------------------- Grad-CAM


def test_gradcam_endpoint_returns_an_overlay_png(client: TestClient, labels: list[str], photo_jpeg: bytes) -> None:
    size = client.app.state.predictor.image_size
    response = client.post("/api/gradcam", **_upload(photo_jpeg))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] in labels
    png = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"])))
    assert png.format == "PNG" and png.size == (size, size) and png.mode == "RGB"
    # a chosen class, by label (form field) and by index (query parameter)
    chosen = labels[-1]
    response = client.post("/api/gradcam", data={"label": chosen}, **_upload(photo_jpeg))
    assert response.status_code == 200, response.text
    by_label = response.json()
    assert by_label["label"] == chosen and by_label["class_index"] == len(labels) - 1
    response = client.post("/api/gradcam", params={"class_index": 0}, **_upload(photo_jpeg))
    assert response.status_code == 200, response.text
    by_index = response.json()
    assert by_index["label"] == labels[0] and by_index["class_index"] == 0
    # and the usual clear errors
    unknown = client.post("/api/gradcam", data={"label": "no-such-plant"}, **_upload(photo_jpeg))
    assert unknown.status_code == 422 and "unknown label" in unknown.json()["detail"]
    out_of_range = client.post("/api/gradcam", params={"class_index": 99}, **_upload(photo_jpeg))
    assert out_of_range.status_code == 422 and "out of range" in out_of_range.json()["detail"]
    empty = client.post("/api/gradcam", **_upload(b""))
    assert empty.status_code == 400 and "empty" in empty.json()["detail"].lower()
    text = client.post("/api/gradcam", **_upload(b"plain", "a.txt", "text/plain"))
    assert text.status_code == 415 and "text/plain" in text.json()["detail"]


def test_gradcam_is_a_409_without_torch(labels: list[str], photo_jpeg: bytes, tmp_path: Path) -> None:
    """The onnx backend has no gradients: Grad-CAM answers 409 and the card says so."""
    predictor = Predictor(labels, 32, lambda x: np.full((len(x), len(labels)), 1 / len(labels)), "m:onnx", "onnx")
    with TestClient(build_app(predictor, tmp_path)) as onnx_client:
        response = onnx_client.post("/api/gradcam", **_upload(photo_jpeg))
        assert response.status_code == 409
        assert "onnx" in response.json()["detail"] and "--backend torch" in response.json()["detail"]
        card = onnx_client.get("/api/model")
        assert card.status_code == 200 and card.json()["gradcam_available"] is False
        assert onnx_client.post("/api/predict", **_upload(photo_jpeg)).status_code == 200


def test_gradcam_heatmap_is_nonnegative_sized_and_class_specific(client: TestClient) -> None:
    predictor: Predictor = client.app.state.predictor
    model = predictor.trained.model
    size = predictor.image_size
    image = predictor.preprocess(_jpeg(_photo(0, 40, 40)))
    hooks_before = len(model.gradcam_layer()._forward_hooks)  # the app holds its own GradCam
    with GradCam(model) as cam:
        maps = [cam(image, k) for k in range(len(predictor.classes))]
        default = cam(image)
    for k, result in enumerate(maps):
        assert result.heatmap.shape == (size, size)
        assert result.heatmap.dtype == np.float32
        assert result.heatmap.min() >= 0.0 and result.heatmap.max() <= 1.0 + 1e-6
        assert result.class_index == k
        assert result.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    raw = [m.heatmap * m.raw_max for m in maps]
    assert any(not np.allclose(raw[0], other, atol=1e-7) for other in raw[1:]), "Grad-CAM ignores the target class"
    assert default.class_index == int(np.argmax(default.probabilities))
    # the hook is gone after close(), and the model still predicts the same
    assert len(model.gradcam_layer()._forward_hooks) == hooks_before
    again = predictor.predict_arrays(image[None])[0]
    np.testing.assert_allclose(again, default.probabilities, atol=1e-5)


def test_overlay_and_png_encoding() -> None:
    image = np.zeros((12, 20, 3), np.uint8)
    heat = np.tile(np.linspace(0, 1, 20, dtype=np.float32), (12, 1))
    blended = overlay_heatmap(image, heat)
    assert blended.shape == image.shape and blended.dtype == np.uint8
    assert blended[:, -1].mean() > blended[:, 0].mean()  # hot side is more coloured
    assert colorize(heat).shape == (12, 20, 3)
    assert Image.open(io.BytesIO(encode_png(blended))).size == (20, 12)
    with pytest.raises(ValueError):
        overlay_heatmap(image, heat[:, :5])


# --------------------------------------------------------------------------- page and docs


def test_page_and_static_files_are_offline(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    assert 'type="file"' in html and 'id="file-input"' in html and "<label" in html
    for path in ("/static/app.js", "/static/style.css", "/static/logo.svg", "/favicon.ico"):
        response = client.get(path)
        assert response.status_code == 200, path
    for text in (html, client.get("/static/app.js").text, client.get("/static/style.css").text):
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    assert client.get("/static/missing.js").status_code == 404


def test_openapi_documents_the_upload(client: TestClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    body = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"]["properties"]["file"]["format"] == "binary"
    assert "/api/gradcam" in spec["paths"] and "/api/model" in spec["paths"]
    assert client.get("/docs").status_code == 200
